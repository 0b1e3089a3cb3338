//! The VHD footer (512 bytes, big-endian; at the end of every VHD and copied at
//! offset 0 in dynamic ones) and the dynamic disk header it points to: parsed and
//! validated before anything they say is used. Also qemu's rule for how big the
//! disk is, which depends on the creator application (formats-notes 2.5).

use super::error::VhdError;

/// Bytes of a footer.
pub const FOOTER_LEN: usize = 512;
/// Bytes of the dynamic disk header.
pub const DYNAMIC_HEADER_LEN: u64 = 1024;
/// The footer's cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The dynamic header's cookie.
const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// Largest disk qemu opens: 2040 GiB (0xff000000 sectors).
pub const MAX_DISK_SIZE: u64 = 0xff00_0000 * 512;
/// The CHS geometry that means "too big for CHS: use the current size".
const MAX_GEOMETRY: Geometry = Geometry {
    cylinders: 65535,
    heads: 16,
    sectors_per_track: 255,
};
/// Largest block size read (every producer writes 2 MiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// qemu's bound on BAT entries ("Max Table Entries too large"): INT_MAX / 4.
pub const MAX_TABLE_ENTRIES: u32 = (i32::MAX / 4) as u32;

/// The disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// 2: raw data followed by the footer.
    Fixed,
    /// 3: footer copy, dynamic header, BAT, blocks.
    Dynamic,
}

impl DiskType {
    /// The sub-format name `info` shows.
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
        }
    }
}

/// Cylinders, heads, sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Bytes the geometry addresses.
    pub fn bytes(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track) * 512
    }
}

/// Where the disk size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    /// cylinders x heads x sectors (Virtual PC and qemu without force_size).
    Geometry,
    /// The footer's current size field.
    CurrentSize,
}

impl SizeSource {
    /// Name for `info`.
    pub fn name(self) -> &'static str {
        match self {
            SizeSource::Geometry => "geometry",
            SizeSource::CurrentSize => "current size",
        }
    }
}

/// A validated footer.
#[derive(Debug, Clone)]
pub struct Footer {
    /// Offset of the dynamic header (dynamic disks).
    pub data_offset: u64,
    /// Creator application, four bytes.
    pub creator: [u8; 4],
    /// The current size field.
    pub current_size: u64,
    /// The geometry field.
    pub geometry: Geometry,
    /// The disk type.
    pub disk_type: DiskType,
    /// The 512 bytes as read.
    pub raw: [u8; FOOTER_LEN],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One's complement of the byte sum, with the checksum field at `at` taken as zero.
pub fn checksum(bytes: &[u8], at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |sum, (_, b)| sum.wrapping_add(u32::from(*b)));
    !sum
}

/// True when `bytes` start with the footer cookie.
pub fn has_footer_cookie(bytes: &[u8]) -> bool {
    bytes.starts_with(FOOTER_COOKIE)
}

impl Footer {
    /// Parses and checks a footer: cookie, checksum, disk type (differencing is
    /// refused), size.
    pub fn parse(bytes: &[u8]) -> Result<Self, VhdError> {
        let raw: [u8; FOOTER_LEN] = bytes
            .get(..FOOTER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(VhdError::FooterTruncated { len: bytes.len() })?;
        if !has_footer_cookie(&raw) {
            return Err(VhdError::BadFooterCookie);
        }
        let stored = be32(&raw, 64);
        let computed = checksum(&raw, 64);
        if stored != computed {
            return Err(VhdError::FooterChecksum { stored, computed });
        }
        let version = be32(&raw, 12);
        if version >> 16 != 1 {
            return Err(VhdError::UnsupportedVersion(version));
        }
        let disk_type = match be32(&raw, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => return Err(VhdError::Differencing),
            other => return Err(VhdError::UnknownDiskType(other)),
        };
        let footer = Footer {
            data_offset: be64(&raw, 16),
            creator: raw[28..32].try_into().expect("4 bytes"),
            current_size: be64(&raw, 48),
            geometry: Geometry {
                cylinders: u16::from_be_bytes([raw[56], raw[57]]),
                heads: raw[58],
                sectors_per_track: raw[59],
            },
            disk_type,
            raw,
        };
        let size = footer.disk_size();
        if size > MAX_DISK_SIZE {
            return Err(VhdError::DiskTooLarge { size });
        }
        Ok(footer)
    }

    /// Which field sizes the disk, as qemu 10 decides: the geometry only for
    /// Virtual PC (`vpc `) and qemu (`qemu`) images whose geometry is not the
    /// maximum; the current size for every other creator.
    pub fn size_source(&self) -> SizeSource {
        let chs_creator = &self.creator == b"vpc " || &self.creator == b"qemu";
        if chs_creator && self.geometry != MAX_GEOMETRY {
            SizeSource::Geometry
        } else {
            SizeSource::CurrentSize
        }
    }

    /// The disk size in bytes, a multiple of 512.
    pub fn disk_size(&self) -> u64 {
        match self.size_source() {
            SizeSource::Geometry => self.geometry.bytes(),
            SizeSource::CurrentSize => self.current_size / 512 * 512,
        }
    }

    /// The creator application, printable.
    pub fn creator_name(&self) -> String {
        self.creator
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect::<String>()
    }
}

/// A validated dynamic disk header.
#[derive(Debug, Clone)]
pub struct DynamicHeader {
    /// Byte offset of the BAT.
    pub table_offset: u64,
    /// BAT entries.
    pub max_table_entries: u32,
    /// Block size, a power of two from 512 B to 256 MiB.
    pub block_size: u32,
}

impl DynamicHeader {
    /// Parses and checks the header against the disk size `disk_size`.
    pub fn parse(bytes: &[u8], disk_size: u64) -> Result<Self, VhdError> {
        if bytes.len() < DYNAMIC_HEADER_LEN as usize {
            return Err(VhdError::HeaderTruncated);
        }
        if !bytes.starts_with(DYNAMIC_COOKIE) {
            return Err(VhdError::BadHeaderCookie);
        }
        let stored = be32(bytes, 36);
        let computed = checksum(&bytes[..DYNAMIC_HEADER_LEN as usize], 36);
        if stored != computed {
            return Err(VhdError::HeaderChecksum { stored, computed });
        }
        let block_size = be32(bytes, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(VhdError::BadBlockSize(block_size));
        }
        let max_table_entries = be32(bytes, 28);
        if max_table_entries > MAX_TABLE_ENTRIES {
            return Err(VhdError::TableTooLarge(max_table_entries));
        }
        if u64::from(max_table_entries) * u64::from(block_size) < disk_size {
            return Err(VhdError::TableTooSmall {
                entries: max_table_entries,
                block_size,
                disk_size,
            });
        }
        let table_offset = be64(bytes, 16);
        Ok(DynamicHeader {
            table_offset,
            max_table_entries,
            block_size,
        })
    }

    /// Bytes of a block's sector bitmap: one bit per sector, rounded up to 512,
    /// computed as qemu does (so zero for blocks below 4 KiB, whose bitmap qemu
    /// does not skip; such blocks are read whole, as qemu reads them).
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / 512 / 8).next_multiple_of(512)
    }

    /// Bytes the BAT occupies in the file (every entry, rounded up to a sector).
    pub fn table_bytes(&self) -> u64 {
        (u64::from(self.max_table_entries) * 4).next_multiple_of(512)
    }
}
