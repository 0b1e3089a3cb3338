//! The one place that knows every format: each reader's probe, in order, then the
//! formats recognized but not converted (`sniff`), then raw. The pipeline, `info`
//! and the CDI programs ask here; adding a format is one folder and one line in
//! [`READERS`].

use super::engine::{ImageError, StreamOptions};
use super::sniff::{sniff_format, ImageFormat};
use super::summary::ImageSummary;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;

/// A format reader.
pub trait ImageReader: Sync {
    /// The format's short name.
    fn name(&self) -> &'static str;
    /// True when the first bytes of the decoded stream (up to
    /// [`SNIFF_LEN`](super::SNIFF_LEN), fewer at EOF) are this format's.
    fn probe(&self, head: &[u8]) -> bool;
    /// Reads the whole image from `stream`, writing its guest content to `sink`.
    fn convert(
        &self,
        stream: &mut ChunkStream,
        sink: &mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Result<ImageSummary, ImageError>;
}

/// Every reader, in probe order (raw is the fallback, not listed).
pub static READERS: &[&dyn ImageReader] = &[
    &super::qcow2::Qcow2Reader,
    &super::vhd::VhdReader,
    &super::vdi::VdiReader,
    &super::vhdx::VhdxReader,
    &super::vmdk::VmdkReader,
    &super::raw::IsoReader,
];

/// What the first bytes say.
pub enum Probed {
    /// A format we read.
    Reader(&'static dyn ImageReader),
    /// A format recognized and refused; the name says which.
    Unsupported(&'static str),
}

/// Finds the reader for an image from its first bytes.
pub fn probe(head: &[u8]) -> Probed {
    if let Some(reader) = READERS.iter().find(|r| r.probe(head)) {
        return Probed::Reader(*reader);
    }
    match sniff_format(head) {
        ImageFormat::Unsupported(name) => Probed::Unsupported(name),
        _ => Probed::Reader(&super::raw::RawReader),
    }
}
