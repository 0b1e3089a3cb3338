//! raw and ISO input: the bytes are the disk. Passed through as data extents in
//! order; the sink's zero detection keeps the result sparse. The virtual size
//! is the stream length, known only at the end.

use crate::extent::Extent;
use crate::sink::{ExtentSink, SinkError};
use crate::stream::ChunkStream;

/// What passing a raw stream through found.
#[derive(Debug, Clone, Copy)]
pub struct RawSummary {
    /// Bytes in the stream, which is the virtual size.
    pub stream_len: u64,
}

/// Errors of the raw passthrough.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// Reading the stream failed.
    #[error("reading the image: {0}")]
    Read(#[source] std::io::Error),
    /// The stream ends in a trailer of a format that is not raw.
    #[error("unsupported image format: {0} (recognized by its trailer at the end of the stream; it is not converted)")]
    Trailer(&'static str),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Copies the whole stream to `sink` as the disk's bytes.
pub fn convert_stream(
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
) -> Result<RawSummary, RawError> {
    let mut offset = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next_chunk().map_err(RawError::Read)? {
        remember_tail(&mut tail, &chunk);
        let len = chunk.len() as u64;
        sink.write(Extent::data(offset, chunk))?;
        offset += len;
    }
    if let Some(name) = crate::format::sniff::sniff_trailer(&tail) {
        return Err(RawError::Trailer(name));
    }
    sink.set_size(offset)?;
    Ok(RawSummary { stream_len: offset })
}

/// Keeps the last 512 bytes seen.
fn remember_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    const TAIL: usize = 512;
    if chunk.len() >= TAIL {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - TAIL..]);
    } else {
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(TAIL);
        tail.drain(..excess);
    }
}
