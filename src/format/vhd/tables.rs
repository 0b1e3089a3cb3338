//! Dynamic VHD on the streaming engine: the footer copy at 0 names the dynamic
//! header; the header names the BAT; each allocated BAT entry names a block, a
//! sector bitmap followed by the block's data. As in qemu, which reads the whole
//! block whatever its bitmap says (and writes all-ones bitmaps), the bitmap is
//! not read: every sector of an allocated block is data, and the bitmap is
//! known garbage. That keeps the output byte-identical to `qemu-img convert`
//! on images whose bitmaps have clear bits over non-zero data. In the map, an
//! unallocated block is "zero" as in `qemu-img map` (a VHD has no backing file).
//!
//! Once the BAT is read, every block is known, so every unclaimed byte after
//! that point is garbage and never kept.
//!
//! Metadata that a block must not land on: the footer copy, the dynamic header
//! and the BAT; blocks must not overlap each other (qemu accepts both).

use super::error::VhdError;
use super::header::{DynamicHeader, Footer, DYNAMIC_HEADER_LEN, FOOTER_LEN};
use crate::format::engine::{Claims, Fault, Mapping, StreamError, TableFormat};

/// Tag of the dynamic header.
const TAG_HEADER: u64 = u64::MAX;
/// Tag of the BAT.
const TAG_BAT: u64 = u64::MAX - 1;
/// A BAT entry for a block that is not allocated.
const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// A dynamic VHD being streamed.
pub struct VhdTables {
    footer: Footer,
    disk_size: u64,
    header: Option<DynamicHeader>,
    /// Allocated blocks in host order: (host offset of the bitmap, BAT index).
    blocks: Vec<(u64, u64)>,
    /// Where the footer at the end starts at the earliest: past the BAT and
    /// every block (qemu's "free data block offset").
    footer_at: u64,
}

impl VhdTables {
    /// Prepares to stream the dynamic disk whose footer copy is `footer`.
    pub fn new(footer: Footer) -> Self {
        VhdTables {
            disk_size: footer.disk_size(),
            footer,
            header: None,
            blocks: Vec::new(),
            footer_at: 0,
        }
    }

    /// The footer copy.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header, once read.
    pub fn header(&self) -> Option<&DynamicHeader> {
        self.header.as_ref()
    }

    /// Allocated blocks the BAT names within the disk.
    pub fn allocated_blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn dynamic_header(&self) -> &DynamicHeader {
        self.header
            .as_ref()
            .expect("the BAT is read after the header")
    }

    /// The metadata a block must not overlap, by name.
    fn metadata_ranges(&self) -> [(u64, u64, &'static str); 3] {
        let h = self.dynamic_header();
        let header_at = self.footer.data_offset;
        [
            (0, FOOTER_LEN as u64, "footer copy"),
            (header_at, header_at + DYNAMIC_HEADER_LEN, "dynamic header"),
            (
                h.table_offset,
                h.table_offset.saturating_add(h.table_bytes()),
                "BAT",
            ),
        ]
    }

    fn parse_header(&mut self, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let header = DynamicHeader::parse(bytes, self.disk_size)?;
        let table = header.table_offset;
        let header_at = self.footer.data_offset;
        let table_end =
            table
                .checked_add(header.table_bytes())
                .ok_or(VhdError::BadTableOffset {
                    offset: table,
                    reason: "the BAT would end past the largest file offset",
                })?;
        if table < FOOTER_LEN as u64 {
            return Err(VhdError::BadTableOffset {
                offset: table,
                reason: "it lies inside the footer copy",
            }
            .into());
        }
        if table < header_at + DYNAMIC_HEADER_LEN && header_at < table_end {
            return Err(VhdError::BadTableOffset {
                offset: table,
                reason: "it overlaps the dynamic header",
            }
            .into());
        }
        claims.add_metadata(table, table_end, "BAT")?;
        self.footer_at = table_end;
        let needed = self.disk_size.div_ceil(u64::from(header.block_size));
        self.header = Some(header);
        if needed > 0 {
            claims.want_table(table, needed * 4, TAG_BAT)?;
        }
        Ok(())
    }

    /// Turns the BAT into zero claims for unallocated blocks and a list of
    /// allocated ones, checked against the metadata and each other.
    fn parse_bat(&mut self, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = self.dynamic_header().clone();
        let block_size = u64::from(h.block_size);
        let span = h.bitmap_size() + block_size;
        let metadata = self.metadata_ranges();
        for (index, raw) in bytes.chunks_exact(4).enumerate() {
            let index = index as u64;
            let entry = u32::from_be_bytes(raw.try_into().expect("4 bytes"));
            let guest = index * block_size;
            let len = block_size.min(self.disk_size - guest);
            if entry == UNALLOCATED {
                claims.zero(guest, len, Mapping::Zero { host: None })?;
                continue;
            }
            let host = u64::from(entry) * 512;
            if let Some(&(_, _, what)) = metadata
                .iter()
                .find(|(start, end, _)| host < *end && *start < host + span)
            {
                return Err(VhdError::BlockInMetadata { index, host, what }.into());
            }
            if (self.blocks.len() as u64 + 1).saturating_mul(claims.claim_cost()) > claims.budget()
            {
                return Err(StreamError::MemoryBudget {
                    budget: claims.budget(),
                    what: "the list of allocated blocks",
                }
                .into());
            }
            self.blocks.push((host, index));
        }
        claims.flush_runs()?;
        self.blocks.sort_unstable();
        for pair in self.blocks.windows(2) {
            let ((first_host, first), (second_host, second)) = (pair[0], pair[1]);
            if first_host + span > second_host {
                return Err(VhdError::BlocksOverlap {
                    first,
                    second,
                    first_host,
                    second_host,
                    span,
                }
                .into());
            }
        }
        if let Some(&(last, _)) = self.blocks.last() {
            self.footer_at = self.footer_at.max(last + span);
        }
        // Nothing but the blocks below can be claimed from now on.
        claims.add_garbage(claims.cursor(), u64::MAX)?;
        // The bitmaps are not read (see the module doc): every sector of an
        // allocated block is data.
        let data_offset = h.bitmap_size();
        for &(host, index) in &self.blocks {
            let guest = index * block_size;
            claims.data(
                guest,
                host + data_offset,
                block_size.min(self.disk_size - guest),
            )?;
        }
        Ok(claims.flush_runs()?)
    }
}

impl TableFormat for VhdTables {
    fn name(&self) -> &'static str {
        "vhd"
    }

    fn virtual_size(&self) -> u64 {
        self.disk_size
    }

    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let header_at = self.footer.data_offset;
        if header_at < FOOTER_LEN as u64
            || header_at % 512 != 0
            || header_at.checked_add(DYNAMIC_HEADER_LEN).is_none()
        {
            return Err(VhdError::BadHeaderOffset(header_at).into());
        }
        claims.add_metadata(0, FOOTER_LEN as u64, "footer copy")?;
        claims.add_metadata(header_at, header_at + DYNAMIC_HEADER_LEN, "dynamic header")?;
        claims.want_table(header_at, DYNAMIC_HEADER_LEN, TAG_HEADER)?;
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        match tag {
            TAG_HEADER => self.parse_header(bytes, claims),
            TAG_BAT => self.parse_bat(bytes, claims),
            _ => unreachable!("only the header and the BAT are wanted"),
        }
    }

    fn describe_table(&self, tag: u64) -> String {
        match tag {
            TAG_HEADER => "the dynamic header".into(),
            TAG_BAT => "the BAT".into(),
            _ => "a table".into(),
        }
    }

    /// The footer follows the last block (or the BAT): a stream that ends before
    /// it is truncated, even if every block arrived.
    fn finish(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let end = claims.cursor();
        if !claims.stopped_early() && end < self.footer_at.saturating_add(FOOTER_LEN as u64) {
            return Err(VhdError::MissingEndFooter {
                stream_end: end,
                footer_at: self.footer_at,
            }
            .into());
        }
        Ok(())
    }
}
