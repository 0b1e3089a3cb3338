//! The VDI header (the first 512 bytes, little-endian), validated before anything
//! else is trusted: signature and version, the image type (undo and differencing
//! images are refused, as are parent and link UUIDs), sector and block sizes, the
//! CVE-2014-0144 bounds on `blocks_in_image` and the disk size, and where the
//! block map and the data area lie (aligned, apart from the header and from each
//! other). Layout: `formats-notes.md` section 4.

use super::error::VdiError;

/// Bytes of the header sector read before anything else.
pub const HEADER_SECTOR: usize = 512;
/// The signature at offset 64 (0xBEDA107F, little-endian).
pub const SIGNATURE: u32 = 0xBEDA_107F;
const SIGNATURE_OFFSET: usize = 64;
/// Version 1.1, the only one read.
const VERSION_1_1: u32 = 0x0001_0001;
/// The "pre-header" (text and signature and version) in front of the header
/// proper; the header size field counts from here.
const PRE_HEADER: u64 = 72;
/// The smallest header (VirtualBox 1.1 without geometry; qemu writes this one).
const MIN_HEADER_SIZE: u32 = 384;
/// The only sector size read.
pub const SECTOR_SIZE: u32 = 512;
/// The only block size read (qemu accepts nothing else).
pub const BLOCK_SIZE: u32 = 1 << 20;
/// qemu's bound on block map entries (the map then stays below 2 GiB).
pub const BLOCKS_IN_IMAGE_MAX: u32 = 0x1fff_ff80;
/// qemu's bound on the disk size.
pub const DISK_SIZE_MAX: u64 = BLOCKS_IN_IMAGE_MAX as u64 * BLOCK_SIZE as u64;

/// Block map entry of a block that is not allocated (zeroes, or the parent's
/// data in a differencing image).
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Block map entry of a discarded block (zeroes).
pub const DISCARDED: u32 = 0xFFFF_FFFE;

/// How the image allocates its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// Type 1 ("normal"): blocks allocated as they are written.
    Dynamic,
    /// Type 2 ("fixed"): every block allocated at creation.
    Static,
}

impl ImageType {
    /// The sub-format name `info` shows.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Dynamic => "dynamic",
            ImageType::Static => "static",
        }
    }
}

/// A validated VDI header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Dynamic or static.
    pub image_type: ImageType,
    /// The header size field (bytes after the 72-byte pre-header).
    pub header_size: u32,
    /// Host offset of the block map.
    pub map_offset: u64,
    /// Host offset of data block 0.
    pub data_offset: u64,
    /// Size of the virtual disk: the disk size field rounded up to 512 bytes,
    /// as qemu does (VirtualBox's convertfromraw can write odd sizes).
    pub virtual_size: u64,
    /// Block map entries.
    pub blocks_in_image: u32,
    /// Data blocks in the file.
    pub blocks_allocated: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn uuid_text(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Header {
    /// Parses and validates the first [`HEADER_SECTOR`] bytes of an image.
    pub fn parse(b: &[u8]) -> Result<Header, VdiError> {
        if b.len() < HEADER_SECTOR {
            return Err(VdiError::HeaderTruncated { len: b.len() });
        }
        let signature = u32_at(b, SIGNATURE_OFFSET);
        if signature != SIGNATURE {
            return Err(VdiError::BadSignature(signature));
        }
        let version = u32_at(b, 68);
        if version != VERSION_1_1 {
            return Err(VdiError::UnsupportedVersion {
                major: (version >> 16) as u16,
                minor: version as u16,
            });
        }
        let header_size = u32_at(b, 72);
        if header_size < MIN_HEADER_SIZE {
            return Err(VdiError::HeaderSizeTooSmall(header_size));
        }
        let image_type = match u32_at(b, 76) {
            1 => ImageType::Dynamic,
            2 => ImageType::Static,
            3 => {
                return Err(VdiError::DependentImage {
                    kind: "undo",
                    image_type: 3,
                })
            }
            4 => {
                return Err(VdiError::DependentImage {
                    kind: "differencing",
                    image_type: 4,
                })
            }
            other => return Err(VdiError::UnknownImageType(other)),
        };
        for (which, at) in [("link", 424), ("parent", 440)] {
            let uuid = &b[at..at + 16];
            if uuid.iter().any(|&x| x != 0) {
                return Err(VdiError::HasParent {
                    which,
                    uuid: uuid_text(uuid),
                });
            }
        }
        let map_offset = u32_at(b, 340);
        let data_offset = u32_at(b, 344);
        for (what, offset) in [("block map", map_offset), ("data", data_offset)] {
            if offset % SECTOR_SIZE != 0 {
                return Err(VdiError::Unaligned { what, offset });
            }
        }
        let sector_size = u32_at(b, 360);
        if sector_size != SECTOR_SIZE {
            return Err(VdiError::UnsupportedSectorSize(sector_size));
        }
        let block_size = u32_at(b, 376);
        if block_size != BLOCK_SIZE {
            return Err(VdiError::UnsupportedBlockSize(block_size));
        }
        let block_extra = u32_at(b, 380);
        if block_extra != 0 {
            return Err(VdiError::BlockExtra(block_extra));
        }
        let blocks_in_image = u32_at(b, 384);
        if blocks_in_image > BLOCKS_IN_IMAGE_MAX {
            return Err(VdiError::TooManyBlocks {
                blocks: blocks_in_image,
                limit: BLOCKS_IN_IMAGE_MAX,
            });
        }
        let disk_size = u64_at(b, 368);
        if disk_size > DISK_SIZE_MAX {
            return Err(VdiError::DiskSizeTooLarge {
                disk_size,
                limit: DISK_SIZE_MAX,
            });
        }
        let virtual_size = disk_size.next_multiple_of(SECTOR_SIZE as u64);
        if virtual_size > blocks_in_image as u64 * BLOCK_SIZE as u64 {
            return Err(VdiError::DiskSizeBeyondMap {
                disk_size: virtual_size,
                blocks: blocks_in_image,
                block_size,
            });
        }
        let blocks_allocated = u32_at(b, 388);
        if blocks_allocated > blocks_in_image {
            return Err(VdiError::AllocatedBeyondMap {
                allocated: blocks_allocated,
                blocks: blocks_in_image,
            });
        }
        let header = Header {
            image_type,
            header_size,
            map_offset: map_offset as u64,
            data_offset: data_offset as u64,
            virtual_size,
            blocks_in_image,
            blocks_allocated,
        };
        header.check_layout()?;
        Ok(header)
    }

    /// End of the header: the pre-header plus the header size, at least the
    /// header sector.
    pub fn header_end(&self) -> u64 {
        (PRE_HEADER + self.header_size as u64).max(HEADER_SECTOR as u64)
    }

    /// Bytes of the block map.
    pub fn map_len(&self) -> u64 {
        self.blocks_in_image as u64 * 4
    }

    /// End of the data area: past the last allocated block.
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.blocks_allocated as u64 * BLOCK_SIZE as u64
    }

    /// Host offset of data block `block`.
    pub fn block_offset(&self, block: u32) -> u64 {
        self.data_offset + block as u64 * BLOCK_SIZE as u64
    }

    /// The header, the block map and the data area do not overlap. A map after
    /// the data is legal (the engine keeps the data until the map arrives).
    fn check_layout(&self) -> Result<(), VdiError> {
        let header_end = self.header_end();
        let map_end = self.map_offset + self.map_len();
        if self.map_offset < header_end && self.map_len() > 0 {
            return Err(VdiError::OverlapsHeader {
                what: "block map",
                offset: self.map_offset,
                header_end,
            });
        }
        if self.data_offset < header_end && self.blocks_allocated > 0 {
            return Err(VdiError::OverlapsHeader {
                what: "data area",
                offset: self.data_offset,
                header_end,
            });
        }
        let data_end = self.data_end();
        let both = self.map_len() > 0 && self.blocks_allocated > 0;
        if both && self.map_offset < data_end && self.data_offset < map_end {
            return Err(VdiError::MapOverlapsData {
                map_start: self.map_offset,
                map_end,
                data_start: self.data_offset,
                data_end,
            });
        }
        Ok(())
    }
}
