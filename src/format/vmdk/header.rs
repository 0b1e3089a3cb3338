//! The sparse extent headers: hosted `KDMV` (512 bytes, also the footer of a
//! VMware stream) and ESX `COWD` (`formats-notes.md` 1.2-1.4). [`Header`] holds only
//! validated values, in bytes where the file says sectors, and the geometry derived
//! from them (grain directory and grain table sizes) with checked arithmetic.

use super::error::VmdkError;

/// "KDMV", little-endian 0x564d444b.
pub const KDMV_MAGIC: [u8; 4] = *b"KDMV";
/// "COWD".
pub const COWD_MAGIC: [u8; 4] = *b"COWD";
/// Bytes of a sector, the unit of every VMDK offset.
pub const SECTOR: u64 = 512;
/// Bytes of a `KDMV` header (and of a footer).
pub const HEADER_LEN: usize = 512;
/// gdOffset meaning "the grain directory is at the end; the footer has it".
const GD_AT_END: u64 = u64::MAX;
/// Most grain directory entries qemu accepts ("L1 size too big").
pub const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Largest grain qemu accepts, in sectors ("Invalid granularity").
const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Largest compressed grain read, in sectors: a grain is inflated in memory.
const MAX_COMPRESSED_GRAIN_SECTORS: u64 = 2048;
/// Capacity bound, in sectors: the disk size in bytes stays far from u64 overflow.
const MAX_CAPACITY_SECTORS: u64 = 1 << 53;
/// The embedded descriptor must start in the first 2 MiB (it is read before
/// streaming starts, so its place bounds what is held in memory).
const MAX_DESCRIPTOR_SECTOR: u64 = 4096;
/// Grain table entries in a COWD grain table.
const COWD_GTES_PER_GT: u64 = 4096;
/// Bytes before a COWD file's tables: the header and its descriptor text.
const COWD_HEADER_AREA: u64 = 2048;

const FLAG_NEWLINE_TEST: u32 = 1 << 0;
const FLAG_REDUNDANT_GD: u32 = 1 << 1;
const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_DEFLATE: u16 = 1;

/// Which kind of sparse extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// `KDMV`, grains stored plainly.
    MonolithicSparse,
    /// `KDMV`, deflated grains behind markers.
    StreamOptimized,
    /// ESX `COWD`.
    Cowd,
}

impl Subformat {
    /// The name `info` shows.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::Cowd => "COWD",
        }
    }
}

/// A validated sparse extent header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The kind of extent.
    pub subformat: Subformat,
    /// Header version (COWD: its own version field).
    pub version: u32,
    /// Flags field.
    pub flags: u32,
    /// Guest size in bytes.
    pub capacity: u64,
    /// Bytes per grain.
    pub grain_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u64,
    /// Embedded descriptor: byte offset and length, if any.
    pub descriptor: Option<(u64, u64)>,
    /// Redundant grain directory, byte offset, if in use.
    pub rgd_offset: Option<u64>,
    /// Grain directory, byte offset; `None` when it is at the end (the footer
    /// says where).
    pub gd_offset: Option<u64>,
    /// Grain directory entries present in the file (COWD says; `KDMV`: as many as
    /// the capacity needs).
    pub gd_entries_in_file: u64,
    /// Grains start at or after this byte (overHead; COWD: its header area).
    pub overhead: u64,
}

impl Header {
    /// Parses and validates a `KDMV` header (or a footer) from its 512 bytes.
    pub fn parse_kdmv(b: &[u8]) -> Result<Header, VmdkError> {
        if b.len() < HEADER_LEN {
            return Err(VmdkError::HeaderTruncated { len: b.len() });
        }
        if b[0..4] != KDMV_MAGIC {
            return Err(VmdkError::BadMagic);
        }
        let version = u32_at(b, 4);
        if !(1..=3).contains(&version) {
            return Err(VmdkError::UnsupportedVersion(version));
        }
        let flags = u32_at(b, 8);
        let algorithm = u16::from_le_bytes([b[77], b[78]]);
        let compressed = flags & FLAG_COMPRESSED != 0;
        let markers = flags & FLAG_MARKERS != 0;
        let subformat = match (compressed, markers, algorithm) {
            (false, false, 0) => Subformat::MonolithicSparse,
            (true, true, COMPRESS_DEFLATE) => Subformat::StreamOptimized,
            _ => return Err(VmdkError::CompressionMismatch { flags, algorithm }),
        };
        let capacity_sectors = u64_at(b, 12);
        let grain_sectors = u64_at(b, 20);
        let max_grain = match subformat {
            Subformat::StreamOptimized => MAX_COMPRESSED_GRAIN_SECTORS,
            _ => MAX_GRAIN_SECTORS,
        };
        check_grain(grain_sectors, max_grain)?;
        let gtes_per_gt = u64::from(u32_at(b, 44));
        if !(1..=512).contains(&gtes_per_gt) {
            return Err(VmdkError::GtSize(gtes_per_gt));
        }
        // The geometry first: a header broken in several fields is named for it, as
        // qemu names it ("L1 size too big").
        let capacity = capacity_bytes(capacity_sectors, true)?;
        let gd_entries = capacity.div_ceil(gtes_per_gt * grain_sectors * SECTOR);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(VmdkError::GdTooLarge {
                entries: gd_entries,
                limit: MAX_GD_ENTRIES,
            });
        }
        let descriptor_sector = u64_at(b, 28);
        let descriptor_sectors = u64_at(b, 36);
        // Checked after the geometry, so that a header broken in both is named for
        // its geometry, as qemu names it.
        let descriptor = match (descriptor_sector, descriptor_sectors) {
            (0, _) | (_, 0) => Ok(None),
            (s, n) => {
                let too_long = n
                    .checked_mul(SECTOR)
                    .is_none_or(|len| len > super::descriptor::MAX_DESCRIPTOR_BYTES as u64);
                if too_long || s > MAX_DESCRIPTOR_SECTOR {
                    Err(VmdkError::DescriptorRange {
                        offset: s,
                        sectors: n,
                        reason: "larger than 1 MiB or not inside the first 2 MiB",
                    })
                } else {
                    Ok(Some((s * SECTOR, n * SECTOR)))
                }
            }
        };
        let rgd_offset = match flags & FLAG_REDUNDANT_GD {
            0 => None,
            _ => sectors_to_bytes(u64_at(b, 48)),
        };
        let gd_sector = u64_at(b, 56);
        let gd_offset = if gd_sector == GD_AT_END {
            None
        } else {
            Some(sectors_to_bytes(gd_sector).ok_or(VmdkError::GdOffset {
                sector: gd_sector,
                reason: "beyond any file size",
            })?)
        };
        let overhead_sectors = u64_at(b, 64);
        // An overHead past any file is refused at the end as a truncation.
        let overhead = overhead_sectors.saturating_mul(SECTOR);
        let header = Header {
            subformat,
            version,
            flags,
            capacity,
            grain_size: grain_sectors * SECTOR,
            gtes_per_gt,
            descriptor: None,
            rgd_offset,
            gd_offset,
            gd_entries_in_file: 0,
            overhead,
        };
        let needed = header.gd_entries_needed()?;
        let descriptor = descriptor?;
        // Last, so that a header broken in its geometry is named for that.
        if flags & FLAG_NEWLINE_TEST != 0 && b[73..77] != *b"\n \r\n" {
            return Err(VmdkError::NewlineBytes);
        }
        Ok(Header {
            gd_entries_in_file: needed,
            descriptor,
            ..header
        })
    }

    /// Parses and validates a `COWD` header.
    pub fn parse_cowd(b: &[u8]) -> Result<Header, VmdkError> {
        if b.len() < HEADER_LEN {
            return Err(VmdkError::HeaderTruncated { len: b.len() });
        }
        if b[0..4] != COWD_MAGIC {
            return Err(VmdkError::BadMagic);
        }
        let version = u32_at(b, 4);
        if version != 1 {
            return Err(VmdkError::UnsupportedVersion(version));
        }
        let flags = u32_at(b, 8);
        let capacity_sectors = u64::from(u32_at(b, 12));
        let grain_sectors = u64::from(u32_at(b, 16));
        check_grain(grain_sectors, MAX_GRAIN_SECTORS)?;
        let gd_sector = u64::from(u32_at(b, 20));
        let gd_entries_in_file = u64::from(u32_at(b, 24));
        let header = Header {
            subformat: Subformat::Cowd,
            version,
            flags,
            capacity: capacity_bytes(capacity_sectors, false)?,
            grain_size: grain_sectors * SECTOR,
            gtes_per_gt: COWD_GTES_PER_GT,
            descriptor: Some((SECTOR, COWD_HEADER_AREA - SECTOR)),
            rgd_offset: None,
            gd_offset: Some(gd_sector * SECTOR),
            gd_entries_in_file,
            overhead: COWD_HEADER_AREA,
        };
        let needed = header.gd_entries_needed()?;
        if gd_entries_in_file > MAX_GD_ENTRIES {
            return Err(VmdkError::GdTooLarge {
                entries: gd_entries_in_file,
                limit: MAX_GD_ENTRIES,
            });
        }
        Ok(Header {
            gd_entries_in_file: gd_entries_in_file.min(needed),
            ..header
        })
    }

    /// Guest bytes one grain table covers.
    pub fn gt_coverage(&self) -> u64 {
        self.gtes_per_gt * self.grain_size
    }

    /// Bytes of one grain table.
    pub fn gt_bytes(&self) -> u64 {
        self.gtes_per_gt * 4
    }

    /// Bytes of the grain directory entries read.
    pub fn gd_bytes(&self) -> u64 {
        self.gd_entries_in_file * 4
    }

    /// Grain directory entries the capacity needs, refused above qemu's limit.
    pub fn gd_entries_needed(&self) -> Result<u64, VmdkError> {
        let entries = self.capacity.div_ceil(self.gt_coverage());
        if entries > MAX_GD_ENTRIES {
            return Err(VmdkError::GdTooLarge {
                entries,
                limit: MAX_GD_ENTRIES,
            });
        }
        Ok(entries)
    }

    /// Grain table entry 1 means "zeroed grain".
    pub fn zeroed_grain(&self) -> bool {
        self.subformat != Subformat::Cowd && self.flags & FLAG_ZEROED_GRAIN != 0
    }

    /// The redundant grain directory and its tables are in use.
    pub fn has_redundant_gd(&self) -> bool {
        self.rgd_offset.is_some()
    }
}

fn check_grain(grain_sectors: u64, max_sectors: u64) -> Result<(), VmdkError> {
    if grain_sectors == 0 || !grain_sectors.is_power_of_two() || grain_sectors > max_sectors {
        return Err(VmdkError::InvalidGranularity {
            grain_sectors,
            max_sectors,
        });
    }
    Ok(())
}

fn capacity_bytes(sectors: u64, kdmv: bool) -> Result<u64, VmdkError> {
    if sectors == 0 && !kdmv {
        return Err(VmdkError::Capacity {
            sectors,
            reason: "the disk is empty",
        });
    }
    if sectors > MAX_CAPACITY_SECTORS {
        return Err(VmdkError::Capacity {
            sectors,
            reason: "larger than 4 EiB",
        });
    }
    Ok(sectors * SECTOR)
}

fn sectors_to_bytes(sectors: u64) -> Option<u64> {
    sectors
        .checked_mul(SECTOR)
        .filter(|&b| b <= MAX_CAPACITY_SECTORS * SECTOR)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
