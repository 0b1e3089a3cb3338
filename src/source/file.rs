//! Local sources: a file path, or `-` for standard input.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use super::SourceError;
use crate::progress::Progress;

/// Opens a path (or stdin for `-`), recording its size when it has one.
pub fn open(path: &str, progress: &Arc<Progress>) -> Result<Box<dyn Read + Send>, SourceError> {
    if path == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    let open_error = |source| SourceError::File {
        path: path.to_string(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if meta.is_dir() {
        return Err(open_error(std::io::Error::other("is a directory")));
    }
    if meta.is_file() {
        progress.set_source_total(meta.len());
    }
    // Read once, front to back: let the kernel read ahead further.
    let _ = nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    Ok(Box::new(file))
}
