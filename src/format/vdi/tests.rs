//! Unit tests of the VDI reader on hand-built images: layouts qemu does not
//! write (blocks out of order, a map after the data, odd disk sizes) with an
//! exact expected result, and one header or map defect per refusal.

use bytes::Bytes;

use super::{convert_stream, VdiError};
use crate::extent::{Extent, ExtentKind};
use crate::format::engine::{ImageError, StreamError, StreamOptions};
use crate::sink::{ExtentSink, SinkError, SinkSummary};
use crate::stream::ChunkStream;

const MIB: usize = 1 << 20;

/// The guest disk as written, 0xEE where nothing was written.
#[derive(Default)]
struct DiskSink {
    disk: Vec<u8>,
}

impl ExtentSink for DiskSink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        if size <= 1 << 30 {
            self.disk = vec![0xEE; size as usize];
        }
        Ok(())
    }
    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        if self.disk.is_empty() {
            return Ok(());
        }
        let at = extent.guest_offset as usize;
        match extent.kind {
            ExtentKind::Data(b) => self.disk[at..at + b.len()].copy_from_slice(&b),
            ExtentKind::Zero(n) => self.disk[at..at + n as usize].fill(0),
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        Ok(SinkSummary::default())
    }
}

/// A VDI image: header fields, then the file built from them.
#[derive(Clone)]
struct Image {
    image_type: u32,
    header_size: u32,
    map_offset: u32,
    data_offset: u32,
    disk_size: u64,
    block_size: u32,
    blocks: u32,
    allocated: u32,
    parent: bool,
    map: Vec<u32>,
    /// Content of each data block (a byte pattern).
    block_fill: Vec<u8>,
}

impl Image {
    /// A dynamic image of `blocks` blocks with `map`, data right after the map.
    fn dynamic(map: &[u32], allocated: u32) -> Self {
        let blocks = map.len() as u32;
        let map_offset = 512;
        let data_offset = (map_offset + blocks * 4).next_multiple_of(512);
        Image {
            image_type: 1,
            header_size: 384,
            map_offset,
            data_offset,
            disk_size: blocks as u64 * MIB as u64,
            block_size: MIB as u32,
            blocks,
            allocated,
            parent: false,
            map: map.to_vec(),
            block_fill: (0..allocated).map(|i| 0x10 + i as u8).collect(),
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..40].copy_from_slice(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        h[64..68].copy_from_slice(&0xBEDA_107Fu32.to_le_bytes());
        h[68..72].copy_from_slice(&0x0001_0001u32.to_le_bytes());
        h[72..76].copy_from_slice(&self.header_size.to_le_bytes());
        h[76..80].copy_from_slice(&self.image_type.to_le_bytes());
        h[340..344].copy_from_slice(&self.map_offset.to_le_bytes());
        h[344..348].copy_from_slice(&self.data_offset.to_le_bytes());
        h[360..364].copy_from_slice(&512u32.to_le_bytes());
        h[368..376].copy_from_slice(&self.disk_size.to_le_bytes());
        h[376..380].copy_from_slice(&self.block_size.to_le_bytes());
        h[384..388].copy_from_slice(&self.blocks.to_le_bytes());
        h[388..392].copy_from_slice(&self.allocated.to_le_bytes());
        h[392..408].fill(0x5A);
        if self.parent {
            h[440..456].fill(0x77);
        }
        h
    }

    fn bytes(&self) -> Vec<u8> {
        let data_end = self.data_offset as usize + self.block_fill.len() * MIB;
        let map_end = self.map_offset as usize + self.map.len() * 4;
        let mut file = vec![0u8; data_end.max(map_end)];
        for (i, e) in self.map.iter().enumerate() {
            let at = self.map_offset as usize + i * 4;
            file[at..at + 4].copy_from_slice(&e.to_le_bytes());
        }
        for (i, fill) in self.block_fill.iter().enumerate() {
            let at = self.data_offset as usize + i * MIB;
            file[at..at + MIB].fill(*fill);
            // A marker per block, so that a block at the wrong place shows.
            file[at..at + 8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        // Last, so that a hostile layout with blocks over the header keeps it.
        file[..512].copy_from_slice(&self.header());
        file
    }

    /// The guest disk this image describes.
    fn expected(&self) -> Vec<u8> {
        let size = self.disk_size.next_multiple_of(512) as usize;
        let mut disk = vec![0u8; size];
        for (guest, e) in self.map.iter().enumerate() {
            let at = guest * MIB;
            if *e >= 0xFFFF_FFFE || at >= size {
                continue;
            }
            let end = (at + MIB).min(size);
            disk[at..end].fill(self.block_fill[*e as usize]);
            let marker = (*e as u64).to_le_bytes();
            let n = (end - at).min(8);
            disk[at..at + n].copy_from_slice(&marker[..n]);
        }
        disk
    }
}

fn read(
    bytes: Vec<u8>,
    options: &StreamOptions,
) -> Result<(DiskSink, super::ImageSummary), ImageError> {
    let mut stream = ChunkStream::from_bytes(Bytes::from(bytes));
    let mut sink = DiskSink::default();
    let summary = convert_stream(&mut stream, &mut sink, options)?;
    Ok((sink, summary))
}

fn converts_exactly(image: &Image) -> super::ImageSummary {
    let (sink, summary) = read(image.bytes(), &StreamOptions::default()).expect("converts");
    assert_eq!(sink.disk, image.expected());
    summary
}

fn refusal(bytes: Vec<u8>) -> ImageError {
    match read(bytes, &StreamOptions::default()) {
        Ok(_) => panic!("converted, but must be refused"),
        Err(e) => e,
    }
}

fn vdi_error(image: &Image) -> VdiError {
    let error = refusal(image.bytes());
    assert_eq!(error.format, "vdi");
    match error.kind {
        crate::format::ImageErrorKind::Format(e) => *e.downcast::<VdiError>().expect("a VdiError"),
        other => panic!("not a VDI refusal: {other:?}"),
    }
}

#[test]
fn blocks_in_allocation_order_land_on_their_guest_blocks() {
    let image = Image::dynamic(&[2, 0xFFFF_FFFF, 0, 0xFFFF_FFFE, 1], 3);
    let summary = converts_exactly(&image);
    assert_eq!(summary.format, "vdi");
    assert_eq!(summary.subformat.as_deref(), Some("dynamic"));
    assert_eq!(summary.virtual_size, 5 * MIB as u64);
    assert_eq!(summary.allocated_bytes, Some(3 * MIB as u64));
}

#[test]
fn a_static_image_is_read_through_its_identity_map() {
    let mut image = Image::dynamic(&[0, 1, 2], 3);
    image.image_type = 2;
    let summary = converts_exactly(&image);
    assert_eq!(summary.subformat.as_deref(), Some("static"));
}

#[test]
fn an_odd_disk_size_is_rounded_up_to_a_sector_and_the_tail_ignored() {
    let mut image = Image::dynamic(&[1, 0], 2);
    image.disk_size = MIB as u64 + 1000;
    let summary = converts_exactly(&image);
    assert_eq!(summary.virtual_size, MIB as u64 + 1024);
}

#[test]
fn a_block_map_after_the_data_is_kept_until_the_map_arrives() {
    let mut image = Image::dynamic(&[1, 0xFFFF_FFFF, 0], 2);
    image.data_offset = 512;
    image.map_offset = 512 + 2 * MIB as u32;
    let summary = converts_exactly(&image);
    assert!(summary.retained_peak >= 2 * MIB as u64);
}

#[test]
fn an_empty_image_converts_to_nothing() {
    let image = Image::dynamic(&[], 0);
    let summary = converts_exactly(&image);
    assert_eq!(summary.virtual_size, 0);
}

/// A defective image, and what its refusal must be.
type Case = (&'static str, Image, fn(&VdiError) -> bool);

#[test]
fn header_defects_are_refused_naming_the_field() {
    let base = Image::dynamic(&[0, 0xFFFF_FFFF], 1);
    let cases: Vec<Case> = vec![
        (
            "differencing",
            Image {
                image_type: 4,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    VdiError::DependentImage {
                        kind: "differencing",
                        ..
                    }
                )
            },
        ),
        (
            "undo",
            Image {
                image_type: 3,
                ..base.clone()
            },
            |e| matches!(e, VdiError::DependentImage { kind: "undo", .. }),
        ),
        (
            "unknown type",
            Image {
                image_type: 9,
                ..base.clone()
            },
            |e| matches!(e, VdiError::UnknownImageType(9)),
        ),
        (
            "parent",
            Image {
                parent: true,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    VdiError::HasParent {
                        which: "parent",
                        ..
                    }
                )
            },
        ),
        (
            "block size",
            Image {
                block_size: 2 * MIB as u32,
                ..base.clone()
            },
            |e| matches!(e, VdiError::UnsupportedBlockSize(_)),
        ),
        (
            "header size",
            Image {
                header_size: 16,
                ..base.clone()
            },
            |e| matches!(e, VdiError::HeaderSizeTooSmall(16)),
        ),
        (
            "too many blocks",
            Image {
                blocks: 0x2000_0000,
                ..base.clone()
            },
            |e| matches!(e, VdiError::TooManyBlocks { .. }),
        ),
        (
            "disk beyond map",
            Image {
                disk_size: 3 * MIB as u64,
                ..base.clone()
            },
            |e| matches!(e, VdiError::DiskSizeBeyondMap { .. }),
        ),
        (
            "disk too large",
            Image {
                disk_size: u64::MAX - 4,
                ..base.clone()
            },
            |e| matches!(e, VdiError::DiskSizeTooLarge { .. }),
        ),
        (
            "allocated beyond map",
            Image {
                allocated: 3,
                ..base.clone()
            },
            |e| matches!(e, VdiError::AllocatedBeyondMap { .. }),
        ),
        (
            "unaligned map",
            Image {
                map_offset: 513,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    VdiError::Unaligned {
                        what: "block map",
                        ..
                    }
                )
            },
        ),
        (
            "unaligned data",
            Image {
                data_offset: 1025,
                ..base.clone()
            },
            |e| matches!(e, VdiError::Unaligned { what: "data", .. }),
        ),
        (
            "map in header",
            Image {
                map_offset: 0,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    VdiError::OverlapsHeader {
                        what: "block map",
                        ..
                    }
                )
            },
        ),
        (
            "data in header",
            Image {
                data_offset: 0,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    VdiError::OverlapsHeader {
                        what: "data area",
                        ..
                    }
                )
            },
        ),
        (
            "map in data",
            Image {
                map_offset: 1536,
                ..base.clone()
            },
            |e| matches!(e, VdiError::MapOverlapsData { .. }),
        ),
    ];
    for (what, image, expected) in cases {
        let error = vdi_error(&image);
        assert!(expected(&error), "{what}: refused with {error}");
    }
}

#[test]
fn a_map_entry_past_the_allocated_blocks_is_refused() {
    let image = Image::dynamic(&[0, 1], 1);
    let error = vdi_error(&Image {
        block_fill: vec![1, 2],
        ..image
    });
    assert!(
        matches!(
            error,
            VdiError::BlockBeyondAllocated {
                index: 1,
                block: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn two_guest_blocks_sharing_a_data_block_are_refused() {
    let image = Image::dynamic(&[0, 1, 0], 2);
    let error = vdi_error(&image);
    assert!(
        matches!(
            error,
            VdiError::SharedBlock {
                first: 0,
                second: 2,
                block: 0
            }
        ),
        "{error}"
    );
}

#[test]
fn a_file_ending_inside_an_allocated_block_is_truncated_not_zeroes() {
    let image = Image::dynamic(&[0, 1], 2);
    let mut bytes = image.bytes();
    bytes.truncate(bytes.len() - 1000);
    let error = refusal(bytes);
    assert!(
        matches!(error.as_stream(), Some(StreamError::Truncated { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn a_file_ending_inside_the_header_or_map_is_refused() {
    let image = Image::dynamic(&[0, 1], 2);
    let bytes = image.bytes();
    let error = refusal(bytes[..300].to_vec());
    assert!(error.to_string().contains("header truncated"), "{error}");
    let error = refusal(bytes[..514].to_vec());
    assert!(error.to_string().contains("block map"), "{error}");
}

#[test]
fn a_block_map_larger_than_the_memory_budget_is_refused_before_any_allocation() {
    // 16 Mi entries (64 MiB of map) claimed by a header in a file of one sector.
    let mut image = Image::dynamic(&[], 0);
    image.blocks = 16 << 20;
    image.disk_size = (16u64 << 20) * MIB as u64;
    image.data_offset = 512 + (64 << 20);
    let options = StreamOptions {
        memory_budget: 1 << 20,
        ..StreamOptions::default()
    };
    let error = read(image.bytes(), &options).err().expect("refused");
    assert!(
        matches!(error.as_stream(), Some(StreamError::MemoryBudget { .. })),
        "{error}"
    );
}
