//! raw and ISO input: the bytes are the disk. Passed through as data extents in
//! order; the sink's zero detection keeps the result sparse. The virtual size is
//! the stream length, known only at the end. ISO is raw with its own name (the
//! registry probes it by its volume descriptor). The last 512 bytes are held back
//! until the stream ends: they may be a fixed VHD's footer, which is not part of
//! the disk (`format/vhd/fixed.rs` decides).

use bytes::{Bytes, BytesMut};

use super::engine::{ImageError, MapEntry, StreamError, StreamOptions};
use super::registry::ImageReader;
use super::summary::ImageSummary;
use super::vhd;
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

/// Bytes held back at the end of the stream: a fixed VHD's footer.
const TAIL: usize = 512;

/// Copies the whole stream to `sink` as the disk's bytes. The last [`TAIL`]
/// bytes are written only once the stream has ended and they are known not to be
/// a fixed VHD's footer; if they are one, it is dropped and the image is a fixed
/// VHD (`format/vhd/fixed.rs`).
pub fn convert_stream(
    format: &'static str,
    stream: &mut ChunkStream,
    sink: &mut dyn ExtentSink,
    options: &StreamOptions,
) -> Result<ImageSummary, ImageError> {
    let fail = |e: StreamError| ImageError::stream(format, e);
    let mut held = HeldTail::default();
    let mut next = || stream.next_chunk().map_err(|e| fail(StreamError::Read(e)));
    // One chunk of look-ahead: what follows the current chunk says how much of it
    // may still be the tail (more than needed when the next chunk is short, which
    // only delays those bytes).
    let mut current = next()?;
    while let Some(chunk) = current.take() {
        current = next()?;
        let ahead = current.as_ref().map_or(0, |c| c.len()).min(TAIL);
        for extent in held.push(chunk, TAIL - ahead) {
            sink.write(extent).map_err(|e| fail(e.into()))?;
        }
    }
    let (data_len, tail) = held.finish();
    let fixed = vhd::fixed_vhd_footer(&tail, data_len).map_err(|e| ImageError::format("vhd", e))?;
    let (format, virtual_size) = match &fixed {
        Some(vhd) => ("vhd", vhd.disk_size()),
        None => {
            if let Some(name) = crate::format::sniff::sniff_trailer(&tail) {
                return Err(ImageError::format(format, RawError::Trailer(name)));
            }
            let len = tail.len() as u64;
            sink.write(Extent::data(data_len, tail))
                .map_err(|e| fail(e.into()))?;
            (format, data_len + len)
        }
    };
    let fail = |e: StreamError| ImageError::stream(format, e);
    sink.set_size(virtual_size).map_err(|e| fail(e.into()))?;
    let summary = ImageSummary {
        format,
        subformat: None,
        virtual_size,
        allocated_bytes: None,
        stream_len: stream.position(),
        retained_peak: 0,
        spilled_bytes: 0,
        // The bytes are the disk: one data run at its own offsets.
        map: options.collect_map.then(|| {
            vec![MapEntry {
                start: 0,
                length: virtual_size,
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
    };
    Ok(match fixed {
        Some(vhd) => vhd::with_footer_details(
            summary.with_subformat(vhd::DiskType::Fixed.name()),
            &vhd.footer,
        ),
        None => summary,
    })
}

/// The bytes of a stream not yet written: the last ones seen, as many as may
/// still be a trailer.
#[derive(Default)]
struct HeldTail {
    /// Stream offset of the first held byte (everything before it is written).
    written: u64,
    held: BytesMut,
}

impl HeldTail {
    /// Takes the next chunk; `hold` of the bytes up to its end must stay held
    /// (the stream has fewer than [`TAIL`] bytes after it). Returns what may be
    /// written now, in order.
    fn push(&mut self, chunk: Bytes, hold: usize) -> Vec<Extent> {
        let mut out = Vec::new();
        let chunk_start = self.written + self.held.len() as u64;
        let end = chunk_start + chunk.len() as u64;
        let write_to = end.saturating_sub(hold as u64).max(self.written);
        let from_held = (write_to - self.written).min(self.held.len() as u64) as usize;
        if from_held > 0 {
            let bytes = self.held.split_to(from_held).freeze();
            out.push(Extent::data(self.written, bytes));
            self.written += from_held as u64;
        }
        let from_chunk = (write_to.max(chunk_start) - chunk_start) as usize;
        if from_chunk > 0 {
            out.push(Extent::data(chunk_start, chunk.slice(..from_chunk)));
            self.written = chunk_start + from_chunk as u64;
        }
        self.held.extend_from_slice(&chunk[from_chunk..]);
        out
    }

    /// The offset of the held bytes and the bytes: the stream's last [`TAIL`]
    /// bytes, or all of a shorter stream.
    fn finish(self) -> (u64, Bytes) {
        (self.written, self.held.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::ExtentKind;

    fn data(extents: &[Extent]) -> Vec<(u64, Vec<u8>)> {
        extents
            .iter()
            .map(|e| match &e.kind {
                ExtentKind::Data(b) => (e.guest_offset, b.to_vec()),
                ExtentKind::Zero(_) => panic!("raw writes data only"),
            })
            .collect()
    }

    #[test]
    fn held_tail_keeps_exactly_the_last_bytes() {
        let mut held = HeldTail::default();
        // 1000 bytes, then 300 more, then the end: 512 held.
        let first = held.push(Bytes::from(vec![1u8; 1000]), 0);
        assert_eq!(data(&first), vec![(0, vec![1u8; 1000])]);
        let second = held.push(Bytes::from(vec![2u8; 300]), 300);
        assert_eq!(data(&second), vec![]);
        let third = held.push(Bytes::from(vec![3u8; 212]), 512);
        assert_eq!(data(&third), vec![]);
        let (at, tail) = held.finish();
        assert_eq!(at, 1000);
        assert_eq!(tail.len(), 512);
        assert_eq!(&tail[..300], &[2u8; 300][..]);
    }

    #[test]
    fn held_bytes_are_written_when_more_arrive() {
        let mut held = HeldTail::default();
        assert!(held.push(Bytes::from(vec![1u8; 100]), 100).is_empty());
        // The stream went on after all: 700 more, of which 512 are the tail.
        let out = held.push(Bytes::from(vec![2u8; 700]), 512);
        assert_eq!(data(&out), vec![(0, vec![1u8; 100]), (100, vec![2u8; 188])]);
        let (at, tail) = held.finish();
        assert_eq!((at, tail.len()), (288, 512));
    }

    #[test]
    fn a_short_stream_is_held_whole() {
        let mut held = HeldTail::default();
        assert!(held.push(Bytes::from(vec![7u8; 10]), 10).is_empty());
        let (at, tail) = held.finish();
        assert_eq!((at, tail.len()), (0, 10));
    }
}
