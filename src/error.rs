//! The library's top-level error: one variant per stage, each carrying the
//! stage's own typed error.

use crate::decode::DecodeError;
use crate::format::engine::ImageError;
use crate::sink::SinkError;

/// Anything that can stop an import.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source could not be opened.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The input stream failed (read error, or a corrupt compressed wrapper).
    #[error("reading the image: {0}")]
    Read(#[source] std::io::Error),
    /// Sniffing the compression failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The image is in a format that is recognized but not converted.
    #[error("unsupported image format: {0} (recognized by its magic bytes; it is not converted)")]
    UnsupportedFormat(&'static str),
    /// The image is malformed or refused; the message names the format.
    #[error(transparent)]
    Image(ImageError),
    /// Writing the target failed.
    #[error("target: {0}")]
    Sink(#[from] SinkError),
}

/// An error and its chain of causes on one line, each cause added only when the
/// text so far does not already contain it (many errors repeat their source).
pub fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
