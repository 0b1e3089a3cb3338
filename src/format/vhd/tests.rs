//! Unit tests of the VHD reader on hand-built images: block sizes and layouts
//! qemu does not write (small blocks, partial bitmaps, blocks out of order, the
//! BAT after the blocks), hostile tables, and qemu's size rule per creator.

use bytes::Bytes;

use super::header::checksum;
use super::{convert_stream, fixed_vhd_footer, Footer, VhdError};
use crate::format::engine::{ImageError, StreamError, StreamOptions};
use crate::sink::memory::MemorySink;
use crate::stream::ChunkStream;

fn footer(disk_type: u32, creator: &[u8; 4], current_size: u64, chs: (u16, u8, u8)) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    let data_offset: u64 = if disk_type == 2 { u64::MAX } else { 512 };
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    f[28..32].copy_from_slice(creator);
    f[40..48].copy_from_slice(&current_size.to_be_bytes());
    f[48..56].copy_from_slice(&current_size.to_be_bytes());
    f[56..58].copy_from_slice(&chs.0.to_be_bytes());
    f[58] = chs.1;
    f[59] = chs.2;
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    let sum = checksum(&f, 64);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A dynamic VHD with `block_size` blocks, `entries` BAT entries at `bat_at`,
/// sized by its current size ("win "); blocks are appended with [`Dyn::block`].
struct Dyn {
    bytes: Vec<u8>,
    block_size: u64,
    bat_at: u64,
}

impl Dyn {
    fn new(size: u64, block_size: u32, entries: u32, bat_at: u64) -> Self {
        let mut bytes = footer(3, b"win ", size, (65535, 16, 255));
        bytes.resize(1536, 0);
        let h = &mut bytes[512..1536];
        h[0..8].copy_from_slice(b"cxsparse");
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..24].copy_from_slice(&bat_at.to_be_bytes());
        h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        h[28..32].copy_from_slice(&entries.to_be_bytes());
        h[32..36].copy_from_slice(&block_size.to_be_bytes());
        let sum = checksum(h, 36);
        h[36..40].copy_from_slice(&sum.to_be_bytes());
        let bat_end = (bat_at + u64::from(entries) * 4).next_multiple_of(512) as usize;
        if bytes.len() < bat_end {
            bytes.resize(bat_end, 0);
        }
        bytes[bat_at as usize..bat_at as usize + entries as usize * 4].fill(0xFF);
        Dyn {
            bytes,
            block_size: u64::from(block_size),
            bat_at,
        }
    }
    fn bitmap_size(&self) -> usize {
        (self.block_size / 4096).next_multiple_of(512) as usize
    }
    /// Appends a block for BAT entry `index`: `bitmap` repeated, data `fill`.
    fn block(&mut self, index: u64, bitmap: u8, fill: u8) -> u64 {
        let at = self.bytes.len() as u64;
        self.set_bat(index, at);
        let bm = self.bitmap_size();
        self.bytes.extend(std::iter::repeat_n(bitmap, bm));
        self.bytes
            .extend(std::iter::repeat_n(fill, self.block_size as usize));
        at
    }
    fn set_bat(&mut self, index: u64, host: u64) {
        let at = (self.bat_at + index * 4) as usize;
        self.bytes[at..at + 4].copy_from_slice(&((host / 512) as u32).to_be_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        let f = self.bytes[..512].to_vec();
        self.bytes.extend(f);
        self.bytes
    }
}

fn convert(image: &[u8], options: &StreamOptions) -> Result<Vec<u8>, ImageError> {
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(image));
    let mut sink = MemorySink::default();
    convert_stream(&mut stream, &mut sink, options)?;
    Ok(sink.disk)
}

fn vhd_error(result: Result<Vec<u8>, ImageError>) -> String {
    let e = result.expect_err("must be refused");
    assert!(
        e.downcast_format::<VhdError>().is_some() || e.as_stream().is_some(),
        "{e}"
    );
    e.to_string()
}

#[test]
fn small_blocks_out_of_order_with_partial_bitmaps_read_whole_as_qemu_does() {
    // 4 blocks of 4 KiB (8 sectors, bitmap one byte padded to 512). qemu reads
    // an allocated block whole whatever its bitmap says.
    let mut img = Dyn::new(16384, 4096, 4, 1536);
    img.block(2, 0xFF, 0xA2);
    img.block(0, 0b1010_0000, 0xA0); // only sectors 0 and 2 marked present
    let disk = convert(&img.finish(), &StreamOptions::default()).unwrap();
    assert!(disk[..4096].iter().all(|&b| b == 0xA0));
    assert!(disk[4096..8192].iter().all(|&b| b == 0));
    assert!(disk[8192..12288].iter().all(|&b| b == 0xA2));
    assert!(disk[12288..].iter().all(|&b| b == 0));
}

#[test]
fn hundreds_of_blocks_in_reverse_order() {
    let blocks = 300u64;
    let mut img = Dyn::new(blocks * 4096, 4096, blocks as u32, 1536);
    for i in (0..blocks).rev() {
        img.block(i, 0xFF, i as u8);
    }
    let disk = convert(&img.finish(), &StreamOptions::default()).unwrap();
    for i in 0..blocks as usize {
        assert!(disk[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn blocks_below_4_kib_have_no_bitmap_as_in_qemu() {
    // qemu sizes the bitmap as block_size / 4096 rounded up to 512: zero here.
    let mut img = Dyn::new(2048, 1024, 2, 1536);
    img.block(1, 0x00, 0xC1);
    img.block(0, 0x00, 0xC0);
    let disk = convert(&img.finish(), &StreamOptions::default()).unwrap();
    assert!(disk[..1024].iter().all(|&b| b == 0xC0));
    assert!(disk[1024..].iter().all(|&b| b == 0xC1));
}

/// Blocks first, then the BAT (the table offset may point anywhere).
fn bat_after_blocks() -> Vec<u8> {
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    // Move the BAT: blocks at 1536, BAT after them.
    img.bytes.truncate(1536);
    let b1 = img.block_unlisted(0xB1);
    let b0 = img.block_unlisted(0xB0);
    let bat_at = img.bytes.len() as u64;
    img.bytes.resize(bat_at as usize + 512, 0xFF);
    img.bat_at = bat_at;
    img.set_bat(0, b0);
    img.set_bat(1, b1);
    let h = &mut img.bytes[512..1536];
    h[16..24].copy_from_slice(&bat_at.to_be_bytes());
    h[36..40].fill(0);
    let sum = checksum(h, 36);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    img.finish()
}

impl Dyn {
    fn block_unlisted(&mut self, fill: u8) -> u64 {
        let at = self.bytes.len() as u64;
        let bm = self.bitmap_size();
        self.bytes.extend(std::iter::repeat_n(0xFF, bm));
        self.bytes
            .extend(std::iter::repeat_n(fill, self.block_size as usize));
        at
    }
}

#[test]
fn bat_after_its_blocks_converts_from_memory_and_through_the_spill() {
    let expect = |disk: Vec<u8>| {
        assert!(disk[..4096].iter().all(|&b| b == 0xB0));
        assert!(disk[4096..].iter().all(|&b| b == 0xB1));
    };
    expect(convert(&bat_after_blocks(), &StreamOptions::default()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let spill = StreamOptions {
        memory_budget: 0,
        scratch_dir: dir.path().to_path_buf(),
        ..StreamOptions::default()
    };
    expect(convert(&bat_after_blocks(), &spill).unwrap());
    let no_scratch = StreamOptions {
        memory_budget: 0,
        spill_allowed: false,
        ..StreamOptions::default()
    };
    let e = convert(&bat_after_blocks(), &no_scratch).unwrap_err();
    assert!(
        matches!(e.as_stream(), Some(StreamError::ScratchRequired { .. })),
        "{e}"
    );
}

#[test]
fn a_block_inside_the_bat_or_header_is_refused() {
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    img.block(0, 0xFF, 1);
    img.set_bat(1, 1536);
    let msg = vhd_error(convert(&img.finish(), &StreamOptions::default()));
    assert!(
        msg.contains("BAT entry 1") && msg.contains("inside the BAT"),
        "{msg}"
    );
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    img.set_bat(0, 512);
    let msg = vhd_error(convert(&img.finish(), &StreamOptions::default()));
    assert!(
        msg.contains("footer copy") || msg.contains("dynamic header"),
        "{msg}"
    );
}

#[test]
fn overlapping_blocks_are_refused() {
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    let at = img.block(0, 0xFF, 1);
    img.set_bat(1, at + 512);
    let msg = vhd_error(convert(&img.finish(), &StreamOptions::default()));
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn a_block_past_the_end_and_a_missing_footer_are_truncations() {
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    img.block(0, 0xFF, 1);
    let mut bytes = img.finish();
    bytes.truncate(bytes.len() - 512 - 100);
    let msg = vhd_error(convert(&bytes, &StreamOptions::default()));
    assert!(msg.contains("truncated"), "{msg}");
    let mut img = Dyn::new(8192, 4096, 2, 1536);
    img.block(0, 0xFF, 1);
    let bytes = img.bytes.clone(); // no footer at the end
    let msg = vhd_error(convert(&bytes, &StreamOptions::default()));
    assert!(msg.contains("before the footer"), "{msg}");
}

#[test]
fn header_defects_are_refused_by_name() {
    let base = Dyn::new(8192, 4096, 2, 1536).finish();
    let patched = |at: usize, bytes: &[u8], fix_header: bool| {
        let mut img = base.clone();
        img[at..at + bytes.len()].copy_from_slice(bytes);
        if fix_header {
            img[548..552].fill(0);
            let sum = checksum(&img[512..1536], 36);
            img[548..552].copy_from_slice(&sum.to_be_bytes());
        }
        vhd_error(convert(&img, &StreamOptions::default()))
    };
    assert!(patched(70, b"x", false).contains("footer checksum"));
    assert!(patched(600, b"x", false).contains("dynamic header checksum"));
    assert!(patched(512 + 32, &3000u32.to_be_bytes(), true).contains("block size"));
    assert!(patched(512 + 28, &1u32.to_be_bytes(), true).contains("too small"));
    assert!(patched(512 + 28, &0x4000_0001u32.to_be_bytes(), true).contains("too large"));
    assert!(patched(512 + 16, &100u64.to_be_bytes(), true).contains("footer copy"));
    assert!(patched(512, b"cxsparsX", true).contains("cookie"));
}

#[test]
fn differencing_and_unknown_types_are_refused() {
    let mut img = footer(4, b"win ", 8192, (1, 1, 1));
    img.resize(4096, 0);
    let msg = vhd_error(convert(&img, &StreamOptions::default()));
    assert!(msg.contains("differencing"), "{msg}");
    let img = footer(5, b"win ", 8192, (1, 1, 1));
    assert!(vhd_error(convert(&img, &StreamOptions::default())).contains("disk type 5"));
}

#[test]
fn size_rule_follows_the_creator_application() {
    let size = |creator: &[u8; 4], chs: (u16, u8, u8)| {
        Footer::parse(&footer(3, creator, 60_000_000, chs))
            .unwrap()
            .disk_size()
    };
    let chs = (1000, 12, 17);
    assert_eq!(size(b"vpc ", chs), 1000 * 12 * 17 * 512);
    assert_eq!(size(b"qemu", chs), 1000 * 12 * 17 * 512);
    for creator in [
        b"win ", b"qem2", b"d2v ", b"d2v\0", b"tap\0", b"CTXS", b"abcd",
    ] {
        assert_eq!(size(creator, chs), 59_999_744, "{creator:?}");
    }
    // The maximum geometry means "use the current size" even for Virtual PC.
    assert_eq!(size(b"vpc ", (65535, 16, 255)), 59_999_744);
    let huge = footer(3, b"win ", 2041 << 30, (1, 1, 1));
    assert!(matches!(
        Footer::parse(&huge),
        Err(VhdError::DiskTooLarge { .. })
    ));
}

#[test]
fn fixed_footer_is_recognized_only_when_valid_and_sized_like_the_data() {
    let f = footer(2, b"win ", 1 << 20, (1, 1, 1));
    assert!(fixed_vhd_footer(&f, 1 << 20).unwrap().is_some());
    assert!(fixed_vhd_footer(&[0u8; 512], 1 << 20).unwrap().is_none());
    assert!(fixed_vhd_footer(&f[..100], 0).unwrap().is_none());
    assert!(matches!(
        fixed_vhd_footer(&f, 2 << 20),
        Err(VhdError::FixedSizeMismatch { .. })
    ));
    let mut bad = f.clone();
    bad[100] = 1;
    assert!(matches!(
        fixed_vhd_footer(&bad, 1 << 20),
        Err(VhdError::FooterChecksum { .. })
    ));
    let dynamic = footer(3, b"win ", 1 << 20, (1, 1, 1));
    assert!(matches!(
        fixed_vhd_footer(&dynamic, 1 << 20),
        Err(VhdError::NoFooterCopy)
    ));
}
