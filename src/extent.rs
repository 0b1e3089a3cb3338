//! What a format reader hands to a sink: a piece of the guest disk, either bytes
//! or a run of zeroes, at a guest offset. Readers emit extents in *stream* order
//! (the order the image bytes arrive in), not in guest order; a sink must accept
//! them in any order, and every guest byte is covered at most once.

use bytes::Bytes;

/// One piece of the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the virtual disk.
    pub guest_offset: u64,
    /// What lies there.
    pub kind: ExtentKind,
}

/// The content of an [`Extent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Literal bytes (which may still happen to be all zero; sinks check).
    Data(Bytes),
    /// This many bytes read as zero.
    Zero(u64),
}

impl Extent {
    /// An extent of literal bytes.
    pub fn data(guest_offset: u64, bytes: Bytes) -> Self {
        Extent {
            guest_offset,
            kind: ExtentKind::Data(bytes),
        }
    }

    /// An extent of `len` zero bytes.
    pub fn zero(guest_offset: u64, len: u64) -> Self {
        Extent {
            guest_offset,
            kind: ExtentKind::Zero(len),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match &self.kind {
            ExtentKind::Data(b) => b.len() as u64,
            ExtentKind::Zero(n) => *n,
        }
    }

    /// True for an extent of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// First guest byte past this extent.
    pub fn end(&self) -> u64 {
        self.guest_offset + self.len()
    }
}
