//! The VHDX header section (the first 1 MiB), validated before anything else is
//! trusted: the file type identifier, the two headers (CRC-32C checked; the current
//! one chosen as qemu chooses it), and region table 1, which places the BAT, the
//! metadata region and any other region.
//!
//! qemu reads region table 1 only; so does this reader (table 2 is known garbage).
//! Every region must sit on 1 MiB boundaries past the header section and overlap
//! neither another region nor the log.

use super::checksum::checksum_matches;
use super::error::VhdxError;
use super::guid::{self, Guid};

/// One mebibyte: the unit regions, the log and blocks are placed in.
pub const MIB: u64 = 1 << 20;
/// Header 1's offset.
pub const HEADER_1: usize = 64 << 10;
/// Header 2's offset.
pub const HEADER_2: usize = 128 << 10;
/// Bytes a header's checksum covers.
pub const HEADER_LEN: usize = 4096;
/// Region table 1's offset.
pub const REGION_TABLE_1: usize = 192 << 10;
/// Bytes a region table's checksum covers.
pub const REGION_TABLE_LEN: usize = 64 << 10;
/// Bytes read before the engine starts: up to the end of region table 2.
pub const HEAD_LEN: usize = 320 << 10;
/// End of the header section; nothing but headers lives before it.
pub const HEADER_SECTION_END: u64 = MIB;
/// Most entries a region table may hold.
const MAX_REGIONS: u32 = 2047;

/// The fields of the current header this reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which copy (1 or 2) is current.
    pub copy: u8,
    /// Sequence number.
    pub sequence: u64,
    /// Non-zero when the log may hold entries to replay.
    pub log_guid: Guid,
    /// Log length in bytes.
    pub log_length: u32,
    /// Log offset in the file.
    pub log_offset: u64,
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What the region is.
    pub guid: Guid,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// The validated header section.
#[derive(Debug, Clone)]
pub struct HeaderSection {
    /// The creator string of the file type identifier (printable characters only).
    pub creator: String,
    /// The current header.
    pub header: Header,
    /// The block allocation table region.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// Regions this reader does not read (not required): still metadata to blocks.
    pub others: Vec<Region>,
}

impl HeaderSection {
    /// Parses the first [`HEAD_LEN`] bytes of an image.
    pub fn parse(bytes: &[u8]) -> Result<Self, VhdxError> {
        if bytes.len() < HEAD_LEN {
            return Err(VhdxError::HeaderTruncated {
                len: bytes.len(),
                needed: HEAD_LEN,
            });
        }
        if &bytes[..8] != b"vhdxfile" {
            return Err(VhdxError::BadSignature);
        }
        let header = choose_header(
            &bytes[HEADER_1..HEADER_1 + HEADER_LEN],
            &bytes[HEADER_2..HEADER_2 + HEADER_LEN],
        )?;
        check_log_placement(&header)?;
        let (bat, metadata, others) = parse_region_table(
            &bytes[REGION_TABLE_1..REGION_TABLE_1 + REGION_TABLE_LEN],
            &header,
        )?;
        Ok(HeaderSection {
            creator: creator(&bytes[8..8 + 512]),
            header,
            bat,
            metadata,
            others,
        })
    }
}

/// The creator: UTF-16LE up to the first NUL, control characters dropped.
fn creator(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a header copy cannot be used, or its sequence number.
fn header_sequence(raw: &[u8]) -> Result<u64, &'static str> {
    if !checksum_matches(raw, 4) {
        return Err("has a bad checksum");
    }
    if &raw[..4] != b"head" {
        return Err("has no \"head\" signature");
    }
    if u16_at(raw, 66) != 1 {
        return Err("has a version other than 1");
    }
    Ok(u64_at(raw, 8))
}

/// The current header as qemu picks it: the only valid one, else the one with the
/// higher sequence number; equal numbers only when both copies are identical.
fn choose_header(first: &[u8], second: &[u8]) -> Result<Header, VhdxError> {
    let (raw, copy) = match (header_sequence(first), header_sequence(second)) {
        (Err(first), Err(second)) => return Err(VhdxError::NoValidHeader { first, second }),
        (Ok(_), Err(_)) => (first, 1),
        (Err(_), Ok(_)) => (second, 2),
        (Ok(a), Ok(b)) if a > b => (first, 1),
        (Ok(a), Ok(b)) if b > a => (second, 2),
        (Ok(sequence), Ok(_)) => {
            if first != second {
                return Err(VhdxError::AmbiguousHeaders { sequence });
            }
            (first, 1)
        }
    };
    let log_version = u16_at(raw, 64);
    if log_version != 0 {
        return Err(VhdxError::LogVersion(log_version));
    }
    Ok(Header {
        copy,
        sequence: u64_at(raw, 8),
        log_guid: Guid::read(&raw[48..]),
        log_length: u32_at(raw, 68),
        log_offset: u64_at(raw, 72),
    })
}

/// The log must start on a 1 MiB boundary past the header section (always, as qemu
/// checks); a log that may be replayed must also be a whole number of MiB long.
fn check_log_placement(h: &Header) -> Result<(), VhdxError> {
    let bad = |reason| VhdxError::BadLogPlacement {
        offset: h.log_offset,
        length: h.log_length,
        reason,
    };
    if h.log_offset < HEADER_SECTION_END || h.log_offset % MIB != 0 {
        return Err(bad(
            "the offset must be a multiple of 1 MiB past the header section",
        ));
    }
    if h.log_offset.checked_add(h.log_length as u64).is_none() {
        return Err(bad("it ends past the largest file offset"));
    }
    if !h.log_guid.is_zero() && h.log_length as u64 % MIB != 0 {
        return Err(bad("the length must be a multiple of 1 MiB"));
    }
    Ok(())
}

/// Names a region in messages.
pub fn region_name(g: &Guid) -> String {
    if *g == guid::BAT_REGION {
        "BAT".into()
    } else if *g == guid::METADATA_REGION {
        "metadata".into()
    } else {
        g.to_string()
    }
}

/// Region table 1: checksum, signature, count, each entry placed and unique, BAT
/// and metadata present exactly once, no unknown required region.
fn parse_region_table(
    raw: &[u8],
    header: &Header,
) -> Result<(Region, Region, Vec<Region>), VhdxError> {
    if !checksum_matches(raw, 4) {
        return Err(VhdxError::BadRegionTable("bad checksum"));
    }
    if &raw[..4] != b"regi" {
        return Err(VhdxError::BadRegionTable("no \"regi\" signature"));
    }
    let count = u32_at(raw, 8);
    if count > MAX_REGIONS {
        return Err(VhdxError::BadRegionTable(
            "more than 2047 entries (the format's limit)",
        ));
    }
    // (name, start, end) of everything placed so far, the log first.
    let mut placed: Vec<(String, u64, u64)> = vec![(
        "log".into(),
        header.log_offset,
        header.log_offset + header.log_length as u64,
    )];
    let mut bat = None;
    let mut metadata = None;
    let mut others = Vec::new();
    for i in 0..count as usize {
        let e = &raw[16 + 32 * i..16 + 32 * (i + 1)];
        let region = Region {
            guid: Guid::read(e),
            offset: u64_at(e, 16),
            length: u32_at(e, 24) as u64,
        };
        let required = u32_at(e, 28) & 1 != 0;
        let bad = |reason| VhdxError::BadRegion {
            guid: region_name(&region.guid),
            offset: region.offset,
            length: region.length,
            reason,
        };
        if region.offset < HEADER_SECTION_END || region.offset % MIB != 0 {
            return Err(bad(
                "the offset must be a multiple of 1 MiB past the header section",
            ));
        }
        if region.length == 0 || region.length % MIB != 0 {
            return Err(bad("the length must be a non-zero multiple of 1 MiB"));
        }
        if region.offset.checked_add(region.length).is_none() {
            return Err(bad("it ends past the largest file offset"));
        }
        let name = region_name(&region.guid);
        for (other, start, end) in &placed {
            if region.offset < *end && *start < region.end() {
                return Err(VhdxError::RegionOverlap {
                    first: name,
                    first_start: region.offset,
                    first_end: region.end(),
                    second: other.clone(),
                    second_start: *start,
                    second_end: *end,
                });
            }
        }
        placed.push((name.clone(), region.offset, region.end()));
        let slot = if region.guid == guid::BAT_REGION {
            Some((&mut bat, "BAT"))
        } else if region.guid == guid::METADATA_REGION {
            Some((&mut metadata, "metadata"))
        } else {
            None
        };
        match slot {
            Some((slot, what)) => {
                if slot.replace(region).is_some() {
                    return Err(VhdxError::DuplicateRegion(what));
                }
            }
            None if required => return Err(VhdxError::UnknownRequiredRegion(name)),
            None => others.push(region),
        }
    }
    Ok((
        bat.ok_or(VhdxError::MissingRegion("BAT"))?,
        metadata.ok_or(VhdxError::MissingRegion("metadata"))?,
        others,
    ))
}
