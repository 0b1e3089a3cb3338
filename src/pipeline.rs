//! Wires the stages together: open the source, peel compression wrappers, ask the
//! format registry which reader the decoded bytes are for, and run that reader into
//! the sink. The decoder runs on its own thread (`stream`), the sink on another
//! (`sink::threaded`), the format reader on the caller's.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use crate::decode::{decode_all, Compression};
use crate::error::Error;
use crate::format::engine::{ImageError, StreamError, StreamOptions};
use crate::format::{probe, ImageSummary, Probed, SNIFF_LEN};
use crate::progress::Progress;
use crate::sink::{ExtentSink, SinkSummary};
use crate::source::SourceOptions;
use crate::stream::ChunkStream;

/// How to run a conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Memory for unclaimed image bytes before spilling.
    pub memory_budget: u64,
    /// Directory for the spill file.
    pub scratch_dir: PathBuf,
    /// Build the allocation map.
    pub collect_map: bool,
    /// Whether the spill file may be used (see [`StreamOptions::spill_allowed`]).
    pub spill_allowed: bool,
    /// Threads for compressed units (see [`StreamOptions::inflate_threads`]).
    pub inflate_threads: usize,
    /// Read only the image's tables (see [`StreamOptions::metadata_only`]).
    pub metadata_only: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        let stream = StreamOptions::default();
        ConvertOptions {
            memory_budget: stream.memory_budget,
            scratch_dir: stream.scratch_dir,
            collect_map: false,
            spill_allowed: true,
            inflate_threads: stream.inflate_threads,
            metadata_only: false,
        }
    }
}

impl ConvertOptions {
    fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            memory_budget: self.memory_budget,
            scratch_dir: self.scratch_dir.clone(),
            collect_map: self.collect_map,
            spill_allowed: self.spill_allowed,
            inflate_threads: self.inflate_threads,
            metadata_only: self.metadata_only,
        }
    }
}

/// What a conversion found and did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Compression wrappers, outermost first.
    pub compression: Vec<Compression>,
    /// What the format reader found (format, sizes, map, details).
    pub image: ImageSummary,
    /// What the sink did.
    pub sink: SinkSummary,
}

impl Report {
    /// The format's short name.
    pub fn format(&self) -> &'static str {
        self.image.format
    }

    /// Size of the virtual disk.
    pub fn virtual_size(&self) -> u64 {
        self.image.virtual_size
    }
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
    let reader = match probe(&head) {
        Probed::Reader(reader) => reader,
        Probed::Unsupported(name) => return Err(Error::UnsupportedFormat(name)),
    };
    let image = reader
        .convert(&mut stream, sink, &options.stream_options())
        .map_err(image_error)?;
    let sink_summary = sink.finish()?;
    Ok(Report {
        compression,
        image,
        sink: sink_summary,
    })
}

/// A read error is the input's (source or decoder) and a sink error the target's,
/// not the image's: they keep their own kinds.
fn image_error(error: ImageError) -> Error {
    match error.kind {
        crate::format::ImageErrorKind::Stream(StreamError::Read(io)) => Error::Read(io),
        crate::format::ImageErrorKind::Stream(StreamError::Sink(e)) => Error::Sink(e),
        kind => Error::Image(ImageError {
            format: error.format,
            kind,
        }),
    }
}
