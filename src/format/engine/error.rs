//! The engine's own ways to fail, shared by every table-mapped format: the stream
//! ended early, a claimed range was passed without being kept, memory or scratch ran
//! out, a mapping lands on metadata, a compressed unit does not decompress. These
//! moved here from the qcow2 reader (their texts are unchanged); the format-specific
//! refusals stay with each format.

use std::fmt;

/// A failure of the streaming engine while reading one image.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A data or compressed range overlaps metadata.
    #[error("guest offset {guest:#x} maps to host offset {host:#x}, which lies inside the {what}")]
    DataOverlapsMetadata {
        /// Guest offset.
        guest: u64,
        /// Host offset.
        host: u64,
        /// Which structure.
        what: &'static str,
    },
    /// A mapping reaches past the virtual disk.
    #[error("a mapping of {len} bytes at guest offset {guest:#x} reaches past the virtual size {virtual_size}")]
    BeyondVirtualSize {
        /// Guest offset.
        guest: u64,
        /// Length claimed.
        len: u64,
        /// The disk's size.
        virtual_size: u64,
    },
    /// A range the image needs was passed without being kept.
    #[error("host bytes {start:#x}..{end:#x} ({what}) were needed after the stream had passed them, and they had not been kept (they belong to another structure or were mapped twice)")]
    NotRetained {
        /// First byte.
        start: u64,
        /// End.
        end: u64,
        /// What needed them.
        what: String,
    },
    /// The stream ended before a referenced range.
    #[error("the image is truncated: it ends at byte {stream_end} but {what} needs bytes {start:#x}..{end:#x}")]
    Truncated {
        /// Where the stream ended.
        stream_end: u64,
        /// First needed byte.
        start: u64,
        /// End of the needed range.
        end: u64,
        /// What needed it.
        what: String,
    },
    /// A compressed unit did not decompress to what its table says.
    #[error("compressed {unit} for guest offset {guest:#x} at host offset {host:#x}: {reason}")]
    BadCompressed {
        /// "cluster", "grain", ...
        unit: &'static str,
        /// Guest offset.
        guest: u64,
        /// Host offset of the compressed bytes.
        host: u64,
        /// What went wrong.
        reason: String,
    },
    /// Bookkeeping would exceed the memory budget.
    #[error("the image needs more than the memory budget of {budget} bytes for {what}")]
    MemoryBudget {
        /// The budget.
        budget: u64,
        /// For what.
        what: &'static str,
    },
    /// The image needs more than the memory budget and no scratch space is
    /// available. The text is CDI's, which its controller recognizes.
    #[error("scratch space required and none found (the image's tables come after its data and {budget} bytes of memory are not enough)")]
    ScratchRequired {
        /// The memory budget.
        budget: u64,
    },
    /// Reading the stream failed.
    #[error("reading the image: {0}")]
    Read(#[source] std::io::Error),
    /// The spill file failed.
    #[error("scratch spill file in {dir}: {source}")]
    Spill {
        /// The scratch directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The inflate threads could not be started.
    #[error("starting the inflate threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The sink refused an extent or failed.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

/// Why an image could not be read: the engine's failure or the format's own refusal.
#[derive(Debug)]
pub enum ImageErrorKind {
    /// The streaming engine failed (truncation, budget, sink, read ...).
    Stream(StreamError),
    /// The format refused the image (a header field, a table entry ...). Each format
    /// keeps its own typed error; callers that need to tell them apart downcast.
    Format(Box<dyn std::error::Error + Send + Sync>),
}

/// The image is malformed, refused, or could not be streamed; the message names
/// the format (`qcow2: ...`, `vmdk: ...`).
#[derive(Debug)]
pub struct ImageError {
    /// The format's short name.
    pub format: &'static str,
    /// What went wrong.
    pub kind: ImageErrorKind,
}

impl ImageError {
    /// A refusal by the format `format`.
    pub fn format(
        format: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ImageError {
            format,
            kind: ImageErrorKind::Format(Box::new(error)),
        }
    }

    /// A failure of the engine while reading a `format` image.
    pub fn stream(format: &'static str, error: StreamError) -> Self {
        ImageError {
            format,
            kind: ImageErrorKind::Stream(error),
        }
    }

    /// The engine error, if this is one.
    pub fn as_stream(&self) -> Option<&StreamError> {
        match &self.kind {
            ImageErrorKind::Stream(e) => Some(e),
            ImageErrorKind::Format(_) => None,
        }
    }

    /// The format's own error of type `E`, if this is one.
    pub fn downcast_format<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match &self.kind {
            ImageErrorKind::Format(e) => e.downcast_ref::<E>(),
            ImageErrorKind::Stream(_) => None,
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ImageErrorKind::Stream(e) => write!(f, "{}: {e}", self.format),
            ImageErrorKind::Format(e) => write!(f, "{}: {e}", self.format),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ImageErrorKind::Stream(e) => std::error::Error::source(e),
            ImageErrorKind::Format(e) => e.source(),
        }
    }
}

/// What a format's callbacks return: the engine's error or the format's own,
/// turned into an [`ImageError`] (with the format's name) by the engine.
#[derive(Debug)]
pub enum Fault {
    /// From a call into the engine.
    Stream(StreamError),
    /// The format's own refusal.
    Format(Box<dyn std::error::Error + Send + Sync>),
}

impl From<StreamError> for Fault {
    fn from(e: StreamError) -> Self {
        Fault::Stream(e)
    }
}

impl From<crate::sink::SinkError> for Fault {
    fn from(e: crate::sink::SinkError) -> Self {
        Fault::Stream(StreamError::Sink(e))
    }
}

impl Fault {
    /// A format's own error.
    pub fn format(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Fault::Format(Box::new(error))
    }

    /// Names the format.
    pub fn into_image_error(self, format: &'static str) -> ImageError {
        ImageError {
            format,
            kind: match self {
                Fault::Stream(e) => ImageErrorKind::Stream(e),
                Fault::Format(e) => ImageErrorKind::Format(e),
            },
        }
    }
}
