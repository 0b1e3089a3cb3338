//! The qcow2 reader, written for a forward-only stream.
//!
//! - `header`: cluster 0, validated before anything else is trusted.
//! - `table`: L1/L2 entry decoding and per-entry checks.
//! - `reader`: the streaming engine that matches arriving bytes to the ranges
//!   the tables claim.
//! - `retained`: unclaimed bytes kept (memory, then spill) until all L2 tables
//!   are known.
//! - `compressed`: one compressed cluster, deflate or zstd.
//! - `map`: the allocation map in `qemu-img map` shape.

mod compressed;
mod error;
pub mod header;
pub mod map;
mod reader;
mod retained;
pub mod table;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use error::Qcow2Error;
pub use header::{ClusterCompression, Header};
pub use map::MapEntry;

use crate::sink::ExtentSink;
use crate::stream::ChunkStream;

/// Default for [`StreamOptions::memory_budget`]: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 64 << 20;

/// How the reader may use memory and disk.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Bytes of unclaimed image data held in memory before spilling (and the
    /// bound for bookkeeping of pending tables and mappings).
    pub memory_budget: u64,
    /// Where the spill file goes.
    pub scratch_dir: PathBuf,
    /// Whether a spill file may be made at all. Without it, an image that
    /// needs more than the memory budget is refused with
    /// [`Qcow2Error::ScratchRequired`] (CDI then mounts scratch space).
    pub spill_allowed: bool,
    /// Build the allocation map (for `info --map`).
    pub collect_map: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            memory_budget: DEFAULT_MEMORY_BUDGET,
            scratch_dir: std::env::temp_dir(),
            spill_allowed: true,
            collect_map: false,
        }
    }
}

/// What reading a qcow2 image found.
#[derive(Debug, Clone)]
pub struct Qcow2Summary {
    /// The validated header.
    pub header: Header,
    /// Guest bytes stored in the image (data and compressed clusters).
    pub allocated_bytes: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
    /// Distinct L2 tables.
    pub l2_tables: u64,
    /// Length of the (decoded) image stream.
    pub stream_len: u64,
    /// Most unclaimed bytes held in memory at once.
    pub retained_peak: u64,
    /// Unclaimed bytes written to the spill file.
    pub spilled_bytes: u64,
    /// The allocation map, when asked for.
    pub map: Option<Vec<MapEntry>>,
}

impl Qcow2Summary {
    fn new(header: Header) -> Self {
        Qcow2Summary {
            header,
            allocated_bytes: 0,
            compressed_clusters: 0,
            l2_tables: 0,
            stream_len: 0,
            retained_peak: 0,
            spilled_bytes: 0,
            map: None,
        }
    }
}

/// Reads a whole qcow2 image from `stream`, writing its guest content to `sink`.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<Qcow2Summary, Qcow2Error> {
    let head = stream
        .peek(header::V2_HEADER_LEN)
        .map_err(Qcow2Error::Read)?;
    let cluster_bits = head
        .get(20..24)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .filter(|bits| (9..=21).contains(bits))
        .unwrap_or(9);
    let cluster0 = stream
        .read_up_to(1 << cluster_bits)
        .map_err(Qcow2Error::Read)?;
    let header = Header::parse(&cluster0)?;
    if header.is_marked_corrupt() {
        tracing::warn!("the image is marked corrupt; converting anyway, every mapping is checked");
    }
    reader::Engine::new(header, cluster0.len() as u64, sink, options).run(stream)
}
