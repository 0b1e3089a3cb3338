//! The environment CDI's upload controller gives `cdi-uploadserver`
//! (contract §5.2), read once at start into an [`UploadConfig`]. Every path
//! CDI names (`/data`, `/dev/cdi-block-volume`, `/scratch`,
//! `/dev/termination-log`, the TLS files are given as absolute paths and
//! stay as they are) is taken under `root`, as `import` does, so tests run in
//! a temporary tree.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cdi::env::{parse_go_bool, under_root};
use crate::cdi::quantity::{parse_quantity, QuantityError};
use crate::cdi::sizing::parse_overhead;

/// Where a target lives when `DESTINATION` is not set.
pub const DEFAULT_DESTINATION: &str = "/data/disk.img";
/// CDI's listen defaults.
pub const DEFAULT_ADDRESS: &str = "0.0.0.0";
/// CDI's listen port.
pub const DEFAULT_PORT: u16 = 8443;
/// How long the server waits for an upload when `DEADLINE` is not set (what
/// CDI's controller uses when no certificate lifetime is shorter).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(12 * 3600);

/// A setting the server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `TLS_KEY_FILE` or `TLS_CERT_FILE` is missing.
    #[error("invalid TLS config: TLS_KEY_FILE and TLS_CERT_FILE are both required")]
    TlsFiles,
    /// `UPLOAD_IMAGE_SIZE` is not a Kubernetes quantity.
    #[error("UPLOAD_IMAGE_SIZE: {0}")]
    ImageSize(#[from] QuantityError),
    /// `DEADLINE` is not an RFC 3339 time.
    #[error("DEADLINE {text:?} is not an RFC 3339 time: {reason}")]
    Deadline {
        /// The value given.
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// `LISTEN_ADDRESS`/`LISTEN_PORT` do not make an address.
    #[error("LISTEN_ADDRESS {address:?} / LISTEN_PORT {port:?} is not an IP address and port")]
    Listen {
        /// The address given.
        address: String,
        /// The port given.
        port: String,
    },
}

/// Everything the upload server is told by its environment.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// The server's private key (PEM).
    pub tls_key: PathBuf,
    /// The server's certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// CAs that client certificates must chain to; none means no client can
    /// authenticate.
    pub client_ca: Option<PathBuf>,
    /// The Subject CN a client certificate must carry.
    pub client_name: String,
    /// `TLS_MIN_VERSION` as given (`VersionTLS12`, ...), empty for the default.
    pub tls_min_version: String,
    /// `TLS_CIPHERS` as given (comma list of OpenSSL names), empty for the default.
    pub tls_ciphers: String,
    /// `UPLOAD_IMAGE_SIZE` in bytes.
    pub image_size: Option<u64>,
    /// `FILESYSTEM_OVERHEAD` as a fraction.
    pub filesystem_overhead: f64,
    /// `PREALLOCATION`.
    pub preallocation: bool,
    /// The target: a block device, or the disk image file.
    pub destination: PathBuf,
    /// The Filesystem volume (`/data`), where archives and clones unpack.
    pub data_dir: PathBuf,
    /// The scratch volume, used only for what cannot be streamed in memory.
    pub scratch_dir: PathBuf,
    /// Where the termination message goes.
    pub termination_log: PathBuf,
    /// When the server gives up waiting for an upload.
    pub deadline: SystemTime,
    /// Where it listens.
    pub listen: SocketAddr,
    /// `OWNER_UID` if set: the progress metric's label.
    pub owner_uid: String,
    /// Bytes of memory for qcow2 data that arrives before its tables.
    pub memory_budget: Option<u64>,
    /// How long the server keeps answering (409) after a successful upload
    /// before it exits (`DISKIMPORT_UPLOAD_LINGER`, seconds; default 0, as
    /// CDI): lets tests and operators see the finished state.
    pub linger: Duration,
}

impl UploadConfig {
    /// Reads `env` (the process environment) with CDI's paths under `root`.
    pub fn from_env(env: &[(String, String)], root: &Path) -> Result<UploadConfig, ConfigError> {
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let (tls_key, tls_cert) = match (get("TLS_KEY_FILE"), get("TLS_CERT_FILE")) {
            (key, cert) if !key.is_empty() && !cert.is_empty() => {
                (PathBuf::from(key), PathBuf::from(cert))
            }
            _ => return Err(ConfigError::TlsFiles),
        };
        let client_ca = Some(get("CLIENT_CERT_FILE"))
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let image_size = match get("UPLOAD_IMAGE_SIZE").as_str() {
            "" => None,
            text => Some(parse_quantity(text)?),
        };
        let destination = match get("DESTINATION").as_str() {
            "" => under_root(root, DEFAULT_DESTINATION),
            path => under_root(root, path),
        };
        let deadline = parse_deadline(&get("DEADLINE"), SystemTime::now())?;
        let address = Some(get("LISTEN_ADDRESS"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let port = get("LISTEN_PORT");
        let listen = parse_listen(&address, &port)?;
        Ok(UploadConfig {
            tls_key,
            tls_cert,
            client_ca,
            client_name: get("CLIENT_NAME"),
            tls_min_version: get("TLS_MIN_VERSION"),
            tls_ciphers: get("TLS_CIPHERS"),
            image_size,
            // As CDI's upload server: anything unparsable is 0 and false.
            filesystem_overhead: parse_overhead(&get("FILESYSTEM_OVERHEAD")),
            preallocation: parse_go_bool(&get("PREALLOCATION")).unwrap_or(false),
            destination,
            data_dir: under_root(root, "/data"),
            scratch_dir: under_root(root, "/scratch"),
            termination_log: under_root(root, "/dev/termination-log"),
            deadline,
            listen,
            owner_uid: get("OWNER_UID"),
            memory_budget: get("DISKIMPORT_MEMORY_BUDGET").parse().ok(),
            linger: Duration::from_secs(get("DISKIMPORT_UPLOAD_LINGER").parse().unwrap_or(0)),
        })
    }
}

/// `DEADLINE` as CDI reads it: RFC 3339; empty means [`DEFAULT_DEADLINE`]
/// from `now`.
pub fn parse_deadline(text: &str, now: SystemTime) -> Result<SystemTime, ConfigError> {
    if text.is_empty() {
        return Ok(now + DEFAULT_DEADLINE);
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| ConfigError::Deadline {
        text: text.to_string(),
        reason: e.to_string(),
    })?;
    Ok(SystemTime::from(parsed.with_timezone(&chrono::Utc)))
}

fn parse_listen(address: &str, port: &str) -> Result<SocketAddr, ConfigError> {
    let invalid = || ConfigError::Listen {
        address: address.to_string(),
        port: port.to_string(),
    };
    let ip: IpAddr = address
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| invalid())?;
    let port = match port {
        "" => DEFAULT_PORT,
        p => p.parse().map_err(|_| invalid())?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const TLS: [(&str, &str); 2] = [("TLS_KEY_FILE", "/k"), ("TLS_CERT_FILE", "/c")];

    #[test]
    fn both_tls_files_are_required() {
        let e = UploadConfig::from_env(&env(&TLS[..1]), Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::TlsFiles));
        assert!(e.to_string().starts_with("invalid TLS config"));
    }

    #[test]
    fn defaults_are_cdis() {
        let c = UploadConfig::from_env(&env(&TLS), Path::new("/r")).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.destination, Path::new("/r/data/disk.img"));
        assert_eq!(c.termination_log, Path::new("/r/dev/termination-log"));
        assert!(!c.preallocation);
        assert_eq!(c.filesystem_overhead, 0.0);
        assert!(c.deadline > SystemTime::now() + Duration::from_secs(11 * 3600));
    }

    #[test]
    fn settings_are_read_as_cdi_reads_them() {
        let mut e = env(&TLS);
        e.extend(env(&[
            ("UPLOAD_IMAGE_SIZE", "64Mi"),
            ("FILESYSTEM_OVERHEAD", "0.055"),
            ("PREALLOCATION", "true"),
            ("DESTINATION", "/dev/cdi-block-volume"),
            ("LISTEN_ADDRESS", "127.0.0.1"),
            ("LISTEN_PORT", "9443"),
            ("DEADLINE", "2030-01-02T03:04:05Z"),
        ]));
        let c = UploadConfig::from_env(&e, Path::new("/r")).unwrap();
        assert_eq!(c.image_size, Some(64 << 20));
        assert_eq!(c.filesystem_overhead, 0.055);
        assert!(c.preallocation);
        assert_eq!(c.destination, Path::new("/r/dev/cdi-block-volume"));
        assert_eq!(c.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(
            c.deadline,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445)
        );
    }

    #[test]
    fn unparsable_overhead_and_preallocation_are_defaults_but_a_bad_deadline_is_fatal() {
        let mut e = env(&TLS);
        e.extend(env(&[
            ("FILESYSTEM_OVERHEAD", "lots"),
            ("PREALLOCATION", "maybe"),
        ]));
        let c = UploadConfig::from_env(&e, Path::new("/")).unwrap();
        assert_eq!(c.filesystem_overhead, 0.0);
        assert!(!c.preallocation);
        e.push(("DEADLINE".into(), "tomorrow".into()));
        assert!(matches!(
            UploadConfig::from_env(&e, Path::new("/")),
            Err(ConfigError::Deadline { .. })
        ));
    }
}
