//! The system's CA certificates (the bundle at `SSL_CERT_FILE` or the usual
//! distribution paths), loaded once and handed to every TLS client together
//! with the certificates of a CA directory.
//!
//! reqwest's default verifier refuses to build a client at all when the
//! system has no CA bundle, which broke even plain `http://` imports in a
//! FROM-scratch image. Clients here are built with an explicit root set
//! instead: an image without a bundle still does plain http, and https with
//! `IMPORTER_CERT_DIR`; only a verification that needs the system roots
//! fails, and [`missing_hint`] says why.

use std::sync::OnceLock;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::RootCertStore;

/// The usable system CA certificates (empty when the system has none).
pub fn system_certificates() -> &'static [CertificateDer<'static>] {
    static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::debug!(%error, "loading the system CA certificates");
        }
        let usable: Vec<_> = loaded
            .certs
            .into_iter()
            .filter(|der| RootCertStore::empty().add(der.clone()).is_ok())
            .collect();
        tracing::debug!(count = usable.len(), "system CA certificates");
        usable
    })
}

/// The system's certificates followed by `extra`, as the root set of a
/// reqwest client (`ClientBuilder::tls_certs_only`).
pub fn with_system(extra: Vec<reqwest::Certificate>) -> Vec<reqwest::Certificate> {
    system_certificates()
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .chain(extra)
        .collect()
}

/// Why a TLS verification may have failed, when the system has no CA
/// certificates at all: to be added to a TLS failure's message.
pub fn missing_hint() -> Option<&'static str> {
    system_certificates().is_empty().then_some(
        "the system has no CA certificates (no bundle at SSL_CERT_FILE or the usual paths): \
         give the server's CA in a certificate directory (IMPORTER_CERT_DIR) or add a CA bundle",
    )
}
