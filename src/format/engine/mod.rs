//! The streaming engine every table-mapped format plugs into (issue 7's design
//! step). A format parses its header from the first bytes, then drives the engine
//! through [`TableFormat`]: it names the tables the header points to, and turns each
//! completed table into claims on [`Claims`] — host range to guest range
//! ([`Claims::data`]), zeroes ([`Claims::zero`]), a compressed unit with its codec
//! ([`Claims::compressed`]), more tables, metadata ranges that data must not land
//! on, and garbage that is never kept. The engine owns everything that does not
//! depend on the format: wants keyed by host offset, assembled versus streamed
//! claims, the recent-chunk window, retained bytes (memory, then a spill file),
//! run merging, truncation errors, metadata-overlap checks, the allocation map and
//! the scratch-required policy.
//!
//! What moved here from `format/qcow2` and why: `reader.rs` became [`core`] (the L1
//! and L2 parsing stayed in qcow2's `tables.rs`), `retained.rs`, `map.rs` and
//! `compressed.rs` (now [`codec`], which also has VMDK's zlib grains) moved whole,
//! and the error variants that are not about qcow2 became [`StreamError`]: so that
//! VMDK, VHD, VHDX and VDI get the same guarantees from the same code.
//!
//! - `core`: the engine and the claim calls.
//! - `codec`: decompressing one unit.
//! - `inflate_pool`: decompressing units on other threads.
//! - `retained`: unclaimed bytes.
//! - `ranges`: metadata and garbage ranges.
//! - `runs`: merging pieces into runs.
//! - `map`: the allocation map.
//! - `error`: [`StreamError`] and the format-naming [`ImageError`].

pub mod codec;
mod core;
pub mod error;
mod inflate_pool;
pub mod map;
mod ranges;
mod retained;
mod runs;

use std::path::PathBuf;

pub use self::core::{run_engine, Claims, CompressedUnit, EngineSummary, TableFormat};
pub use codec::Codec;
pub use error::{Fault, ImageError, ImageErrorKind, StreamError};
pub use map::{MapEntry, Mapping};

/// Default for [`StreamOptions::memory_budget`]: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 64 << 20;

/// How a reader may use memory and disk.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Bytes of unclaimed image data held in memory before spilling (and the bound
    /// for bookkeeping of pending tables and mappings).
    pub memory_budget: u64,
    /// Where the spill file goes.
    pub scratch_dir: PathBuf,
    /// Whether a spill file may be made at all. Without it, an image that needs
    /// more than the memory budget is refused with
    /// [`StreamError::ScratchRequired`] (CDI then mounts scratch space).
    pub spill_allowed: bool,
    /// Build the allocation map (for `info --map`).
    pub collect_map: bool,
    /// Threads that decompress compressed units: 0 = one per available core (as
    /// the CPU quota allows), 1 = on the reader's thread, no pool.
    pub inflate_threads: usize,
    /// Read only the tables (`info` without `--map`): data and compressed units
    /// are counted and checked but not read, and the stream is left once every
    /// table is in. Nothing is written to the sink but zeroes.
    pub metadata_only: bool,
    /// Where the inflate threads count their busy and idle time.
    pub stages: Option<std::sync::Arc<crate::stages::Stages>>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            memory_budget: DEFAULT_MEMORY_BUDGET,
            scratch_dir: std::env::temp_dir(),
            spill_allowed: true,
            collect_map: false,
            inflate_threads: 0,
            metadata_only: false,
            stages: None,
        }
    }
}
