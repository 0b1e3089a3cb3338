//! raw and ISO input: the bytes are the disk. Passed through as data extents in
//! order; the sink's zero detection keeps the result sparse. The virtual size is
//! the stream length, known only at the end. ISO is raw with its own name (the
//! registry probes it by its volume descriptor).

use super::engine::{ImageError, MapEntry, StreamError, StreamOptions};
use super::registry::ImageReader;
use super::summary::ImageSummary;
use crate::extent::Extent;
use crate::sink::ExtentSink;
use crate::stream::ChunkStream;

/// Refusals of the raw passthrough.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The stream ends in a trailer of a format that is not raw.
    #[error("unsupported image format: {0} (recognized by its trailer at the end of the stream; it is not converted)")]
    Trailer(&'static str),
}

/// The fallback reader: anything no probe claims.
pub struct RawReader;

/// ISO 9660 images, copied as raw.
pub struct IsoReader;

impl ImageReader for RawReader {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn probe(&self, _head: &[u8]) -> bool {
        true
    }

    fn convert(
        &self,
        stream: &mut ChunkStream,
        sink: &mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Result<ImageSummary, ImageError> {
        convert_stream("raw", stream, sink, options)
    }
}

impl ImageReader for IsoReader {
    fn name(&self) -> &'static str {
        "iso"
    }

    fn probe(&self, head: &[u8]) -> bool {
        super::sniff_format(head) == super::ImageFormat::Iso
    }

    fn convert(
        &self,
        stream: &mut ChunkStream,
        sink: &mut dyn ExtentSink,
        options: &StreamOptions,
    ) -> Result<ImageSummary, ImageError> {
        convert_stream("iso", stream, sink, options)
    }
}

/// Copies the whole stream to `sink` as the disk's bytes.
pub fn convert_stream(
    format: &'static str,
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let fail = |e: StreamError| ImageError::stream(format, e);
    let mut offset = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = stream
        .next_chunk()
        .map_err(|e| fail(StreamError::Read(e)))?
    {
        remember_tail(&mut tail, &chunk);
        let len = chunk.len() as u64;
        sink.write(Extent::data(offset, chunk))
            .map_err(|e| fail(e.into()))?;
        offset += len;
    }
    if let Some(name) = crate::format::sniff::sniff_trailer(&tail) {
        return Err(ImageError::format(format, RawError::Trailer(name)));
    }
    sink.set_size(offset).map_err(|e| fail(e.into()))?;
    Ok(ImageSummary {
        format,
        subformat: None,
        virtual_size: offset,
        allocated_bytes: None,
        stream_len: offset,
        retained_peak: 0,
        spilled_bytes: 0,
        // The bytes are the disk: one data run at its own offsets.
        map: options.collect_map.then(|| {
            vec![MapEntry {
                start: 0,
                length: offset,
                depth: 0,
                present: true,
                zero: false,
                data: true,
                compressed: false,
                offset: Some(0),
            }]
        }),
        details: Vec::new(),
        read_to_end: true,
    })
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
