//! A minimal in-cluster Kubernetes API client: the service-account token and
//! CA from their standard paths, the API server from
//! `KUBERNETES_SERVICE_HOST`/`_PORT`, and the two calls the source-update
//! poller makes (GET an object, apply a JSON Patch). API calls never go
//! through the import proxy, and the token never appears in a message.

use std::path::Path;
use std::time::Duration;

/// Where a pod finds its service account's credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";
/// Time limit of one API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest API response read (a DataImportCron is a few KiB).
const MAX_RESPONSE: u64 = 4 << 20;

/// Failures talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Not in a pod, or the service account is not mounted.
    #[error("in-cluster configuration: {0}")]
    Config(String),
    /// The request did not complete.
    #[error("{method} {path}: {detail}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// API path.
        path: String,
        /// The cause chain.
        detail: String,
    },
    /// The API server answered with an error status.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// API path.
        path: String,
        /// Status code.
        status: u16,
        /// The start of the response body (the API's Status message).
        body: String,
    },
    /// The response is not the JSON object expected.
    #[error("{method} {path}: invalid response: {detail}")]
    Response {
        /// HTTP method.
        method: &'static str,
        /// API path.
        path: String,
        /// Why.
        detail: String,
    },
}

/// A client for the API server of the cluster the pod runs in.
pub struct InCluster {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl InCluster {
    /// Reads the service account below `root` (`/` in a pod) and the API
    /// server's address from `env`; `server` overrides the address.
    pub fn from_pod(
        root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        server: Option<&str>,
    ) -> Result<InCluster, KubeError> {
        let dir = root.join(SERVICE_ACCOUNT_DIR);
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                KubeError::Config(format!("reading {}: {e}", dir.join(name).display()))
            })
        };
        let token = String::from_utf8(read("token")?)
            .map_err(|_| KubeError::Config("the service-account token is not text".into()))?
            .trim()
            .to_string();
        let ca = reqwest::Certificate::from_pem_bundle(&read("ca.crt")?)
            .map_err(|e| KubeError::Config(format!("the service-account ca.crt: {e}")))?;
        let base = match server.filter(|s| !s.is_empty()) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty());
                let port = env("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty());
                let (Some(host), Some(port)) = (host, port) else {
                    return Err(KubeError::Config(
                        "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set \
                         (not running in a pod?)"
                            .into(),
                    ));
                };
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .tls_certs_only(ca)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("diskimport/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KubeError::Config(crate::error::describe_chain(&e)))?;
        Ok(InCluster {
            base,
            token,
            client,
        })
    }

    /// `GET path` as a JSON value.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, KubeError> {
        let request = self.client.get(format!("{}{path}", self.base));
        self.call("GET", path, request)
    }

    /// Applies a JSON Patch (`application/json-patch+json`) to the object at
    /// `path`; returns the patched object.
    pub fn json_patch(
        &self,
        path: &str,
        operations: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        let request = self
            .client
            .patch(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json-patch+json")
            .body(operations.to_string());
        self.call("PATCH", path, request)
    }

    fn call(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<serde_json::Value, KubeError> {
        use std::io::Read;
        let response = request
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .map_err(|e| KubeError::Transport {
                method,
                path: path.to_string(),
                detail: crate::error::describe_chain(&e),
            })?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .take(MAX_RESPONSE)
            .read_to_end(&mut body)
            .map_err(|e| KubeError::Transport {
                method,
                path: path.to_string(),
                detail: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            return Err(KubeError::Status {
                method,
                path: path.to_string(),
                status,
                body: text.chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| KubeError::Response {
            method,
            path: path.to_string(),
            detail: e.to_string(),
        })
    }
}
