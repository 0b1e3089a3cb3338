//! The VHDX reader (Hyper-V's format), for a forward-only stream on the shared
//! engine (`format/engine`). Dynamic and fixed disks, 512- and 4096-byte logical
//! sectors, every block size from 1 to 256 MiB. Differencing disks and logs that
//! need a replay are refused.
//!
//! The virtual size is in the metadata region, which every producer puts in the
//! first 4 MiB: the reader looks ahead that far (never past the memory budget, or
//! 16 MiB if that is less) to parse the metadata before the engine starts, then the
//! engine reads the BAT and the blocks in stream order (holding back, or spilling,
//! what comes before the BAT). A metadata region further in is refused, naming it.
//!
//! - `header`: file type identifier, headers, region table.
//! - `metadata`: the metadata table and items (block size, sizes, flags).
//! - `log`: whether the log must be replayed.
//! - `bat`: BAT entry states and the payload / sector-bitmap interleaving.
//! - `tables`: the engine's [`TableFormat`](crate::format::engine::TableFormat).
//! - `checksum`, `guid`: CRC-32C and GUIDs as VHDX stores them.
//! - `error`: every VHDX-specific refusal.

mod bat;
mod checksum;
mod error;
mod guid;
pub mod header;
mod log;
pub mod metadata;
mod tables;
#[cfg(test)]
mod tests;

pub use error::VhdxError;

use bytes::Bytes;

use crate::format::engine::{run_engine, ImageError, StreamError, StreamOptions};
use crate::format::registry::ImageReader;
use crate::format::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;
use header::{HeaderSection, HEAD_LEN};
use metadata::{Item, Parameters, ITEMS};
use tables::VhdxTables;

/// How far the reader may look ahead for the metadata even under a smaller memory
/// budget: past every producer's layout (qemu with a 4 MiB log puts it at 6 MiB).
const LOOKAHEAD_FLOOR: u64 = 16 << 20;

/// The VHDX entry of the format registry.
pub struct VhdxReader;

impl ImageReader for VhdxReader {
    fn name(&self) -> &'static str {
        "vhdx"
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"vhdxfile")
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

/// Bytes `[start, end)` of the image, from the stream whose first `consumed`
/// bytes were read: looked at, not consumed; refused past `limit`.
fn look_ahead(
    stream: &mut ChunkStream,
    consumed: u64,
    start: u64,
    end: u64,
    limit: u64,
    what: &str,
) -> Result<Bytes, ImageError> {
    if end > limit {
        return Err(ImageError::format(
            "vhdx",
            VhdxError::MetadataTooFar { offset: end, limit },
        ));
    }
    let ahead = stream
        .peek((end - consumed) as usize)
        .map_err(|e| ImageError::stream("vhdx", StreamError::Read(e)))?;
    if (ahead.len() as u64) < end - consumed {
        return Err(ImageError::stream(
            "vhdx",
            StreamError::Truncated {
                stream_end: consumed + ahead.len() as u64,
                start,
                end,
                what: what.to_string(),
            },
        ));
    }
    Ok(ahead.slice((start - consumed) as usize..))
}

/// Reads the metadata region's table and items, looking ahead in the stream.
fn read_parameters(
    stream: &mut ChunkStream,
    section: &HeaderSection,
    limit: u64,
) -> Result<Parameters, ImageError> {
    let refuse = |e: VhdxError| ImageError::format("vhdx", e);
    let md = section.metadata;
    let consumed = HEAD_LEN as u64;
    let table = look_ahead(
        stream,
        consumed,
        md.offset,
        md.offset + metadata::TABLE_LEN,
        limit,
        "the metadata table",
    )?;
    let (places, has_locator) = metadata::parse_table(&table, md.length).map_err(refuse)?;
    drop(table);
    let end = places
        .iter()
        .map(|p| p.offset + p.length)
        .max()
        .unwrap_or(metadata::TABLE_LEN);
    let region = look_ahead(
        stream,
        consumed,
        md.offset,
        md.offset + end,
        limit,
        "the metadata items",
    )?;
    let value = |item: Item| {
        places
            .iter()
            .find(|p| p.item == item)
            .map(|p| region[p.offset as usize..(p.offset + p.length) as usize].to_vec())
            .expect("parse_table returns every item but the parent locator")
    };
    debug_assert_eq!(places.len(), ITEMS.len() - 1);
    Parameters::decode(value, has_locator).map_err(refuse)
}

/// Reads a whole VHDX image from `stream`, writing its guest content to `sink`.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let read_error = |e| ImageError::stream("vhdx", StreamError::Read(e));
    let head = stream.read_up_to(HEAD_LEN).map_err(read_error)?;
    let section = HeaderSection::parse(&head).map_err(|e| ImageError::format("vhdx", e))?;
    drop(head);
    let limit = options.memory_budget.max(LOOKAHEAD_FLOOR);
    let params = read_parameters(stream, &section, limit)?;
    let mut tables = VhdxTables::new(section.clone(), params);
    let engine = run_engine(&mut tables, HEAD_LEN as u64, stream, sink, options)?;
    let log = if section.header.log_guid.is_zero() {
        "empty"
    } else {
        "stale (no active entry)"
    };
    Ok(
        ImageSummary::from_engine("vhdx", params.virtual_size, engine)
            .with_subformat(if params.fixed { "fixed" } else { "dynamic" })
            .detail("block_size", "block size", params.block_size)
            .detail(
                "sector_size",
                "logical sector size",
                params.logical_sector_size,
            )
            .detail(
                "physical_sector_size",
                "physical sector size",
                params.physical_sector_size,
            )
            .detail("present_blocks", "present blocks", tables.present_blocks())
            .detail("log", "log", log)
            .detail("creator", "creator", section.creator.clone())
            .detail(
                "header_sequence",
                "header sequence number",
                section.header.sequence,
            ),
    )
}
