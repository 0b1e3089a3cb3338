//! Unit tests of the VHDX reader on hand-built images: layouts qemu does not
//! write (metadata before the BAT, BAT after the data, 4096-byte sectors with a
//! sector-bitmap entry inside the BAT), and one defect per refusal, each with an
//! exact expected result.

use bytes::Bytes;

use super::checksum::crc32c_without_field;
use super::guid::{self, Guid};
use super::{convert_stream, VhdxError};
use crate::format::engine::{ImageError, MapEntry, StreamError, StreamOptions};
use crate::format::summary::ImageSummary;
use crate::sink::memory::MemorySink;
use crate::stream::ChunkStream;

const MIB: u64 = 1 << 20;

/// A VHDX file built structure by structure.
struct Image {
    bytes: Vec<u8>,
    bat_at: u64,
    md_at: u64,
}

fn put(bytes: &mut [u8], at: u64, value: &[u8]) {
    bytes[at as usize..at as usize + value.len()].copy_from_slice(value);
}

impl Image {
    /// An image of `len` bytes: log at 1 MiB (1 MiB), BAT and metadata regions
    /// (1 MiB each) at `bat_at` and `md_at`.
    fn new(len: u64, bat_at: u64, md_at: u64, params: (u64, u64, u32)) -> Image {
        let (virtual_size, block_size, sector) = params;
        let mut img = Image {
            bytes: vec![0; len as usize],
            bat_at,
            md_at,
        };
        put(&mut img.bytes, 0, b"vhdxfile");
        img.header(64 << 10, 5, Guid::ZERO);
        img.header(128 << 10, 4, Guid::ZERO);
        let mut rt = vec![0u8; 64 << 10];
        rt[..4].copy_from_slice(b"regi");
        rt[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (g, at)) in [(guid::BAT_REGION, bat_at), (guid::METADATA_REGION, md_at)]
            .into_iter()
            .enumerate()
        {
            let e = 16 + 32 * i as u64;
            put(&mut rt, e, &g.0);
            put(&mut rt, e + 16, &at.to_le_bytes());
            put(&mut rt, e + 24, &(MIB as u32).to_le_bytes());
            put(&mut rt, e + 28, &1u32.to_le_bytes());
        }
        let crc = crc32c_without_field(&rt, 4);
        put(&mut rt, 4, &crc.to_le_bytes());
        put(&mut img.bytes, 192 << 10, &rt);
        put(&mut img.bytes, 256 << 10, &rt);
        let mut md = vec![0u8; 64 << 10];
        md[..8].copy_from_slice(b"metadata");
        let items: [(Guid, Vec<u8>); 5] = [
            (
                guid::FILE_PARAMETERS,
                [(block_size as u32).to_le_bytes(), 0u32.to_le_bytes()].concat(),
            ),
            (guid::VIRTUAL_DISK_SIZE, virtual_size.to_le_bytes().to_vec()),
            (guid::VIRTUAL_DISK_ID, vec![7; 16]),
            (guid::LOGICAL_SECTOR_SIZE, sector.to_le_bytes().to_vec()),
            (guid::PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec()),
        ];
        md[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut offset = 64u64 << 10;
        for (i, (g, value)) in items.iter().enumerate() {
            let e = 32 + 32 * i as u64;
            put(&mut md, e, &g.0);
            put(&mut md, e + 16, &(offset as u32).to_le_bytes());
            put(&mut md, e + 20, &(value.len() as u32).to_le_bytes());
            put(&mut md, e + 24, &4u32.to_le_bytes());
            put(&mut img.bytes, md_at + offset, value);
            offset += value.len() as u64;
        }
        put(&mut img.bytes, md_at, &md);
        img
    }

    fn header(&mut self, at: u64, sequence: u64, log_guid: Guid) {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"head");
        put(&mut h, 8, &sequence.to_le_bytes());
        put(&mut h, 48, &log_guid.0);
        put(&mut h, 66, &1u16.to_le_bytes());
        put(&mut h, 68, &(MIB as u32).to_le_bytes());
        put(&mut h, 72, &MIB.to_le_bytes());
        let crc = crc32c_without_field(&h, 4);
        put(&mut h, 4, &crc.to_le_bytes());
        put(&mut self.bytes, at, &h);
    }

    fn bat(&mut self, index: u64, entry: u64) {
        put(
            &mut self.bytes,
            self.bat_at + index * 8,
            &entry.to_le_bytes(),
        );
    }

    /// Block stored at `host`, filled with `fill`, for `len` bytes.
    fn present(&mut self, index: u64, host: u64, fill: u8, len: u64) {
        self.bat(index, host | 6);
        self.bytes[host as usize..(host + len) as usize].fill(fill);
    }

    fn set_item_u32(&mut self, item: usize, value: u32) {
        let at = self.md_at + (64 << 10) + [0, 8, 16, 32, 36][item];
        put(&mut self.bytes, at, &value.to_le_bytes());
    }
}

fn run(image: &Image, options: &StreamOptions) -> (Result<ImageSummary, ImageError>, Vec<u8>) {
    let mut stream = ChunkStream::from_bytes(Bytes::from(image.bytes.clone()));
    let mut sink = MemorySink::default();
    let result = convert_stream(&mut stream, &mut sink, options);
    (result, sink.disk)
}

fn convert(image: &Image) -> (ImageSummary, Vec<u8>) {
    let (result, disk) = run(image, &StreamOptions::default());
    (result.unwrap_or_else(|e| panic!("{e}")), disk)
}

fn refusal(image: &Image) -> ImageError {
    match run(image, &StreamOptions::default()).0 {
        Ok(_) => panic!("converted, but must be refused"),
        Err(e) => e,
    }
}

fn format_error(image: &Image) -> VhdxError {
    let e = refusal(image);
    match e.kind {
        crate::format::engine::ImageErrorKind::Format(inner) => *inner
            .downcast::<VhdxError>()
            .unwrap_or_else(|e| panic!("not a VhdxError: {e}")),
        crate::format::engine::ImageErrorKind::Stream(s) => panic!("engine error: {s}"),
    }
}

/// Three 1 MiB blocks: 0 unallocated, 1 present, 2 ZERO (partial: 2.5 MiB disk).
fn basic(bat_at: u64, md_at: u64, data_at: u64) -> Image {
    let len = (data_at + MIB).max(bat_at.max(md_at) + MIB);
    let mut img = Image::new(len, bat_at, md_at, (5 * MIB / 2, MIB, 512));
    img.present(1, data_at, 0xA1, MIB);
    img.bat(2, 2);
    img
}

fn expect_basic(disk: &[u8]) {
    assert_eq!(disk.len() as u64, 5 * MIB / 2);
    assert!(disk[..MIB as usize].iter().all(|&b| b == 0));
    assert!(disk[MIB as usize..2 * MIB as usize]
        .iter()
        .all(|&b| b == 0xA1));
    assert!(disk[2 * MIB as usize..].iter().all(|&b| b == 0));
}

#[test]
fn qemu_layout_bat_before_metadata() {
    let (summary, disk) = convert(&basic(2 * MIB, 3 * MIB, 8 * MIB));
    expect_basic(&disk);
    assert_eq!(summary.allocated_bytes, Some(MIB));
    assert_eq!(summary.subformat.as_deref(), Some("dynamic"));
    assert_eq!(summary.spilled_bytes, 0);
}

#[test]
fn hyper_v_layout_metadata_before_bat() {
    let (_, disk) = convert(&basic(3 * MIB, 2 * MIB, 4 * MIB));
    expect_basic(&disk);
}

#[test]
fn bat_after_the_data_is_held_back() {
    let (summary, disk) = convert(&basic(6 * MIB, 2 * MIB, 4 * MIB));
    expect_basic(&disk);
    assert!(
        summary.retained_peak >= MIB,
        "the block was kept until the BAT"
    );
}

#[test]
fn bat_after_the_data_spills_past_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = StreamOptions {
        memory_budget: 64 << 10,
        scratch_dir: dir.path().into(),
        ..StreamOptions::default()
    };
    let (result, disk) = run(&basic(6 * MIB, 2 * MIB, 4 * MIB), &options);
    let summary = result.unwrap_or_else(|e| panic!("{e}"));
    expect_basic(&disk);
    assert!(summary.spilled_bytes >= MIB / 2, "{summary:?}");
}

#[test]
fn metadata_too_far_ahead_is_refused() {
    let img = basic(2 * MIB, 40 * MIB, 8 * MIB);
    let err = run(&img, &StreamOptions::default()).0.err();
    assert!(err.is_none(), "40 MiB is within the 64 MiB budget");
    let options = StreamOptions {
        memory_budget: MIB,
        ..StreamOptions::default()
    };
    let err = run(&img, &options).0.expect_err("refused");
    assert!(matches!(
        err.downcast_format::<VhdxError>(),
        Some(VhdxError::MetadataTooFar { .. })
    ));
}

#[test]
fn sector_size_4096_changes_the_chunk_ratio() {
    // 4096-byte sectors, 1 MiB blocks: 32768 payload blocks per chunk, so the
    // bitmap entry is index 32768 and block 32768 is entry 32769 (with 512-byte
    // sectors it would be 4096 and 32776).
    let blocks = 32770u64;
    let mut img = Image::new(12 * MIB, 2 * MIB, 3 * MIB, (blocks * MIB, MIB, 4096));
    img.present(0, 5 * MIB, 0x11, MIB);
    img.present(32769, 6 * MIB, 0x22, MIB);
    let options = StreamOptions {
        collect_map: true,
        ..StreamOptions::default()
    };
    let (result, _) = run(&img, &options);
    let summary = result.unwrap_or_else(|e| panic!("{e}"));
    let map = summary.map.expect("map");
    let data: Vec<&MapEntry> = map.iter().filter(|e| e.data).collect();
    assert_eq!(data.len(), 2, "{map:?}");
    assert_eq!((data[0].start, data[0].offset), (0, Some(5 * MIB)));
    assert_eq!(
        (data[1].start, data[1].offset),
        (32768 * MIB, Some(6 * MIB))
    );
    let sector = summary
        .details
        .iter()
        .find(|d| d.key == "sector_size")
        .unwrap();
    assert_eq!(sector.value, 4096);
}

#[test]
fn older_header_is_used_when_the_newer_is_corrupt() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bytes[(64 << 10) + 100] ^= 1; // header 1 (sequence 5) corrupt
    let (summary, disk) = convert(&img);
    expect_basic(&disk);
    let seq = summary
        .details
        .iter()
        .find(|d| d.key == "header_sequence")
        .unwrap();
    assert_eq!(seq.value, 4);
}

#[test]
fn both_headers_corrupt_is_refused() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bytes[(64 << 10) + 100] ^= 1;
    img.bytes[(128 << 10) + 100] ^= 1;
    assert!(matches!(
        format_error(&img),
        VhdxError::NoValidHeader { .. }
    ));
}

#[test]
fn equal_sequence_numbers_must_be_identical() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.header(128 << 10, 5, Guid::ZERO);
    assert!(convert(&img).1.len() as u64 == 5 * MIB / 2);
    img.header(128 << 10, 5, Guid::new(1, 1, 1, 1));
    assert!(matches!(
        format_error(&img),
        VhdxError::AmbiguousHeaders { sequence: 5 }
    ));
}

#[test]
fn stale_log_is_ignored_and_an_active_one_refused() {
    let guid = Guid::new(0xABCD, 1, 2, 3);
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.header(64 << 10, 5, guid);
    expect_basic(&convert(&img).1);
    // One entry, header sector only, valid CRC.
    let mut entry = vec![0u8; 4096];
    entry[..4].copy_from_slice(b"loge");
    put(&mut entry, 8, &4096u32.to_le_bytes());
    put(&mut entry, 16, &9u64.to_le_bytes());
    put(&mut entry, 32, &guid.0);
    let crc = crc32c_without_field(&entry, 4);
    put(&mut entry, 4, &crc.to_le_bytes());
    put(&mut img.bytes, MIB + 8192, &entry);
    assert!(matches!(
        format_error(&img),
        VhdxError::LogNeedsReplay {
            sequence: 9,
            at: 8192
        }
    ));
}

#[test]
fn differencing_is_refused() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    let at = img.md_at + (64 << 10) + 4;
    put(&mut img.bytes, at, &2u32.to_le_bytes());
    assert!(matches!(
        format_error(&img),
        VhdxError::Differencing { locator: false }
    ));
}

#[test]
fn bad_block_and_sector_sizes_are_refused() {
    for (item, value) in [(0, 0u32), (0, 3 * MIB as u32), (0, 512 << 20), (3, 1024)] {
        let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
        img.set_item_u32(item, value);
        assert!(matches!(
            format_error(&img),
            VhdxError::BadMetadataItem { .. }
        ));
    }
}

#[test]
fn partially_present_and_overlapping_blocks_are_refused() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bat(0, (8 * MIB) | 7);
    assert!(matches!(
        format_error(&img),
        VhdxError::BadBatEntry { index: 0, .. }
    ));
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bat(0, (8 * MIB) | 6);
    assert!(matches!(
        format_error(&img),
        VhdxError::BlocksOverlap { .. }
    ));
}

#[test]
fn block_on_metadata_or_past_the_end_is_refused() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bat(0, (3 * MIB) | 6);
    let e = refusal(&img);
    assert!(matches!(
        e.as_stream(),
        Some(StreamError::DataOverlapsMetadata {
            what: "metadata region",
            ..
        })
    ));
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    img.bat(0, (20 * MIB) | 6);
    let e = refusal(&img);
    assert!(matches!(e.as_stream(), Some(StreamError::Truncated { .. })));
}

#[test]
fn bat_region_too_small_for_the_disk_is_refused() {
    let mut img = basic(2 * MIB, 3 * MIB, 8 * MIB);
    // 64 TiB of 1 MiB blocks need a 512 MiB BAT; the region has 1 MiB.
    let at = img.md_at + (64 << 10) + 8;
    put(&mut img.bytes, at, &(64u64 << 40).to_le_bytes());
    assert!(matches!(format_error(&img), VhdxError::BatTooSmall { .. }));
}
