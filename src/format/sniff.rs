//! Recognizes the image format from its first bytes (never from a file name).

/// How many leading bytes [`sniff_format`] wants to see (fewer is fine at EOF).
pub const SNIFF_LEN: usize = 64 * 1024;

/// A recognized image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// qcow2, version 2 or 3.
    Qcow2,
    /// Bytes that are the disk.
    Raw,
    /// An ISO 9660 image (copied as raw).
    Iso,
    /// A format recognized but not converted; the name says which.
    Unsupported(&'static str),
}

/// Names the format of an image from its first bytes.
pub fn sniff_format(head: &[u8]) -> ImageFormat {
    if head.starts_with(b"QFI\xfb") {
        return ImageFormat::Qcow2;
    }
    ImageFormat::Raw
}
