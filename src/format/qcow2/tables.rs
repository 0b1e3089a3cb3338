//! qcow2 on the streaming engine: the header names the L1 table and the refcount
//! table; L1 names every L2 table; each L2 table turns into data, zero and
//! compressed claims. Everything else about streaming (wants, retention, runs,
//! truncation) is the engine's (`format/engine`).
//!
//! Metadata that data must not land on: the header cluster, the L1 table, the
//! refcount table, every L2 table, and every refcount block the refcount table
//! names. The refcount table is read as a side table: qemu-made images put it at
//! cluster 1, before the L2 tables, so its blocks are known before any data claim;
//! an image that moved it past its tables (grown refcounts) is not held back for it,
//! and its blocks are then checked only against claims made after it arrived.

use super::header::{ClusterCompression, Header};
use super::table::{l1_entry, l2_entry, ClusterMapping, SUBCLUSTERS};
use crate::format::engine::{Claims, Codec, CompressedUnit, Fault, Mapping, TableFormat};

/// Tag of the L1 table; L2 tables are tagged by their index in `l2_groups`.
const TAG_L1: u64 = u64::MAX;
/// Tag of the refcount table.
const TAG_REFCOUNT: u64 = u64::MAX - 1;
/// Bits 9..56 of a refcount table entry hold the block's offset.
const REFCOUNT_OFFSET_MASK: u64 = 0x00FF_FFFF_FFFF_FE00;

/// A qcow2 image being streamed.
pub struct Qcow2Tables {
    header: Header,
    /// For each distinct L2 table: every (L1 index, guest base) that names it.
    l2_groups: Vec<Vec<(u64, u64)>>,
}

impl Qcow2Tables {
    /// Prepares to stream the image whose header is `header`.
    pub fn new(header: Header) -> Self {
        Qcow2Tables {
            header,
            l2_groups: Vec::new(),
        }
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Distinct L2 tables named by L1.
    pub fn l2_tables(&self) -> u64 {
        self.l2_groups.len() as u64
    }

    fn parse_l1(&mut self, table: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let per_l2 = self.header.bytes_per_l2();
        let size = self.header.virtual_size;
        let mut l2_tables: Vec<(u64, u64, u64)> = Vec::new();
        for (index, raw) in table.chunks_exact(8).enumerate() {
            let index = index as u64;
            let raw = u64::from_be_bytes(raw.try_into().expect("8 bytes"));
            let guest_base = index * per_l2;
            match l1_entry(&self.header, index, raw)? {
                None => {
                    let len = per_l2.min(size - guest_base);
                    claims.zero(guest_base, len, Mapping::Unallocated { host: None })?;
                }
                Some(offset) => {
                    if (l2_tables.len() as u64 + 1).saturating_mul(claims.claim_cost())
                        > claims.budget()
                    {
                        return Err(crate::format::engine::StreamError::MemoryBudget {
                            budget: claims.budget(),
                            what: "the list of L2 tables",
                        }
                        .into());
                    }
                    l2_tables.push((offset, index, guest_base));
                }
            }
        }
        claims.flush_runs()?;
        // One want per distinct table, however many L1 entries name it.
        l2_tables.sort_unstable();
        let mut grouped: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        for (offset, index, guest_base) in l2_tables {
            match grouped.last_mut() {
                Some((last, targets)) if *last == offset => targets.push((index, guest_base)),
                _ => grouped.push((offset, vec![(index, guest_base)])),
            }
        }
        let cluster = self.header.cluster_size();
        // Every L2 table is metadata before any of them is parsed, so that no data
        // claim can land on a table that arrives later.
        for (offset, _) in &grouped {
            claims.add_metadata(*offset, offset + cluster, "L2 table")?;
        }
        for (offset, targets) in grouped {
            let tag = self.l2_groups.len() as u64;
            self.l2_groups.push(targets);
            claims.want_table(offset, cluster, tag)?;
        }
        claims.all_tables_claimed();
        Ok(())
    }

    /// Turns one L2 table into data wants, compressed wants and zero runs.
    fn parse_l2(
        &self,
        guest_base: u64,
        table: &[u8],
        claims: &mut Claims<'_>,
    ) -> Result<(), Fault> {
        let cluster = self.header.cluster_size();
        let size = self.header.virtual_size;
        let entry_bytes = self.header.l2_entry_bytes() as usize;
        for (j, entry) in table.chunks_exact(entry_bytes).enumerate() {
            let guest = guest_base + j as u64 * cluster;
            if guest >= size {
                break;
            }
            match l2_entry(&self.header, guest, entry)? {
                ClusterMapping::Whole(mapping) => {
                    self.piece(claims, guest, cluster.min(size - guest), mapping)?;
                }
                ClusterMapping::Subclusters(maps) => {
                    let sub = cluster / SUBCLUSTERS;
                    for (k, mapping) in maps.into_iter().enumerate() {
                        let at = guest + k as u64 * sub;
                        if at >= size {
                            break;
                        }
                        self.piece(claims, at, sub.min(size - at), mapping)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One cluster or subcluster of an L2 table.
    fn piece(
        &self,
        claims: &mut Claims<'_>,
        guest: u64,
        len: u64,
        mapping: Mapping,
    ) -> Result<(), Fault> {
        match mapping {
            Mapping::Data { host } => claims.data(guest, host, len)?,
            Mapping::Zero { .. } | Mapping::Unallocated { .. } => {
                claims.zero(guest, len, mapping)?
            }
            Mapping::Compressed { host, len: stored } => claims.compressed(CompressedUnit {
                guest,
                host,
                stored,
                unit_size: self.header.cluster_size(),
                codec: match self.header.compression {
                    ClusterCompression::Deflate => Codec::Deflate,
                    ClusterCompression::Zstd => Codec::Zstd,
                },
                unit: "cluster",
            })?,
        }
        Ok(())
    }

    /// Registers every refcount block the refcount table names as metadata (and
    /// garbage). Entries that cannot be a block (unaligned, inside the header) are
    /// not blocks qemu would use either; they are skipped, not trusted.
    fn parse_refcount_table(&self, table: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        let cluster = self.header.cluster_size();
        for raw in table.chunks_exact(8) {
            let offset =
                u64::from_be_bytes(raw.try_into().expect("8 bytes")) & REFCOUNT_OFFSET_MASK;
            if offset < cluster || offset % cluster != 0 {
                continue;
            }
            claims.add_metadata(offset, offset + cluster, "refcount block")?;
            claims.add_garbage(offset, offset + cluster)?;
        }
        Ok(())
    }
}

impl TableFormat for Qcow2Tables {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault> {
        let h = &self.header;
        let cluster = h.cluster_size();
        claims.add_metadata(0, cluster, "header cluster")?;
        let l1 = h.l1_table_offset;
        if h.l1_entries_needed > 0 {
            claims.add_metadata(
                l1,
                l1 + h.l1_bytes_needed().next_multiple_of(cluster),
                "L1 table",
            )?;
        }
        let rt = h.refcount_table_offset;
        let rt_end = rt + h.refcount_table_bytes;
        claims.add_metadata(rt, rt_end, "refcount table")?;
        claims.add_garbage(rt, rt_end)?;
        if h.refcount_table_bytes > 0 && rt >= cluster {
            claims.want_side_table(rt, h.refcount_table_bytes, TAG_REFCOUNT)?;
        }
        if h.l1_entries_needed > 0 {
            claims.want_table(l1, h.l1_bytes_needed(), TAG_L1)?;
        }
        Ok(())
    }

    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault> {
        match tag {
            TAG_L1 => self.parse_l1(bytes, claims),
            TAG_REFCOUNT => self.parse_refcount_table(bytes, claims),
            group => {
                let targets = self.l2_groups[group as usize].clone();
                for (_, guest_base) in targets {
                    self.parse_l2(guest_base, bytes, claims)?;
                }
                Ok(())
            }
        }
    }

    fn describe_table(&self, tag: u64) -> String {
        match tag {
            TAG_L1 => "the L1 table".into(),
            TAG_REFCOUNT => "the refcount table".into(),
            group => format!(
                "the L2 table of L1 entry {}",
                self.l2_groups[group as usize][0].0
            ),
        }
    }
}
