//! The upload server's TLS (contract §5.3): the given key pair, client
//! certificates "verified if given" against the `CLIENT_CERT_FILE` bundle (a
//! client without one still completes the handshake, so probes work; one
//! that does not chain fails it), `TLS_MIN_VERSION` and `TLS_CIPHERS` as CDI
//! maps them, and the per-request rule that some certificate of a verified
//! chain carries the Subject CN `CLIENT_NAME`.
//!
//! rustls has no TLS 1.0/1.1 and no DHE or CBC suites: a minimum below 1.2
//! means 1.2, and names it cannot offer are left out (as CDI leaves out names
//! Go does not know). TLS 1.3 suites are not configurable, as in Go.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("invalid TLS config: reading {what} {path}: {reason}")]
    Pem {
        /// "certificate", "key" or "client CA bundle".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// `TLS_MIN_VERSION` is not one of CDI's names.
    #[error("invalid TLS config: TLS_MIN_VERSION {0:?} is not VersionTLS10..VersionTLS13")]
    MinVersion(String),
    /// rustls refused the combination.
    #[error("invalid TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the bundle.
    #[error("invalid TLS config: client CA bundle: {0}")]
    Verifier(String),
}

/// The TLS settings from the environment.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Private key (PEM).
    pub key: PathBuf,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Client CA bundle (PEM); none: no client certificate is accepted.
    pub client_ca: Option<PathBuf>,
    /// `TLS_MIN_VERSION`.
    pub min_version: String,
    /// `TLS_CIPHERS`.
    pub ciphers: String,
}

/// The rustls server configuration for `settings`.
pub fn server_config(settings: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&settings.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| TlsError::Pem {
        what: "key",
        path: settings.key.clone(),
        reason: e.to_string(),
    })?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let wanted = tls12_suites(&settings.ciphers);
    if !wanted.is_empty() {
        provider.cipher_suites.retain(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => wanted.contains(&suite.suite()),
        });
    }
    let provider = Arc::new(provider);
    let versions = protocol_versions(&settings.min_version)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match &settings.client_ca {
        Some(bundle) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(bundle, "client CA bundle")? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    what: "client CA bundle",
                    path: bundle.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The protocol versions from CDI's `TLS_MIN_VERSION` names.
fn protocol_versions(
    min: &str,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], TlsError> {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        "" | "VersionTLS10" | "VersionTLS11" | "VersionTLS12" => Ok(&BOTH),
        "VersionTLS13" => Ok(&ONLY_13),
        other => Err(TlsError::MinVersion(other.to_string())),
    }
}

/// The TLS 1.2 suites named in `TLS_CIPHERS` (OpenSSL or IANA names) that
/// rustls offers; others are left out with a log line.
pub fn tls12_suites(list: &str) -> Vec<rustls::CipherSuite> {
    use rustls::CipherSuite as S;
    let mut suites = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let suite = match name {
            "ECDHE-ECDSA-AES128-GCM-SHA256" | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
                Some(S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
            }
            "ECDHE-RSA-AES128-GCM-SHA256" | "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
                Some(S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
            }
            "ECDHE-ECDSA-AES256-GCM-SHA384" | "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
                Some(S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
            }
            "ECDHE-RSA-AES256-GCM-SHA384" | "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
                Some(S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
            }
            "ECDHE-ECDSA-CHACHA20-POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
                Some(S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
            }
            "ECDHE-RSA-CHACHA20-POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
                Some(S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
            }
            // TLS 1.3 names: not configurable, as in Go.
            n if n.starts_with("TLS_AES_") || n.starts_with("TLS_CHACHA20_") => None,
            other => {
                tracing::info!(cipher = other, "TLS_CIPHERS: not offered by this server");
                None
            }
        };
        suites.extend(suite);
    }
    suites
}

/// True when some certificate of the client's (already verified) chain has
/// the Subject common name `client_name`. No chain: false.
pub fn presents_client_name(chain: Option<&[CertificateDer<'_>]>, client_name: &str) -> bool {
    let Some(chain) = chain else {
        return false;
    };
    chain.iter().any(|der| {
        x509_parser::parse_x509_certificate(der.as_ref()).is_ok_and(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .any(|cn| cn.as_str() == Ok(client_name))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_client_name_must_be_a_subject_cn_of_the_chain() {
        let name = "client.upload-server.cdi.kubevirt.io";
        let good = cert_with_cn(name);
        let other = cert_with_cn("someone.else");
        assert!(presents_client_name(Some(&[other.clone(), good]), name));
        assert!(!presents_client_name(Some(&[other]), name));
        assert!(!presents_client_name(None, name));
        assert!(!presents_client_name(Some(&[]), name));
    }

    #[test]
    fn cipher_names_map_to_tls12_suites_and_others_are_left_out() {
        let suites = tls12_suites(
            "TLS_AES_128_GCM_SHA256, ECDHE-ECDSA-AES128-GCM-SHA256,DHE-RSA-AES256-GCM-SHA384,\
             ECDHE-RSA-CHACHA20-POLY1305",
        );
        assert_eq!(
            suites,
            vec![
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            ]
        );
        assert!(tls12_suites("").is_empty());
    }

    #[test]
    fn min_versions_are_cdis_names() {
        assert_eq!(protocol_versions("VersionTLS13").unwrap().len(), 1);
        assert_eq!(protocol_versions("VersionTLS10").unwrap().len(), 2);
        assert!(protocol_versions("TLS1.2").is_err());
    }
}
