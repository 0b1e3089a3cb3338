//! Image formats: sniffing the container format from the first bytes of the
//! decoded stream, and the readers that turn a stream into extents.

pub mod qcow2;
pub mod raw;
pub mod sniff;

pub use sniff::{sniff_format, ImageFormat, SNIFF_LEN};
