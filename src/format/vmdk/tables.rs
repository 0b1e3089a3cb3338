//! monolithicSparse and COWD extents on the streaming engine: the header names the
//! grain directory; the GD names every grain table; each GT turns into data and
//! zero claims (`formats-notes.md` 1.2, 1.3, 1.6). Everything else about streaming
//! (wants, retention, truncation, metadata overlap) is the engine's.
//!
//! Metadata that grains must not land on: everything before overHead (header,
//! descriptor, the redundant and the real GD/GTs of every real producer), the GD
//! and every GT wherever they are. The redundant GD is garbage (readers use the
//! real one, as qemu does); the descriptor too.

use super::error::VmdkError;
use super::header::{Header, SECTOR};
use crate::format::engine::{Claims, Fault, Mapping, StreamError, TableFormat};

/// Tag of the grain directory; grain tables are tagged by their index in `gts`.
const TAG_GD: u64 = u64::MAX;

/// A sparse extent being streamed through its tables.
pub struct SparseTables {
    header: Header,
    /// For each distinct grain table: its sector and every GD index naming it.
    gts: Vec<(u64, Vec<u64>)>,
}

impl SparseTables {
    /// Prepares to stream the extent whose header is `header`.
    pub fn new(header: Header) -> Self {
        SparseTables {
            header,
            gts: Vec::new(),
        }
    }

    /// Distinct grain tables named by the GD.
    pub fn grain_tables(&self) -> u64 {
        self.gts.len() as u64
    }

    fn parse_gd(&mut self, table: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let coverage = self.header.gt_coverage();
        let size = self.header.capacity;
        let mut named: Vec<(u64, u64)> = Vec::new();
        for (index, raw) in table.chunks_exact(4).enumerate() {
            let index = index as u64;
            let sector = u64::from(u32::from_le_bytes(raw.try_into().expect("4 bytes")));
            let base = index * coverage;
            if sector == 0 {
                claims.zero(
                    base,
                    coverage.min(size - base),
                    Mapping::Unallocated { host: None },
                )?;
                continue;
            }
            self.check_gt(index, sector)?;
            if (named.len() as u64 + 1).saturating_mul(claims.claim_cost()) > claims.budget() {
                return Err(StreamError::MemoryBudget {
                    budget: claims.budget(),
                    what: "the list of grain tables",
                }
                .into());
            }
            named.push((sector, index));
        }
        // GD entries past those the file has (COWD) read as zeroes, as in qemu.
        let read_end = (self.header.gd_entries_in_file * coverage).min(size);
        if read_end < size {
            claims.zero(
                read_end,
                size - read_end,
                Mapping::Unallocated { host: None },
            )?;
        }
        claims.flush_runs()?;
        named.sort_unstable();
        let gt_bytes = self.header.gt_bytes();
        for (sector, index) in named {
            match self.gts.last_mut() {
                Some((last, indices)) if *last == sector => indices.push(index),
                Some((last, _)) if *last * SECTOR + gt_bytes > sector * SECTOR => {
                    return Err(VmdkError::GtOverlap {
                        first: *last,
                        second: sector,
                    }
                    .into())
                }
                _ => self.gts.push((sector, vec![index])),
            }
        }
        // Every GT is metadata before any is parsed, so no grain can land on a
        // table that arrives later.
        for (sector, _) in &self.gts {
            let at = sector * SECTOR;
            claims.add_metadata(at, at + gt_bytes, "grain table")?;
        }
        for (tag, (sector, _)) in self.gts.iter().enumerate() {
            claims.want_table(sector * SECTOR, gt_bytes, tag as u64)?;
        }
        Ok(())
    }

    /// A grain table may not sit on the header, the descriptor or the GD.
    fn check_gt(&self, index: u64, sector: u64) -> Result<(), VmdkError> {
        let at = sector * SECTOR;
        let end = at + self.header.gt_bytes();
        let bad = |reason| VmdkError::GtOffset {
            index,
            sector,
            reason,
        };
        if at < super::header::HEADER_LEN as u64 {
            return Err(bad("inside the header"));
        }
        if let Some((d, len)) = self.header.descriptor {
            if at < d + len && d < end {
                return Err(bad("inside the embedded descriptor"));
            }
        }
        if let Some(gd) = self.header.gd_offset {
            if at < gd + self.header.gd_bytes() && gd < end {
                return Err(bad("inside the grain directory"));
            }
        }
        Ok(())
    }

    fn parse_gt(&self, base: u64, table: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let grain = self.header.grain_size;
        let size = self.header.capacity;
        for (j, raw) in table.chunks_exact(4).enumerate() {
            let guest = base + j as u64 * grain;
            if guest >= size {
                break;
            }
            let len = grain.min(size - guest);
            let sector = u64::from(u32::from_le_bytes(raw.try_into().expect("4 bytes")));
            match sector {
                0 => claims.zero(guest, len, Mapping::Unallocated { host: None })?,
                1 if self.header.zeroed_grain() => {
                    claims.zero(guest, len, Mapping::Zero { host: None })?
                }
                1 if self.header.subformat != super::header::Subformat::Cowd => {
                    return Err(VmdkError::ZeroedGrainWithoutFlag { guest }.into())
                }
                _ => {
                    let host = sector * SECTOR;
                    if host < self.header.overhead {
                        return Err(VmdkError::GrainInMetadata {
                            guest,
                            sector,
                            overhead: self.header.overhead / SECTOR,
                        }
                        .into());
                    }
                    claims.data(guest, host, len)?;
                }
            }
        }
        Ok(())
    }
}

impl TableFormat for SparseTables {
    fn name(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.header.capacity
    }

    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = &self.header;
        claims.add_metadata(0, h.overhead, "header and metadata area before overHead")?;
        if let Some((d, len)) = h.descriptor {
            claims.add_metadata(d, d + len, "embedded descriptor")?;
            claims.add_garbage(d, d + len)?;
        }
        if let Some(rgd) = h.rgd_offset {
            claims.add_metadata(rgd, rgd + h.gd_bytes(), "redundant grain directory")?;
            claims.add_garbage(rgd, rgd + h.gd_bytes())?;
        }
        let gd = h.gd_offset.ok_or(VmdkError::GdOffset {
            sector: u64::MAX,
            reason: "\"at the end\" is only valid in a streamOptimized image",
        })?;
        let gd_end = gd + h.gd_bytes();
        if gd < super::header::HEADER_LEN as u64 {
            return Err(VmdkError::GdOffset {
                sector: gd / SECTOR,
                reason: "inside the header",
            }
            .into());
        }
        if let Some((d, len)) = h.descriptor {
            if gd < d + len && d < gd_end {
                return Err(VmdkError::GdOffset {
                    sector: gd / SECTOR,
                    reason: "inside the embedded descriptor",
                }
                .into());
            }
        }
        if h.gd_entries_in_file == 0 {
            let size = h.capacity;
            return Ok(claims.zero(0, size, Mapping::Unallocated { host: None })?);
        }
        claims.add_metadata(gd, gd_end, "grain directory")?;
        claims.want_table(gd, h.gd_bytes(), TAG_GD)?;
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        if tag == TAG_GD {
            return self.parse_gd(bytes, claims);
        }
        let coverage = self.header.gt_coverage();
        let indices = self.gts[tag as usize].1.clone();
        for index in indices {
            self.parse_gt(index * coverage, bytes, claims)?;
        }
        Ok(())
    }

    fn describe_table(&self, tag: u64) -> String {
        if tag == TAG_GD {
            return "the grain directory".into();
        }
        let (sector, indices) = &self.gts[tag as usize];
        format!(
            "the grain table at sector {sector} (grain directory entry {})",
            indices[0]
        )
    }

    fn finish(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        check_overhead(&self.header, claims.cursor())
    }
}

/// qemu refuses a `KDMV` file shorter than overHead ("File truncated").
pub fn check_overhead(header: &Header, stream_end: u64) -> Result<(), Fault> {
    if header.subformat != super::header::Subformat::Cowd && stream_end < header.overhead {
        return Err(VmdkError::OverheadPastEnd {
            overhead: header.overhead,
            stream_end,
        }
        .into());
    }
    Ok(())
}
