//! CDI's node pull of a containerDisk (`pullMethod: node`): the kubelet runs
//! the image itself as a sidecar that serves its one disk file on
//! `http://localhost:8100/`, writes that file's name to a ready file, and
//! exits once the importer creates a done file. The importer waits at most a
//! minute for the ready file (`Timeout waiting for file <f>` otherwise), takes
//! the file name from it in place of the endpoint's `disk.img`, and creates
//! the done file (exclusively) after a successful import. The sidecar's
//! `/info` gives the image's environment, for the PVC labels.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::progress::Progress;

/// How long CDI's importer waits for the ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the ready file is looked for.
const POLL: Duration = Duration::from_millis(250);
/// The file name the controller puts at the end of the node-pull endpoint.
const DEFAULT_DISK_NAME: &str = "disk.img";

/// The sidecar handshake files, where the environment names them.
#[derive(Debug, Clone, Default)]
pub struct NodePull {
    /// `IMPORTER_READY_FILE`: as named (for messages) and on disk.
    pub ready_file: Option<(String, PathBuf)>,
    /// `IMPORTER_DONE_FILE`, on disk.
    pub done_file: Option<PathBuf>,
}

impl NodePull {
    /// Waits for the ready file (if one is named) and returns the endpoint to
    /// fetch: `endpoint` with its trailing `disk.img` replaced by the name the
    /// sidecar wrote. Gives up after `timeout` or when `progress` is
    /// cancelled, with the text CDI writes.
    pub fn wait_ready(
        &self,
        endpoint: &str,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<String, String> {
        let Some((named, on_disk)) = &self.ready_file else {
            return Ok(endpoint.to_string());
        };
        let deadline = Instant::now() + timeout;
        while !on_disk.exists() {
            if Instant::now() >= deadline || progress.is_cancelled() {
                return Err(format!("Timeout waiting for file {named}"));
            }
            std::thread::sleep(POLL);
        }
        let name = std::fs::read_to_string(on_disk)
            .map_err(|e| format!("Failed reading file {named}: {e}"))?;
        let name = name.trim_end_matches(['\n', '\r']);
        if name.is_empty() {
            return Ok(endpoint.to_string());
        }
        let base = endpoint.strip_suffix(DEFAULT_DISK_NAME).unwrap_or(endpoint);
        Ok(format!("{base}{name}"))
    }

    /// The environment the sidecar reports on `/info` of the endpoint's
    /// server (`{"env": ["KEY=value", …]}`); nothing without node pull or if
    /// it reports none: labels are a courtesy, never a reason to fail.
    pub fn image_env(&self, endpoint: &str) -> Vec<String> {
        if self.ready_file.is_none() {
            return Vec::new();
        }
        sidecar_env(endpoint)
    }

    /// Tells the sidecar the import is done. A failure is only logged, as CDI
    /// does: the import itself succeeded.
    pub fn signal_done(&self) {
        let Some(path) = &self.done_file else {
            return;
        };
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path);
        if let Err(e) = created {
            tracing::error!(file = %path.display(), error = %e, "cannot create the done file");
        }
    }
}

/// What the sidecar at `endpoint`'s server says on `/info`.
fn sidecar_env(endpoint: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(default)]
        env: Vec<String>,
    }
    let Ok(mut url) = url::Url::parse(endpoint) else {
        return Vec::new();
    };
    url.set_path("/info");
    url.set_query(None);
    let fetched = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .and_then(|client| client.get(url.clone()).send())
        .and_then(|response| response.error_for_status())
        .and_then(|response| response.json::<Info>());
    match fetched {
        Ok(info) => info.env,
        Err(e) => {
            tracing::warn!(%url, error = %e, "no image labels from the sidecar");
            Vec::new()
        }
    }
}

/// Reads the handshake files from the environment's values (empty: unset),
/// placing CDI's absolute paths under `root`.
pub fn from_env(ready: &str, done: &str, root: &Path) -> NodePull {
    let under_root = |p: &str| super::env::under_root(root, p);
    NodePull {
        ready_file: (!ready.is_empty()).then(|| (ready.to_string(), under_root(ready))),
        done_file: (!done.is_empty()).then(|| under_root(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_names_the_disk_in_place_of_disk_img() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("shared")).unwrap();
        std::fs::write(root.path().join("shared/ready"), "fedora.qcow2").unwrap();
        let pull = from_env("/shared/ready", "/shared/done", root.path());
        let endpoint = pull
            .wait_ready(
                "http://localhost:8100/disk.img",
                Duration::from_secs(1),
                &Progress::default(),
            )
            .unwrap();
        assert_eq!(endpoint, "http://localhost:8100/fedora.qcow2");
        pull.signal_done();
        assert!(root.path().join("shared/done").exists());
    }

    #[test]
    fn a_missing_ready_file_times_out_with_cdis_text() {
        let root = tempfile::tempdir().unwrap();
        let pull = from_env("/shared/ready", "", root.path());
        let error = pull
            .wait_ready(
                "http://x/disk.img",
                Duration::from_millis(300),
                &Progress::default(),
            )
            .unwrap_err();
        assert_eq!(error, "Timeout waiting for file /shared/ready");
    }

    #[test]
    fn without_a_ready_file_the_endpoint_stays() {
        let pull = from_env("", "", Path::new("/"));
        let endpoint = pull
            .wait_ready("http://h/disk.img", Duration::ZERO, &Progress::default())
            .unwrap();
        assert_eq!(endpoint, "http://h/disk.img");
    }
}
