//! The forward-only engine: consumes an image once, in stream order, and emits guest
//! extents as the bytes go by (`architecture.md`, "Streaming qcow2 without scratch
//! space"). Moved here from the qcow2 reader, with the L1/L2 specifics left behind
//! in `format/qcow2`; a format drives it through [`TableFormat`] and [`Claims`].
//!
//! State, keyed by host offset:
//! - **wants**: ranges some parsed table has claimed — tables, data runs, compressed
//!   units — in a `BTreeMap` ordered by start. Bytes arriving inside a data want go
//!   straight to the sink; table and compressed wants are assembled, then parsed or
//!   decompressed *at once*, so that a table followed by its data in the same chunk
//!   claims that data before it passes.
//! - **recent chunks**: the current and previous chunk stay referenced, so a new want
//!   reaching a little backwards (compressed units sharing a sector, or compressed
//!   data just before its table) is served without copies.
//! - **retained**: bytes nobody has claimed yet, kept (memory, then spill file) until
//!   every table has been read; then dropped. Bytes inside declared garbage ranges
//!   are never kept.
//!
//! "Every table has been read" is when no table want is pending: a table can only be
//! named by the header or by another table, so once none is outstanding no more
//! claims can come.
//!
//! A want that reaches bytes that are neither recent nor retained, or that the
//! stream never delivers, is an error naming the offsets — never zeroes.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::codec::{Codec, Decoders};
use super::error::{Fault, ImageError, StreamError};
use super::inflate_pool::{Finished, InflatePool};
use super::map::{MapBuilder, MapEntry, Mapping};
use super::ranges::RangeSet;
use super::retained::Retained;
use super::runs::{Run, RunBuilder};
use super::StreamOptions;
use crate::extent::Extent;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;

/// Bookkeeping bytes charged to the memory budget per pending want.
const WANT_COST: u64 = 128;
/// The largest piece served at once from bytes the stream has passed.
const PAST_PIECE: u64 = 1 << 20;

/// Output per batch handed to the inflate pool (one message and wake-up each).
const INFLATE_BATCH_BYTES: u64 = 1 << 20;

/// A format the engine can stream: it names tables, and turns each completed table
/// into claims.
pub trait TableFormat {
    /// Short name for messages and `info`: `"qcow2"`, `"vmdk"` ...
    fn name(&self) -> &'static str;
    /// Size of the virtual disk; nothing is written at or past it.
    fn virtual_size(&self) -> u64;
    /// Registers the first claims: the tables the header names, metadata and
    /// garbage ranges.
    fn start(&mut self, claims: &mut Claims<'_>) -> Result<(), Fault>;
    /// The table claimed with `tag` has all its bytes.
    fn table(&mut self, tag: u64, bytes: &[u8], claims: &mut Claims<'_>) -> Result<(), Fault>;
    /// Names a table in messages ("the L2 table of L1 entry 3").
    fn describe_table(&self, tag: u64) -> String;
    /// The stream ended and every claim was served: the format's last checks.
    fn finish(&mut self, _claims: &mut Claims<'_>) -> Result<(), Fault> {
        Ok(())
    }
}

/// A compressed unit to claim: `stored` bytes at `host` decompress to `unit_size`
/// bytes of guest data at `guest`.
#[derive(Debug, Clone, Copy)]
pub struct CompressedUnit {
    /// Guest offset of the unit.
    pub guest: u64,
    /// Host offset of the compressed bytes.
    pub host: u64,
    /// Bytes to read (an upper bound where the format says so; the stream may end
    /// earlier).
    pub stored: u64,
    /// Decompressed size of a whole unit.
    pub unit_size: u64,
    /// The encoding.
    pub codec: Codec,
    /// What the unit is called in messages: `"cluster"`, `"grain"`.
    pub unit: &'static str,
}

/// What a claimed host range is for.
enum Claim {
    /// A table of the format, identified by its tag.
    Table {
        tag: u64,
        buf: BytesMut,
        role: TableRole,
    },
    /// Uncompressed data; `guest` is where the want's current start goes.
    Data { guest: u64 },
    /// A compressed unit being assembled.
    Compressed { unit: CompressedUnit, buf: BytesMut },
}

/// How a table counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableRole {
    /// The image is truncated without it; metadata is incomplete until it is read.
    Required,
    /// The stream may end before any of its bytes (a trailing marker).
    OptionalAtEnd,
    /// Read for checks only: it does not hold back the end of the metadata, and it
    /// is dropped if the stream ends first.
    Side,
}

/// A claimed range `[key.0, end)`.
struct Want {
    end: u64,
    /// Length of the whole range (assembled claims complete at this length).
    total: u64,
    claim: Claim,
}

/// What the engine counted while reading an image.
#[derive(Debug, Clone, Default)]
pub struct EngineSummary {
    /// Guest bytes stored in the image (data and compressed units).
    pub allocated_bytes: u64,
    /// Compressed units.
    pub compressed_units: u64,
    /// Tables read.
    pub tables: u64,
    /// Length of the (decoded) image stream.
    pub stream_len: u64,
    /// Most unclaimed bytes held in memory at once.
    pub retained_peak: u64,
    /// Unclaimed bytes written to the spill file.
    pub spilled_bytes: u64,
    /// The allocation map, when asked for.
    pub map: Option<Vec<MapEntry>>,
    /// False when reading stopped once the tables were in (metadata only).
    pub read_to_end: bool,
}

/// The engine's state, and the calls a format makes to claim host ranges.
pub struct Claims<'a> {
    virtual_size: u64,
    sink: &'a mut dyn ExtentSink,
    wants: BTreeMap<(u64, u64), Want>,
    next_seq: u64,
    max_wants: usize,
    /// Bytes before this stream offset have been dispatched.
    cursor: u64,
    recent: VecDeque<(u64, Bytes)>,
    retained: Retained,
    metadata_complete: bool,
    tables_pending: u64,
    /// Tags of side tables (the only role that changes how a completed table counts).
    roles: std::collections::HashMap<u64, TableRole>,
    /// Tables complete but not yet handed to the format.
    ready: VecDeque<(u64, BytesMut)>,
    metadata: RangeSet,
    garbage: RangeSet,
    map: Option<MapBuilder>,
    /// Bytes reserved for tables and compressed units being assembled.
    assembling: u64,
    runs: RunBuilder,
    summary: EngineSummary,
    /// Contexts for units decompressed on this thread.
    decoders: Decoders,
    /// Threads for compressed units (1: decompress here, no pool).
    inflate_threads: usize,
    pool: Option<InflatePool>,
    stages: Option<std::sync::Arc<crate::stages::Stages>>,
    /// See [`StreamOptions::metadata_only`].
    metadata_only: bool,
    /// The format said every table it has is claimed (see
    /// [`Claims::all_tables_claimed`]).
    tables_all_claimed: bool,
    /// Reading stopped once the tables were in (metadata only).
    stopped_early: bool,
}

/// Streams one image of format `F` from `stream` into `sink`; the first `cursor`
/// bytes (the header the format was parsed from) were already consumed.
pub fn run_engine<F: TableFormat>(
    format: &mut F,
    cursor: u64,
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<EngineSummary, ImageError> {
    let name = format.name();
    let mut engine = Engine {
        claims: Claims::new(format.virtual_size(), cursor, sink, options),
        format,
    };
    engine.run(stream).map_err(|f| f.into_image_error(name))
}

struct Engine<'f, 's, F> {
    format: &'f mut F,
    claims: Claims<'s>,
}

impl<F: TableFormat> Engine<'_, '_, F> {
    fn run(&mut self, stream: &mut ChunkStream) -> Result<EngineSummary, Fault> {
        self.claims.sink.set_size(self.claims.virtual_size)?;
        self.format.start(&mut self.claims)?;
        self.after_callback()?;
        let mut read_to_end = true;
        while !self.claims.only_metadata_and_done() {
            let Some(chunk) = stream.next_chunk().map_err(StreamError::Read)? else {
                break;
            };
            self.consume_chunk(chunk)?;
        }
        if self.claims.only_metadata_and_done() {
            read_to_end = false;
            self.claims.stopped_early = true;
        }
        self.finish_at_eof()?;
        self.claims.drain_pool()?;
        self.format.finish(&mut self.claims)?;
        self.claims.flush_runs()?;
        let claims = &mut self.claims;
        let mut summary = std::mem::take(&mut claims.summary);
        summary.stream_len = claims.cursor;
        summary.retained_peak = claims.retained.peak_memory();
        summary.spilled_bytes = claims.retained.spilled();
        summary.map = claims.map.take().map(MapBuilder::finish);
        summary.read_to_end = read_to_end;
        Ok(summary)
    }

    /// Hands completed tables to the format, in the order they completed, until
    /// none is left (a table's claims may be served from the past and complete more
    /// tables); then checks whether the metadata is complete.
    fn after_callback(&mut self) -> Result<(), Fault> {
        self.claims.flush_runs()?;
        while let Some((tag, buf)) = self.claims.ready.pop_front() {
            self.claims.release_assembly(buf.len() as u64);
            let role = self.claims.roles.remove(&tag);
            self.format.table(tag, &buf, &mut self.claims)?;
            self.claims.flush_runs()?;
            if role != Some(TableRole::Side) {
                self.claims.tables_pending -= 1;
            }
            self.claims.summary.tables += 1;
        }
        if self.claims.tables_pending == 0 && !self.claims.metadata_complete {
            self.claims.metadata_complete = true;
            self.claims.retained.clear();
        }
        Ok(())
    }

    /// Dispatches one chunk: claimed bytes to their wants, the rest retained (or
    /// dropped once the metadata is complete).
    fn consume_chunk(&mut self, chunk: Bytes) -> Result<(), Fault> {
        let claims = &mut self.claims;
        let chunk_start = claims.cursor;
        let chunk_end = chunk_start + chunk.len() as u64;
        claims.recent.push_back((chunk_start, chunk.clone()));
        while claims.recent.len() > 2 {
            claims.recent.pop_front();
        }
        loop {
            let claims = &mut self.claims;
            let Some(entry) = claims.wants.first_entry() else {
                break;
            };
            let start = entry.key().0;
            if start >= chunk_end {
                break;
            }
            let (_, mut want) = entry.remove_entry();
            debug_assert!(start >= chunk_start);
            if start > claims.cursor {
                let from = (claims.cursor - chunk_start) as usize;
                let to = (start - chunk_start) as usize;
                claims.unclaimed(claims.cursor, &chunk[from..to])?;
                claims.cursor = start;
            }
            let take_end = want.end.min(chunk_end);
            let piece =
                chunk.slice((start - chunk_start) as usize..(take_end - chunk_start) as usize);
            claims.cursor = claims.cursor.max(take_end);
            if claims.feed(&mut want, piece)? {
                claims.complete(want)?;
                self.after_callback()?;
            } else {
                claims.insert_want(take_end, want);
            }
        }
        let claims = &mut self.claims;
        if chunk_end > claims.cursor {
            let from = (claims.cursor - chunk_start) as usize;
            claims.unclaimed(claims.cursor, &chunk[from..])?;
            claims.cursor = chunk_end;
        }
        claims.collect_inflated()?;
        Ok(())
    }

    /// The stream ended: compressed units may end past EOF if they are complete;
    /// an optional table of which nothing arrived is dropped; anything else still
    /// wanted means the image is truncated.
    fn finish_at_eof(&mut self) -> Result<(), Fault> {
        let wants = std::mem::take(&mut self.claims.wants);
        for ((start, _), want) in wants {
            match want.claim {
                Claim::Compressed { .. } if self.claims.metadata_only => {}
                Claim::Compressed { unit, buf } => {
                    self.claims.inflate(unit, buf.freeze(), Some(want.end))?;
                }
                Claim::Table {
                    role: TableRole::Side,
                    ..
                } => {}
                Claim::Table {
                    role: TableRole::OptionalAtEnd,
                    ref buf,
                    ..
                } if buf.is_empty() && start >= self.claims.cursor => {}
                _ => {
                    return Err(StreamError::Truncated {
                        stream_end: self.claims.cursor,
                        start,
                        end: want.end,
                        what: self.describe(&want),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    fn describe(&self, want: &Want) -> String {
        match &want.claim {
            Claim::Table { tag, .. } => self.format.describe_table(*tag),
            other => describe_claim(other),
        }
    }
}

fn describe_claim(claim: &Claim) -> String {
    match claim {
        Claim::Table { tag, .. } => format!("table {tag}"),
        Claim::Data { guest } => format!("data for guest offset {guest:#x}"),
        Claim::Compressed { unit, .. } => {
            format!(
                "the compressed {} for guest offset {:#x}",
                unit.unit, unit.guest
            )
        }
    }
}

impl<'a> Claims<'a> {
    fn new(
        virtual_size: u64,
        cursor: u64,
        sink: &'a mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Self {
        Claims {
            virtual_size,
            sink,
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
            tables_pending: 0,
            roles: std::collections::HashMap::new(),
            ready: VecDeque::new(),
            metadata: RangeSet::default(),
            garbage: RangeSet::default(),
            map: options
                .collect_map
                .then(|| MapBuilder::within(options.memory_budget)),
            assembling: 0,
            runs: RunBuilder::default(),
            summary: EngineSummary::default(),
            decoders: Decoders::default(),
            inflate_threads: match options.inflate_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            pool: None,
            stages: options.stages.clone(),
            metadata_only: options.metadata_only,
            tables_all_claimed: false,
            stopped_early: false,
        }
    }

    /// Reading only tables, with every table claimed: data claims are not needed
    /// (unclaimed bytes are dropped). Before every table is claimed, data is still
    /// claimed, but its bytes are dropped as they pass instead of kept as unclaimed
    /// bytes a later table might need.
    fn skip_data_claims(&self) -> bool {
        self.metadata_only && self.tables_all_claimed
    }

    /// Reading only tables, and every table is in: nothing more to read.
    fn only_metadata_and_done(&self) -> bool {
        self.metadata_only && self.metadata_complete && self.wants.is_empty()
    }

    /// True in [`TableFormat::finish`] when reading stopped once the tables were in
    /// (metadata only): checks of what follows them (a trailing footer) do not apply.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// The format tells the engine that every table the image has is now claimed
    /// (qcow2: once L1 has named the L2 tables). Unclaimed bytes can then only be
    /// data, which a metadata-only read does not keep.
    pub fn all_tables_claimed(&mut self) {
        self.tables_all_claimed = true;
    }

    /// The memory budget bookkeeping is held to, in bytes.
    pub fn budget(&self) -> u64 {
        self.max_wants as u64 * WANT_COST
    }

    /// Bookkeeping bytes one pending claim costs against [`budget`](Self::budget).
    pub fn claim_cost(&self) -> u64 {
        WANT_COST
    }

    /// The stream offset up to which bytes have been dispatched.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Claims `[start, start + len)` as the table `tag`; the format's
    /// [`TableFormat::table`] gets its bytes when all have arrived.
    pub fn want_table(&mut self, start: u64, len: u64, tag: u64) -> Result<(), StreamError> {
        self.add_table(start, len, tag, TableRole::Required)
    }

    /// Like [`want_table`](Self::want_table), for a table the stream may end
    /// before (a trailing marker): if no byte of it arrives, it is dropped.
    pub fn want_optional_table(
        &mut self,
        start: u64,
        len: u64,
        tag: u64,
    ) -> Result<(), StreamError> {
        self.add_table(start, len, tag, TableRole::OptionalAtEnd)
    }

    /// Claims a table that is read for checks only (a qcow2 refcount table): it
    /// does not hold back the end of the metadata, and is dropped if the stream
    /// ends before it is complete. Its tag must differ from every other table's.
    pub fn want_side_table(&mut self, start: u64, len: u64, tag: u64) -> Result<(), StreamError> {
        self.roles.insert(tag, TableRole::Side);
        self.add_table(start, len, tag, TableRole::Side)
    }

    fn add_table(
        &mut self,
        start: u64,
        len: u64,
        tag: u64,
        role: TableRole,
    ) -> Result<(), StreamError> {
        self.check_want_count("pending tables")?;
        if role != TableRole::Side {
            self.tables_pending += 1;
        }
        let end = start.checked_add(len).ok_or(StreamError::MemoryBudget {
            budget: self.budget(),
            what: "a table past the end of the address space",
        })?;
        self.add_want(
            start,
            end,
            Claim::Table {
                tag,
                buf: BytesMut::new(),
                role,
            },
        )
    }

    /// Declares `[start, end)` metadata: a later data or compressed claim landing
    /// on it is refused naming `what`.
    pub fn add_metadata(
        &mut self,
        start: u64,
        end: u64,
        what: &'static str,
    ) -> Result<(), StreamError> {
        self.check_range_count(&self.metadata)?;
        if !self.metadata.insert(start, end, what) {
            return Err(StreamError::MemoryBudget {
                budget: self.budget(),
                what: "the list of large metadata ranges",
            });
        }
        Ok(())
    }

    /// Declares `[start, end)` garbage: unclaimed bytes there are dropped, never kept.
    pub fn add_garbage(&mut self, start: u64, end: u64) -> Result<(), StreamError> {
        self.check_range_count(&self.garbage)?;
        if !self.garbage.insert(start, end, "garbage") {
            return Err(StreamError::MemoryBudget {
                budget: self.budget(),
                what: "the list of large garbage ranges",
            });
        }
        Ok(())
    }

    fn check_range_count(&self, set: &RangeSet) -> Result<(), StreamError> {
        if set.len() as u64 * WANT_COST >= self.budget() {
            return Err(StreamError::MemoryBudget {
                budget: self.budget(),
                what: "the list of metadata ranges",
            });
        }
        Ok(())
    }

    /// Guest `[guest, guest + len)` is stored at host `host`: its bytes go to the
    /// sink as they arrive. Consecutive pieces are merged into one claim.
    pub fn data(&mut self, guest: u64, host: u64, len: u64) -> Result<(), StreamError> {
        self.check_guest(guest, len)?;
        self.record_map(guest, len, Mapping::Data { host })?;
        self.summary.allocated_bytes += len;
        if let Some(what) = self.metadata.overlapping(host, host + len) {
            return Err(StreamError::DataOverlapsMetadata { guest, host, what });
        }
        if self.skip_data_claims() {
            return Ok(());
        }
        if let Some(done) = self.runs.push(Run::Data { guest, host, len }) {
            self.flush_run(done)?;
        }
        Ok(())
    }

    /// Guest `[guest, guest + len)` reads as zeroes; `mapping` is what the map shows
    /// (unallocated, or zero by flag).
    pub fn zero(&mut self, guest: u64, len: u64, mapping: Mapping) -> Result<(), StreamError> {
        self.check_guest(guest, len)?;
        self.record_map(guest, len, mapping)?;
        if let Some(done) = self.runs.push(Run::Zero { guest, len }) {
            self.flush_run(done)?;
        }
        Ok(())
    }

    /// Guest bytes known already (inline in a table): written at once.
    pub fn literal(&mut self, guest: u64, bytes: Bytes) -> Result<(), StreamError> {
        self.check_guest(guest, bytes.len() as u64)?;
        self.flush_runs()?;
        Ok(self.sink.write(Extent::data(guest, bytes))?)
    }

    /// A compressed unit: assembled, decompressed and written when its bytes are in.
    pub fn compressed(&mut self, unit: CompressedUnit) -> Result<(), StreamError> {
        let len = unit
            .unit_size
            .min(self.virtual_size.saturating_sub(unit.guest));
        self.check_guest(unit.guest, len)?;
        self.record_map(
            unit.guest,
            len,
            Mapping::Compressed {
                host: unit.host,
                len: unit.stored,
            },
        )?;
        self.summary.allocated_bytes += len;
        self.summary.compressed_units += 1;
        if let Some(what) = self.metadata.overlapping(unit.host, unit.host + 1) {
            return Err(StreamError::DataOverlapsMetadata {
                guest: unit.guest,
                host: unit.host,
                what,
            });
        }
        if self.skip_data_claims() {
            return Ok(());
        }
        self.flush_runs()?;
        self.check_want_count("pending compressed units")?;
        let end = unit.host.saturating_add(unit.stored);
        self.add_want(
            unit.host,
            end,
            Claim::Compressed {
                unit,
                buf: BytesMut::new(),
            },
        )
    }

    /// Writes the run being merged, if any.
    pub fn flush_runs(&mut self) -> Result<(), StreamError> {
        match self.runs.take() {
            Some(run) => self.flush_run(run),
            None => Ok(()),
        }
    }

    fn check_guest(&self, guest: u64, len: u64) -> Result<(), StreamError> {
        match guest.checked_add(len) {
            Some(end) if end <= self.virtual_size => Ok(()),
            _ => Err(StreamError::BeyondVirtualSize {
                guest,
                len,
                virtual_size: self.virtual_size,
            }),
        }
    }

    fn flush_run(&mut self, run: Run) -> Result<(), StreamError> {
        match run {
            Run::Zero { guest, len } => Ok(self.sink.write(Extent::zero(guest, len))?),
            Run::Data { guest, host, len } => {
                self.check_want_count("pending data mappings")?;
                self.add_want(host, host + len, Claim::Data { guest })
            }
        }
    }

    /// Refuses one more pending want once the budget's count is reached: every want
    /// costs memory until its bytes arrive, and a hostile table can name the same
    /// far-away unit many times.
    fn check_want_count(&self, what: &'static str) -> Result<(), StreamError> {
        if self.wants.len() >= self.max_wants {
            return Err(StreamError::MemoryBudget {
                budget: self.budget(),
                what,
            });
        }
        Ok(())
    }

    fn record_map(&mut self, guest: u64, len: u64, mapping: Mapping) -> Result<(), StreamError> {
        let full = match &mut self.map {
            Some(map) => !map.record(guest, len, mapping),
            None => false,
        };
        if full {
            return Err(StreamError::MemoryBudget {
                budget: self.budget(),
                what: "the allocation map",
            });
        }
        Ok(())
    }

    /// Gives a want the next bytes of its range; true when a table or compressed
    /// unit is complete (a data want is done when its range is).
    fn feed(&mut self, want: &mut Want, piece: Bytes) -> Result<bool, StreamError> {
        match &mut want.claim {
            Claim::Data { guest } => {
                let at = *guest;
                *guest += piece.len() as u64;
                if !self.metadata_only {
                    self.sink.write(Extent::data(at, piece))?;
                }
                Ok(false)
            }
            Claim::Table { buf, .. } | Claim::Compressed { buf, .. } => {
                if buf.is_empty() {
                    // Buffers are taken only when bytes arrive, and charged to the
                    // budget, so no header or table can make us allocate for ranges
                    // that never come.
                    self.assembling += want.total;
                    if self.assembling > self.budget() {
                        return Err(StreamError::MemoryBudget {
                            budget: self.budget(),
                            what: "tables and compressed units being assembled",
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
    fn unclaimed(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StreamError> {
        if self.metadata_complete || bytes.is_empty() {
            return Ok(());
        }
        if self.metadata_only && self.tables_all_claimed {
            return Ok(()); // only data can lie there, and data is not read
        }
        let end = offset + bytes.len() as u64;
        if self.garbage.is_empty() {
            return self.retained.keep(offset, bytes);
        }
        let mut kept = Ok(());
        let retained = &mut self.retained;
        self.garbage.uncovered(offset, end, |s, e| {
            if kept.is_ok() {
                kept = retained.keep(s, &bytes[(s - offset) as usize..(e - offset) as usize]);
            }
        });
        kept
    }

    /// Registers a claim on `[start, end)`. Any part already passed is served at
    /// once from the recent chunks or the retained bytes.
    fn add_want(&mut self, start: u64, end: u64, claim: Claim) -> Result<(), StreamError> {
        let mut want = Want {
            end,
            total: end - start,
            claim,
        };
        if start >= self.cursor {
            self.insert_want(start, want);
            return Ok(());
        }
        // Served in pieces of at most a chunk, so that a long run mapped onto bytes
        // already passed never needs one buffer of its whole length.
        let past_end = end.min(self.cursor);
        let mut at = start;
        while at < past_end {
            let piece_end = past_end.min(at + PAST_PIECE);
            let piece =
                self.past_bytes(at, piece_end)
                    .ok_or_else(|| StreamError::NotRetained {
                        start: at,
                        end: piece_end,
                        what: describe_claim(&want.claim),
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
    fn past_bytes(&self, start: u64, end: u64) -> Option<Result<Bytes, StreamError>> {
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

    /// A table or compressed unit has all its bytes: a table waits for the format
    /// (in `ready`), a compressed unit is decompressed at once.
    fn complete(&mut self, want: Want) -> Result<(), StreamError> {
        match want.claim {
            Claim::Table { tag, buf, .. } => {
                self.ready.push_back((tag, buf));
                Ok(())
            }
            Claim::Compressed { unit, buf } => {
                self.release_assembly(buf.len() as u64);
                if self.metadata_only {
                    return Ok(()); // counted when claimed; not decompressed
                }
                self.inflate(unit, buf.freeze(), None)
            }
            Claim::Data { .. } => Ok(()),
        }
    }

    fn release_assembly(&mut self, reserved: u64) {
        self.assembling = self.assembling.saturating_sub(reserved);
    }

    /// Decompresses a compressed unit: on the pool when there is one (the result is
    /// written when it comes back), here otherwise. At the end of the stream
    /// (`eof_end` = the end of the range the entry claims) a short input is fine if
    /// it still decompresses; otherwise it is a truncation.
    fn inflate(
        &mut self,
        unit: CompressedUnit,
        input: Bytes,
        eof_end: Option<u64>,
    ) -> Result<(), StreamError> {
        let keep = (self.virtual_size - unit.guest).min(unit.unit_size) as usize;
        if eof_end.is_none() && self.inflate_threads > 1 {
            if self.pool.is_none() {
                // Batches of about a MiB of output; two in flight per thread keep
                // the threads busy; the budget bounds them (input and output of
                // each unit, and the batch being filled).
                let unit_size = unit.unit_size.max(1);
                let batch_units = (INFLATE_BATCH_BYTES / unit_size).clamp(1, 64);
                let per_batch = 2 * unit_size * batch_units;
                let by_budget = (self.budget() / per_batch).saturating_sub(1).max(1) as usize;
                let max_batches = (self.inflate_threads * 2).min(by_budget);
                self.pool = Some(
                    InflatePool::start(
                        self.inflate_threads,
                        batch_units as usize,
                        max_batches,
                        self.stages.clone(),
                    )
                    .map_err(StreamError::Threads)?,
                );
            }
            let mut finished = Vec::new();
            self.pool
                .as_mut()
                .expect("started above")
                .submit(unit, input, keep, &mut finished);
            return self.write_inflated(finished);
        }
        let result =
            self.decoders
                .decompress_kept(unit.codec, &input, unit.unit_size as usize, keep);
        match (result, eof_end) {
            (Ok(out), _) => Ok(self.sink.write(Extent::data(unit.guest, out))?),
            (Err(reason), Some(end)) => Err(StreamError::Truncated {
                stream_end: self.cursor,
                start: unit.host,
                end,
                what: format!(
                    "the compressed {} for guest offset {:#x} (only {} bytes present: {reason})",
                    unit.unit,
                    unit.guest,
                    input.len()
                ),
            }),
            (Err(reason), None) => Err(bad_compressed(unit, reason)),
        }
    }

    /// Writes units the pool has finished, without waiting.
    fn collect_inflated(&mut self) -> Result<(), StreamError> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(());
        };
        let mut finished = Vec::new();
        pool.collect_ready(&mut finished);
        self.write_inflated(finished)
    }

    /// Waits for every unit on the pool and writes them.
    fn drain_pool(&mut self) -> Result<(), StreamError> {
        let Some(mut pool) = self.pool.take() else {
            return Ok(());
        };
        let mut finished = Vec::new();
        pool.finish(&mut finished);
        self.write_inflated(finished)
    }

    fn write_inflated(&mut self, finished: Vec<Finished>) -> Result<(), StreamError> {
        for done in finished {
            match done.result {
                Ok(out) => self.sink.write(Extent::data(done.unit.guest, out))?,
                Err(reason) => return Err(bad_compressed(done.unit, reason)),
            }
        }
        Ok(())
    }
}

fn bad_compressed(unit: CompressedUnit, reason: String) -> StreamError {
    StreamError::BadCompressed {
        unit: unit.unit,
        guest: unit.guest,
        host: unit.host,
        reason,
    }
}
