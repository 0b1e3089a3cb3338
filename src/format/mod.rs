//! Image formats: the probe registry that finds a reader from the first bytes of
//! the decoded stream, the streaming engine table-mapped formats share, and the
//! readers that turn a stream into extents.
//!
//! - `registry`: probe order and the [`ImageReader`] trait.
//! - `engine`: the format-independent streaming machinery.
//! - `summary`: what `info` shows, for every format.
//! - `sniff`: magic numbers, including formats recognized but not converted.
//! - one folder (or file) per format.

pub mod engine;
pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod registry;
pub mod sniff;
pub mod summary;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use engine::{ImageError, ImageErrorKind, MapEntry, StreamOptions, DEFAULT_MEMORY_BUDGET};
pub use registry::{probe, ImageReader, Probed};
pub use sniff::{sniff_format, ImageFormat, SNIFF_LEN};
pub use summary::ImageSummary;
