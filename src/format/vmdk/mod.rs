//! The VMDK reader, for a forward-only stream on the shared engine
//! (`format/engine`). Self-contained sparse extents convert: hosted `KDMV`
//! monolithicSparse and streamOptimized (both qemu-img's and VMware's layout), and
//! ESX `COWD`. Everything that depends on other files is refused naming what it
//! would need: text descriptor files, embedded descriptors with other extents or a
//! parent, capacity-0 extents whose descriptor lists extents. No file name found
//! in an image is ever opened.
//!
//! - `header`: the `KDMV` / `COWD` header, validated before anything is trusted.
//! - `descriptor`: the descriptor text, parsed only to refuse.
//! - `tables`: monolithicSparse and COWD on the engine (GD -> GT -> grains).
//! - `markers`: streamOptimized on the engine (grain markers, tables checked).
//! - `error`: every VMDK-specific refusal.

mod descriptor;
mod error;
pub mod header;
mod markers;
mod tables;
#[cfg(test)]
mod tests;

pub use descriptor::Descriptor;
pub use error::VmdkError;
pub use header::{Header, Subformat};

use crate::format::engine::{run_engine, ImageError, StreamError, StreamOptions};
use crate::format::registry::ImageReader;
use crate::format::sniff::vmdk_descriptor;
use crate::format::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;
use header::{COWD_MAGIC, HEADER_LEN, KDMV_MAGIC, SECTOR};
use markers::StreamTables;
use tables::SparseTables;

/// The text a VMware descriptor file starts with.
const DESCRIPTOR_FILE_START: &[u8] = b"# Disk DescriptorFile";
/// Bytes of a COWD file read before streaming: header and descriptor text.
const COWD_HEAD_LEN: usize = 2048;
/// Bytes of a text descriptor file read to name its extents.
const TEXT_DESCRIPTOR_LEN: usize = 64 * 1024;

/// The VMDK entry of the format registry.
pub struct VmdkReader;

impl ImageReader for VmdkReader {
    fn name(&self) -> &'static str {
        "vmdk"
    }

    /// `KDMV`, `COWD`, or descriptor text as VMware writes it or qemu probes it.
    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(&KDMV_MAGIC)
            || head.starts_with(&COWD_MAGIC)
            || head.starts_with(DESCRIPTOR_FILE_START)
            || vmdk_descriptor(head)
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

fn refused(e: VmdkError) -> ImageError {
    ImageError::format("vmdk", e)
}

/// Reads a whole VMDK extent from `stream`, writing its guest content to `sink`.
/// Every refusal that the header or descriptor decides comes before the sink is
/// touched.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let read_error = |e| ImageError::stream("vmdk", StreamError::Read(e));
    let head = stream.peek(HEADER_LEN).map_err(read_error)?;
    let header = if head.starts_with(&KDMV_MAGIC) {
        let header = Header::parse_kdmv(&head).map_err(refused)?;
        let descriptor = match header.descriptor {
            Some((at, len)) => {
                let bytes = stream.peek((at + len) as usize).map_err(read_error)?;
                let from = (at as usize).min(bytes.len());
                Descriptor::parse(&bytes[from..])
            }
            None => Descriptor::default(),
        };
        descriptor
            .check_embedded(header.capacity / SECTOR)
            .map_err(refused)?;
        if header.capacity == 0 {
            return Err(refused(VmdkError::Capacity {
                sectors: 0,
                reason: "the disk is empty",
            }));
        }
        header
    } else if head.starts_with(&COWD_MAGIC) {
        let header = Header::parse_cowd(&head).map_err(refused)?;
        let bytes = stream.peek(COWD_HEAD_LEN).map_err(read_error)?;
        let descriptor = Descriptor::parse(bytes.get(HEADER_LEN..).unwrap_or_default());
        if let Some(what) = descriptor.parent() {
            return Err(refused(VmdkError::Parent { what }));
        }
        if !descriptor.has_cid {
            return Err(refused(VmdkError::CowdWithoutCid));
        }
        header
    } else {
        let bytes = stream.peek(TEXT_DESCRIPTOR_LEN).map_err(read_error)?;
        return Err(refused(Descriptor::parse(&bytes).refuse_as_file()));
    };
    let consumed = stream.read_up_to(HEADER_LEN).map_err(read_error)?.len() as u64;
    let summary = |engine| {
        ImageSummary::from_engine("vmdk", header.capacity, engine)
            .with_subformat(header.subformat.name())
            .detail("version", "VMDK version", header.version)
            .detail("grain_size", "grain size", header.grain_size)
    };
    match header.subformat {
        Subformat::StreamOptimized => {
            let mut tables = StreamTables::new(header.clone());
            let engine = run_engine(&mut tables, consumed, stream, sink, options)?;
            let compressed = engine.compressed_units;
            Ok(summary(engine)
                .detail("layout", "layout", tables.layout())
                .detail("grain_tables", "grain tables", tables.grain_tables())
                .detail("compressed_grains", "compressed grains", compressed))
        }
        Subformat::MonolithicSparse | Subformat::Cowd => {
            let mut tables = SparseTables::new(header.clone());
            let engine = run_engine(&mut tables, consumed, stream, sink, options)?;
            Ok(summary(engine)
                .detail("zeroed_grains", "zeroed grains", header.zeroed_grain())
                .detail("grain_tables", "grain tables", tables.grain_tables()))
        }
    }
}
