//! Sources: where the image bytes come from. Each yields the same forward-only
//! stream ([`Input`]: read, or taken in pieces from the download's buffers)
//! that the decoders and format readers consume, and reports the bytes it
//! read (and the total, where known) into [`Progress`].
//!
//! - `file`: a local path, or `-` for standard input.
//! - `http`: `http(s)://` with TLS options, auth, headers, proxies, resume.
//! - `s3`: `s3://bucket/key`, or CDI's path-style endpoint URL.
//! - `registry`: `docker://` containerDisk images.
//! - `checksum`: verifies `--checksum ALGO:HEX` over the bytes as served.
//! - `net`: the network layer the http, S3 and registry sources share.

pub mod ca_dir;
pub mod checksum;
pub mod file;
pub mod http;
pub mod net;
pub mod registry;
pub mod s3;
pub mod system_roots;

use std::path::PathBuf;
use std::sync::Arc;

use crate::piece::{self, Input};
use crate::progress::{CountingReader, Progress};

/// Which kind of source a spec names, when its scheme alone does not say
/// (CDI's S3 endpoints are plain `http(s)://` URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A local file or `-`.
    File,
    /// An http(s) URL.
    Http,
    /// An S3 object.
    S3,
    /// A container registry image.
    Registry,
}

/// Everything a source may need besides its location. Its `Debug` shows no
/// password and no header value.
#[derive(Clone, Default)]
pub struct SourceOptions {
    /// Force the kind instead of deriving it from the scheme.
    pub kind: Option<SourceKind>,
    /// Directory of extra CA certificates (PEM files) to trust.
    pub ca_dir: Option<PathBuf>,
    /// Skip TLS verification (and, for registries, allow plain http).
    pub insecure: bool,
    /// User name for basic auth (http, registry) or the access key id (S3).
    pub username: Option<String>,
    /// Password (http, registry) or the secret key (S3).
    pub password: Option<String>,
    /// Extra request headers, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Directory of CA certificates for the proxy.
    pub proxy_ca_dir: Option<PathBuf>,
    /// Expected digest of the bytes as served, "ALGO:HEX".
    pub checksum: Option<String>,
    /// Platform architecture to pick from a registry index.
    pub arch: Option<String>,
    /// S3 endpoint URL for `s3://` specs.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Connections for a parallel ranged download (`None`: the default, used
    /// only for large objects whose server honours ranges).
    pub connections: Option<usize>,
    /// How long a read may wait for a byte before the connection counts as
    /// dropped (`None`: [`net::DEFAULT_STALL_TIMEOUT`]).
    pub stall_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for SourceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SourceOptions")
            .field("kind", &self.kind)
            .field("ca_dir", &self.ca_dir)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("headers (values redacted)", &header_names)
            .field("proxy_ca_dir", &self.proxy_ca_dir)
            .field("checksum", &self.checksum)
            .field("arch", &self.arch)
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(net::DisplayUrl::of_spec),
            )
            .field("region", &self.region)
            .field("connections", &self.connections)
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

/// A source that could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file.
    #[error("opening {path}: {source}")]
    File {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An http(s) source.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// An S3 source.
    #[error(transparent)]
    S3(#[from] s3::S3Error),
    /// A registry source.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The --checksum value is malformed.
    #[error(transparent)]
    Checksum(#[from] checksum::ChecksumError),
}

/// Names the kind of source `spec` is.
pub fn kind_of(spec: &str, options: &SourceOptions) -> SourceKind {
    if let Some(kind) = options.kind {
        return kind;
    }
    let lower = spec.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        SourceKind::Http
    } else if lower.starts_with("s3://") {
        SourceKind::S3
    } else if lower.starts_with("docker://") {
        SourceKind::Registry
    } else {
        SourceKind::File
    }
}

/// Opens `spec` and returns its byte stream, counted into `progress` and, when
/// a checksum is given, verified at its end.
pub fn open(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<Input, SourceError> {
    let verifier = options
        .checksum
        .as_deref()
        .map(checksum::Expected::parse)
        .transpose()?;
    let raw: Input = match kind_of(spec, options) {
        SourceKind::File => piece::plain(file::open(spec, progress)?),
        SourceKind::Http => Box::new(http::open(spec, options, progress)?),
        SourceKind::S3 => Box::new(s3::open(spec, options, progress)?),
        SourceKind::Registry => piece::plain(registry::open(spec, options, progress)?),
    };
    let counted: Input = Box::new(CountingReader::new(raw, progress.clone()));
    Ok(match verifier {
        Some(expected) => Box::new(checksum::VerifyingReader::new(counted, expected)),
        None => counted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_options_shows_no_secret() {
        let options = SourceOptions {
            username: Some("importer".into()),
            password: Some("s3cret-pass".into()),
            headers: vec![("Authorization".into(), "Bearer tok-123".into())],
            endpoint: Some("https://ak:sk@minio:9000/?X-Amz-Signature=sig".into()),
            ..SourceOptions::default()
        };
        let shown = format!("{options:?}");
        for secret in ["s3cret-pass", "tok-123", "sk@", "sig"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("importer") && shown.contains("Authorization"),
            "{shown}"
        );
    }
}
