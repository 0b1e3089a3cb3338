//! The host-assisted clone target (contract §5.6): a body in the snappy
//! framing format (stream identifier, compressed and uncompressed chunks,
//! each CRC-32C checked by `snap`), holding either
//!
//! * `blockdevice-clone`: the raw bytes of the source volume, written to the
//!   target as they come (zero runs stay holes), no resize; or
//! * `filesystem-clone`: a GNU tar of the source volume (made with `tar -S`,
//!   so old-style sparse members occur), unpacked safely into `/data` (see
//!   `cdi::archive`), or, for a Block target, the first regular entry whose
//!   name contains `disk.img`, expanded to exactly its size, to the device.
//!
//! A name found in the tar is only compared, never opened on this machine.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;

use crate::cdi::archive::{self, ArchiveError};
use crate::extent::Extent;
use crate::progress::Progress;
use crate::sink::{ExtentSink, SinkError, SinkSummary};
use crate::stream::{ChunkStream, CHUNK_SIZE};
use crate::tar_guard::{skip_body, HeaderBudget};

/// The `x-cdi-content-type` header.
pub const CONTENT_TYPE_HEADER: &str = "x-cdi-content-type";

/// Which clone stream a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    /// Raw bytes of a Block source.
    Block,
    /// A tar of a Filesystem source.
    Filesystem,
}

impl CloneKind {
    /// The kind named by `x-cdi-content-type` (case-insensitive); anything
    /// else is an ordinary upload.
    pub fn from_header(value: Option<&str>) -> Option<CloneKind> {
        match value?.trim().to_ascii_lowercase().as_str() {
            "blockdevice-clone" => Some(CloneKind::Block),
            "filesystem-clone" => Some(CloneKind::Filesystem),
            _ => None,
        }
    }
}

/// Why a clone stream could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// The snappy framing or the bytes under it could not be read.
    #[error("reading the clone stream: {0}")]
    Read(#[source] std::io::Error),
    /// The target refused a write.
    #[error("writing the clone target: {0}")]
    Sink(#[from] SinkError),
    /// The tar could not be unpacked.
    #[error("unpacking the clone stream: {0}")]
    Archive(#[from] ArchiveError),
    /// A filesystem clone to a Block target has no disk image.
    #[error("the filesystem clone stream has no entry named like disk.img")]
    NoDiskImage,
}

/// The framing decoder over `body`.
fn unframe(body: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    Box::new(snap::read::FrameDecoder::new(body))
}

/// `blockdevice-clone`: the unframed bytes, in order, to `sink`.
pub fn block_clone(
    body: Box<dyn Read + Send>,
    sink: &mut dyn ExtentSink,
    progress: Arc<Progress>,
) -> Result<SinkSummary, CloneError> {
    let mut stream = ChunkStream::spawn(crate::piece::plain(unframe(body)), progress);
    let mut offset = 0u64;
    while let Some(chunk) = stream.next_chunk().map_err(CloneError::Read)? {
        let len = chunk.len() as u64;
        sink.write(Extent::data(offset, chunk))?;
        offset += len;
    }
    sink.set_size(offset)?;
    Ok(sink.finish()?)
}

/// `filesystem-clone` to a Filesystem volume: the tar unpacked into `dir`.
pub fn filesystem_clone_to_dir(body: Box<dyn Read + Send>, dir: &Path) -> Result<(), CloneError> {
    archive::unpack(unframe(body), dir)?;
    Ok(())
}

/// `filesystem-clone` to a Block volume: the first regular (or sparse) entry
/// whose name contains `disk.img`, expanded, to `sink`; the rest of the
/// stream is read to its end (its CRCs and framing checked) and dropped.
pub fn filesystem_clone_to_block(
    body: Box<dyn Read + Send>,
    sink: &mut dyn ExtentSink,
) -> Result<SinkSummary, CloneError> {
    let budget = HeaderBudget::new();
    let mut tar = tar::Archive::new(budget.guard(unframe(body)));
    let mut entries = tar.entries().map_err(CloneError::Read)?;
    let mut summary = None;
    while let Some(entry) = budget.next_entry(&mut entries) {
        let mut entry = entry.map_err(CloneError::Read)?;
        let kind = entry.header().entry_type();
        let is_file = kind.is_file() || kind.is_gnu_sparse();
        if summary.is_none() && is_file && contains(&entry.path_bytes(), b"disk.img") {
            summary = Some(copy_entry(&mut entry, sink)?);
        }
        skip_body(&mut entry).map_err(CloneError::Read)?;
    }
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(CloneError::Read)?;
    summary.ok_or(CloneError::NoDiskImage)
}

/// The entry's expanded bytes (holes of a sparse member read as zeroes,
/// which the sink skips) to `sink`, sized to what was read.
fn copy_entry(entry: &mut impl Read, sink: &mut dyn ExtentSink) -> Result<SinkSummary, CloneError> {
    let mut offset = 0u64;
    loop {
        let mut buf = BytesMut::zeroed(CHUNK_SIZE);
        let mut filled = 0;
        while filled < buf.len() {
            match entry.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloneError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        sink.write(Extent::data(offset, buf.freeze()))?;
        offset += filled as u64;
    }
    sink.set_size(offset)?;
    Ok(sink.finish()?)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::null::NullSink;
    use std::io::Write;

    fn framed(data: &[u8]) -> Vec<u8> {
        let mut encoder = snap::write::FrameEncoder::new(Vec::new());
        encoder.write_all(data).unwrap();
        encoder.into_inner().unwrap()
    }

    #[test]
    fn the_header_names_the_clone_kind_case_insensitively() {
        assert_eq!(
            CloneKind::from_header(Some("BlockDevice-Clone")),
            Some(CloneKind::Block)
        );
        assert_eq!(
            CloneKind::from_header(Some("filesystem-clone")),
            Some(CloneKind::Filesystem)
        );
        assert_eq!(CloneKind::from_header(Some("kubevirt")), None);
        assert_eq!(CloneKind::from_header(None), None);
    }

    #[test]
    fn a_block_clone_stream_is_unframed_to_the_sink() {
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 17).map(|i| (i % 251) as u8).collect();
        let mut sink = NullSink::default();
        let summary = block_clone(
            Box::new(std::io::Cursor::new(framed(&data))),
            &mut sink,
            Arc::new(Progress::default()),
        )
        .unwrap();
        assert_eq!(summary.size, data.len() as u64);
    }

    #[test]
    fn a_corrupt_frame_crc_is_an_error() {
        let mut bytes = framed(&vec![5u8; 100_000]);
        // Past the 10-byte stream identifier and the chunk header: the CRC.
        bytes[14] ^= 0xff;
        let mut sink = NullSink::default();
        let error = block_clone(
            Box::new(std::io::Cursor::new(bytes)),
            &mut sink,
            Arc::new(Progress::default()),
        )
        .unwrap_err();
        assert!(matches!(error, CloneError::Read(_)), "{error}");
    }

    #[test]
    fn a_filesystem_clone_without_a_disk_image_is_an_error() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        builder
            .append_data(&mut header, "other.txt", &b"data"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let mut sink = NullSink::default();
        let error =
            filesystem_clone_to_block(Box::new(std::io::Cursor::new(framed(&tar))), &mut sink)
                .unwrap_err();
        assert!(matches!(error, CloneError::NoDiskImage));
    }
}
