//! `cdi-source-update-poller -ns NS -cron NAME -url docker://…`: one poll of a
//! DataImportCron's registry source (cdi-tools-contract.md §4). It reads the
//! digest of the image's top-level manifest (the index of a multi-platform
//! image) with CDI's credentials, CA and proxy settings, then records it and
//! the poll time in the cron's annotations with one JSON Patch through the
//! Kubernetes API.

use std::path::PathBuf;

use crate::error::describe_chain;
use crate::source::registry::top_manifest_digest;
use crate::source::SourceOptions;
use crate::tools::kube_api::{InCluster, KubeError};

/// Annotation holding the time of the last poll (RFC 3339).
pub const LAST_CRON_TIME: &str = "cdi.kubevirt.io/storage.import.lastCronTime";
/// Annotation holding the digest the controller should import.
pub const DESIRED_DIGEST: &str = "cdi.kubevirt.io/storage.import.sourceDesiredDigest";
/// Where CDI mounts its import proxy's CA ConfigMap.
pub const PROXY_CA_DIR: &str = "proxycerts";

/// What the flags and the pod say.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// The cron's namespace (`-ns`).
    pub namespace: String,
    /// The cron's name (`-cron`).
    pub cron: String,
    /// The registry URL (`-url`, `docker://…`).
    pub url: String,
    /// Registry CA directory (`-certdir`).
    pub cert_dir: Option<PathBuf>,
    /// API server override (`-server`).
    pub server: Option<String>,
    /// Directory that the pod's paths (`/proxycerts`, the service account)
    /// are taken relative to: `/` in a pod.
    pub root: PathBuf,
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    /// The digest read from the registry.
    pub digest: String,
    /// Whether the cron's desired digest was changed.
    pub updated: bool,
}

/// Why a poll failed (the Job then retries, as CDI's does).
#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    /// A required flag is missing.
    #[error("missing required flag -{0}")]
    MissingFlag(&'static str),
    /// The registry could not be asked.
    #[error("reading the image digest of {url}: {detail}")]
    Registry {
        /// The image.
        url: String,
        /// The cause chain.
        detail: String,
    },
    /// The Kubernetes API could not be used.
    #[error("DataImportCron {namespace}/{cron}: {source}")]
    Kube {
        /// The cron's namespace.
        namespace: String,
        /// The cron's name.
        cron: String,
        /// The cause.
        #[source]
        source: KubeError,
    },
}

/// Polls once. `env` is the process environment (credentials,
/// `INSECURE_TLS`; proxies are read by the HTTP client itself), `now` the
/// poll time in RFC 3339.
pub fn run(
    config: &PollerConfig,
    env: &dyn Fn(&str) -> Option<String>,
    now: &str,
) -> Result<PollOutcome, PollerError> {
    for (flag, value) in [
        ("ns", &config.namespace),
        ("cron", &config.cron),
        ("url", &config.url),
    ] {
        if value.is_empty() {
            return Err(PollerError::MissingFlag(flag));
        }
    }
    let options = SourceOptions {
        ca_dir: config
            .cert_dir
            .clone()
            .filter(|d| !d.as_os_str().is_empty()),
        proxy_ca_dir: Some(config.root.join(PROXY_CA_DIR)),
        insecure: env("INSECURE_TLS").is_some_and(|v| go_bool(&v)),
        username: env("IMPORTER_ACCESS_KEY_ID"),
        password: env("IMPORTER_SECRET_KEY"),
        ..SourceOptions::default()
    };
    let digest = top_manifest_digest(&config.url, &options).map_err(|e| PollerError::Registry {
        url: config.url.clone(),
        detail: describe_chain(&e),
    })?;
    eprintln!("Digest is {digest}");
    let kube = |source| PollerError::Kube {
        namespace: config.namespace.clone(),
        cron: config.cron.clone(),
        source,
    };
    let api = InCluster::from_pod(&config.root, env, config.server.as_deref()).map_err(kube)?;
    let path = cron_path(&config.namespace, &config.cron);
    let cron = api.get(&path).map_err(kube)?;
    let (operations, updated) = annotation_patch(&cron, now, &digest);
    api.json_patch(&path, &operations).map_err(kube)?;
    eprintln!(
        "{}",
        if updated {
            "Digest updated"
        } else {
            "No digest update"
        }
    );
    Ok(PollOutcome { digest, updated })
}

/// The API path of a DataImportCron.
pub fn cron_path(namespace: &str, name: &str) -> String {
    format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/dataimportcrons/{name}")
}

/// The JSON Patch CDI's poller sends: `add` of the poll time, and of the
/// digest when it differs from the cron's current one. A cron without
/// annotations gets the whole map (a patch cannot add below a missing map).
pub fn annotation_patch(
    cron: &serde_json::Value,
    now: &str,
    digest: &str,
) -> (serde_json::Value, bool) {
    let annotations = cron
        .pointer("/metadata/annotations")
        .and_then(|a| a.as_object());
    let current = annotations
        .and_then(|a| a.get(DESIRED_DIGEST))
        .and_then(|d| d.as_str());
    let updated = !digest.is_empty() && current != Some(digest);
    let mut values = vec![(LAST_CRON_TIME, now)];
    if updated {
        values.push((DESIRED_DIGEST, digest));
    }
    let operations = if annotations.is_none() {
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!([{"op": "add", "path": "/metadata/annotations", "value": map}])
    } else {
        values
            .iter()
            .map(|(key, value)| {
                serde_json::json!({
                    "op": "add",
                    "path": format!("/metadata/annotations/{}", escape_pointer(key)),
                    "value": value,
                })
            })
            .collect()
    };
    (operations, updated)
}

/// A JSON Pointer token: `~` as `~0`, `/` as `~1`.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Go's `strconv.ParseBool`; anything it rejects is false, as in CDI.
fn go_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_adds_the_time_and_a_changed_digest() {
        let cron = serde_json::json!({"metadata": {"annotations": {DESIRED_DIGEST: "sha256:old"}}});
        let (ops, updated) = annotation_patch(&cron, "2026-12-01T17:00:00Z", "sha256:new");
        assert!(updated);
        assert_eq!(
            ops,
            serde_json::json!([
                {"op": "add", "path": "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime", "value": "2026-12-01T17:00:00Z"},
                {"op": "add", "path": "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest", "value": "sha256:new"},
            ])
        );
        let (ops, updated) = annotation_patch(&cron, "t", "sha256:old");
        assert!(!updated);
        assert_eq!(ops.as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_cron_without_annotations_gets_the_map() {
        let (ops, updated) =
            annotation_patch(&serde_json::json!({"metadata": {}}), "t", "sha256:d");
        assert!(updated);
        assert_eq!(
            ops,
            serde_json::json!([{"op": "add", "path": "/metadata/annotations",
                "value": {LAST_CRON_TIME: "t", DESIRED_DIGEST: "sha256:d"}}])
        );
    }

    #[test]
    fn insecure_tls_parses_as_go_does() {
        assert!(go_bool("true") && go_bool("1") && go_bool("T"));
        assert!(!go_bool("yes") && !go_bool("") && !go_bool("tru"));
    }
}
