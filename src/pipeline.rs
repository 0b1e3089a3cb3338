//! Wires the stages together: open the source, peel compression wrappers, ask the
//! format registry which reader the decoded bytes are for, and run that reader into
//! the sink. An OVA (a tar of a descriptor and disks) is opened here, like a
//! wrapper: its chosen disk's bytes go through the registry's probe again. The decoder runs on its own thread (`stream`), the sink on another
//! (`sink::threaded`), the format reader on the caller's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::decode::{decode_all, Compression};
use crate::error::Error;
use crate::format::engine::{ImageError, StreamError, StreamOptions};
use crate::format::ova::{self, OvaError};
use crate::format::{probe, ImageSummary, Probed, SNIFF_LEN};
use crate::piece::Input;
use crate::progress::Progress;
use crate::sink::{ExtentSink, SinkSummary};
use crate::source::SourceOptions;
use crate::stages::{Stage, TimedRead};
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
    /// Which disk of an OVA holding several to convert (its file name in the
    /// OVA); an OVA with one disk needs none.
    pub ova_disk: Option<String>,
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
            ova_disk: None,
        }
    }
}

impl ConvertOptions {
    fn stream_options(&self, progress: &Progress) -> StreamOptions {
        StreamOptions {
            memory_budget: self.memory_budget,
            scratch_dir: self.scratch_dir.clone(),
            collect_map: self.collect_map,
            spill_allowed: self.spill_allowed,
            inflate_threads: self.inflate_threads,
            metadata_only: self.metadata_only,
            stages: Some(progress.stages().clone()),
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
) -> Result<Input, Error> {
    Ok(crate::source::open(spec, options, progress)?)
}

/// Converts the image read from `source` into `sink`.
pub fn run(
    source: Input,
    sink: &mut dyn ExtentSink,
    options: &ConvertOptions,
    progress: Arc<Progress>,
) -> Result<Report, Error> {
    let stages = progress.stages().clone();
    let source = Box::new(TimedRead::new(source, stages.clone(), Stage::Source));
    let (compression, decoded) = decode_all(source)?;
    let stream_options = options.stream_options(&progress);
    let mut stream = ChunkStream::spawn(decoded, progress);
    let head = stream.peek(SNIFF_LEN).map_err(Error::Read)?;
    let started = Instant::now();
    let waited_before = stages.waiting_time(Stage::Reader);
    let image = if ova::probe(&head) {
        ova::read_disk(
            &mut stream,
            options.ova_disk.as_deref(),
            |disk_stream, disk| convert_ova_disk(disk_stream, disk, sink, &stream_options),
        )
        .map_err(ova_error)??
    } else {
        convert_image(&mut stream, &head, sink, &stream_options)?
    };
    let waited = stages.waiting_time(Stage::Reader) - waited_before;
    stages.busy(Stage::Reader, started.elapsed().saturating_sub(waited));
    let sink_summary = sink.finish()?;
    Ok(Report {
        compression,
        image,
        sink: sink_summary,
    })
}

/// Probes the decoded image from its first bytes `head` and converts it.
fn convert_image(
    stream: &mut ChunkStream,
    head: &[u8],
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, Error> {
    let reader = match probe(head) {
        Probed::Reader(reader) => reader,
        Probed::Unsupported(name) => return Err(Error::UnsupportedFormat(name)),
    };
    reader.convert(stream, sink, options).map_err(image_error)
}

/// Converts the disk an OVA yields: probed like any image (an OVA inside is
/// refused); the summary names the OVA disk.
fn convert_ova_disk(
    stream: &mut ChunkStream,
    disk: &ova::OvaDisk,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, Error> {
    let head = stream.peek(SNIFF_LEN).map_err(Error::Read)?;
    if ova::probe(&head) {
        return Err(ova_error(OvaError::Nested {
            name: disk.name.clone(),
        }));
    }
    Ok(convert_image(stream, &head, sink, options)?
        .detail("container", "container", "ova")
        .detail("ova_disk", "OVA disk", disk.name.clone()))
}

fn ova_error(error: OvaError) -> Error {
    Error::Image(ImageError::format("ova", error))
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
