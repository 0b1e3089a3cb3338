//! One containerDisk layer, walked as a stream: the blob's bytes are verified
//! against its digest and size as they pass, the layer is decompressed by its
//! magic (gzip, zstd, xz or plain tar), and its tar entries are parsed in
//! streaming mode until the disk file turns up. Nothing is written to disk.

use std::io::{self, Cursor, Read};

use bytes::Bytes;
use sha2::{Digest as _, Sha256, Sha512};

use crate::tar_guard::{skip_body, HeaderBudget};

/// Size of the chunks the disk file is handed out in.
const DISK_CHUNK: usize = 256 * 1024;

/// A blob that did not match its descriptor. Its message always contains
/// "digest mismatch", which is what callers and tests key on.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest}: digest mismatch: {detail}")]
pub struct BlobMismatch {
    /// The digest the manifest names.
    pub digest: String,
    /// What was wrong.
    pub detail: String,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_digest(digest: &str) -> io::Result<Hasher> {
        match digest.split_once(':') {
            Some(("sha256", hex)) if hex.len() == 64 => Ok(Hasher::Sha256(Sha256::new())),
            Some(("sha512", hex)) if hex.len() == 128 => Ok(Hasher::Sha512(Sha512::new())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported or malformed blob digest {digest:?}"),
            )),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(&mut self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize_reset())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize_reset())),
        }
    }
}

/// Verifies the bytes of `inner` against a descriptor's digest and size: more
/// bytes than the size fail at once, a wrong digest or a short blob fail at
/// its end, before the end is reported.
pub struct VerifyingReader<R> {
    inner: R,
    digest: String,
    size: u64,
    read: u64,
    hasher: Hasher,
    state: State,
}

enum State {
    Reading,
    Verified,
    Failed(io::ErrorKind, String),
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, which must yield the blob named by `digest` of `size` bytes.
    pub fn new(inner: R, digest: &str, size: u64) -> io::Result<Self> {
        Ok(VerifyingReader {
            inner,
            digest: digest.to_string(),
            size,
            read: 0,
            hasher: Hasher::for_digest(digest)?,
            state: State::Reading,
        })
    }

    /// The error this reader returned, if any (read errors may be rewrapped by
    /// the decompressor or the tar parser above it).
    pub fn failure(&self) -> Option<io::Error> {
        match &self.state {
            State::Failed(kind, text) => Some(io::Error::new(*kind, text.clone())),
            _ => None,
        }
    }

    /// Reads the rest of the blob, which verifies it.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        self.state = State::Failed(error.kind(), error.to_string());
        error
    }

    fn mismatch(&mut self, detail: String) -> io::Error {
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            BlobMismatch {
                digest: self.digest.clone(),
                detail,
            },
        );
        self.fail(error)
    }

    /// The blob ended: checks its size and digest.
    fn finish(&mut self) -> io::Result<()> {
        if self.read != self.size {
            let detail = format!(
                "{} bytes arrived, the manifest says {}",
                self.read, self.size
            );
            return Err(self.mismatch(detail));
        }
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(self.mismatch(format!("the content hashes to {actual}")));
        }
        self.state = State::Verified;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Verified => return Ok(0),
            State::Failed(kind, text) => return Err(io::Error::new(*kind, text.clone())),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(e)),
        };
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.size {
            let detail = format!("more than the {} bytes the manifest says", self.size);
            return Err(self.mismatch(detail));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Where a disk path was found.
#[derive(Debug, Clone)]
pub struct FoundDisk {
    /// Path of the entry in the layer.
    pub path: String,
    /// Size of the disk file.
    pub size: u64,
}

/// Why a layer walk stopped.
#[derive(Debug)]
pub enum LayerError {
    /// The blob itself failed: transfer error, size or digest mismatch.
    Blob(io::Error),
    /// The blob is intact but is not a (compressed) tar archive.
    Unreadable(io::Error),
    /// The receiver of the disk bytes went away.
    Cancelled,
}

/// Compression of a layer, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// xz.
    Xz,
    /// A plain tar.
    None,
}

fn sniff(head: &[u8]) -> LayerCompression {
    if head.starts_with(&[0x1f, 0x8b]) {
        LayerCompression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        LayerCompression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        LayerCompression::Xz
    } else {
        LayerCompression::None
    }
}

/// Returns the file name when `raw_path` names a file directly under `disk/`
/// (optionally written `./disk/` or `/disk/`); whiteouts, nested paths and
/// anything with `..` are refused.
pub fn disk_entry_name(raw_path: &[u8]) -> Option<String> {
    let path = std::str::from_utf8(raw_path).ok()?;
    let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
    let (dir, name) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || dir != "disk" || name == ".." || name.starts_with(".wh.") {
        return None;
    }
    if path.split('/').any(|p| p == "..") {
        return None;
    }
    Some(name.to_string())
}

/// Walks one layer. Calls `on_found` when the disk entry starts, hands its
/// bytes to `send` in order, and reads the blob to its end (which verifies
/// it) before returning `Ok(Some(..))`. Returns `Ok(None)` for a verified
/// layer without a disk. `found` is set once `on_found` was called.
pub fn walk_layer<R: Read>(
    blob: &mut VerifyingReader<R>,
    found: &mut bool,
    on_found: &mut dyn FnMut(&FoundDisk) -> bool,
    send: &mut dyn FnMut(Bytes) -> bool,
) -> Result<Option<FoundDisk>, LayerError> {
    let outcome = walk_tar(blob, found, on_found, send);
    match outcome {
        Err(LayerError::Cancelled) => Err(LayerError::Cancelled),
        Err(LayerError::Blob(e)) => Err(LayerError::Blob(e)),
        Err(LayerError::Unreadable(e)) => {
            // A parse error may be a corrupt transfer: the blob's own verdict
            // comes first.
            if let Some(blob_error) = blob.failure() {
                return Err(LayerError::Blob(blob_error));
            }
            blob.drain().map_err(LayerError::Blob)?;
            Err(LayerError::Unreadable(e))
        }
        Ok(disk) => {
            blob.drain().map_err(LayerError::Blob)?;
            Ok(disk)
        }
    }
}

fn walk_tar<R: Read>(
    blob: &mut VerifyingReader<R>,
    found: &mut bool,
    on_found: &mut dyn FnMut(&FoundDisk) -> bool,
    send: &mut dyn FnMut(Bytes) -> bool,
) -> Result<Option<FoundDisk>, LayerError> {
    let mut head = Vec::with_capacity(6);
    (&mut *blob)
        .take(6)
        .read_to_end(&mut head)
        .map_err(LayerError::Blob)?;
    let compression = sniff(&head);
    let raw = Cursor::new(head).chain(&mut *blob);
    let unreadable = LayerError::Unreadable;
    let decoded: Box<dyn Read + '_> = match compression {
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        LayerCompression::Zstd => {
            // The same window limit as the image decoders (`crate::limits`).
            let mut decoder = zstd::stream::read::Decoder::new(raw).map_err(unreadable)?;
            decoder
                .window_log_max(crate::limits::current().zstd_window_log_max)
                .map_err(unreadable)?;
            Box::new(decoder)
        }
        LayerCompression::Xz => {
            // The same hard memory limit as the image decoders (`crate::limits`).
            let limit = crate::limits::current().xz_memlimit;
            let stream = liblzma::stream::Stream::new_stream_decoder(limit, 0)
                .map_err(|e| unreadable(io::Error::other(e)))?;
            Box::new(liblzma::read::XzDecoder::new_stream(raw, stream))
        }
        LayerCompression::None => Box::new(raw),
    };
    tracing::debug!(?compression, "walking layer");
    let budget = HeaderBudget::new();
    let mut archive = tar::Archive::new(budget.guard(decoded));
    let mut entries = archive.entries().map_err(unreadable)?;
    while let Some(entry) = budget.next_entry(&mut entries) {
        let mut entry = entry.map_err(unreadable)?;
        let entry_type = entry.header().entry_type();
        let is_file = matches!(
            entry_type,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        );
        let path_bytes = entry.path_bytes().into_owned();
        if !is_file || disk_entry_name(&path_bytes).is_none() {
            skip_body(&mut entry).map_err(unreadable)?;
            continue;
        }
        let disk = FoundDisk {
            path: String::from_utf8_lossy(&path_bytes).into_owned(),
            size: entry.size(),
        };
        *found = true;
        if !on_found(&disk) {
            return Err(LayerError::Cancelled);
        }
        let mut sent = 0u64;
        loop {
            let mut chunk = vec![0u8; DISK_CHUNK];
            let mut filled = 0;
            while filled < chunk.len() {
                match entry.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LayerError::Unreadable(e)),
                }
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            sent += filled as u64;
            if !send(Bytes::from(chunk)) {
                return Err(LayerError::Cancelled);
            }
        }
        if sent != disk.size {
            return Err(LayerError::Unreadable(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends after {sent} of its {} bytes", disk.path, disk.size),
            )));
        }
        return Ok(Some(disk));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("../etc/passwd").unwrap();
            }
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn walk(
        blob: &[u8],
        digest: &str,
        size: u64,
    ) -> (Result<Option<FoundDisk>, LayerError>, Vec<u8>) {
        let mut reader = VerifyingReader::new(Cursor::new(blob.to_vec()), digest, size).unwrap();
        let mut out = Vec::new();
        let mut found = false;
        let result = walk_layer(&mut reader, &mut found, &mut |_| true, &mut |b| {
            out.extend_from_slice(&b);
            true
        });
        (result, out)
    }

    #[test]
    fn disk_entry_names() {
        assert_eq!(
            disk_entry_name(b"disk/disk.qcow2").as_deref(),
            Some("disk.qcow2")
        );
        assert_eq!(disk_entry_name(b"./disk/a.img").as_deref(), Some("a.img"));
        assert_eq!(disk_entry_name(b"/disk/a.img").as_deref(), Some("a.img"));
        assert_eq!(disk_entry_name(b"disk.img"), None);
        assert_eq!(disk_entry_name(b"disk/"), None);
        assert_eq!(disk_entry_name(b"disk/sub/a.img"), None);
        assert_eq!(disk_entry_name(b"disk/.wh.a.img"), None);
        assert_eq!(disk_entry_name(b"disk/../etc/passwd"), None);
        assert_eq!(disk_entry_name(b"../disk/a.img"), None);
        assert_eq!(disk_entry_name(b"other/disk/a.img"), None);
    }

    #[test]
    fn takes_first_regular_file_under_disk_and_skips_links() {
        let tar = tar_with(&[
            ("etc/hosts", tar::EntryType::Regular, b"x"),
            ("disk/link.img", tar::EntryType::Symlink, b""),
            ("disk/sub/deep.img", tar::EntryType::Regular, b"deep"),
            ("disk/disk.img", tar::EntryType::Regular, b"the disk"),
            ("disk/second.img", tar::EntryType::Regular, b"second"),
        ]);
        let (result, out) = walk(&tar, &digest_of(&tar), tar.len() as u64);
        let disk = result.unwrap().unwrap();
        assert_eq!(disk.path, "disk/disk.img");
        assert_eq!(out, b"the disk");
    }

    #[test]
    fn gzip_and_zstd_layers_are_sniffed() {
        let tar = tar_with(&[("disk/d.raw", tar::EntryType::Regular, &[7u8; 70000])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for blob in [gz, zst] {
            let (result, out) = walk(&blob, &digest_of(&blob), blob.len() as u64);
            assert_eq!(result.unwrap().unwrap().size, 70000);
            assert_eq!(out, vec![7u8; 70000]);
        }
    }

    #[test]
    fn layer_without_disk_is_none() {
        let tar = tar_with(&[("usr/bin/x", tar::EntryType::Regular, b"x")]);
        let (result, out) = walk(&tar, &digest_of(&tar), tar.len() as u64);
        assert!(result.unwrap().is_none());
        assert!(out.is_empty());
    }

    #[test]
    fn digest_mismatch_fails_after_the_disk_bytes() {
        let tar = tar_with(&[("disk/d.raw", tar::EntryType::Regular, b"good bytes")]);
        let wrong = digest_of(b"something else");
        let (result, _) = walk(&tar, &wrong, tar.len() as u64);
        match result {
            Err(LayerError::Blob(e)) => assert!(e.to_string().contains("digest mismatch"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn size_mismatch_fails_both_ways() {
        let tar = tar_with(&[("disk/d.raw", tar::EntryType::Regular, b"good bytes")]);
        for size in [tar.len() as u64 - 1, tar.len() as u64 + 1] {
            let (result, _) = walk(&tar, &digest_of(&tar), size);
            match result {
                Err(LayerError::Blob(e)) => {
                    assert!(e.to_string().contains("digest mismatch"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn garbage_layer_is_unreadable_but_verified() {
        let blob = vec![0x1fu8, 0x8b, 0, 1, 2, 3, 4, 5];
        let (result, _) = walk(&blob, &digest_of(&blob), blob.len() as u64);
        assert!(
            matches!(result, Err(LayerError::Unreadable(_))),
            "{result:?}"
        );
        let (result, _) = walk(&blob, &digest_of(b"x"), blob.len() as u64);
        assert!(matches!(result, Err(LayerError::Blob(_))), "{result:?}");
    }

    #[test]
    fn a_huge_long_name_before_the_disk_is_refused_not_allocated() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        let name = "x".repeat(3 << 20);
        builder.append_data(&mut header, name, &b"x"[..]).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "disk/disk.img", &b"disk"[..])
            .unwrap();
        let blob = builder.into_inner().unwrap();
        let (result, out) = walk(&blob, &digest_of(&blob), blob.len() as u64);
        match result {
            Err(LayerError::Unreadable(e)) => assert!(e.to_string().contains("metadata"), "{e}"),
            other => panic!("expected the layer refused as unreadable, got {other:?}"),
        }
        assert!(out.is_empty());
    }
}
