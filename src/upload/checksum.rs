//! The optional digest of an upload, from its request headers:
//! `x-diskimport-checksum: ALGO:HEX` (the form `--checksum` takes) or an RFC
//! 9530 `Content-Digest: sha-256=:BASE64:` (`sha-512`, and the deprecated
//! `md5` and `sha` too). It is checked over the body bytes as received (see
//! `source::checksum`), before the disk is published.

use base64::Engine as _;

use crate::source::checksum::{ChecksumError, Expected};

/// Our own header.
pub const CHECKSUM_HEADER: &str = "x-diskimport-checksum";
/// RFC 9530's header.
pub const CONTENT_DIGEST_HEADER: &str = "content-digest";

/// A digest header that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DigestHeaderError {
    /// `x-diskimport-checksum` is malformed.
    #[error("{CHECKSUM_HEADER}: {0}")]
    Checksum(#[from] ChecksumError),
    /// `Content-Digest` has no algorithm this server knows, or bad syntax.
    #[error(
        "Content-Digest {0:?}: expected sha-256=:BASE64:, sha-512=:BASE64:, md5=... or sha=..."
    )]
    ContentDigest(String),
}

/// The expected digest named by `checksum` (our header) or, failing that,
/// `content_digest` (RFC 9530). Neither: none.
pub fn expected_digest(
    checksum: Option<&str>,
    content_digest: Option<&str>,
) -> Result<Option<Expected>, DigestHeaderError> {
    if let Some(value) = checksum {
        return Ok(Some(Expected::parse(value)?));
    }
    let Some(value) = content_digest else {
        return Ok(None);
    };
    let invalid = || DigestHeaderError::ContentDigest(value.to_string());
    // A dictionary of `algorithm=:base64:`; the first known algorithm wins,
    // strongest first.
    let mut members = Vec::new();
    for member in value.split(',') {
        let (name, bytes) = member.trim().split_once('=').ok_or_else(invalid)?;
        let encoded = bytes
            .trim()
            .strip_prefix(':')
            .and_then(|b| b.strip_suffix(':'))
            .ok_or_else(invalid)?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| invalid())?;
        members.push((name.trim().to_ascii_lowercase(), digest));
    }
    for (ours, theirs) in [
        ("sha512", "sha-512"),
        ("sha256", "sha-256"),
        ("sha1", "sha"),
        ("md5", "md5"),
    ] {
        if let Some((_, digest)) = members.iter().find(|(n, _)| n == theirs) {
            let text = format!("{ours}:{}", hex::encode(digest));
            return Ok(Some(Expected::parse(&text).map_err(|_| invalid())?));
        }
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::checksum::Algo;

    #[test]
    fn our_header_is_algo_colon_hex() {
        let e = expected_digest(Some(&format!("sha256:{}", "ab".repeat(32))), None)
            .unwrap()
            .unwrap();
        assert_eq!(e.algo(), Algo::Sha256);
        assert!(expected_digest(Some("sha256:abc"), None).is_err());
    }

    #[test]
    fn content_digest_is_rfc_9530() {
        // sha-256 of the empty string.
        let v = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:";
        let e = expected_digest(None, Some(v)).unwrap().unwrap();
        assert_eq!(e.algo(), Algo::Sha256);
        let both = format!("unixsum=:AA==:, {v}");
        assert!(expected_digest(None, Some(&both)).unwrap().is_some());
        assert!(expected_digest(None, Some("sha-256=47DEQ")).is_err());
        assert!(expected_digest(None, Some("crc32c=:AAAAAA==:")).is_err());
        // Wrong length for the algorithm.
        assert!(expected_digest(None, Some("sha-256=:AAAA:")).is_err());
        assert!(expected_digest(None, None).unwrap().is_none());
    }
}
