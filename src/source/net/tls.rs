//! The one TLS and client policy: system roots, plus every certificate of the
//! CA directory (`--ca-dir`, CDI's `/certs`) and of the proxy CA directory
//! (`--proxy-ca-dir`, CDI's `/proxycerts`), or no verification at all with
//! `insecure`. The same client settings serve every source: HTTP/1.1 only (a
//! stalled connection is never shared with the retry that replaces it, and
//! parallel ranges get a connection each), no automatic redirects (they are
//! followed by [`request`](super::request) so credentials stay on their
//! origin), no content coding (`Accept-Encoding: identity`: the bytes hashed by
//! `--checksum` are the bytes stored), and no total timeout (stalls are
//! detected per read).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING};
use reqwest::Certificate;

use crate::error::describe_chain;

/// Connect timeout (TCP and TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA directory or file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("CA certificates {path}: {reason}")]
pub struct CaError {
    /// The file or directory.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Which CA files of a directory are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaFiles {
    /// Every non-dot regular file (CDI's http and S3 importers).
    Any,
    /// Only `*.crt` and `*.pem` (CDI's registry importer).
    CrtAndPem,
}

/// What the client trusts.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// Directories of extra roots.
    pub ca_dirs: Vec<PathBuf>,
    /// Which files of them.
    pub only_crt_and_pem: bool,
    /// Skip verification.
    pub insecure: bool,
}

impl TlsPolicy {
    /// The roots and verification of `options`: the CA dir and the proxy CA
    /// dir (when it exists; CDI mounts it only when a proxy CA is set).
    pub fn of(options: &crate::source::SourceOptions, files: CaFiles) -> TlsPolicy {
        let mut ca_dirs: Vec<PathBuf> = options.ca_dir.iter().cloned().collect();
        ca_dirs.extend(options.proxy_ca_dir.iter().filter(|d| d.is_dir()).cloned());
        TlsPolicy {
            ca_dirs,
            only_crt_and_pem: files == CaFiles::CrtAndPem,
            insecure: options.insecure,
        }
    }

    /// A reqwest client with this policy and the shared settings.
    pub fn client(&self) -> Result<reqwest::Client, CaError> {
        let mut certs = Vec::new();
        for dir in &self.ca_dirs {
            certs.extend(load_ca_dir(dir, self.only_crt_and_pem)?);
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("diskimport/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT);
        // An explicit root set (the system's, if any, and the CA directories):
        // reqwest's default refuses to build a client at all when the system has
        // no CA bundle, which would break plain http and https with a CA
        // directory in a FROM-scratch image (see `source::system_roots`).
        builder = builder.tls_certs_only(crate::source::system_roots::with_system(certs));
        if self.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        builder.build().map_err(|e| CaError {
            path: self
                .ca_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!("the TLS client cannot use them: {}", describe_chain(&e)),
        })
    }
}

/// Every certificate of the CA files of `dir`; a file without one, or with a
/// certificate rustls cannot use, is an error naming the file.
pub fn load_ca_dir(dir: &Path, only_crt_and_pem: bool) -> Result<Vec<Certificate>, CaError> {
    let err = |path: &Path, reason: String| CaError {
        path: path.display().to_string(),
        reason,
    };
    let entries = crate::source::ca_dir::certificate_files(dir, only_crt_and_pem)
        .map_err(|e| err(dir, e.to_string()))?;
    let mut certs = Vec::new();
    for path in entries {
        let pem = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        let found =
            Certificate::from_pem_bundle(&pem).map_err(|e| err(&path, describe_chain(&e)))?;
        if found.is_empty() {
            return Err(err(&path, "no PEM certificate in the file".into()));
        }
        // A certificate rustls cannot parse fails here, by file name, not at
        // the first handshake.
        reqwest::Client::builder()
            .tls_certs_only(found.clone())
            .build()
            .map_err(|e| {
                err(
                    &path,
                    format!("not a usable CA certificate: {}", describe_chain(&e)),
                )
            })?;
        certs.extend(found);
    }
    Ok(certs)
}
