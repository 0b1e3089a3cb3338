//! Registry source: `docker://host[:port]/repo[:tag|@digest]` containerDisk
//! images, found the way CDI finds them (contract §8).
//!
//! - The manifest may be a Docker v2 or OCI manifest, or an index / manifest
//!   list, from which the `linux/<arch>` entry is picked (`--arch`, else the
//!   machine's architecture).
//! - Layers are walked in manifest order (base first), each as a stream:
//!   gzip, zstd, xz or plain tar, sniffed by magic. The first regular file
//!   directly under `disk/` is the disk; its bytes flow out as the source
//!   stream. Later layers are not read (CDI stops at the first hit too).
//! - Every blob read is checked against its digest and size as it streams;
//!   a mismatch surfaces as a read error containing "digest mismatch" before
//!   the end of the stream, so the target is never published.
//!
//! - The registry is spoken to through [`registry_api`](self) on the shared
//!   network layer: retried pings, tokens and manifests (each read with a size
//!   limit), and layer blobs resumed with ranged GETs after a drop, a reset or
//!   a stall; the digest check spans the resumes, so a resumed blob is still
//!   verified as a whole.
//!
//! Threads: a `registry` thread parses the layer on blocking reads from the
//! network layer's reader and hands the disk's bytes to the consumer over a
//! bounded channel. Memory stays at a few MiB whatever the layer size.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use oci_client::Reference;
use serde::Deserialize;

use super::net::transfer::{open_first, Opener};
use super::net::{block_on, BodyReader, CaError, CaFiles, DisplayUrl, Net, NetError, Plan};
use super::SourceOptions;
use crate::progress::Progress;

#[path = "registry_layer.rs"]
mod layer;

#[path = "registry_api.rs"]
mod api;

use api::{BlobOpener, RegistryApi};
use layer::{FoundDisk, LayerError, VerifyingReader};

/// Disk chunks that may wait between the layer walk and the consumer.
const DISK_QUEUE: usize = 8;
/// Largest image config accepted (they are a few KiB).
const MAX_CONFIG: u64 = 4 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Errors of the registry source.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The spec is not a valid image reference.
    #[error("invalid registry image reference {spec}: {reason}")]
    Reference {
        /// The spec, without credentials or query.
        spec: DisplayUrl,
        /// Why.
        reason: String,
    },
    /// A CA certificate from --ca-dir could not be used.
    #[error(transparent)]
    Certificates(#[from] CaError),
    /// The registry refused the credentials (or wants some).
    #[error("failed to pull image {reference}: {source}")]
    Auth {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// The tag or digest is not in the repository.
    #[error(
        "failed to pull image {reference}: manifest unknown (no such tag or digest): {source}"
    )]
    ManifestUnknown {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// Any other registry or transport failure.
    #[error("failed to pull image {reference}: {source}")]
    Pull {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// A manifest or config that cannot be used.
    #[error("failed to pull image {reference}: {reason}")]
    Manifest {
        /// The image.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The index has no entry for the wanted platform.
    #[error("failed to pull image {reference}: no manifest for linux/{arch} in the image index (it has: {available})")]
    NoPlatform {
        /// The image.
        reference: String,
        /// The architecture asked for.
        arch: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A single-platform image for another architecture than the one asked for.
    #[error("failed to pull image {reference}: manifest image architecture: {found:?} doesn't match requested architecture: {wanted:?}")]
    ArchMismatch {
        /// The image.
        reference: String,
        /// The image's architecture.
        found: String,
        /// The architecture asked for.
        wanted: String,
    },
    /// A bootc (bootable OS) image: no containerDisk.
    #[error("no disk image in {reference}: it is a bootc image (label {label}), which cannot be imported")]
    Bootc {
        /// The image.
        reference: String,
        /// The label that says so.
        label: String,
    },
    /// No layer holds a file under disk/.
    #[error("no disk image in any layer of {reference} (Failed to find VM disk image file in the container image: no regular file under disk/)")]
    NoDisk {
        /// The image.
        reference: String,
    },
    /// Reading a blob failed before the disk was found (transfer error,
    /// digest or size mismatch).
    #[error("failed to pull image {reference}: layer {digest}: {source}")]
    Blob {
        /// The image.
        reference: String,
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The worker thread or its runtime could not run.
    #[error("registry source: {0}")]
    Runtime(#[source] io::Error),
}

/// Opens `spec` (`docker://...`) and returns the stream of the disk file found
/// in the image. Blocks until the disk entry is found, so that a missing disk,
/// bad credentials or an unknown tag are reported here, before any target is
/// created.
pub fn open(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, RegistryError> {
    let job = Job::new(spec, options, progress)?;
    let (found_tx, found_rx) = sync_channel(1);
    let (disk_tx, disk_rx) = sync_channel(DISK_QUEUE);
    std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || job.run(found_tx, disk_tx))
        .map_err(RegistryError::Runtime)?;
    match found_rx.recv() {
        Ok(Ok(disk)) => {
            tracing::debug!(path = %disk.path, size = disk.size, "disk found in the image");
            Ok(Box::new(DiskReader {
                chunks: disk_rx,
                current: Bytes::new(),
                state: ReaderState::Streaming,
            }))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RegistryError::Runtime(io::Error::other(
            "the registry thread stopped without a result",
        ))),
    }
}

/// The digest of the top-level manifest `spec` names (the index, for a multi-arch
/// image), as `sha256:HEX` of the bytes the registry serves: what CDI's source
/// update poller compares. Same credentials, CA and proxy handling as [`open`].
pub fn top_manifest_digest(spec: &str, options: &SourceOptions) -> Result<String, RegistryError> {
    use sha2::{Digest, Sha256};
    let job = Arc::new(Job::new(spec, options, &Arc::new(Progress::default()))?);
    let body = block_on(async move {
        let api = RegistryApi::connect(
            job.net.clone(),
            job.reference.resolve_registry(),
            job.reference.repository(),
            job.credentials.clone(),
            job.insecure,
        )
        .await
        .map_err(|e| job.pull_error(e))?;
        let top = job
            .reference
            .digest()
            .or(job.reference.tag())
            .unwrap_or("latest")
            .to_string();
        let accepted = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        api.manifest(&top, &accepted)
            .await
            .map(|(body, _)| body)
            .map_err(|e| job.pull_error(e))
    })
    .map_err(RegistryError::Runtime)??;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
}

/// Strips `docker://` and parses the rest with Docker's rules.
fn parse_reference(spec: &str) -> Result<Reference, RegistryError> {
    let rest = spec
        .get(..9)
        .filter(|scheme| scheme.eq_ignore_ascii_case("docker://"))
        .map(|_| &spec[9..])
        .unwrap_or(spec);
    Reference::try_from(rest).map_err(|e| RegistryError::Reference {
        spec: DisplayUrl::of_spec(spec),
        reason: e.to_string(),
    })
}

/// GOARCH name of an architecture (accepts uname names too).
fn normalize_arch(arch: &str) -> String {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64le" | "ppc64el" => "ppc64le",
        "i386" | "i686" | "x86" => "386",
        other => other,
    }
    .to_string()
}

/// The machine's architecture as a GOARCH name.
fn machine_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "arm" => "arm",
        other => other,
    };
    normalize_arch(arch)
}

/// The consumer's end: disk bytes in order, then a verified end.
struct DiskReader {
    chunks: Receiver<io::Result<Bytes>>,
    current: Bytes,
    state: ReaderState,
}

#[derive(PartialEq)]
enum ReaderState {
    Streaming,
    Done,
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.state == ReaderState::Done {
                return Ok(0);
            }
            match self.chunks.recv() {
                // An empty chunk is the end marker, sent once the layer's
                // digest checked out.
                Ok(Ok(chunk)) if chunk.is_empty() => self.state = ReaderState::Done,
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::other(
                        "registry source: the layer reader stopped before the end of the disk",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// A manifest, index or manifest list, Docker or OCI (only the fields used).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<i64>,
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    size: i64,
    platform: Option<PlatformDoc>,
}

#[derive(Deserialize)]
struct PlatformDoc {
    architecture: String,
    os: String,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
}

impl Descriptor {
    fn size(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0)
    }
}

/// The image config (only the fields used).
#[derive(Deserialize, Default)]
struct ConfigDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize, Default)]
struct ConfigInner {
    #[serde(rename = "Labels", default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// `KEY=value` lines; CDI turns `*KUBEVIRT_IO_*` ones into PVC labels.
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// A resolved image: its layers, base first.
struct Image {
    layers: Vec<Descriptor>,
}

struct Job {
    reference: Reference,
    display: String,
    net: Arc<Net>,
    credentials: Option<(String, String)>,
    insecure: bool,
    arch: Option<String>,
    progress: Arc<Progress>,
}

type FoundSender = SyncSender<Result<FoundDisk, RegistryError>>;
type DiskSender = SyncSender<io::Result<Bytes>>;

impl Job {
    /// The pull of `spec` with the credentials, CA and proxy of `options`.
    fn new(
        spec: &str,
        options: &SourceOptions,
        progress: &Arc<Progress>,
    ) -> Result<Job, RegistryError> {
        let reference = parse_reference(spec)?;
        let net = Arc::new(Net::new(options, CaFiles::CrtAndPem, progress)?);
        let credentials = match (&options.username, &options.password) {
            (Some(user), Some(pass)) if !user.is_empty() && !pass.is_empty() => {
                Some((user.clone(), pass.clone()))
            }
            _ => None,
        };
        Ok(Job {
            display: reference.whole(),
            reference,
            net,
            credentials,
            insecure: options.insecure,
            arch: options.arch.as_deref().map(normalize_arch),
            progress: progress.clone(),
        })
    }

    fn run(self, found_tx: FoundSender, disk_tx: DiskSender) {
        let job = Arc::new(self);
        let resolved = {
            let job = job.clone();
            block_on(async move { job.resolve().await })
                .map_err(RegistryError::Runtime)
                .and_then(|r| r)
        };
        let (api, image) = match resolved {
            Ok(resolved) => resolved,
            Err(e) => {
                let _ = found_tx.send(Err(e));
                return;
            }
        };
        job.walk(Arc::new(api), image, found_tx, disk_tx);
    }

    /// Walks the layers in order until the disk is found and streamed.
    fn walk(
        &self,
        api: Arc<RegistryApi>,
        image: Image,
        found_tx: FoundSender,
        disk_tx: DiskSender,
    ) {
        let mut found_tx = Some(found_tx);
        for descriptor in &image.layers {
            self.progress.set_source_total(descriptor.size());
            let blob = self.open_blob(&api, descriptor);
            let mut blob = match blob
                .and_then(|body| VerifyingReader::new(body, &descriptor.digest, descriptor.size()))
            {
                Ok(blob) => blob,
                Err(e) => {
                    self.fail_layer(&mut found_tx, &disk_tx, descriptor, e);
                    return;
                }
            };
            let mut found = false;
            let progress = &self.progress;
            let result = layer::walk_layer(
                &mut blob,
                &mut found,
                &mut |disk| {
                    progress.set_source_total(disk.size);
                    found_tx
                        .take()
                        .is_some_and(|tx| tx.send(Ok(disk.clone())).is_ok())
                },
                &mut |chunk| disk_tx.send(Ok(chunk)).is_ok(),
            );
            match result {
                Ok(Some(disk)) => {
                    tracing::debug!(layer = %descriptor.digest, path = %disk.path, "disk streamed, layer verified");
                    let _ = disk_tx.send(Ok(Bytes::new()));
                    return;
                }
                Ok(None) => {
                    tracing::debug!(layer = %descriptor.digest, "no disk in this layer");
                }
                Err(LayerError::Cancelled) => return,
                Err(LayerError::Unreadable(e)) if !found => {
                    // CDI skips layers it cannot read as tar.
                    tracing::warn!(layer = %descriptor.digest, error = %e, "skipping a layer that is not a tar archive");
                }
                Err(LayerError::Unreadable(e) | LayerError::Blob(e)) => {
                    self.fail_layer(&mut found_tx, &disk_tx, descriptor, e);
                    return;
                }
            }
        }
        if let Some(tx) = found_tx {
            let _ = tx.send(Err(RegistryError::NoDisk {
                reference: self.display.clone(),
            }));
        }
    }

    /// Reports a layer failure: as an open error before the disk was found,
    /// as a read error of the disk stream after.
    fn fail_layer(
        &self,
        found_tx: &mut Option<FoundSender>,
        disk_tx: &DiskSender,
        descriptor: &Descriptor,
        error: io::Error,
    ) {
        match found_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(RegistryError::Blob {
                    reference: self.display.clone(),
                    digest: descriptor.digest.clone(),
                    source: error,
                }));
            }
            None => {
                let error =
                    io::Error::new(error.kind(), format!("image {}: {error}", self.display));
                let _ = disk_tx.send(Err(error));
            }
        }
    }

    /// The blob's bytes as served, resumed across drops: its first answer
    /// must announce the size the manifest gives.
    fn open_blob(&self, api: &Arc<RegistryApi>, descriptor: &Descriptor) -> io::Result<BodyReader> {
        let opener: Arc<dyn Opener> = Arc::new(BlobOpener {
            api: api.clone(),
            digest: descriptor.digest.clone(),
        });
        let first = {
            let (net, opener) = (self.net.clone(), opener.clone());
            block_on(async move { open_first(&net, &*opener).await })?.map_err(NetError::into_io)?
        };
        if let Some(length) = first.total.filter(|n| *n != descriptor.size()) {
            let mismatch = layer::BlobMismatch {
                digest: descriptor.digest.clone(),
                detail: format!(
                    "the registry serves {length} bytes, the manifest says {}",
                    descriptor.size()
                ),
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, mismatch));
        }
        let plan = Plan {
            connections: 1,
            asked: true,
            probe_end: false,
        };
        BodyReader::start(self.net.clone(), opener, first, plan)
    }

    /// Connects to the registry and finds the image manifest for the platform.
    async fn resolve(&self) -> Result<(RegistryApi, Image), RegistryError> {
        let api = RegistryApi::connect(
            self.net.clone(),
            self.reference.resolve_registry(),
            self.reference.repository(),
            self.credentials.clone(),
            self.insecure,
        )
        .await
        .map_err(|e| self.pull_error(e))?;
        let image = self.resolve_with(&api).await?;
        Ok((api, image))
    }

    fn pull_error(&self, source: NetError) -> RegistryError {
        let reference = self.display.clone();
        let last = match &source {
            NetError::GaveUp { last, .. } => last.as_ref(),
            other => other,
        };
        match last {
            NetError::Auth { .. } => RegistryError::Auth { reference, source },
            NetError::Status { status: 404, .. } => {
                RegistryError::ManifestUnknown { reference, source }
            }
            _ => RegistryError::Pull { reference, source },
        }
    }

    fn bad_manifest(&self, reason: String) -> RegistryError {
        RegistryError::Manifest {
            reference: self.display.clone(),
            reason,
        }
    }

    async fn fetch_manifest(
        &self,
        api: &RegistryApi,
        reference: &str,
    ) -> Result<ManifestDoc, RegistryError> {
        let accepted = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let (body, media_type) = api
            .manifest(reference, &accepted)
            .await
            .map_err(|e| self.pull_error(e))?;
        let digest = reference;
        tracing::debug!(%digest, ?media_type, len = body.len(), "manifest");
        let doc: ManifestDoc = serde_json::from_slice(&body)
            .map_err(|e| self.bad_manifest(format!("manifest {digest} is not valid: {e}")))?;
        if doc.schema_version != Some(2) {
            return Err(self.bad_manifest(format!(
                "manifest {digest}: schema version {:?} is not supported (only 2)",
                doc.schema_version
            )));
        }
        Ok(doc)
    }

    async fn resolve_with(&self, api: &RegistryApi) -> Result<Image, RegistryError> {
        let top_reference = self
            .reference
            .digest()
            .or(self.reference.tag())
            .unwrap_or("latest")
            .to_string();
        let top = self.fetch_manifest(api, &top_reference).await?;
        let is_index = matches!(top.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
            || (top.media_type.is_none() && top.manifests.is_some());
        let wanted = self.arch.clone().unwrap_or_else(machine_arch);
        let (manifest, from_index) = if is_index {
            let entries = top.manifests.unwrap_or_default();
            let entry = entries
                .iter()
                .find(|e| {
                    e.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == wanted)
                })
                .ok_or_else(|| RegistryError::NoPlatform {
                    reference: self.display.clone(),
                    arch: wanted.clone(),
                    available: entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            tracing::debug!(digest = %entry.digest, media_type = ?entry.media_type, size = entry.size, %wanted, "platform picked from the index");
            (self.fetch_manifest(api, &entry.digest).await?, true)
        } else {
            (top, false)
        };
        if manifest.manifests.is_some() && manifest.layers.is_none() {
            return Err(self.bad_manifest("an index nested in an index is not supported".into()));
        }
        let config = manifest
            .config
            .ok_or_else(|| self.bad_manifest("the manifest has no config".into()))?;
        let layers = manifest.layers.unwrap_or_default();
        let config = self.fetch_config(api, &config).await?;
        if !from_index {
            if let Some(asked) = &self.arch {
                if !config.architecture.is_empty() && config.architecture != *asked {
                    return Err(RegistryError::ArchMismatch {
                        reference: self.display.clone(),
                        found: config.architecture.clone(),
                        wanted: asked.clone(),
                    });
                }
            }
        }
        let inner = config.config.unwrap_or_default();
        self.progress.set_image_env(inner.env.unwrap_or_default());
        let labels = inner.labels.unwrap_or_default();
        for key in ["containers.bootc", "ostree.bootable"] {
            if labels.get(key).is_some_and(|v| v == "1" || v == "true") {
                return Err(RegistryError::Bootc {
                    reference: self.display.clone(),
                    label: format!("{key}={}", labels[key]),
                });
            }
        }
        Ok(Image { layers })
    }

    /// Fetches and verifies the (small) image config.
    async fn fetch_config(
        &self,
        api: &RegistryApi,
        descriptor: &Descriptor,
    ) -> Result<ConfigDoc, RegistryError> {
        if descriptor.size() > MAX_CONFIG {
            return Err(self.bad_manifest(format!(
                "config {} is {} bytes, more than the {MAX_CONFIG} accepted",
                descriptor.digest, descriptor.size
            )));
        }
        let blob_error = |source: io::Error| RegistryError::Blob {
            reference: self.display.clone(),
            digest: descriptor.digest.clone(),
            source,
        };
        // One byte over the size is enough to tell a wrong size.
        let body = api
            .small_blob(&descriptor.digest, descriptor.size() + 1)
            .await
            .map_err(|e| match e {
                NetError::TooLarge { .. } => blob_error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    layer::BlobMismatch {
                        digest: descriptor.digest.clone(),
                        detail: format!(
                            "more than the {} bytes the manifest says",
                            descriptor.size()
                        ),
                    },
                )),
                other => self.pull_error(other),
            })?;
        // Verify with the same reader the layers use.
        let mut verifier = VerifyingReader::new(
            io::Cursor::new(&body),
            &descriptor.digest,
            descriptor.size(),
        )
        .map_err(blob_error)?;
        verifier.drain().map_err(blob_error)?;
        if descriptor
            .media_type
            .as_deref()
            .is_some_and(|t| !t.contains("json"))
        {
            return Err(self.bad_manifest(format!(
                "config media type {:?} is not an image config",
                descriptor.media_type
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            self.bad_manifest(format!("config {} is not valid: {e}", descriptor.digest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_docker_rules() {
        let r = parse_reference("docker://127.0.0.1:5000/containerdisks/test:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "containerdisks/test");
        assert_eq!(r.tag(), Some("v1"));
        let r = parse_reference("docker://quay.io/kubevirt/fedora").unwrap();
        assert_eq!(r.tag(), Some("latest"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("docker://h:1/r@{digest}")).unwrap();
        assert_eq!(r.digest(), Some(digest.as_str()));
        assert!(parse_reference("docker://UPPER/Case:x").is_err());
    }

    #[test]
    fn architectures_use_goarch_names() {
        assert_eq!(normalize_arch("x86_64"), "amd64");
        assert_eq!(normalize_arch("aarch64"), "arm64");
        assert_eq!(normalize_arch("s390x"), "s390x");
        assert!(!machine_arch().is_empty());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(machine_arch(), "amd64");
        }
    }

    #[test]
    fn ca_dir_takes_crt_and_pem_bundles_only() {
        let dir = tempfile::tempdir().unwrap();
        let make = || {
            rcgen::generate_simple_self_signed(vec!["localhost".into()])
                .unwrap()
                .cert
                .pem()
        };
        std::fs::write(dir.path().join("a.crt"), make()).unwrap();
        std::fs::write(dir.path().join("b.pem"), format!("{}{}", make(), make())).unwrap();
        std::fs::write(dir.path().join("c.key"), "not a cert").unwrap();
        std::fs::write(dir.path().join(".hidden.crt"), "junk").unwrap();
        let load = |dir| crate::source::net::tls::load_ca_dir(dir, true);
        assert_eq!(load(dir.path()).unwrap().len(), 3);
        std::fs::write(dir.path().join("d.crt"), "junk").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn a_reference_with_credentials_is_shown_without_them() {
        let error = parse_reference("docker://user:pa55@reg:5000/r:t")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("pa55"), "{error}");
    }
}
