//! Sinks: where extents land. The [`ExtentSink`] trait is what every target
//! implements: `file` (sparse regular file, O_DIRECT where the file system
//! allows it: `direct_file`), `block` (O_DIRECT block device); both write
//! through a `write_pool` of writer threads;
//! `null` counts and drops; `threaded` moves any sink to a writer thread;
//! `hold_back` keeps a target's first and last MiB until every check passed;
//! `memory` (unit tests only) keeps the whole disk in a buffer.
//!
//! # The rule: nothing wrong ever looks finished
//!
//! Every target an import or a conversion writes — file or block device, for
//! `convert`, `import` and uploads alike — is wrapped in
//! [`hold_back::HoldBack`] (see [`hold_back::wrap`]):
//!
//! 1. The first and the last MiB of the disk are kept in memory. They are
//!    written only by [`ExtentSink::finish`], which is called only after
//!    every check passed: the stream ended (no truncation, no decoder error),
//!    the checksum or registry digest matched, the format reader accepted the
//!    whole image including any trailer. Then the target is flushed.
//! 2. A block device has its first and last MiB zeroed (and flushed) before
//!    the first byte of the image reaches it, and again when its sink is
//!    dropped unfinished. Killed at any point, it never holds a partition
//!    table, boot sector or file-system superblock of a half-written or wrong
//!    image. (Refused before any write, it is left as it was.)
//! 3. A file is built as a hidden temporary file beside its final path,
//!    brought to its final size (grown to the volume, preallocated when asked)
//!    and synced, and only then renamed into place and its directory synced.
//!    Dropped unfinished, the temporary file is removed; left behind by a
//!    kill, it is named `.diskimport-*.partial` and removed by the next
//!    import into that directory.

pub mod block;
pub mod direct_file;
pub mod file;
pub mod hold_back;
#[cfg(test)]
pub mod memory;
pub mod null;
#[cfg(test)]
pub mod test_file;
pub mod threaded;
pub mod write_pool;
pub mod zero_detect;

use crate::extent::Extent;

/// Errors raised while writing the target.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An extent reached past the end of the target.
    #[error("write of {len} bytes at guest offset {offset} lies outside the target size {size}")]
    OutOfRange {
        /// Guest offset of the rejected extent.
        offset: u64,
        /// Its length.
        len: u64,
        /// The target's size.
        size: u64,
    },
    /// The image does not fit the target. The wording is CDI's: its controller
    /// turns "is larger than the reported available" into "DataVolume too
    /// small to contain image".
    #[error("virtual image size {needed} is larger than the reported available storage {available}. A larger PVC is required.")]
    TargetTooSmall {
        /// The image's virtual size.
        needed: u64,
        /// The device's size.
        available: u64,
    },
    /// An I/O error on the target, with what was being done.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation ("writing", "syncing", ...).
        what: &'static str,
        /// The target path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A destination for extents.
pub trait ExtentSink: Send {
    /// Sets the size of the virtual disk. Called once, before the first extent
    /// when the size is known up front (qcow2), or at the end (a raw stream of
    /// unknown length). Writes beyond a known size are refused.
    fn set_size(&mut self, size: u64) -> Result<(), SinkError>;

    /// Writes one extent. Zero extents may cost nothing.
    fn write(&mut self, extent: Extent) -> Result<(), SinkError>;

    /// Makes what was written so far durable, without finishing (a barrier:
    /// [`hold_back::HoldBack`] writes the first MiB only after it). Sinks
    /// whose result is published by `finish` anyway need not do anything.
    fn flush_data(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Makes everything durable. Only after this returns may success be reported.
    fn finish(&mut self) -> Result<SinkSummary, SinkError>;
}

/// What a sink did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkSummary {
    /// Size of the target in bytes.
    pub size: u64,
    /// Bytes actually written (non-zero data).
    pub bytes_written: u64,
    /// Bytes left as holes or zeroed without writing.
    pub bytes_zero: u64,
}
