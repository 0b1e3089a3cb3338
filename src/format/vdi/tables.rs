//! VDI on the streaming engine: the header names one table, the block map
//! (`blocks_in_image` u32 entries); each entry turns into a data claim on its
//! 1 MiB data block, or zeroes. Every entry is checked before it is used: a block
//! index must be one of the allocated blocks, and no two guest blocks may share a
//! data block. The truncation of a block the map names is the engine's error.
//!
//! Metadata that data must not land on: the header sector and the block map.
//! Known garbage: the tail of the last block past the virtual size. In every
//! image we know the map precedes the data; a map after the data is legal and
//! the engine keeps (or spills) the data until the map arrives.

use super::header::{Header, BLOCK_SIZE, DISCARDED, UNALLOCATED};
use super::VdiError;
use crate::format::engine::{Claims, Fault, Mapping, StreamError, TableFormat};

/// Tag of the block map, the only table.
const TAG_MAP: u64 = 0;

/// A VDI image being streamed.
pub struct VdiTables {
    header: Header,
    /// Guest blocks that map to data.
    mapped_blocks: u64,
}

impl VdiTables {
    /// Prepares to stream the image whose header is `header`.
    pub fn new(header: Header) -> Self {
        VdiTables {
            header,
            mapped_blocks: 0,
        }
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Guest blocks the map names a data block for.
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped_blocks
    }

    fn parse_map(&mut self, map: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = &self.header;
        let block = BLOCK_SIZE as u64;
        let size = h.virtual_size;
        // Which guest block first named each data block: sharing is refused.
        // One u32 per allocated block, bounded by the map itself (which the
        // engine assembled within the memory budget).
        let mut owner = vec![u32::MAX; h.blocks_allocated as usize];
        for (index, raw) in map.chunks_exact(4).enumerate() {
            let index = index as u64;
            let entry = u32::from_le_bytes(raw.try_into().expect("4 bytes"));
            if entry == UNALLOCATED || entry == DISCARDED {
                let guest = index * block;
                if guest < size {
                    claims.zero(guest, block.min(size - guest), Mapping::Zero { host: None })?;
                }
                continue;
            }
            if entry >= h.blocks_allocated {
                return Err(VdiError::BlockBeyondAllocated {
                    index,
                    block: entry,
                    allocated: h.blocks_allocated,
                }
                .into());
            }
            let first = &mut owner[entry as usize];
            if *first != u32::MAX {
                return Err(VdiError::SharedBlock {
                    first: *first as u64,
                    second: index,
                    block: entry,
                }
                .into());
            }
            *first = index as u32;
            let guest = index * block;
            if guest >= size {
                // A block past the disk size: never read, by qemu either.
                continue;
            }
            let host = h.block_offset(entry);
            let len = block.min(size - guest);
            claims.data(guest, host, len)?;
            if len < block {
                claims.add_garbage(host + len, host + block)?;
            }
            self.mapped_blocks += 1;
        }
        Ok(())
    }
}

impl TableFormat for VdiTables {
    fn name(&self) -> &'static str {
        "vdi"
    }

    fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = &self.header;
        claims.add_metadata(0, h.header_end(), "header")?;
        claims.add_garbage(0, h.header_end())?;
        if h.map_len() == 0 {
            return Ok(());
        }
        if h.map_len() > claims.budget() {
            return Err(StreamError::MemoryBudget {
                budget: claims.budget(),
                what: "the block map",
            }
            .into());
        }
        let map_end = h.map_offset + h.map_len();
        claims.add_metadata(h.map_offset, map_end, "block map")?;
        claims.want_table(h.map_offset, h.map_len(), TAG_MAP)?;
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        debug_assert_eq!(tag, TAG_MAP);
        self.parse_map(bytes, claims)
    }

    fn describe_table(&self, _tag: u64) -> String {
        "the block map".into()
    }
}
