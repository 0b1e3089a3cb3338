//! `cdi-image-size-detection -image-path P`: the virtual size of the image at
//! `P`, for CDI's PVC-clone controller (cdi-tools-contract.md §3), worked out
//! natively instead of with `qemu-img info`.
//!
//! Any format the library reads is sized by the library: the first bytes are
//! sniffed as [`crate::format::sniff_format`] does, a plain file (raw, ISO, or
//! anything qemu would also call raw) is its length, and every other format
//! runs through the `info` path ([`crate::pipeline::run`] into a
//! [`NullSink`]), so a format reader added to the pipeline is sized here
//! without a change. What the library refuses is an invalid file.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::describe_chain;
use crate::format::sniff::{sniff_trailer, TRAILER_LEN};
use crate::format::{sniff_format, ImageFormat, SNIFF_LEN};
use crate::pipeline::{self, ConvertOptions};
use crate::progress::Progress;
use crate::sink::null::NullSink;

/// Why no size was reported, with CDI's exit code for each.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// `-image-path` is missing or empty.
    #[error("One or more mandatory parameters are missing")]
    BadArguments,
    /// The path does not form a usable image URL.
    #[error("invalid image path {path:?}: {reason}")]
    InvalidPath {
        /// The scheme and path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file cannot be read or is not an image the library can size.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The termination message cannot be written.
    #[error("writing the termination message to {path}: {source}")]
    TerminationFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SizeError {
    /// The exit status CDI's program uses (`pkg/controller/common/util.go`).
    pub fn exit_code(&self) -> u8 {
        match self {
            SizeError::BadArguments => 1,
            SizeError::InvalidFile { .. } => 2,
            SizeError::InvalidPath { .. } => 3,
            SizeError::TerminationFile { .. } => 4,
        }
    }
}

/// The file named by `scheme` + `image_path` (CDI: `file://` + `/data/disk.img`),
/// below `root` (`/` in a pod; tests use a directory).
pub fn image_file(root: &Path, scheme: &str, image_path: &str) -> Result<PathBuf, SizeError> {
    if image_path.is_empty() {
        return Err(SizeError::BadArguments);
    }
    let whole = format!("{scheme}{image_path}");
    let invalid = |reason: String| SizeError::InvalidPath {
        path: whole.clone(),
        reason,
    };
    let url = url::Url::parse(&whole).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "file" {
        return Err(invalid(format!(
            "scheme {:?} is not supported (only file://)",
            url.scheme()
        )));
    }
    let path = url
        .to_file_path()
        .map_err(|()| invalid("not a local file path".into()))?;
    let relative = path.strip_prefix("/").unwrap_or(&path);
    Ok(root.join(relative))
}

/// The virtual size of the image in `path`, in bytes.
pub fn virtual_size(path: &Path) -> Result<u64, SizeError> {
    let invalid = |reason: String| SizeError::InvalidFile {
        path: path.display().to_string(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| invalid(e.to_string()))?;
    let meta = file.metadata().map_err(|e| invalid(e.to_string()))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let len = meta.len();
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| invalid(e.to_string()))?;
    let tail_len = len.min(TRAILER_LEN as u64);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, len - tail_len)
        .map_err(|e| invalid(e.to_string()))?;
    let plain = matches!(sniff_format(&head), ImageFormat::Raw | ImageFormat::Iso)
        && sniff_trailer(&tail).is_none();
    if plain {
        return Ok(len);
    }
    // Any other format: the info path, which reads the image the way an
    // import does and reports (or refuses) what it found. Unclaimed qcow2
    // bytes spill next to the image (the pod has no /tmp; /data is writable).
    // Only the tables are read: the size is in the header, the allocation in
    // the tables, and the data is not needed.
    let options = ConvertOptions {
        metadata_only: true,
        scratch_dir: path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        ..ConvertOptions::default()
    };
    let source = File::open(path).map_err(|e| invalid(e.to_string()))?;
    let report = pipeline::run(
        crate::piece::plain(source),
        &mut NullSink::default(),
        &options,
        Arc::new(Progress::default()),
    )
    .map_err(|e| invalid(describe_chain(&e)))?;
    Ok(report.virtual_size())
}

/// Writes `size` as CDI's termination message: a bare decimal, no newline.
pub fn write_termination_message(log: &Path, size: u64) -> Result<(), SizeError> {
    std::fs::write(log, size.to_string()).map_err(|source| SizeError::TerminationFile {
        path: log.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_a_file_url_below_the_root() {
        let root = Path::new("/r");
        assert_eq!(
            image_file(root, "file://", "/data/disk.img").unwrap(),
            Path::new("/r/data/disk.img")
        );
        assert!(matches!(
            image_file(root, "file://", ""),
            Err(SizeError::BadArguments)
        ));
        let nbd = image_file(root, "nbd+unix://", "/x?socket=/s").unwrap_err();
        assert_eq!(nbd.exit_code(), 3, "{nbd}");
        let garbage = image_file(root, "", "no scheme").unwrap_err();
        assert_eq!(garbage.exit_code(), 3, "{garbage}");
    }

    #[test]
    fn exit_codes_are_cdis() {
        let io = || io::Error::other("x");
        let codes: Vec<u8> = [
            SizeError::BadArguments,
            SizeError::InvalidFile {
                path: String::new(),
                reason: String::new(),
            },
            SizeError::InvalidPath {
                path: String::new(),
                reason: String::new(),
            },
            SizeError::TerminationFile {
                path: String::new(),
                source: io(),
            },
        ]
        .iter()
        .map(SizeError::exit_code)
        .collect();
        assert_eq!(codes, [1, 2, 3, 4]);
    }
}
