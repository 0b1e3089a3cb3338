//! Unit tests of the VMDK reader on hand-built images: VMware's stream layout with
//! grain tables after their grains, a disagreement between a marker and its grain
//! table, a sparse extent whose tables follow its grains (the spill path), and a
//! refusal that comes before the sink is touched.

use std::io::Write;

use bytes::Bytes;

use super::{convert_stream, VmdkError};
use crate::format::engine::{ImageError, StreamOptions};
use crate::sink::memory::MemorySink;
use crate::stream::ChunkStream;

const GRAIN_SECTORS: u64 = 8;
const GRAIN: usize = 4096;
const GTES: u32 = 4;
/// Two grain tables of four 4 KiB grains.
const CAPACITY: usize = 8 * GRAIN;

fn header(gd_sector: u64, overhead: u64, stream: bool) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&(if stream { 3u32 } else { 1 }).to_le_bytes());
    let flags: u32 = if stream { 0x30001 } else { 0x1 };
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&(CAPACITY as u64 / 512).to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&1u64.to_le_bytes());
    h[44..48].copy_from_slice(&GTES.to_le_bytes());
    h[56..64].copy_from_slice(&gd_sector.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77] = u8::from(stream);
    h
}

fn descriptor(create_type: &str, extent: &str) -> Vec<u8> {
    let mut d =
        format!("version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n{extent}\n")
            .into_bytes();
    d.resize(512, 0);
    d
}

fn sector_of(image: &[u8]) -> u32 {
    (image.len() / 512) as u32
}

fn pad(image: &mut Vec<u8>) {
    image.resize(image.len().next_multiple_of(512), 0);
}

fn grain_marker(image: &mut Vec<u8>, lba: u64, byte: u8) -> u32 {
    let at = sector_of(image);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&[byte; GRAIN]).unwrap();
    let packed = z.finish().unwrap();
    image.extend(lba.to_le_bytes());
    image.extend((packed.len() as u32).to_le_bytes());
    image.extend(packed);
    pad(image);
    at
}

/// A metadata marker and its block; returns the block's sector.
fn metadata(image: &mut Vec<u8>, kind: u32, block: &[u8]) -> u32 {
    let mut m = vec![0u8; 512];
    m[0..8].copy_from_slice(&(block.len().div_ceil(512) as u64).to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    image.extend(m);
    let at = sector_of(image);
    image.extend(block);
    pad(image);
    at
}

fn table(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// VMware's layout: grains of GT 0, GT 0, grains of GT 1, GT 1, GD, footer, EOS.
/// `second` is the sector GT 0 gives its second grain (None: the right one).
fn vmware_stream(second: Option<u32>) -> Vec<u8> {
    let mut image = header(u64::MAX, 2, true);
    image.extend(descriptor("streamOptimized", "RW 64 SPARSE \"x.vmdk\""));
    let g0 = grain_marker(&mut image, 0, 0x11);
    let g1 = grain_marker(&mut image, 8, 0x22);
    let gt0 = metadata(&mut image, 1, &table(&[g0, second.unwrap_or(g1), 0, 0]));
    let g3 = grain_marker(&mut image, 7 * GRAIN_SECTORS, 0x33);
    let gt1 = metadata(&mut image, 1, &table(&[0, 0, 0, g3]));
    let gd = metadata(&mut image, 2, &table(&[gt0, gt1]));
    let footer = header(u64::from(gd), 2, true);
    metadata(&mut image, 3, &footer);
    image.extend([0u8; 512]);
    image
}

fn convert(image: &[u8], options: &StreamOptions) -> Result<MemorySink, (ImageError, bool)> {
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(image));
    let mut sink = MemorySink::default();
    match convert_stream(&mut stream, &mut sink, options) {
        Ok(_) => Ok(sink),
        Err(e) => Err((e, sink.sized)),
    }
}

fn expect_grains(disk: &[u8], bytes: [u8; 8]) {
    for (i, want) in bytes.iter().enumerate() {
        let grain = &disk[i * GRAIN..(i + 1) * GRAIN];
        assert!(
            grain.iter().all(|b| b == want),
            "grain {i} should be {want:#x}"
        );
    }
}

#[test]
fn vmware_stream_with_tables_after_the_grains_converts_without_keeping_bytes() {
    let sink = convert(&vmware_stream(None), &StreamOptions::default()).unwrap();
    expect_grains(&sink.disk, [0x11, 0x22, 0, 0, 0, 0, 0, 0x33]);
}

#[test]
fn a_grain_table_disagreeing_with_a_marker_is_named_with_both_lbas() {
    let good = vmware_stream(None);
    let g0 = 2; // the first grain marker is at overHead, sector 2
    let (err, _) = convert(&vmware_stream(Some(g0)), &StreamOptions::default()).unwrap_err();
    assert!(!good.is_empty());
    match err.downcast_format::<VmdkError>() {
        Some(VmdkError::MarkerDisagrees {
            sector,
            marker_lba,
            table_lba,
        }) => assert_eq!((*sector, *marker_lba, *table_lba), (2, 0, 8)),
        other => panic!("expected MarkerDisagrees, got {other:?} ({err})"),
    }
}

/// Grains first, then the GD and GTs (legal, and nothing to classify until the
/// tables come): the grains are kept, in memory or in the spill file.
fn sparse_tables_last() -> Vec<u8> {
    let grains_at = 2u32; // overHead: sector 2
    let mut image = header(2 + 8 * 3, u64::from(grains_at), false);
    image.extend(descriptor("monolithicSparse", "RW 64 SPARSE \"x.vmdk\""));
    for byte in [0x44u8, 0x55, 0x66] {
        image.extend([byte; GRAIN]);
    }
    let gd_at = sector_of(&image);
    assert_eq!(u64::from(gd_at), 2 + 8 * 3);
    image.extend(table(&[gd_at + 1, gd_at + 2]));
    pad(&mut image);
    image.extend(table(&[grains_at + 16, 0, 1, grains_at]));
    pad(&mut image);
    image.extend(table(&[0, grains_at + 8, 0, 0]));
    pad(&mut image);
    image
}

#[test]
fn sparse_tables_after_the_grains_convert_from_memory_and_from_the_spill_file() {
    // GTE 1 without the zeroed-grain flag is refused, so make it the flag's.
    let mut image = sparse_tables_last();
    image[8] |= 0x4;
    let sink = convert(&image, &StreamOptions::default()).unwrap();
    expect_grains(&sink.disk, [0x66, 0, 0, 0x44, 0, 0x55, 0, 0]);
    let dir = tempfile::tempdir().unwrap();
    let spill = StreamOptions {
        memory_budget: 0,
        scratch_dir: dir.path().to_path_buf(),
        spill_allowed: true,
        ..StreamOptions::default()
    };
    let sink = convert(&image, &spill).unwrap();
    expect_grains(&sink.disk, [0x66, 0, 0, 0x44, 0, 0x55, 0, 0]);
    // Without the flag, entry 1 would be the descriptor sector: refused.
    let (err, _) = convert(&sparse_tables_last(), &StreamOptions::default()).unwrap_err();
    assert!(
        matches!(
            err.downcast_format::<VmdkError>(),
            Some(VmdkError::ZeroedGrainWithoutFlag { guest: 8192 })
        ),
        "{err}"
    );
}

#[test]
fn a_descriptor_naming_another_file_is_refused_before_the_sink_is_touched() {
    let mut image = header(3, 8, false);
    image.extend(descriptor("monolithicSparse", "RW 64 FLAT \"/dev/sda\" 0"));
    image.resize(8 * 512, 0);
    let (err, sized) = convert(&image, &StreamOptions::default()).unwrap_err();
    assert!(!sized, "the sink was touched");
    assert!(err.to_string().contains("FLAT \"/dev/sda\""), "{err}");
}

#[test]
fn a_stream_that_ends_inside_its_marker_chain_is_truncated() {
    let image = vmware_stream(None);
    for cut in [image.len() - 100, image.len() - 512 - 700, 512 * 3 + 5] {
        let (err, _) = convert(&image[..cut], &StreamOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("truncated") || text.contains("footer"),
            "cut {cut}: {text}"
        );
    }
}

/// Found by the `ova_stream` fuzz target: a descriptor size whose byte count
/// overflows a u64 is refused by name, not multiplied.
#[test]
fn descriptor_size_overflowing_u64_is_refused() {
    let mut image = header(1, 128, false);
    image[36..44].copy_from_slice(&(u64::MAX / 256).to_le_bytes());
    image.resize(64 * 1024, 0);
    let mut stream = ChunkStream::from_bytes(Bytes::from(image));
    let mut sink = MemorySink::default();
    let e = convert_stream(&mut stream, &mut sink, &StreamOptions::default())
        .expect_err("must be refused");
    let vmdk = e.downcast_format::<VmdkError>();
    assert!(
        matches!(vmdk, Some(VmdkError::DescriptorRange { .. })),
        "{e}"
    );
}
