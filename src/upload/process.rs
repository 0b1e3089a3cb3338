//! One upload, on a plain thread: the body (counted for progress, its digest
//! checked when one was given) through the same pipeline as an import —
//! decoders, every format reader, the file or block sink — or, for archives
//! and clones, to their unpackers. Returns the termination message on
//! success; the caller answers 200 only then, so "done" means the data is
//! durably on the target and every check has passed.
//!
//! No scratch file is written for any format: a qcow2 whose data arrives
//! before its tables is held in memory, and spills only when CDI mounted a
//! scratch volume; without one the answer is CDI's `scratch space required`.

use std::io::Read;
use std::sync::Arc;

use crate::decode::sniff_compression;
use crate::format::{sniff_format, ImageFormat, SNIFF_LEN};
use crate::piece::{self, Input};
use crate::pipeline::{self, ConvertOptions};
use crate::progress::{CountingReader, Phase, Progress};
use crate::sink::ExtentSink;
use crate::source::checksum::{Expected, VerifyingReader};

use super::body::BodyReader;
use super::clone::{self, CloneKind};
use super::config::UploadConfig;
use super::failure::Failure;
use super::target::{self, Destination, OpenTarget};
use super::termination::UploadTermination;

/// What the body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A disk image in any format the pipeline reads.
    Disk,
    /// A tar (possibly compressed) for the Filesystem volume.
    Archive,
    /// A clone-target stream.
    Clone(CloneKind),
}

/// One upload to run.
#[derive(Debug)]
pub struct Job {
    /// What the body holds.
    pub content: Content,
    /// The digest the body must have.
    pub expected: Option<Expected>,
    /// The body's length when the body is the image itself (not a form):
    /// a raw image longer than the volume is refused before it is read.
    pub image_length: Option<u64>,
}

/// Runs `job` over `body` and reports the outcome.
pub fn run(
    job: Job,
    body: BodyReader,
    config: &UploadConfig,
    progress: Arc<Progress>,
) -> Result<UploadTermination, Failure> {
    progress.set_phase(Phase::Transferring);
    let counted = CountingReader::new(body, progress.clone());
    let input: Input = match job.expected {
        Some(expected) => piece::plain(VerifyingReader::new(counted, expected)),
        None => piece::plain(counted),
    };
    let destination = Destination::of(&config.destination);
    match job.content {
        Content::Disk => disk(input, &destination, job.image_length, config, progress),
        Content::Archive => archive(input, &destination, config),
        Content::Clone(kind) => clone_target(input, kind, &destination, config, progress),
    }
}

fn disk(
    input: Input,
    destination: &Destination,
    image_length: Option<u64>,
    config: &UploadConfig,
    progress: Arc<Progress>,
) -> Result<UploadTermination, Failure> {
    let OpenTarget { mut sink, file } =
        target::open(destination, config, progress.clone()).map_err(|e| Failure::from_error(&e))?;
    let input = refuse_long_raw(input, image_length, &sink)?;
    let mut options = ConvertOptions {
        spill_allowed: config.scratch_dir.is_dir(),
        scratch_dir: config.scratch_dir.clone(),
        ..ConvertOptions::default()
    };
    if let Some(budget) = config.memory_budget {
        options.memory_budget = budget;
    }
    pipeline::run(input, &mut sink, &options, progress.clone())
        .map_err(|e| Failure::from_error(&e))?;
    progress.set_phase(Phase::Finishing);
    // The file sink grew, preallocated and synced the disk before publishing it.
    let preallocated = file.is_some() && config.preallocation;
    Ok(UploadTermination::upload_complete(preallocated))
}

/// A raw (or ISO) image, uncompressed, is as long as its body: when that
/// is more than the target holds, it is refused from the first bytes.
fn refuse_long_raw(
    mut input: Input,
    image_length: Option<u64>,
    sink: &target::SizeGuard<crate::sink::threaded::ThreadedSink>,
) -> Result<Input, Failure> {
    let Some(length) = image_length.filter(|l| *l > sink.capacity()) else {
        return Ok(input);
    };
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut input)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Failure::from_error(&crate::Error::Read(e)))?;
    let is_raw = sniff_compression(&head).is_none()
        && matches!(sniff_format(&head), ImageFormat::Raw | ImageFormat::Iso);
    if is_raw {
        sink.check(length).map_err(|e| Failure::from_error(&e))?;
    }
    Ok(Box::new(piece::Replay::new(head.into(), input)))
}

fn archive(
    input: Input,
    destination: &Destination,
    config: &UploadConfig,
) -> Result<UploadTermination, Failure> {
    if let Destination::Block(_) = destination {
        return Err(Failure::new(
            hyper::StatusCode::BAD_REQUEST,
            "archive content needs a Filesystem volume, not a block device",
        ));
    }
    let (_, decoded) = crate::decode::decode_all(input).map_err(|e| Failure::from_error(&e))?;
    crate::cdi::archive::unpack(decoded, &config.data_dir).map_err(|e| Failure::from_error(&e))?;
    Ok(UploadTermination::upload_complete(false))
}

fn clone_target(
    input: Input,
    kind: CloneKind,
    destination: &Destination,
    config: &UploadConfig,
    progress: Arc<Progress>,
) -> Result<UploadTermination, Failure> {
    let failed = |e: clone::CloneError| Failure::from_error(&e);
    match (kind, destination) {
        (CloneKind::Filesystem, Destination::File(_)) => {
            clone::filesystem_clone_to_dir(input, &config.data_dir).map_err(failed)?;
            // As CDI reports a filesystem clone.
            Ok(UploadTermination::clone_complete(true))
        }
        (kind, destination) => {
            let OpenTarget { mut sink, .. } = target::open(destination, config, progress.clone())
                .map_err(|e| Failure::from_error(&e))?;
            let sink: &mut dyn ExtentSink = &mut sink;
            match kind {
                CloneKind::Block => clone::block_clone(input, sink, progress).map_err(failed)?,
                CloneKind::Filesystem => {
                    clone::filesystem_clone_to_block(input, sink).map_err(failed)?
                }
            };
            Ok(UploadTermination::clone_complete(false))
        }
    }
}
