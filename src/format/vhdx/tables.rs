//! VHDX on the streaming engine. The header section and the metadata are parsed
//! before the engine starts (the virtual size lives in the metadata); the engine
//! then reads the BAT, in pieces of at most 1 MiB, and the log when its GUID says
//! it may need a replay. Each BAT piece turns into data claims (FULLY_PRESENT
//! blocks) and zero claims (every other payload state).
//!
//! Metadata that no block may land on: the header section, the log, the BAT region,
//! the metadata region and any other (optional) region. Known garbage: the rest of the header section and a
//! log whose GUID is zero. Two blocks sharing host bytes are refused (qemu would
//! read the same bytes twice; no producer writes that).

use std::collections::BTreeMap;

use super::bat::{self, BatEntry};
use super::error::VhdxError;
use super::header::{HeaderSection, HEADER_SECTION_END};
use super::log::check_log;
use super::metadata::Parameters;
use crate::format::engine::{Claims, Fault, Mapping, StreamError, TableFormat};

/// Tag of the log; BAT pieces are tagged by their number from 0.
const TAG_LOG: u64 = u64::MAX;
/// Bytes of BAT read as one table.
const BAT_PIECE: u64 = 1 << 20;
/// Bookkeeping bytes charged per present block (the overlap check's map).
const BLOCK_COST: u64 = 48;

/// A VHDX image being streamed.
pub struct VhdxTables {
    section: HeaderSection,
    params: Parameters,
    /// Host offset -> payload block, for every present block seen.
    present: BTreeMap<u64, u64>,
}

impl VhdxTables {
    /// Prepares to stream an image whose header section and metadata are known.
    pub fn new(section: HeaderSection, params: Parameters) -> Self {
        VhdxTables {
            section,
            params,
            present: BTreeMap::new(),
        }
    }

    /// Payload blocks stored in the file.
    pub fn present_blocks(&self) -> u64 {
        self.present.len() as u64
    }

    /// Bytes of BAT the disk needs.
    fn bat_bytes(&self) -> u64 {
        self.params.bat_entries() * 8
    }

    /// Refuses a present block that shares host bytes with one seen before.
    fn check_overlap(&mut self, block: u64, offset: u64, claims: &Claims<'_>) -> Result<(), Fault> {
        let size = self.params.block_size;
        let before = self.present.range(..=offset).next_back();
        let after = self.present.range(offset..).next();
        for (&other_offset, &other) in before.into_iter().chain(after) {
            if other_offset < offset + size && offset < other_offset + size {
                return Err(VhdxError::BlocksOverlap {
                    first: other,
                    first_offset: other_offset,
                    second: block,
                    second_offset: offset,
                    block_size: size,
                }
                .into());
            }
        }
        if (self.present.len() as u64 + 1) * BLOCK_COST > claims.budget() {
            return Err(StreamError::MemoryBudget {
                budget: claims.budget(),
                what: "the list of present blocks",
            }
            .into());
        }
        self.present.insert(offset, block);
        Ok(())
    }

    /// Turns BAT piece `piece` into claims.
    fn parse_bat(
        &mut self,
        piece: u64,
        bytes: &[u8],
        claims: &mut Claims<'_>,
    ) -> Result<(), Fault> {
        let ratio = self.params.chunk_ratio();
        let block_size = self.params.block_size;
        let size = self.params.virtual_size;
        let first = piece * BAT_PIECE / 8;
        for (i, raw) in bytes.chunks_exact(8).enumerate() {
            let index = first + i as u64;
            let raw = u64::from_le_bytes(raw.try_into().expect("8 bytes"));
            let entry = bat::decode(index, raw, ratio)?;
            let bat::Slot::Payload(block) = bat::Slot::of(index, ratio) else {
                continue;
            };
            let guest = block * block_size;
            let len = block_size.min(size - guest);
            match entry {
                BatEntry::NoBitmap => {}
                BatEntry::Unallocated => {
                    claims.zero(guest, len, Mapping::Unallocated { host: None })?
                }
                BatEntry::Zero => claims.zero(guest, len, Mapping::Zero { host: None })?,
                BatEntry::Present(offset) => {
                    if offset.checked_add(block_size).is_none() {
                        return Err(VhdxError::BadBatEntry {
                            index,
                            what: format!("payload block {block}"),
                            entry: raw,
                            reason: "the block ends past the largest file offset",
                        }
                        .into());
                    }
                    self.check_overlap(block, offset, claims)?;
                    claims.data(guest, offset, len)?;
                }
            }
        }
        Ok(())
    }
}

impl TableFormat for VhdxTables {
    fn name(&self) -> &'static str {
        "vhdx"
    }

    fn virtual_size(&self) -> u64 {
        self.params.virtual_size
    }

    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        claims.add_metadata(0, HEADER_SECTION_END, "header section")?;
        if claims.cursor() < HEADER_SECTION_END {
            claims.add_garbage(claims.cursor(), HEADER_SECTION_END)?;
        }
        let h = &self.section.header;
        let log_end = h.log_offset + h.log_length as u64;
        if h.log_length > 0 {
            claims.add_metadata(h.log_offset, log_end, "log")?;
            if h.log_guid.is_zero() {
                claims.add_garbage(h.log_offset, log_end)?;
            } else {
                claims.want_table(h.log_offset, h.log_length as u64, TAG_LOG)?;
            }
        }
        let bat = self.section.bat;
        let md = self.section.metadata;
        claims.add_metadata(bat.offset, bat.end(), "BAT region")?;
        claims.add_metadata(md.offset, md.end(), "metadata region")?;
        claims.add_garbage(md.offset, md.end())?;
        for other in &self.section.others {
            claims.add_metadata(other.offset, other.end(), "region the reader does not use")?;
            claims.add_garbage(other.offset, other.end())?;
        }
        let needed = self.bat_bytes();
        if needed > bat.length {
            return Err(VhdxError::BatTooSmall {
                region_len: bat.length,
                entries: self.params.bat_entries(),
                needed,
            }
            .into());
        }
        if needed < bat.length {
            claims.add_garbage(bat.offset + needed, bat.end())?;
        }
        for piece in 0..needed.div_ceil(BAT_PIECE) {
            let at = piece * BAT_PIECE;
            claims.want_table(bat.offset + at, BAT_PIECE.min(needed - at), piece)?;
        }
        // The log and every BAT piece are named here; no table names another.
        claims.all_tables_claimed();
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        match tag {
            TAG_LOG => Ok(check_log(bytes, &self.section.header.log_guid)?),
            piece => self.parse_bat(piece, bytes, claims),
        }
    }

    fn describe_table(&self, tag: u64) -> String {
        match tag {
            TAG_LOG => "the log".into(),
            piece => format!(
                "the BAT (bytes {:#x}..{:#x} of it)",
                piece * BAT_PIECE,
                ((piece + 1) * BAT_PIECE).min(self.bat_bytes())
            ),
        }
    }
}
