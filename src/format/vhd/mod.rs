//! The VHD reader (qemu's "vpc"), on the shared streaming engine.
//!
//! - `header`: the footer and the dynamic disk header, and qemu's size rule.
//! - `tables`: the engine's [`TableFormat`](crate::format::engine::TableFormat)
//!   for dynamic disks: dynamic header, BAT, per-block sector bitmaps.
//! - `fixed`: recognizing a fixed VHD's footer at the end of a raw stream.
//! - `error`: every VHD-specific refusal.
//!
//! Dynamic disks start with a footer copy and are probed here; differencing disks
//! (type 4) are refused, their parent is never opened. Fixed disks look like raw
//! until their last sector, so the raw reader finds them (`fixed`).

mod error;
mod fixed;
pub mod header;
mod tables;
#[cfg(test)]
mod tests;

pub use error::VhdError;
pub use fixed::{fixed_vhd_footer, FixedVhd};
pub use header::{DiskType, DynamicHeader, Footer};

use crate::format::engine::{run_engine, ImageError, StreamError, StreamOptions};
use crate::format::registry::ImageReader;
use crate::format::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;
use tables::VhdTables;

/// The VHD entry of the format registry (dynamic and differencing disks, which
/// carry a footer copy at offset 0).
pub struct VhdReader;

impl ImageReader for VhdReader {
    fn name(&self) -> &'static str {
        "vhd"
    }

    fn probe(&self, head: &[u8]) -> bool {
        header::has_footer_cookie(head)
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

/// Reads a whole dynamic VHD from `stream`, writing its guest content to `sink`.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let read_error = |e| ImageError::stream("vhd", StreamError::Read(e));
    let first = stream.read_up_to(header::FOOTER_LEN).map_err(read_error)?;
    let footer = Footer::parse(&first).map_err(|e| ImageError::format("vhd", e))?;
    if footer.disk_type == DiskType::Fixed {
        return Err(ImageError::format("vhd", VhdError::FixedFooterAtStart));
    }
    let mut tables = VhdTables::new(footer);
    let engine = run_engine(&mut tables, first.len() as u64, stream, sink, options)?;
    let footer = tables.footer();
    let disk_size = footer.disk_size();
    let mut summary = ImageSummary::from_engine("vhd", disk_size, engine)
        .with_subformat(DiskType::Dynamic.name());
    if let Some(h) = tables.header() {
        summary = summary
            .detail("block_size", "block size", h.block_size)
            .detail("bat_entries", "BAT entries", h.max_table_entries);
    }
    Ok(with_footer_details(summary, footer).detail(
        "allocated_blocks",
        "allocated blocks",
        tables.allocated_blocks(),
    ))
}

/// The facts every VHD's footer gives `info`.
pub fn with_footer_details(summary: ImageSummary, footer: &Footer) -> ImageSummary {
    summary
        .detail("creator", "creator application", footer.creator_name())
        .detail("size_source", "disk size from", footer.size_source().name())
        .detail("current_size", "footer current size", footer.current_size)
}
