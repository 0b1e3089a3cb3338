//! The forward-only qcow2 reader: consumes the image once, in stream order, and
//! emits guest extents as the bytes go by (`architecture.md`, "Streaming qcow2
//! without scratch space").
//!
//! State, keyed by host offset:
//! - **wants**: ranges some parsed table has claimed — the L1 table, L2 tables,
//!   data runs, compressed clusters — in a `BTreeMap` ordered by start. Bytes
//!   arriving inside a data want go straight to the sink; table and compressed
//!   wants are assembled, then parsed or decompressed *at once*, so that a table
//!   followed by its data in the same chunk claims that data before it passes.
//! - **recent chunks**: the current and previous chunk stay referenced, so a new
//!   want reaching a little backwards (compressed clusters sharing a sector, or
//!   compressed data just before its L2 table) is served without copies.
//! - **retained**: bytes nobody has claimed yet, kept (memory, then spill file)
//!   until every L2 table has been read; then dropped.
//!
//! A want that reaches bytes that are neither recent nor retained, or that the
//! stream never delivers, is an error naming the offsets — never zeroes.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::compressed::decompress_cluster;
use super::error::Qcow2Error;
use super::header::Header;
use super::map::MapBuilder;
use super::retained::Retained;
use super::table::{l1_entry, l2_entry, ClusterMapping, Mapping, SUBCLUSTERS};
use super::{Qcow2Summary, StreamOptions};
use crate::extent::Extent;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;

/// Bookkeeping bytes charged to the memory budget per pending want.
const WANT_COST: u64 = 128;
/// The largest piece served at once from bytes the stream has passed.
const PAST_PIECE: u64 = 1 << 20;

/// What a claimed host range is for.
enum Claim {
    /// The needed part of the active L1 table.
    L1 { buf: BytesMut },
    /// One L2 table; several L1 entries may name it: (L1 index, guest base) each.
    L2 {
        targets: Vec<(u64, u64)>,
        buf: BytesMut,
    },
    /// Uncompressed data; `guest` is where the want's current start goes.
    Data { guest: u64 },
    /// A compressed cluster for `guest`, read from `host`.
    Compressed {
        guest: u64,
        host: u64,
        buf: BytesMut,
    },
}

/// A claimed range `[key.0, end)`.
struct Want {
    end: u64,
    /// Length of the whole range (assembled claims complete at this length).
    total: u64,
    claim: Claim,
}

impl Want {
    fn describe(&self) -> String {
        match &self.claim {
            Claim::L1 { .. } => "the L1 table".into(),
            Claim::L2 { targets, .. } => format!("the L2 table of L1 entry {}", targets[0].0),
            Claim::Data { guest } => format!("data for guest offset {guest:#x}"),
            Claim::Compressed { guest, .. } => {
                format!("the compressed cluster for guest offset {guest:#x}")
            }
        }
    }
}

/// The streaming engine for one image.
pub struct Engine<'a> {
    header: Header,
    sink: &'a mut dyn ExtentSink,
    wants: BTreeMap<(u64, u64), Want>,
    next_seq: u64,
    max_wants: usize,
    /// Bytes before this stream offset have been dispatched.
    cursor: u64,
    recent: VecDeque<(u64, Bytes)>,
    retained: Retained,
    metadata_complete: bool,
    l2_pending: u64,
    /// Sorted host offsets of every L2 table (for overlap checks).
    l2_offsets: Vec<u64>,
    map: Option<MapBuilder>,
    /// Bytes reserved for tables and compressed clusters being assembled.
    assembling: u64,
    summary: Qcow2Summary,
}

impl<'a> Engine<'a> {
    /// Prepares to read an image whose header is `header` and whose first
    /// `cursor` bytes (cluster 0) were already consumed.
    pub fn new(
        header: Header,
        cursor: u64,
        sink: &'a mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Self {
        let summary = Qcow2Summary::new(header.clone());
        Engine {
            wants: BTreeMap::new(),
            next_seq: 0,
            max_wants: (options.memory_budget / WANT_COST).max(4096) as usize,
            cursor,
            recent: VecDeque::new(),
            retained: Retained::new(
                options.memory_budget,
                options
                    .spill_allowed
                    .then_some(options.scratch_dir.as_path()),
            ),
            metadata_complete: false,
            l2_pending: 0,
            l2_offsets: Vec::new(),
            map: options
                .collect_map
                .then(|| MapBuilder::within(options.memory_budget)),
            assembling: 0,
            summary,
            header,
            sink,
        }
    }

    /// Reads the rest of the stream and returns what was found.
    pub fn run(mut self, stream: &mut ChunkStream) -> Result<Qcow2Summary, Qcow2Error> {
        self.sink.set_size(self.header.virtual_size)?;
        if self.header.l1_entries_needed == 0 {
            self.mark_metadata_complete();
        } else {
            let start = self.header.l1_table_offset;
            let end = start + self.header.l1_bytes_needed();
            self.add_want(
                start,
                end,
                Claim::L1 {
                    buf: BytesMut::new(),
                },
            )?;
        }
        while let Some(chunk) = stream.next_chunk().map_err(Qcow2Error::Read)? {
            self.consume_chunk(chunk)?;
        }
        self.finish_at_eof()?;
        self.summary.stream_len = self.cursor;
        self.summary.retained_peak = self.retained.peak_memory();
        self.summary.spilled_bytes = self.retained.spilled();
        self.summary.map = self.map.take().map(MapBuilder::finish);
        Ok(self.summary)
    }

    /// Dispatches one chunk: claimed bytes to their wants, the rest retained
    /// (or dropped once the metadata is complete).
    fn consume_chunk(&mut self, chunk: Bytes) -> Result<(), Qcow2Error> {
        let chunk_start = self.cursor;
        let chunk_end = chunk_start + chunk.len() as u64;
        self.recent.push_back((chunk_start, chunk.clone()));
        while self.recent.len() > 2 {
            self.recent.pop_front();
        }
        while let Some(entry) = self.wants.first_entry() {
            let start = entry.key().0;
            if start >= chunk_end {
                break;
            }
            let (_, mut want) = entry.remove_entry();
            debug_assert!(start >= chunk_start);
            if start > self.cursor {
                self.unclaimed(
                    self.cursor,
                    &chunk[(self.cursor - chunk_start) as usize..(start - chunk_start) as usize],
                )?;
                self.cursor = start;
            }
            let take_end = want.end.min(chunk_end);
            let piece =
                chunk.slice((start - chunk_start) as usize..(take_end - chunk_start) as usize);
            self.cursor = self.cursor.max(take_end);
            let complete = self.feed(&mut want, piece)?;
            if complete {
                self.complete(want)?;
            } else {
                self.insert_want(take_end, want);
            }
        }
        if chunk_end > self.cursor {
            let from = (self.cursor - chunk_start) as usize;
            self.unclaimed(self.cursor, &chunk[from..])?;
            self.cursor = chunk_end;
        }
        Ok(())
    }

    /// Gives a want the next bytes of its range; true when a table or
    /// compressed cluster is complete (a data want is done when its range is).
    fn feed(&mut self, want: &mut Want, piece: Bytes) -> Result<bool, Qcow2Error> {
        match &mut want.claim {
            Claim::Data { guest } => {
                let at = *guest;
                *guest += piece.len() as u64;
                self.sink.write(Extent::data(at, piece))?;
                Ok(false)
            }
            Claim::L1 { buf } | Claim::L2 { buf, .. } | Claim::Compressed { buf, .. } => {
                if buf.is_empty() {
                    // Buffers are taken only when bytes arrive, and charged to
                    // the budget, so no header or table can make us allocate
                    // for ranges that never come.
                    self.assembling += want.total;
                    if self.assembling > self.max_wants as u64 * WANT_COST {
                        return Err(Qcow2Error::MemoryBudget {
                            budget: self.max_wants as u64 * WANT_COST,
                            what: "tables and compressed clusters being assembled",
                        });
                    }
                    buf.reserve(want.total as usize);
                }
                buf.extend_from_slice(&piece);
                Ok(buf.len() as u64 >= want.total)
            }
        }
    }

    /// Handles bytes no want claims.
    fn unclaimed(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Qcow2Error> {
        if self.metadata_complete || bytes.is_empty() {
            return Ok(());
        }
        let rt_start = self.header.refcount_table_offset;
        let rt_end = rt_start + self.header.refcount_table_bytes;
        let end = offset + bytes.len() as u64;
        if offset >= rt_start && end <= rt_end {
            return Ok(()); // the refcount table: never needed
        }
        self.retained.keep(offset, bytes)
    }

    /// Registers a claim on `[start, end)`. Any part already passed is served
    /// at once from the recent chunks or the retained bytes.
    fn add_want(&mut self, start: u64, end: u64, claim: Claim) -> Result<(), Qcow2Error> {
        let mut want = Want {
            end,
            total: end - start,
            claim,
        };
        if start >= self.cursor {
            self.insert_want(start, want);
            return Ok(());
        }
        // Served in pieces of at most a chunk, so that a long run mapped onto
        // bytes already passed never needs one buffer of its whole length.
        let past_end = end.min(self.cursor);
        let mut at = start;
        while at < past_end {
            let piece_end = past_end.min(at + PAST_PIECE);
            let piece =
                self.past_bytes(at, piece_end)
                    .ok_or_else(|| Qcow2Error::NotRetained {
                        start: at,
                        end: piece_end,
                        what: want.describe(),
                    })??;
            at = piece_end;
            if self.feed(&mut want, piece)? {
                return self.complete(want);
            }
        }
        if past_end < end {
            self.insert_want(past_end, want);
        }
        Ok(()) // otherwise a data want fully served from the past
    }

    fn insert_want(&mut self, start: u64, want: Want) {
        if let Claim::Data { .. } = want.claim {
            if start >= want.end {
                return;
            }
        }
        self.wants.insert((start, self.next_seq), want);
        self.next_seq += 1;
    }

    /// Bytes `[start, end)` that the stream has already passed, if still held.
    fn past_bytes(&self, start: u64, end: u64) -> Option<Result<Bytes, Qcow2Error>> {
        if let Some((first_start, _)) = self.recent.front() {
            if start >= *first_start {
                let mut out = BytesMut::with_capacity((end - start) as usize);
                for (chunk_start, chunk) in &self.recent {
                    let chunk_end = chunk_start + chunk.len() as u64;
                    let from = start.max(*chunk_start);
                    let to = end.min(chunk_end);
                    if from < to {
                        if from == start && to == end {
                            return Some(Ok(chunk.slice(
                                (from - chunk_start) as usize..(to - chunk_start) as usize,
                            )));
                        }
                        out.extend_from_slice(
                            &chunk[(from - chunk_start) as usize..(to - chunk_start) as usize],
                        );
                    }
                }
                return Some(Ok(out.freeze()));
            }
        }
        match self.retained.take(start, end) {
            Ok(Some(bytes)) => Some(Ok(bytes)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// A table or compressed cluster has all its bytes.
    fn complete(&mut self, want: Want) -> Result<(), Qcow2Error> {
        match want.claim {
            Claim::L1 { buf } => {
                self.release_assembly(buf.len() as u64);
                self.parse_l1(&buf)
            }
            Claim::L2 { targets, buf } => {
                self.release_assembly(buf.len() as u64);
                for (_, guest_base) in targets {
                    self.parse_l2(guest_base, &buf)?;
                }
                self.l2_pending -= 1;
                if self.l2_pending == 0 {
                    self.mark_metadata_complete();
                }
                Ok(())
            }
            Claim::Compressed { guest, host, buf } => {
                self.release_assembly(buf.len() as u64);
                self.inflate(guest, host, &buf, None)
            }
            Claim::Data { .. } => Ok(()),
        }
    }

    fn release_assembly(&mut self, reserved: u64) {
        self.assembling = self.assembling.saturating_sub(reserved);
    }

    fn mark_metadata_complete(&mut self) {
        self.metadata_complete = true;
        self.retained.clear();
    }

    fn parse_l1(&mut self, table: &[u8]) -> Result<(), Qcow2Error> {
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
                    self.zero_run(guest_base, len, Mapping::Unallocated { host: None })?;
                }
                Some(offset) => {
                    if (l2_tables.len() as u64 + 1).saturating_mul(WANT_COST) > self.budget() {
                        return Err(Qcow2Error::MemoryBudget {
                            budget: self.budget(),
                            what: "the list of L2 tables",
                        });
                    }
                    l2_tables.push((offset, index, guest_base));
                }
            }
        }
        // One want per distinct table, however many L1 entries name it.
        l2_tables.sort_unstable();
        let mut grouped: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        for (offset, index, guest_base) in l2_tables {
            match grouped.last_mut() {
                Some((last, targets)) if *last == offset => targets.push((index, guest_base)),
                _ => grouped.push((offset, vec![(index, guest_base)])),
            }
        }
        self.l2_offsets = grouped.iter().map(|g| g.0).collect();
        self.summary.l2_tables = grouped.len() as u64;
        self.l2_pending = grouped.len() as u64;
        if self.l2_pending == 0 {
            self.mark_metadata_complete();
            return Ok(());
        }
        let cluster = self.header.cluster_size();
        for (offset, targets) in grouped {
            let buf = BytesMut::new();
            self.add_want(offset, offset + cluster, Claim::L2 { targets, buf })?;
        }
        Ok(())
    }

    fn budget(&self) -> u64 {
        self.max_wants as u64 * WANT_COST
    }

    /// Turns one L2 table into data wants, compressed wants and zero runs.
    fn parse_l2(&mut self, guest_base: u64, table: &[u8]) -> Result<(), Qcow2Error> {
        let cluster = self.header.cluster_size();
        let size = self.header.virtual_size;
        let entry_bytes = self.header.l2_entry_bytes() as usize;
        let mut runs = RunBuilder::default();
        for (j, entry) in table.chunks_exact(entry_bytes).enumerate() {
            let guest = guest_base + j as u64 * cluster;
            if guest >= size {
                break;
            }
            match l2_entry(&self.header, guest, entry)? {
                ClusterMapping::Whole(mapping) => {
                    let len = cluster.min(size - guest);
                    self.piece(&mut runs, guest, len, mapping)?;
                }
                ClusterMapping::Subclusters(maps) => {
                    let sub = cluster / SUBCLUSTERS;
                    for (k, mapping) in maps.into_iter().enumerate() {
                        let at = guest + k as u64 * sub;
                        if at >= size {
                            break;
                        }
                        self.piece(&mut runs, at, sub.min(size - at), mapping)?;
                    }
                }
            }
        }
        self.flush_run(runs.take())
    }

    /// One cluster or subcluster of an L2 table.
    fn piece(
        &mut self,
        runs: &mut RunBuilder,
        guest: u64,
        len: u64,
        mapping: Mapping,
    ) -> Result<(), Qcow2Error> {
        self.record_map(guest, len, mapping)?;
        match mapping {
            Mapping::Data { host } => {
                self.summary.allocated_bytes += len;
                self.check_not_metadata(guest, host, len)?;
                if let Some(done) = runs.push(Run::Data { guest, host, len }) {
                    self.flush_run(Some(done))?;
                }
            }
            Mapping::Zero { .. } | Mapping::Unallocated { .. } => {
                if let Some(done) = runs.push(Run::Zero { guest, len }) {
                    self.flush_run(Some(done))?;
                }
            }
            Mapping::Compressed { host, len: stored } => {
                self.summary.allocated_bytes += len;
                self.summary.compressed_clusters += 1;
                self.check_not_metadata(guest, host, 1)?;
                if let Some(done) = runs.take() {
                    self.flush_run(Some(done))?;
                }
                self.check_want_count("pending compressed clusters")?;
                self.add_want(
                    host,
                    host + stored,
                    Claim::Compressed {
                        guest,
                        host,
                        buf: BytesMut::new(),
                    },
                )?;
            }
        }
        Ok(())
    }

    fn flush_run(&mut self, run: Option<Run>) -> Result<(), Qcow2Error> {
        match run {
            None => Ok(()),
            Some(Run::Zero { guest, len }) => Ok(self.sink.write(Extent::zero(guest, len))?),
            Some(Run::Data { guest, host, len }) => {
                self.check_want_count("pending data mappings")?;
                self.add_want(host, host + len, Claim::Data { guest })
            }
        }
    }

    /// Refuses one more pending want once the budget's count is reached: every
    /// want costs memory until its bytes arrive, and a hostile L2 table can
    /// name the same far-away cluster many times.
    fn check_want_count(&self, what: &'static str) -> Result<(), Qcow2Error> {
        if self.wants.len() >= self.max_wants {
            return Err(Qcow2Error::MemoryBudget {
                budget: self.budget(),
                what,
            });
        }
        Ok(())
    }

    /// Adds a piece to the allocation map, when one is collected.
    fn record_map(&mut self, guest: u64, len: u64, mapping: Mapping) -> Result<(), Qcow2Error> {
        let full = match &mut self.map {
            Some(map) => !map.record(guest, len, mapping),
            None => false,
        };
        if full {
            return Err(Qcow2Error::MemoryBudget {
                budget: self.budget(),
                what: "the allocation map",
            });
        }
        Ok(())
    }

    fn zero_run(&mut self, guest: u64, len: u64, mapping: Mapping) -> Result<(), Qcow2Error> {
        self.record_map(guest, len, mapping)?;
        Ok(self.sink.write(Extent::zero(guest, len))?)
    }

    /// Refuses a data range that lies on the header, L1, refcount or L2 tables.
    fn check_not_metadata(&self, guest: u64, host: u64, len: u64) -> Result<(), Qcow2Error> {
        let cluster = self.header.cluster_size();
        let end = host + len;
        let overlaps = |start: u64, stop: u64| host < stop && start < end;
        let fail = |what| Err(Qcow2Error::DataOverlapsMetadata { guest, host, what });
        if overlaps(0, cluster) {
            return fail("header cluster");
        }
        let l1 = self.header.l1_table_offset;
        if overlaps(
            l1,
            l1 + self.header.l1_bytes_needed().next_multiple_of(cluster),
        ) {
            return fail("L1 table");
        }
        let rt = self.header.refcount_table_offset;
        if overlaps(rt, rt + self.header.refcount_table_bytes) {
            return fail("refcount table");
        }
        let first_candidate = self.l2_offsets.partition_point(|o| o + cluster <= host);
        if let Some(o) = self.l2_offsets.get(first_candidate) {
            if *o < end {
                return fail("L2 table");
            }
        }
        Ok(())
    }

    /// Decompresses a compressed cluster. At the end of the stream
    /// (`eof_end` = the end of the range the entry claims) a short input is
    /// fine if it still decompresses to a whole cluster; otherwise it is a
    /// truncation.
    fn inflate(
        &mut self,
        guest: u64,
        host: u64,
        input: &[u8],
        eof_end: Option<u64>,
    ) -> Result<(), Qcow2Error> {
        let cluster = self.header.cluster_size() as usize;
        let out = decompress_cluster(self.header.compression, input, cluster).map_err(|reason| {
            match eof_end {
                Some(end) => Qcow2Error::Truncated {
                    stream_end: self.cursor,
                    start: host,
                    end,
                    what: format!(
                        "the compressed cluster for guest offset {guest:#x} (only {} bytes present: {reason})",
                        input.len()
                    ),
                },
                None => Qcow2Error::BadCompressedCluster {
                    guest,
                    host,
                    reason,
                },
            }
        })?;
        let keep = (self.header.virtual_size - guest).min(cluster as u64) as usize;
        let mut out = Bytes::from(out);
        out.truncate(keep);
        Ok(self.sink.write(Extent::data(guest, out))?)
    }

    /// The stream ended: compressed clusters may end past EOF if they are
    /// complete; anything else still wanted means the image is truncated.
    fn finish_at_eof(&mut self) -> Result<(), Qcow2Error> {
        let wants = std::mem::take(&mut self.wants);
        for ((start, _), want) in wants {
            match want.claim {
                Claim::Compressed { guest, host, buf } if start >= host => {
                    self.inflate(guest, host, &buf, Some(want.end))?;
                }
                _ => {
                    return Err(Qcow2Error::Truncated {
                        stream_end: self.cursor,
                        start,
                        end: want.end,
                        what: want.describe(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// A run of consecutive guest bytes of one kind, built while walking an L2 table.
#[derive(Debug, Clone, Copy)]
enum Run {
    Zero { guest: u64, len: u64 },
    Data { guest: u64, host: u64, len: u64 },
}

/// Merges consecutive pieces into runs.
#[derive(Default)]
struct RunBuilder {
    current: Option<Run>,
}

impl RunBuilder {
    /// Adds a piece; returns the previous run when the piece does not extend it.
    fn push(&mut self, next: Run) -> Option<Run> {
        match (&mut self.current, next) {
            (Some(Run::Zero { guest, len }), Run::Zero { guest: g, len: l })
                if *guest + *len == g =>
            {
                *len += l;
                None
            }
            (
                Some(Run::Data { guest, host, len }),
                Run::Data {
                    guest: g,
                    host: h,
                    len: l,
                },
            ) if *guest + *len == g && *host + *len == h => {
                *len += l;
                None
            }
            _ => self.current.replace(next),
        }
    }

    fn take(&mut self) -> Option<Run> {
        self.current.take()
    }
}
