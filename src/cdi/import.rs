//! `diskimport import`: one CDI import, start to finish, as the importer pod
//! runs it. Reads the environment ([`super::env`]), picks the target — the
//! block device at `/dev/cdi-block-volume` if present, else
//! `/data/disk.img` — streams the source through the pipeline, sizes the file
//! by CDI's rules, and returns the outcome for the termination message.
//! Every path is under `root` so tests can run it in a temporary tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::env::{parse, CdiSource, ContentType, ImportRequest};
use super::node_pull::READY_TIMEOUT;
use super::sizing::usable_size;
use super::termination::TerminationMessage;
use crate::error::describe_chain;
use crate::format::engine::StreamError;
use crate::pipeline::{self, ConvertOptions};
use crate::progress::{Phase, Progress};
use crate::sink::block::BlockSink;
use crate::sink::file::SparseFileSink;
use crate::sink::hold_back;
use crate::sink::threaded::ThreadedSink;
use crate::sink::ExtentSink;
use crate::source::checksum::is_checksum_mismatch;

/// How an import ended, for the termination message and the exit status.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0 with this JSON message.
    Done(TerminationMessage),
    /// Exit 1 with this text.
    Failed(String),
}

impl Outcome {
    /// The failure CDI reports for anything that breaks after the source is
    /// open: "Unable to process data: " and the error with its causes.
    fn processing_failed(error: &dyn std::error::Error) -> Self {
        Outcome::Failed(format!("Unable to process data: {}", describe_chain(error)))
    }
}

/// Where the import writes.
enum Target {
    Block(PathBuf),
    File(PathBuf),
}

/// Runs one import with the process environment `env` under `root`.
pub fn run_import(env: &[(String, String)], root: &Path, progress: Arc<Progress>) -> Outcome {
    let mut request = match parse(env, root) {
        Ok(r) => r,
        Err(e) => {
            progress.fail(&e.to_string());
            return Outcome::Failed(e.to_string());
        }
    };
    if request.source != CdiSource::Blank {
        // Node pull: the sidecar says which file it serves.
        match request
            .node_pull
            .wait_ready(&request.endpoint, READY_TIMEOUT, &progress)
        {
            Ok(endpoint) => {
                progress.set_image_env(request.node_pull.image_env(&endpoint));
                request.endpoint = endpoint
            }
            Err(text) => {
                progress.fail(&text);
                return Outcome::Failed(text);
            }
        }
    }
    let block = root.join("dev/cdi-block-volume");
    let target = if block.exists() {
        Target::Block(block)
    } else {
        Target::File(root.join("data/disk.img"))
    };
    let mut outcome = match (request.source, request.content_type) {
        (CdiSource::Blank, ContentType::Archive) => {
            Outcome::Failed("Cannot create empty disk with content type archive".into())
        }
        (_, ContentType::Archive) => import_archive(&request, &target, root, progress.clone()),
        (CdiSource::Blank, _) => blank(&request, &target),
        _ => {
            // Scratch space is used only if CDI mounted it; without it an image
            // that cannot be streamed in memory asks for it (exit 0, JSON).
            let scratch = root.join("scratch");
            let mut options = ConvertOptions {
                spill_allowed: scratch.is_dir(),
                scratch_dir: scratch,
                ..ConvertOptions::default()
            };
            // Memory for bytes that arrive before their tables (bytes).
            if let Some(budget) = env
                .iter()
                .find(|(k, _)| k == "DISKIMPORT_MEMORY_BUDGET")
                .and_then(|(_, v)| v.trim().parse().ok())
            {
                options.memory_budget = budget;
            }
            import_disk(&request, &target, &options, progress.clone())
        }
    };
    match &mut outcome {
        Outcome::Failed(text) => progress.fail(text),
        Outcome::Done(message) if message.is_complete() => {
            // Only a completed import carries the labels its image declares.
            message.labels = super::labels::labels_from_env(&progress.image_env());
            request.node_pull.signal_done();
            progress.set_phase(Phase::Succeeded);
        }
        Outcome::Done(message) if message.scratch_space_required == Some(true) => {}
        // A checksum mismatch: exit 0 for the controller, a failure here.
        Outcome::Done(message) => progress.fail(message.message.as_deref().unwrap_or_default()),
    }
    outcome
}

/// True when reading the source stream failed (not the image's content, not
/// the target).
fn is_stream_failure(error: &crate::Error) -> bool {
    matches!(error, crate::Error::Read(_))
}

/// CDI's text for a source that cannot be opened, naming its kind.
fn connect_failed(request: &ImportRequest, error: &dyn std::error::Error) -> Outcome {
    let kind = match request.source {
        CdiSource::S3 => "s3",
        CdiSource::Registry => "registry",
        _ => "http",
    };
    Outcome::Failed(format!(
        "Unable to connect to {kind} data source: {}",
        describe_chain(error)
    ))
}

fn import_disk(
    request: &ImportRequest,
    target: &Target,
    options: &ConvertOptions,
    progress: Arc<Progress>,
) -> Outcome {
    let connect_error = |e: crate::Error| connect_failed(request, &e);
    progress.set_phase(Phase::Connecting);
    let input = match pipeline::open_source(&request.endpoint, &request.source_options, &progress) {
        Ok(i) => i,
        Err(e) => return connect_error(e),
    };
    // Every target is held back (the rule in `crate::sink`): its first and
    // last MiB are written only after every check passed.
    let sink: Box<dyn ExtentSink> = match target {
        Target::Block(device) => match BlockSink::open(device) {
            Ok(s) => hold_back::wrap(s),
            Err(e) => return Outcome::processing_failed(&e),
        },
        Target::File(path) => {
            let (available, resize_to) = match file_space(path, request) {
                Ok(v) => v,
                Err(e) => return Outcome::Failed(e),
            };
            // Grown to the volume, preallocated and synced before the rename
            // that publishes it.
            match SparseFileSink::create(path) {
                Ok(s) => hold_back::wrap(
                    s.with_capacity_limit(available)
                        .with_bounded_cache(request.direct_io)
                        .with_mode(0o660)
                        .with_final_size(resize_to)
                        .with_preallocation(request.preallocation),
                ),
                Err(e) => return Outcome::processing_failed(&e),
            }
        }
    };
    let mut sink = ThreadedSink::spawn(sink, progress.clone());
    progress.set_phase(Phase::Transferring);
    if let Err(e) = pipeline::run(input, &mut sink, options, progress.clone()) {
        // Dropping the sink removes a file target's temporary file and zeroes
        // a block target's first and last MiB.
        drop(sink);
        if let crate::Error::Image(image) = &e {
            if let Some(StreamError::ScratchRequired { .. }) = image.as_stream() {
                return Outcome::Done(TerminationMessage::scratch_required());
            }
        }
        let text = describe_chain(&e);
        if is_checksum_mismatch(&e) {
            if let Target::File(path) = target {
                let _ = std::fs::remove_file(path);
            }
            return Outcome::Done(TerminationMessage::checksum_mismatch(&text));
        }
        if is_out_of_space(&e) {
            return Outcome::Failed(format!(
                "Unable to process data: no space left on device: {text}"
            ));
        }
        // As CDI's file writer does, a failure of the byte stream itself
        // (network, decompression) is reported as a pull failure, which
        // the controller shows with reason ImagePullFailed.
        if is_stream_failure(&e) {
            return Outcome::Failed(format!(
                "Unable to process data: failed to pull image: {text}"
            ));
        }
        return Outcome::Failed(format!("Unable to process data: {text}"));
    }
    progress.set_phase(Phase::Finishing);
    let preallocated = request.preallocation && matches!(target, Target::File(_));
    Outcome::Done(TerminationMessage::complete(preallocated))
}

/// True when the target's file system is full (ENOSPC) or over quota
/// (EDQUOT) somewhere in `error`'s causes: CDI's controller turns "no space
/// left on device" into "DataVolume too small to contain image".
fn is_out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// `archive`: the (decoded) tar stream unpacked into `/data`.
fn import_archive(
    request: &ImportRequest,
    target: &Target,
    root: &Path,
    progress: Arc<Progress>,
) -> Outcome {
    if let Target::Block(_) = target {
        return Outcome::Failed(
            "Unable to process data: archive content needs a Filesystem volume, not a block device"
                .into(),
        );
    }
    let data = root.join("data");
    progress.set_phase(Phase::Connecting);
    let input = match pipeline::open_source(&request.endpoint, &request.source_options, &progress) {
        Ok(i) => i,
        Err(e) => return connect_failed(request, &e),
    };
    progress.set_phase(Phase::Transferring);
    // Each error as (is it a checksum mismatch, its text).
    let classify =
        |e: &(dyn std::error::Error + 'static)| (is_checksum_mismatch(e), describe_chain(e));
    let unpacked = crate::decode::decode_all(input)
        .map_err(|e| classify(&e))
        .and_then(|(_, decoded)| super::archive::unpack(decoded, &data).map_err(|e| classify(&e)));
    match unpacked {
        Ok(_) => Outcome::Done(TerminationMessage::complete(false)),
        Err((mismatch, text)) => {
            if mismatch {
                // As CDI does: what was unpacked from a bad download goes.
                if let Ok(entries) = std::fs::read_dir(&data) {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let _ = if path.is_dir() && !path.is_symlink() {
                            std::fs::remove_dir_all(&path)
                        } else {
                            std::fs::remove_file(&path)
                        };
                    }
                }
                return Outcome::Done(TerminationMessage::checksum_mismatch(&text));
            }
            Outcome::Failed(format!("Unable to process data: {text}"))
        }
    }
}

/// The space a Filesystem volume offers for the image, and the size to grow
/// the disk to (CDI's resize rule), from the free space of `/data`.
/// The space is measured after [`clear_previous_attempt`], so an earlier
/// attempt's disk never makes the volume look smaller than it is.
fn file_space(path: &Path, request: &ImportRequest) -> Result<(u64, Option<u64>), String> {
    clear_previous_attempt(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        format!(
            "Unable to process data: checking free space in {}: {e}",
            dir.display()
        )
    })?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let available = request.image_size.map_or(free, |r| r.min(free));
    let resize_to = request
        .image_size
        .map(|requested| usable_size(free, Some(requested), request.filesystem_overhead));
    Ok((available, resize_to))
}

/// Removes what an earlier attempt left: its disk (CDI deletes the target
/// before converting too) and the temporary files of an attempt that was
/// killed before it could clean up. Both would hold space the new disk needs.
fn clear_previous_attempt(path: &Path) {
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    if is_file(path) {
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the disk of an earlier attempt")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the earlier disk")
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_partial_disk(&name) && is_file(&entry.path()) {
            let _ = std::fs::remove_file(entry.path());
            tracing::info!(file = %name, "removed a temporary file of an earlier attempt");
        }
    }
}

/// The name pattern of the file sink's temporary files.
fn is_partial_disk(name: &str) -> bool {
    name.starts_with(crate::sink::file::TEMP_PREFIX)
        && name.ends_with(crate::sink::file::TEMP_SUFFIX)
}

/// `none`: a blank disk of the usable size (Filesystem) or a zeroed device.
fn blank(request: &ImportRequest, target: &Target) -> Outcome {
    match target {
        Target::File(path) => {
            let (_, resize_to) = match file_space(path, request) {
                Ok(v) => v,
                Err(e) => return Outcome::Failed(e),
            };
            let Some(size) = resize_to else {
                return Outcome::Failed(
                    "Unable to process data: a blank disk needs IMPORTER_IMAGE_SIZE".into(),
                );
            };
            // Built like an imported disk: sized, preallocated and synced
            // beside its path, then renamed into place.
            let created = SparseFileSink::create(path).and_then(|sink| {
                let mut sink = sink
                    .with_mode(0o660)
                    .with_preallocation(request.preallocation);
                sink.set_size(size)?;
                sink.finish()
            });
            match created {
                Ok(_) => Outcome::Done(TerminationMessage::blank_created(request.preallocation)),
                Err(e) if is_out_of_space(&e) => Outcome::Failed(format!(
                    "Unable to create blank image: no space left on device: {}",
                    describe_chain(&e)
                )),
                Err(e) => Outcome::Failed(format!(
                    "Unable to create blank image: {}",
                    describe_chain(&e)
                )),
            }
        }
        // As CDI: a blank Block volume is the empty PVC itself; only
        // preallocation writes to it (zeroes over the whole device).
        Target::Block(_) if !request.preallocation => {
            Outcome::Done(TerminationMessage::blank_created(false))
        }
        Target::Block(device) => {
            let zeroed = BlockSink::open(device).and_then(|mut sink| {
                let size = sink.device_size();
                sink.write(crate::Extent::zero(0, size))?;
                sink.finish()
            });
            match zeroed {
                Ok(_) => Outcome::Done(TerminationMessage::blank_created(true)),
                Err(e) => Outcome::Failed(format!(
                    "Unable to create blank image: {}",
                    describe_chain(&e)
                )),
            }
        }
    }
}
