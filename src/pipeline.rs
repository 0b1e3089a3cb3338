//! Wires the stages together: open the source, peel compression wrappers, sniff
//! the format, and run the matching reader into the sink. The decoder runs on
//! its own thread (`stream`), the sink on another (`sink::threaded`), the format
//! reader on the caller's.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use crate::decode::{decode_all, Compression};
use crate::error::Error;
use crate::format::qcow2::{self, Qcow2Summary, StreamOptions};
use crate::format::{raw, sniff_format, ImageFormat, SNIFF_LEN};
use crate::progress::Progress;
use crate::sink::{ExtentSink, SinkSummary};
use crate::source::SourceOptions;
use crate::stream::ChunkStream;

/// How to run a conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Memory for unclaimed qcow2 bytes before spilling.
    pub memory_budget: u64,
    /// Directory for the spill file.
    pub scratch_dir: PathBuf,
    /// Build the qcow2 allocation map.
    pub collect_map: bool,
    /// Whether the spill file may be used (see [`StreamOptions::spill_allowed`]).
    pub spill_allowed: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        let stream = StreamOptions::default();
        ConvertOptions {
            memory_budget: stream.memory_budget,
            scratch_dir: stream.scratch_dir,
            collect_map: false,
            spill_allowed: true,
        }
    }
}

/// What a conversion found and did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Compression wrappers, outermost first.
    pub compression: Vec<Compression>,
    /// The image format.
    pub format: ImageFormat,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of the decoded image stream.
    pub stream_len: u64,
    /// Details of a qcow2 image.
    pub qcow2: Option<Qcow2Summary>,
    /// What the sink did.
    pub sink: SinkSummary,
}

/// Opens a source (path, `-`, or URL) and counts what it reads.
pub fn open_source(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, Error> {
    Ok(crate::source::open(spec, options, progress)?)
}

/// Converts the image read from `source` into `sink`.
pub fn run(
    source: Box<dyn Read + Send>,
    sink: &mut dyn ExtentSink,
    options: &ConvertOptions,
    progress: Arc<Progress>,
) -> Result<Report, Error> {
    let (compression, decoded) = decode_all(source)?;
    let mut stream = ChunkStream::spawn(decoded, progress);
    let head = stream.peek(SNIFF_LEN).map_err(Error::Read)?;
    let format = sniff_format(&head);
    let (virtual_size, stream_len, qcow2) = match format {
        ImageFormat::Qcow2 => {
            let stream_options = StreamOptions {
                memory_budget: options.memory_budget,
                scratch_dir: options.scratch_dir.clone(),
                collect_map: options.collect_map,
                spill_allowed: options.spill_allowed,
            };
            // A read error is the input's (source or decoder), not the qcow2's.
            let summary =
                qcow2::convert_stream(&mut stream, sink, &stream_options).map_err(|e| match e {
                    qcow2::Qcow2Error::Read(io) => Error::Read(io),
                    other => Error::Qcow2(other),
                })?;
            (
                summary.header.virtual_size,
                summary.stream_len,
                Some(summary),
            )
        }
        ImageFormat::Raw | ImageFormat::Iso => {
            let summary = raw::convert_stream(&mut stream, sink)?;
            (summary.stream_len, summary.stream_len, None)
        }
        ImageFormat::Unsupported(name) => return Err(Error::UnsupportedFormat(name)),
    };
    let sink_summary = sink.finish()?;
    Ok(Report {
        compression,
        format,
        virtual_size,
        stream_len,
        qcow2,
        sink: sink_summary,
    })
}
