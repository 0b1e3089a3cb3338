//! The VDI (VirtualBox) reader: static and dynamic images with 1 MiB blocks, on
//! the shared streaming engine (`format/engine`). Undo and differencing images,
//! and any image naming a parent or link UUID, are refused: their content
//! depends on another file.
//!
//! - `header`: the first 512 bytes, validated before anything else is trusted.
//! - `tables`: the engine's [`TableFormat`](crate::format::engine::TableFormat):
//!   the block map and what its entries claim.
//! - `error`: every VDI-specific refusal.

mod error;
pub mod header;
mod tables;
#[cfg(test)]
mod tests;

pub use error::VdiError;
pub use header::{Header, ImageType};

use crate::format::engine::{run_engine, ImageError, StreamError, StreamOptions};
use crate::format::registry::ImageReader;
use crate::format::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;
use tables::VdiTables;

/// The VDI entry of the format registry.
pub struct VdiReader;

impl ImageReader for VdiReader {
    fn name(&self) -> &'static str {
        "vdi"
    }

    /// The signature at offset 64, which is what qemu checks (the text line in
    /// front of it is informational).
    fn probe(&self, head: &[u8]) -> bool {
        head.get(64..68) == Some(&header::SIGNATURE.to_le_bytes())
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

/// Reads a whole VDI image from `stream`, writing its guest content to `sink`.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let first = stream
        .read_up_to(header::HEADER_SECTOR)
        .map_err(|e| ImageError::stream("vdi", StreamError::Read(e)))?;
    let header = Header::parse(&first).map_err(|e| ImageError::format("vdi", e))?;
    let mut tables = VdiTables::new(header);
    let engine = run_engine(&mut tables, first.len() as u64, stream, sink, options)?;
    let h = tables.header();
    Ok(ImageSummary::from_engine("vdi", h.virtual_size, engine)
        .with_subformat(h.image_type.name())
        .detail("block_size", "block size", header::BLOCK_SIZE)
        .detail("sector_size", "sector size", header::SECTOR_SIZE)
        .detail("blocks_in_image", "blocks in image", h.blocks_in_image)
        .detail("blocks_allocated", "blocks allocated", h.blocks_allocated)
        .detail("blocks_mapped", "blocks mapped", tables.mapped_blocks()))
}
