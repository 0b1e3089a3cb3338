//! streamOptimized extents on the streaming engine, read by walking the markers
//! (`formats-notes.md` 1.4): from overHead on, every sector starts a marker. A
//! grain marker carries its grain's LBA and compressed size, so the grain is
//! placed at once, whatever the table order; a metadata marker announces a grain
//! table, the grain directory, the footer or the end of the stream. Each marker is
//! claimed as a side table: the chain never holds back the end of the metadata, so
//! padding between grains is dropped instead of kept.
//!
//! Both layouts are read the same way. qemu-img writes the GD and every GT before
//! the grains (header gdOffset real, no metadata markers, no footer); VMware writes
//! each GT after its grains and the GD + footer + end-of-stream marker last (header
//! gdOffset "at the end"). Either way the tables are checked against the markers
//! once the stream ends: every GT entry must name a grain marker whose LBA is that
//! entry's guest sector, and every grain marker must be named by exactly one entry
//! (qemu trusts the GT and ignores the LBA; a disagreement is an error here, naming
//! both). Guest ranges the tables leave unallocated are written as zeroes then.
//!
//! Memory: per grain, one marker record and one table entry (16 and 8 bytes),
//! charged to the budget.

use std::collections::HashMap;

use super::error::VmdkError;
use super::header::{Header, SECTOR};
use crate::format::engine::{
    Claims, Codec, CompressedUnit, Fault, Mapping, StreamError, TableFormat,
};

/// Tag of the grain directory named by the header.
const TAG_GD: u64 = u64::MAX;
/// Tag of the marker being read (one is pending at a time).
const TAG_MARKER: u64 = u64::MAX - 1;
/// Tag of the metadata block behind a metadata marker (one at a time).
const TAG_BODY: u64 = u64::MAX - 2;
/// Bytes of a grain marker before the compressed data (LBA u64, size u32).
const GRAIN_MARKER_LEN: u64 = 12;
/// Bookkeeping bytes charged per grain marker and per grain table entry kept.
const MARKER_COST: u64 = 16;
const ENTRY_COST: u64 = 8;
/// Bookkeeping bytes charged per grain table kept.
const GT_COST: u64 = 64;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// What a metadata marker announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    GrainTable,
    GrainDirectory,
    Footer,
}

impl Body {
    fn name(self) -> &'static str {
        match self {
            Body::GrainTable => "grain table behind a marker",
            Body::GrainDirectory => "grain directory behind a marker",
            Body::Footer => "footer behind a marker",
        }
    }
}

/// A streamOptimized extent being streamed through its markers.
pub struct StreamTables {
    header: Header,
    /// The grain directory (entries = GT sectors) and the sector it was read at.
    gd: Option<(u64, Vec<u32>)>,
    /// Grain tables read, by sector: the non-zero entries as (slot, sector).
    gts: HashMap<u64, Vec<(u32, u32)>>,
    /// Grain tables the header's GD names, by tag.
    gt_wanted: Vec<u64>,
    /// Grain markers seen: (sector, LBA), in stream order.
    grains: Vec<(u64, u64)>,
    /// Where the next marker is expected; `None` after the end-of-stream marker.
    next_marker: Option<u64>,
    /// The metadata block being read: (host offset, what).
    body: Option<(u64, Body)>,
    /// Where the footer marker was, and the GD sector the footer names.
    footer: Option<(u64, u64)>,
    /// Where the end-of-stream marker was.
    eos: Option<u64>,
    /// Bookkeeping bytes kept for the final check.
    kept: u64,
}

impl StreamTables {
    /// Prepares to stream the extent whose header is `header`.
    pub fn new(header: Header) -> Self {
        StreamTables {
            header,
            gd: None,
            gts: HashMap::new(),
            gt_wanted: Vec::new(),
            grains: Vec::new(),
            next_marker: None,
            body: None,
            footer: None,
            eos: None,
            kept: 0,
        }
    }

    /// Grain tables read.
    pub fn grain_tables(&self) -> u64 {
        self.gts.len() as u64
    }

    /// The layout: tables first (qemu-img) or at the end (VMware).
    pub fn layout(&self) -> &'static str {
        if self.header.gd_offset.is_some() {
            "tables first"
        } else {
            "tables after grains, footer at the end"
        }
    }

    fn keep(&mut self, bytes: u64, claims: &Claims<'_>) -> Result<(), StreamError> {
        self.kept += bytes;
        if self.kept > claims.budget() {
            return Err(StreamError::MemoryBudget {
                budget: claims.budget(),
                what: "the grain markers and grain tables kept to check them against each other",
            });
        }
        Ok(())
    }

    fn want_marker(&mut self, at: u64, claims: &mut Claims<'_>) -> Result<(), StreamError> {
        self.next_marker = Some(at);
        claims.want_side_table(at, SECTOR, TAG_MARKER)
    }

    fn marker(&mut self, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let at = self.next_marker.take().expect("a marker was wanted");
        let value = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let size = u64::from(u32::from_le_bytes(
            bytes[8..12].try_into().expect("4 bytes"),
        ));
        if size > 0 {
            return self.grain_marker(at, value, size, claims);
        }
        let kind = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let not_a_marker = |reason: String| VmdkError::NotAMarker { offset: at, reason };
        let (body, sectors) = match kind {
            MARKER_EOS => {
                if value != 0 {
                    return Err(not_a_marker(format!(
                        "an end-of-stream marker with {value} sectors"
                    ))
                    .into());
                }
                self.eos = Some(at);
                return Ok(());
            }
            MARKER_GT => (Body::GrainTable, self.header.gt_bytes().div_ceil(SECTOR)),
            MARKER_GD => (
                Body::GrainDirectory,
                self.header.gd_bytes().div_ceil(SECTOR),
            ),
            MARKER_FOOTER => (Body::Footer, 1),
            other => {
                return Err(not_a_marker(format!("unknown metadata marker type {other}")).into())
            }
        };
        if value != sectors {
            return Err(not_a_marker(format!(
                "a {} of {value} sectors (this image's is {sectors})",
                body.name()
            ))
            .into());
        }
        let body_at = at + SECTOR;
        self.body = Some((body_at, body));
        claims.want_side_table(body_at, sectors * SECTOR, TAG_BODY)?;
        Ok(())
    }

    fn grain_marker(
        &mut self,
        at: u64,
        lba: u64,
        size: u64,
        claims: &mut Claims<'_>,
    ) -> Result<(), Fault> {
        let grain = self.header.grain_size;
        // qemu reads at most two grains for one compressed grain.
        let max = 2 * grain;
        if size > max {
            return Err(VmdkError::CompressedSize {
                offset: at,
                size,
                max,
            }
            .into());
        }
        let guest = lba.checked_mul(SECTOR).filter(|g| g % grain == 0);
        let bad_lba = |reason| VmdkError::GrainLba {
            offset: at,
            lba,
            reason,
        };
        let guest = guest.ok_or(bad_lba("not at the start of a grain"))?;
        if guest >= self.header.capacity {
            return Err(bad_lba("at or past the end of the disk").into());
        }
        self.keep(MARKER_COST, claims)?;
        self.grains.push((at / SECTOR, lba));
        let data = at + GRAIN_MARKER_LEN;
        claims.compressed(CompressedUnit {
            guest,
            host: data,
            stored: size,
            unit_size: grain,
            codec: Codec::Zlib,
            unit: "grain",
        })?;
        self.want_marker((data + size).next_multiple_of(SECTOR), claims)?;
        Ok(())
    }

    fn body(&mut self, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let (at, body) = self.body.take().expect("a body was wanted");
        match body {
            Body::GrainTable => self.store_gt(at / SECTOR, bytes, claims)?,
            Body::GrainDirectory => {
                if self.gd.is_some() {
                    return Err(VmdkError::SecondGd(at / SECTOR).into());
                }
                let entries = self.gd_entries(bytes);
                self.gd = Some((at / SECTOR, entries));
            }
            Body::Footer => {
                let footer = Header::parse_kdmv(bytes)
                    .map_err(|e| VmdkError::Footer(format!("the footer header: {e}")))?;
                self.check_footer(&footer)?;
                let gd = footer.gd_offset.ok_or_else(|| {
                    VmdkError::Footer(
                        "the footer too says the grain directory is at the end".into(),
                    )
                })?;
                self.footer = Some((at - SECTOR, gd / SECTOR));
            }
        }
        let sectors = bytes.len() as u64 / SECTOR;
        self.want_marker(at + sectors * SECTOR, claims)?;
        Ok(())
    }

    fn gd_entries(&self, bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .take(self.header.gd_entries_in_file as usize)
            .map(|raw| u32::from_le_bytes(raw.try_into().expect("4 bytes")))
            .collect()
    }

    fn store_gt(&mut self, sector: u64, bytes: &[u8], claims: &Claims<'_>) -> Result<(), Fault> {
        let entries: Vec<(u32, u32)> = bytes
            .chunks_exact(4)
            .enumerate()
            .map(|(slot, raw)| (slot as u32, u32::from_le_bytes(raw.try_into().expect("4"))))
            .filter(|&(_, e)| e != 0)
            .collect();
        self.keep(GT_COST + ENTRY_COST * entries.len() as u64, claims)?;
        self.gts.insert(sector, entries);
        Ok(())
    }

    /// The footer must describe the same disk as the header.
    fn check_footer(&self, footer: &Header) -> Result<(), VmdkError> {
        let h = &self.header;
        let same = footer.subformat == h.subformat
            && footer.capacity == h.capacity
            && footer.grain_size == h.grain_size
            && footer.gtes_per_gt == h.gtes_per_gt;
        if !same {
            return Err(VmdkError::Footer(format!(
                "the footer describes another disk (capacity {}, grain {} bytes, {} entries per grain table) than the header (capacity {}, grain {} bytes, {} entries)",
                footer.capacity, footer.grain_size, footer.gtes_per_gt,
                h.capacity, h.grain_size, h.gtes_per_gt
            )));
        }
        Ok(())
    }

    /// The end: the footer layout, then the tables against the markers, then
    /// zeroes for every guest range the tables leave unallocated.
    fn check_end(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let end = claims.cursor();
        if let Some((at, body)) = self.body {
            return Err(VmdkError::MarkerTruncated {
                stream_end: end,
                offset: at,
                what: body.name(),
            }
            .into());
        }
        if let Some(at) = self.next_marker {
            if at < end {
                return Err(VmdkError::MarkerTruncated {
                    stream_end: end,
                    offset: at,
                    what: "marker",
                }
                .into());
            }
        }
        super::tables::check_overhead(&self.header, end)?;
        match (self.header.gd_offset, self.footer) {
            (None, None) => {
                return Err(VmdkError::Footer(format!(
                    "the header puts the grain directory at the end, but the stream (ending at byte {end}) has no footer marker: truncated?"
                ))
                .into())
            }
            (None, Some((at, gd))) => {
                if at + 3 * SECTOR != end || self.eos != Some(end - SECTOR) {
                    return Err(VmdkError::Footer(format!(
                        "the footer marker at byte {at:#x} and an end-of-stream marker must be the last 3 sectors of the stream (it ends at byte {end})"
                    ))
                    .into());
                }
                match &self.gd {
                    Some((read_at, _)) if *read_at == gd => {}
                    Some((read_at, _)) => {
                        return Err(VmdkError::Footer(format!(
                            "the footer puts the grain directory at sector {gd}, but the stream's is at sector {read_at}"
                        ))
                        .into())
                    }
                    None => return Err(VmdkError::GdMissing { truncated: false }.into()),
                }
            }
            (Some(header_gd), Some((_, gd))) if header_gd / SECTOR != gd => {
                return Err(VmdkError::Footer(format!(
                    "the footer puts the grain directory at sector {gd}, the header at sector {}",
                    header_gd / SECTOR
                ))
                .into())
            }
            _ => {}
        }
        let Some((_, gd)) = self.gd.take() else {
            return Err(VmdkError::GdMissing { truncated: true }.into());
        };
        self.resolve(&gd, end, claims)
    }

    fn resolve(&mut self, gd: &[u32], end: u64, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = &self.header;
        let coverage = h.gt_coverage();
        let grain = h.grain_size;
        let size = h.capacity;
        let unallocated = Mapping::Unallocated { host: None };
        let mut used: Vec<Option<u64>> = vec![None; self.grains.len()];
        for index in 0..h.gd_entries_in_file {
            let base = index * coverage;
            let gt_sector = u64::from(gd.get(index as usize).copied().unwrap_or(0));
            if gt_sector == 0 {
                claims.zero(base, coverage.min(size - base), unallocated)?;
                continue;
            }
            let entries = self.gts.get(&gt_sector).ok_or(VmdkError::GtMissing {
                index,
                sector: gt_sector,
            })?;
            let zero_slots = |from: u64, to: u64, claims: &mut Claims<'_>| {
                let from = base + from * grain;
                let to = (base + to * grain).min(size);
                match from < to {
                    true => claims.zero(from, to - from, unallocated),
                    false => Ok(()),
                }
            };
            let mut next_slot = 0u64;
            for &(slot, sector) in entries {
                let guest = base + u64::from(slot) * grain;
                if guest >= size {
                    break;
                }
                zero_slots(next_slot, u64::from(slot), claims)?;
                next_slot = u64::from(slot) + 1;
                let sector = u64::from(sector);
                if sector == 1 && h.zeroed_grain() {
                    claims.zero(guest, grain.min(size - guest), Mapping::Zero { host: None })?;
                    continue;
                }
                if sector == 1 {
                    return Err(VmdkError::ZeroedGrainWithoutFlag { guest }.into());
                }
                let Ok(k) = self.grains.binary_search_by_key(&sector, |&(s, _)| s) else {
                    return Err(VmdkError::TableGrainMissing {
                        guest,
                        sector,
                        past_end: sector * SECTOR >= end,
                    }
                    .into());
                };
                let lba = self.grains[k].1;
                if lba * SECTOR != guest {
                    return Err(VmdkError::MarkerDisagrees {
                        sector,
                        marker_lba: lba,
                        table_lba: guest / SECTOR,
                    }
                    .into());
                }
                if let Some(first) = used[k] {
                    return Err(VmdkError::SharedGrain {
                        first,
                        second: guest,
                        sector,
                    }
                    .into());
                }
                used[k] = Some(guest);
            }
            zero_slots(next_slot, h.gtes_per_gt, claims)?;
        }
        if let Some(k) = used.iter().position(Option::is_none) {
            let (sector, lba) = self.grains[k];
            return Err(VmdkError::GrainNotInTable { sector, lba }.into());
        }
        Ok(())
    }
}

impl TableFormat for StreamTables {
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
            claims.add_garbage(d, d + len)?;
        }
        if let Some(rgd) = h.rgd_offset {
            claims.add_garbage(rgd, rgd + h.gd_bytes())?;
        }
        if let Some(gd) = h.gd_offset {
            let bad = |reason| VmdkError::GdOffset {
                sector: gd / SECTOR,
                reason,
            };
            if gd < super::header::HEADER_LEN as u64 {
                return Err(bad("inside the header").into());
            }
            if gd + h.gd_bytes() > h.overhead {
                return Err(bad("past overHead, where the grain markers start").into());
            }
            claims.want_table(gd, h.gd_bytes(), TAG_GD)?;
        }
        let first = h.overhead.max(SECTOR);
        self.want_marker(first, claims)?;
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        match tag {
            TAG_MARKER => self.marker(bytes, claims),
            TAG_BODY => self.body(bytes, claims),
            TAG_GD => {
                let entries = self.gd_entries(bytes);
                let sector = self.header.gd_offset.expect("the header names the GD") / SECTOR;
                let mut named: Vec<u64> = entries
                    .iter()
                    .filter(|&&e| e != 0)
                    .map(|&e| u64::from(e))
                    .collect();
                named.sort_unstable();
                named.dedup();
                let gt_bytes = self.header.gt_bytes();
                for (index, &gt) in entries.iter().enumerate() {
                    let at = u64::from(gt) * SECTOR;
                    if gt != 0 && (at < SECTOR || at + gt_bytes > self.header.overhead) {
                        return Err(VmdkError::GtOffset {
                            index: index as u64,
                            sector: u64::from(gt),
                            reason: "not between the header and overHead, where a stream's tables must be",
                        }
                        .into());
                    }
                }
                self.gd = Some((sector, entries));
                for gt in named {
                    let tag = self.gt_wanted.len() as u64;
                    self.gt_wanted.push(gt);
                    claims.want_table(gt * SECTOR, gt_bytes, tag)?;
                }
                Ok(())
            }
            gt => {
                let sector = self.gt_wanted[gt as usize];
                self.store_gt(sector, bytes, claims)
            }
        }
    }

    fn describe_table(&self, tag: u64) -> String {
        match tag {
            TAG_GD => "the grain directory".into(),
            TAG_MARKER => "a stream marker".into(),
            TAG_BODY => "the metadata behind a marker".into(),
            gt => format!("the grain table at sector {}", self.gt_wanted[gt as usize]),
        }
    }

    fn finish(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        self.check_end(claims)
    }
}
