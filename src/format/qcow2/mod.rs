//! The qcow2 reader, written for a forward-only stream on the shared engine
//! (`format/engine`, which took over the streaming machinery that used to live
//! here: wants, retention, runs, the map, codecs).
//!
//! - `header`: cluster 0, validated before anything else is trusted.
//! - `table`: L1/L2 entry decoding and per-entry checks.
//! - `tables`: the engine's [`TableFormat`](crate::format::engine::TableFormat):
//!   which tables to read and what their entries claim.
//! - `error`: every qcow2-specific refusal.

mod error;
pub mod header;
pub mod table;
mod tables;
#[cfg(test)]
mod tests;

pub use error::Qcow2Error;
pub use header::{ClusterCompression, Header};

use crate::format::engine::{run_engine, ImageError, StreamError, StreamOptions};
use crate::format::registry::ImageReader;
use crate::format::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;
use tables::Qcow2Tables;

/// The qcow2 entry of the format registry.
pub struct Qcow2Reader;

impl ImageReader for Qcow2Reader {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    /// "QFI\xfb", except version 1 (the older qcow format); "QFI" with a wrong
    /// fourth byte too, so that the reader refuses the bad magic instead of the
    /// bytes being imported as raw (no boot sector or file system starts "QFI").
    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"QFI") && head.get(4..8) != Some(&[0, 0, 0, 1])
    }

    fn convert(
        &self,
        stream: &mut ChunkStream,
        sink: &mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Result<ImageSummary, ImageError> {
        convert_stream(stream, sink, options)
    }
}

/// Reads a whole qcow2 image from `stream`, writing its guest content to `sink`.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let read_error = |e| ImageError::stream("qcow2", StreamError::Read(e));
    let head = stream.peek(header::V2_HEADER_LEN).map_err(read_error)?;
    let cluster_bits = head
        .get(20..24)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .filter(|bits| (9..=21).contains(bits))
        .unwrap_or(9);
    let cluster0 = stream.read_up_to(1 << cluster_bits).map_err(read_error)?;
    let header = Header::parse(&cluster0).map_err(|e| ImageError::format("qcow2", e))?;
    if header.is_marked_corrupt() {
        tracing::warn!("the image is marked corrupt; converting anyway, every mapping is checked");
    }
    let mut tables = Qcow2Tables::new(header);
    let engine = run_engine(&mut tables, cluster0.len() as u64, stream, sink, options)?;
    let h = tables.header();
    let compressed = engine.compressed_units;
    Ok(ImageSummary::from_engine("qcow2", h.virtual_size, engine)
        .with_subformat(format!("v{}", h.version))
        .detail("version", "qcow2 version", h.version)
        .detail("cluster_size", "cluster size", h.cluster_size())
        .detail("features", "features", h.feature_names())
        .detail(
            "cluster_compression",
            "cluster compression",
            serde_json::json!(h.compression),
        )
        .detail("refcount_bits", "refcount bits", 1u64 << h.refcount_order)
        .detail("l2_tables", "L2 tables", tables.l2_tables())
        .detail("compressed_clusters", "compressed clusters", compressed)
        .detail("snapshots", "internal snapshots", h.nb_snapshots))
}
