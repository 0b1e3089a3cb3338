//! The importer's environment (contract section 1) turned into a validated
//! [`ImportRequest`]. Every path CDI mounts (`/certs`, `/extraheaders`,
//! `/proxycerts`, ...) is taken relative to a root directory, so tests can run
//! the real entrypoint against a temporary tree.

use std::path::{Path, PathBuf};

use super::quantity::{parse_quantity, QuantityError};
use super::sizing::parse_overhead;
use crate::source::{SourceKind, SourceOptions};

/// Where the data comes from (`IMPORTER_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdiSource {
    /// `http`: an http(s) URL.
    Http,
    /// `s3`: an S3 object by path-style URL.
    S3,
    /// `registry`: a containerDisk image.
    Registry,
    /// `none`: a blank disk.
    Blank,
}

/// What the source holds (`IMPORTER_CONTENTTYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// A VM disk image.
    Kubevirt,
    /// A tar archive to unpack into `/data`.
    Archive,
}

/// An environment the importer cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// Unknown `IMPORTER_SOURCE`.
    #[error("Unknown data source: {0}")]
    UnknownSource(String),
    /// A source CDI knows but this importer does not implement.
    #[error("Unable to connect to {0} data source: not supported by diskimport")]
    UnsupportedSource(String),
    /// Unknown `IMPORTER_CONTENTTYPE`.
    #[error("unknown content type {0:?} (expected kubevirt or archive)")]
    UnknownContentType(String),
    /// Archive content from a source that only carries disks.
    #[error("content type archive is not possible with source {0}")]
    ArchiveFromSource(&'static str),
    /// `PREALLOCATION` is not a boolean.
    #[error("PREALLOCATION={0:?} is not a boolean")]
    Preallocation(String),
    /// `IMPORTER_IMAGE_SIZE` is not a quantity.
    #[error("IMPORTER_IMAGE_SIZE: {0}")]
    ImageSize(#[from] QuantityError),
    /// A source without an endpoint.
    #[error("IMPORTER_ENDPOINT is empty for source {0}")]
    NoEndpoint(&'static str),
    /// An extra-header file could not be read.
    #[error("reading extra header file {path}: {source}")]
    HeaderFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Everything one import needs, from the environment.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The source kind.
    pub source: CdiSource,
    /// `IMPORTER_ENDPOINT`.
    pub endpoint: String,
    /// `IMPORTER_CONTENTTYPE`.
    pub content_type: ContentType,
    /// `IMPORTER_IMAGE_SIZE` in bytes, when given.
    pub image_size: Option<u64>,
    /// `OWNER_UID`, the progress metric's label.
    pub owner_uid: String,
    /// `FILESYSTEM_OVERHEAD` as a fraction.
    pub filesystem_overhead: f64,
    /// `PREALLOCATION`.
    pub preallocation: bool,
    /// `CACHE_MODE=TRYNONE` (set by CDI after an OOM kill): keep the page
    /// cache of the target bounded. Block devices are always written with
    /// O_DIRECT; files then wait for writeback and drop written pages.
    pub direct_io: bool,
    /// How to reach the source.
    pub source_options: SourceOptions,
    /// The node-pull sidecar's handshake files (`IMPORTER_READY_FILE`,
    /// `IMPORTER_DONE_FILE`), when set.
    pub node_pull: super::node_pull::NodePull,
}

/// Reads the request from `env` (in environment order) with CDI's mount
/// points under `root`.
pub fn parse(env: &[(String, String)], root: &Path) -> Result<ImportRequest, CdiError> {
    let get = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let source_text = get("IMPORTER_SOURCE");
    let source = match source_text.as_str() {
        "" | "http" => CdiSource::Http,
        "s3" => CdiSource::S3,
        "registry" => CdiSource::Registry,
        "none" => CdiSource::Blank,
        "gcs" | "imageio" | "vddk" => return Err(CdiError::UnsupportedSource(source_text)),
        _ => return Err(CdiError::UnknownSource(source_text)),
    };
    let content_type = match get("IMPORTER_CONTENTTYPE").as_str() {
        "" | "kubevirt" => ContentType::Kubevirt,
        "archive" => ContentType::Archive,
        other => return Err(CdiError::UnknownContentType(other.to_string())),
    };
    if content_type == ContentType::Archive && source == CdiSource::Registry {
        return Err(CdiError::ArchiveFromSource("registry"));
    }
    let endpoint = get("IMPORTER_ENDPOINT");
    if endpoint.is_empty() && source != CdiSource::Blank {
        return Err(CdiError::NoEndpoint(match source {
            CdiSource::Http => "http",
            CdiSource::S3 => "s3",
            _ => "registry",
        }));
    }
    let preallocation = parse_go_bool(&get("PREALLOCATION"))
        .ok_or_else(|| CdiError::Preallocation(get("PREALLOCATION")))?;
    let image_size = match get("IMPORTER_IMAGE_SIZE").as_str() {
        "" => None,
        text => Some(parse_quantity(text)?),
    };

    let access_key = get("IMPORTER_ACCESS_KEY_ID");
    let secret_key = get("IMPORTER_SECRET_KEY");
    let (username, password) = if !access_key.is_empty() && !secret_key.is_empty() {
        (Some(access_key), Some(secret_key))
    } else {
        (None, None)
    };
    let mut headers: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("IMPORTER_EXTRA_HEADER_"))
        .filter_map(|(_, v)| split_header(v))
        .collect();
    headers.extend(secret_headers(&root.join("extraheaders"))?);
    let cert_dir = get("IMPORTER_CERT_DIR");
    let proxy_certs = root.join("proxycerts");
    let arch = get("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE");
    let checksum = get("IMPORTER_CHECKSUM");

    Ok(ImportRequest {
        source,
        content_type,
        image_size,
        owner_uid: get("OWNER_UID"),
        filesystem_overhead: parse_overhead(&get("FILESYSTEM_OVERHEAD")),
        preallocation,
        direct_io: get("CACHE_MODE") == "TRYNONE",
        source_options: SourceOptions {
            kind: Some(match source {
                CdiSource::S3 => SourceKind::S3,
                CdiSource::Registry => SourceKind::Registry,
                _ => SourceKind::Http,
            }),
            ca_dir: (!cert_dir.is_empty()).then(|| under_root(root, &cert_dir)),
            insecure: parse_go_bool(&get("INSECURE_TLS")).unwrap_or(false),
            username,
            password,
            headers,
            proxy_ca_dir: proxy_certs.is_dir().then_some(proxy_certs),
            checksum: (!checksum.is_empty()).then_some(checksum),
            arch: (!arch.is_empty()).then_some(arch),
            endpoint: None,
            region: None,
            ..SourceOptions::default()
        },
        node_pull: super::node_pull::from_env(
            &get("IMPORTER_READY_FILE"),
            &get("IMPORTER_DONE_FILE"),
            root,
        ),
        endpoint,
    })
}

/// `path` (absolute, as CDI names it) inside `root`.
pub fn under_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Go's `strconv.ParseBool`, with the empty string as false.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        _ => None,
    }
}

/// "Name: value" into its parts.
fn split_header(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim();
    (!name.is_empty()).then(|| (name.to_string(), value.trim().to_string()))
}

/// Header lines from `/extraheaders/<i>/<file>`: every non-dot file is one
/// header line; directories in numeric order, files in name order.
fn secret_headers(dir: &Path) -> Result<Vec<(String, String)>, CdiError> {
    let mut headers = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(headers);
    };
    let mut subdirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    subdirs.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    for sub in subdirs.into_iter().filter(|p| p.is_dir()) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let hidden = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden || !file.is_file() {
                continue;
            }
            let line = std::fs::read_to_string(&file).map_err(|source| CdiError::HeaderFile {
                path: file.display().to_string(),
                source,
            })?;
            headers.extend(split_header(line.trim()));
        }
    }
    Ok(headers)
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

    #[test]
    fn a_typical_http_import_environment_is_read_fully() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("extraheaders/0")).unwrap();
        std::fs::write(
            root.path().join("extraheaders/0/secretHeader"),
            "X-Secret: s3\n",
        )
        .unwrap();
        std::fs::write(root.path().join("extraheaders/0/.hidden"), "X-No: no").unwrap();
        let request = parse(
            &env(&[
                ("IMPORTER_SOURCE", "http"),
                ("IMPORTER_ENDPOINT", "https://example.test/disk.qcow2"),
                ("IMPORTER_CONTENTTYPE", "kubevirt"),
                ("IMPORTER_IMAGE_SIZE", "10Gi"),
                ("OWNER_UID", "1234-abcd"),
                ("FILESYSTEM_OVERHEAD", "0.055"),
                ("INSECURE_TLS", "false"),
                ("PREALLOCATION", "true"),
                ("IMPORTER_CERT_DIR", "/certs"),
                ("IMPORTER_ACCESS_KEY_ID", "user"),
                ("IMPORTER_SECRET_KEY", "pass"),
                ("IMPORTER_EXTRA_HEADER_0", "X-First: 1"),
                ("IMPORTER_EXTRA_HEADER_1", "X-Second: two words"),
                ("IMPORTER_CHECKSUM", " sha256:abcd "),
            ]),
            root.path(),
        )
        .unwrap();
        assert_eq!(request.source, CdiSource::Http);
        assert_eq!(request.image_size, Some(10 << 30));
        assert_eq!(request.owner_uid, "1234-abcd");
        assert_eq!(request.filesystem_overhead, 0.055);
        assert!(request.preallocation);
        let o = &request.source_options;
        assert_eq!(
            o.ca_dir.as_deref(),
            Some(root.path().join("certs").as_path())
        );
        assert_eq!(o.username.as_deref(), Some("user"));
        assert_eq!(o.password.as_deref(), Some("pass"));
        assert_eq!(o.checksum.as_deref(), Some("sha256:abcd"));
        let names: Vec<&str> = o.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-First", "X-Second", "X-Secret"]);
        assert_eq!(o.headers[1].1, "two words");
    }

    #[test]
    fn invalid_values_get_cdis_outcome() {
        let root = tempfile::tempdir().unwrap();
        let bad = |pairs: &[(&str, &str)]| parse(&env(pairs), root.path()).unwrap_err().to_string();
        assert_eq!(
            bad(&[("IMPORTER_SOURCE", "ftp"), ("IMPORTER_ENDPOINT", "x")]),
            "Unknown data source: ftp"
        );
        assert!(bad(&[
            ("IMPORTER_ENDPOINT", "http://x/y"),
            ("PREALLOCATION", "maybe")
        ])
        .contains("PREALLOCATION"));
        assert!(bad(&[
            ("IMPORTER_ENDPOINT", "http://x/y"),
            ("IMPORTER_IMAGE_SIZE", "ten")
        ])
        .contains("IMPORTER_IMAGE_SIZE"));
        assert!(bad(&[
            ("IMPORTER_SOURCE", "registry"),
            ("IMPORTER_ENDPOINT", "docker://r/i"),
            ("IMPORTER_CONTENTTYPE", "archive"),
        ])
        .contains("archive"));
        assert!(bad(&[("IMPORTER_SOURCE", "http")]).contains("IMPORTER_ENDPOINT"));
    }

    #[test]
    fn credentials_are_used_only_when_both_are_set_and_blank_needs_no_endpoint() {
        let root = tempfile::tempdir().unwrap();
        let request = parse(
            &env(&[
                ("IMPORTER_SOURCE", "none"),
                ("IMPORTER_ACCESS_KEY_ID", "user"),
                ("IMPORTER_SECRET_KEY", ""),
            ]),
            root.path(),
        )
        .unwrap();
        assert_eq!(request.source, CdiSource::Blank);
        assert!(request.source_options.username.is_none());
        assert!(!request.preallocation);
    }
}
