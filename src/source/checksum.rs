//! `--checksum ALGO:HEX`: a digest over the bytes as served (before any
//! decompression), checked when the stream ends.
//!
//! The check happens when the inner reader first returns EOF: a mismatch is
//! then an `io::Error` carrying a [`ChecksumMismatch`] (its message contains
//! `checksum mismatch` and both digests), so the pipeline fails instead of
//! publishing the target. A stream that is never read to its end is never
//! declared good. Callers tell a mismatch from other failures by its type
//! ([`is_checksum_mismatch`]), never by the words of a message, which an
//! image or a server could choose.

use std::io::{self, Read};

use bytes::Bytes;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::piece::PieceRead;

/// A malformed --checksum value.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// Not ALGO:HEX with a known algorithm.
    #[error("invalid checksum {0:?}: expected md5:HEX, sha1:HEX, sha256:HEX or sha512:HEX")]
    Invalid(String),
    /// The hex part is not the digest length of the algorithm.
    #[error("invalid checksum {text:?}: {algo} needs {want} hex digits, got {got}")]
    Length {
        /// The whole value.
        text: String,
        /// The algorithm.
        algo: &'static str,
        /// Hex digits expected.
        want: usize,
        /// Hex digits given.
        got: usize,
    },
}

/// The bytes as served do not have the expected digest.
#[derive(Debug, Clone, thiserror::Error)]
#[error("checksum validation failed: checksum mismatch: expected {algo}:{expected}, calculated {algo}:{calculated}")]
pub struct ChecksumMismatch {
    /// The algorithm's name.
    pub algo: &'static str,
    /// The expected digest, hex.
    pub expected: String,
    /// The digest of the bytes received, hex.
    pub calculated: String,
}

/// True when `error` or one of its causes is a [`ChecksumMismatch`],
/// including one carried inside an `io::Error`.
pub fn is_checksum_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<ChecksumMismatch>() {
            return true;
        }
        if let Some(io_error) = e.downcast_ref::<io::Error>() {
            if io_error
                .get_ref()
                .is_some_and(|inner| is_checksum_mismatch(inner))
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A supported digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algo::Md5 => 16,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
            Algo::Sha512 => 64,
        }
    }
}

/// The expected digest.
#[derive(Debug, Clone)]
pub struct Expected {
    algo: Algo,
    digest: Vec<u8>,
}

impl Expected {
    /// Parses "ALGO:HEX" (algorithm name case-insensitive, hex of either case).
    pub fn parse(text: &str) -> Result<Self, ChecksumError> {
        let invalid = || ChecksumError::Invalid(text.to_string());
        let (algo, hex_part) = text.trim().split_once(':').ok_or_else(invalid)?;
        let algo = match algo.to_ascii_lowercase().as_str() {
            "md5" => Algo::Md5,
            "sha1" => Algo::Sha1,
            "sha256" => Algo::Sha256,
            "sha512" => Algo::Sha512,
            _ => return Err(invalid()),
        };
        let want = algo.digest_len() * 2;
        if hex_part.len() != want {
            return Err(ChecksumError::Length {
                text: text.to_string(),
                algo: algo.name(),
                want,
                got: hex_part.len(),
            });
        }
        let digest = hex::decode(hex_part).map_err(|_| invalid())?;
        Ok(Expected { algo, digest })
    }

    /// The algorithm.
    pub fn algo(&self) -> Algo {
        self.algo
    }
}

enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algo: Algo) -> Self {
        match algo {
            Algo::Md5 => Hasher::Md5(Md5::new()),
            Algo::Sha1 => Hasher::Sha1(Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// Where a [`VerifyingReader`] stands.
enum Check {
    /// Bytes still flowing into the digest.
    Hashing(Hasher),
    /// The digest matched at EOF: later reads return EOF.
    Verified,
    /// The digest did not match: later reads fail with the same error.
    Mismatched(ChecksumMismatch),
}

/// Passes bytes through and checks the digest at EOF.
pub struct VerifyingReader<R> {
    inner: R,
    expected: Expected,
    check: Check,
}

impl<R> VerifyingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, expected: Expected) -> Self {
        VerifyingReader {
            inner,
            check: Check::Hashing(Hasher::new(expected.algo)),
            expected,
        }
    }
}

impl<R> VerifyingReader<R> {
    /// The hasher while bytes still flow; `Err` once the digest mismatched,
    /// `Ok(None)` once it matched (the end was reached).
    fn hashing(&mut self) -> io::Result<Option<&mut Hasher>> {
        match &mut self.check {
            Check::Hashing(hasher) => Ok(Some(hasher)),
            Check::Verified => Ok(None),
            Check::Mismatched(mismatch) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, mismatch.clone()))
            }
        }
    }

    /// At the end of the bytes: compares the digest.
    fn finish(&mut self) -> io::Result<()> {
        let Check::Hashing(hasher) = std::mem::replace(&mut self.check, Check::Verified) else {
            return Ok(());
        };
        let got = hasher.finish();
        if got == self.expected.digest {
            return Ok(());
        }
        let mismatch = ChecksumMismatch {
            algo: self.expected.algo.name(),
            expected: hex::encode(&self.expected.digest),
            calculated: hex::encode(&got),
        };
        self.check = Check::Mismatched(mismatch.clone());
        Err(io::Error::new(io::ErrorKind::InvalidData, mismatch))
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.hashing()?.is_none() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        if let Some(hasher) = self.hashing()? {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R: PieceRead> PieceRead for VerifyingReader<R> {
    fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        if self.hashing()?.is_none() {
            return Ok(Some(Bytes::new()));
        }
        let Some(piece) = self.inner.read_piece(max)? else {
            return Ok(None);
        };
        if piece.is_empty() {
            self.finish()?;
        } else if let Some(hasher) = self.hashing()? {
            hasher.update(&piece);
        }
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &[u8] = b"hello world\n";
    // Digests of DATA.
    const MD5: &str = "6f5902ac237024bdd0c176cb93063dc4";
    const SHA1: &str = "22596363b3de40b06f981fb85d82312e8c0ed511";
    const SHA256: &str = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";
    const SHA512: &str = "db3974a97f2407b7cae1ae637c0030687a11913274d578492558e39c16c017de84eacdc8c62fe34ee4e12b4b1428817f09b6a2760c3f8a664ceae94d2434a593";

    fn read_all(spec: &str, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = VerifyingReader::new(data, Expected::parse(spec).unwrap());
        let mut out = Vec::new();
        // Small reads exercise the incremental hashing.
        let mut buf = [0u8; 5];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn good_digests_pass_for_every_algorithm() {
        for spec in [
            format!("md5:{MD5}"),
            format!("sha1:{SHA1}"),
            format!("sha256:{SHA256}"),
            format!("SHA512:{}", SHA512.to_uppercase()),
        ] {
            assert_eq!(read_all(&spec, DATA).unwrap(), DATA, "{spec}");
        }
    }

    #[test]
    fn mismatch_is_an_error_naming_both_digests() {
        let err = read_all(&format!("sha256:{SHA256}"), b"hello world!").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains(SHA256), "{msg}");
        assert!(msg.contains("calculated sha256:"), "{msg}");
    }

    #[test]
    fn a_mismatch_is_known_by_its_type_not_its_words() {
        let err = read_all(&format!("sha256:{SHA256}"), b"hello world!").unwrap_err();
        assert!(is_checksum_mismatch(&err));
        // Wrapped again, as a decoder or the pipeline may do.
        let wrapped = crate::Error::Read(io::Error::new(io::ErrorKind::InvalidData, err));
        assert!(is_checksum_mismatch(&wrapped));
        // Words alone (a tar header, a file name, a server's message) are not.
        let words = io::Error::other("archive header checksum mismatch");
        assert!(!is_checksum_mismatch(&words));
    }

    #[test]
    fn empty_input_is_checked_too() {
        let e3b0 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(read_all(&format!("sha256:{e3b0}"), b"").unwrap().is_empty());
        assert!(read_all(&format!("sha256:{SHA256}"), b"").is_err());
    }

    #[test]
    fn malformed_values_are_rejected() {
        for bad in [
            "",
            "sha256",
            "crc32:12345678",
            "sha256:abc",
            &format!("md5:{SHA1}"),
            &format!("sha1:{}", "zz".repeat(20)),
        ] {
            assert!(Expected::parse(bad).is_err(), "{bad:?} accepted");
        }
        let err = Expected::parse("sha1:abcd").unwrap_err().to_string();
        assert!(err.contains("40 hex digits"), "{err}");
    }

    #[test]
    fn reads_after_verified_eof_stay_eof() {
        let mut r = VerifyingReader::new(DATA, Expected::parse(&format!("md5:{MD5}")).unwrap());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
