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
//! Threads: a `registry` thread owns a one-worker tokio runtime (the network
//! side runs there, chunks arriving over a bounded channel), parses the layer
//! on blocking reads, and hands the disk's bytes to the consumer over another
//! bounded channel. Memory stays at a few MiB whatever the layer size.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::SourceOptions;
use crate::error::describe_chain;
use crate::progress::Progress;

#[path = "registry_layer.rs"]
mod layer;

use layer::{FoundDisk, LayerError, VerifyingReader};

/// Disk chunks that may wait between the layer walk and the consumer.
const DISK_QUEUE: usize = 8;
/// Network chunks that may wait between the runtime and the layer walk.
const NET_QUEUE: usize = 32;
/// Largest image config accepted (they are a few KiB).
const MAX_CONFIG: u64 = 4 << 20;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long fails the transfer (CDI's watchdog is 10 minutes).
const READ_TIMEOUT: Duration = Duration::from_secs(600);

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Errors of the registry source.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The spec is not a valid image reference.
    #[error("invalid registry image reference {spec:?}: {reason}")]
    Reference {
        /// The spec as given.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A CA certificate from --ca-dir could not be used.
    #[error("CA certificates in {path}: {reason}")]
    Certificates {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The registry refused the credentials (or wants some).
    #[error("failed to pull image {reference}: authentication failed (wrong or missing credentials): {source}")]
    Auth {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
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
        source: OciDistributionError,
    },
    /// Any other registry or transport failure.
    #[error("failed to pull image {reference}: {source}")]
    Pull {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
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
    let reference = parse_reference(spec)?;
    let job = Job::new(reference, options, progress)?;
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

/// The digest (`sha256:<hex>` of the raw bytes) of the top-level manifest of
/// `spec`: the index for a multi-platform image, as CDI's source-update
/// poller reports it. `options.proxy_ca_dir` is trusted too, when it exists.
pub fn top_manifest_digest(spec: &str, options: &SourceOptions) -> Result<String, RegistryError> {
    use sha2::{Digest, Sha256};
    let mut job = Job::new(parse_reference(spec)?, options, &Arc::default())?;
    if let Some(dir) = options.proxy_ca_dir.as_ref().filter(|d| d.is_dir()) {
        job.certificates.extend(load_certificates(dir)?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    let body = runtime.block_on(async {
        let accepted = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
        let fetch = |client: Client| {
            let job = &job;
            async move {
                client
                    .pull_manifest_raw(&job.reference, &job.auth, &accepted)
                    .await
                    .map(|(body, _)| body)
                    .map_err(|e| job.pull_error(e))
            }
        };
        match fetch(job.client(ClientProtocol::Https)).await {
            Err(RegistryError::Pull {
                source: OciDistributionError::RequestError(_),
                ..
            }) if job.insecure => fetch(job.client(ClientProtocol::Http)).await,
            other => other,
        }
    })?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
}

/// The system's CA certificates and `extra`, as the only roots of a client.
fn with_system_roots(extra: &[Certificate]) -> Vec<Certificate> {
    super::system_roots::system_certificates()
        .iter()
        .map(|der| Certificate {
            encoding: CertificateEncoding::Der,
            data: der.to_vec(),
        })
        .chain(extra.iter().cloned())
        .collect()
}

/// Strips `docker://` and parses the rest with Docker's rules.
fn parse_reference(spec: &str) -> Result<Reference, RegistryError> {
    let rest = spec
        .get(..9)
        .filter(|scheme| scheme.eq_ignore_ascii_case("docker://"))
        .map(|_| &spec[9..])
        .unwrap_or(spec);
    Reference::try_from(rest).map_err(|e| RegistryError::Reference {
        spec: spec.to_string(),
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

/// Every `*.crt` / `*.pem` file of `dir` (CDI's rule), each possibly a bundle.
fn load_certificates(dir: &Path) -> Result<Vec<Certificate>, RegistryError> {
    let bad = |path: &Path, reason: String| RegistryError::Certificates {
        path: path.display().to_string(),
        reason,
    };
    let names = super::ca_dir::certificate_files(dir, true).map_err(|e| bad(dir, e.to_string()))?;
    let mut certificates = Vec::new();
    for path in names {
        let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
        let before = certificates.len();
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let mut rest = text.as_str();
        while let Some(start) = rest.find(BEGIN) {
            let Some(len) = rest[start..].find(END) else {
                break;
            };
            let block = &rest[start..start + len + END.len()];
            certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: format!("{block}\n").into_bytes(),
            });
            rest = &rest[start + len + END.len()..];
        }
        if certificates.len() == before {
            return Err(bad(&path, "no PEM certificate in the file".into()));
        }
        check_usable(&certificates[before..]).map_err(|reason| bad(&path, reason))?;
    }
    Ok(certificates)
}

/// Builds an HTTP client with `certificates` as extra roots, as oci-client
/// will: a certificate rustls cannot use must fail here, by name, because
/// oci-client answers a failed build by silently using a default client
/// (without our CAs, `--insecure` or timeouts).
fn check_usable(certificates: &[Certificate]) -> Result<(), String> {
    let mut builder = reqwest::Client::builder();
    for certificate in certificates {
        let parsed = reqwest::Certificate::from_pem(&certificate.data)
            .map_err(|e| format!("not a PEM certificate: {}", describe_chain(&e)))?;
        builder = builder.add_root_certificate(parsed);
    }
    builder
        .build()
        .map(drop)
        .map_err(|e| format!("not a usable CA certificate: {}", describe_chain(&e)))
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

    fn oci(&self) -> OciDescriptor {
        OciDescriptor {
            media_type: self.media_type.clone().unwrap_or_default(),
            digest: self.digest.clone(),
            size: self.size,
            ..Default::default()
        }
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
    auth: RegistryAuth,
    certificates: Vec<Certificate>,
    insecure: bool,
    arch: Option<String>,
    progress: Arc<Progress>,
}

type FoundSender = SyncSender<Result<FoundDisk, RegistryError>>;
type DiskSender = SyncSender<io::Result<Bytes>>;

impl Job {
    fn new(
        reference: Reference,
        options: &SourceOptions,
        progress: &Arc<Progress>,
    ) -> Result<Job, RegistryError> {
        let certificates = match &options.ca_dir {
            Some(dir) => load_certificates(dir)?,
            None => Vec::new(),
        };
        // With no root at all, oci-client would silently fall back to a
        // default client, which cannot be built either.
        if certificates.is_empty() && !options.insecure {
            if let Some(hint) = super::system_roots::missing_hint() {
                return Err(RegistryError::Certificates {
                    path: "verifying the registry".into(),
                    reason: hint.into(),
                });
            }
        }
        let auth = match (&options.username, &options.password) {
            (Some(user), Some(pass)) if !user.is_empty() && !pass.is_empty() => {
                RegistryAuth::Basic(user.clone(), pass.clone())
            }
            _ => RegistryAuth::Anonymous,
        };
        Ok(Job {
            display: reference.whole(),
            reference,
            auth,
            certificates,
            insecure: options.insecure,
            arch: options.arch.as_deref().map(normalize_arch),
            progress: progress.clone(),
        })
    }

    fn run(self, found_tx: FoundSender, disk_tx: DiskSender) {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("registry-net")
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = found_tx.send(Err(RegistryError::Runtime(e)));
                return;
            }
        };
        let (client, image) = match runtime.block_on(self.resolve()) {
            Ok(resolved) => resolved,
            Err(e) => {
                let _ = found_tx.send(Err(e));
                return;
            }
        };
        let mut found_tx = Some(found_tx);
        for descriptor in &image.layers {
            self.progress.set_source_total(descriptor.size());
            let chunks = self.fetch_blob(&runtime, &client, descriptor);
            let mut blob = match VerifyingReader::new(
                ChannelReader {
                    rx: chunks,
                    current: Bytes::new(),
                },
                &descriptor.digest,
                descriptor.size(),
            ) {
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

    /// Starts streaming a blob on the runtime; chunks arrive on the channel.
    fn fetch_blob(
        &self,
        runtime: &tokio::runtime::Runtime,
        client: &Client,
        descriptor: &Descriptor,
    ) -> tokio::sync::mpsc::Receiver<io::Result<Bytes>> {
        let (tx, rx) = tokio::sync::mpsc::channel(NET_QUEUE);
        let client = client.clone();
        let reference = self.reference.clone();
        let descriptor = descriptor.clone();
        runtime.spawn(async move {
            let mut stream = match client.pull_blob_stream(&reference, &descriptor.oci()).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            };
            if let Some(length) = stream.content_length {
                if length != descriptor.size() {
                    let mismatch = layer::BlobMismatch {
                        digest: descriptor.digest.clone(),
                        detail: format!(
                            "the registry serves {length} bytes, the manifest says {}",
                            descriptor.size()
                        ),
                    };
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::InvalidData, mismatch)))
                        .await;
                    return;
                }
            }
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }

    fn client(&self, protocol: ClientProtocol) -> Client {
        Client::new(ClientConfig {
            protocol,
            accept_invalid_certificates: self.insecure,
            tls_certs_only: with_system_roots(&self.certificates),
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("diskimport/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    /// Finds the image manifest for the platform, over https, or with
    /// `insecure` also over plain http when https does not connect.
    async fn resolve(&self) -> Result<(Client, Image), RegistryError> {
        let client = self.client(ClientProtocol::Https);
        match self.resolve_with(&client).await {
            Err(RegistryError::Pull {
                source: OciDistributionError::RequestError(e),
                ..
            }) if self.insecure => {
                tracing::debug!(error = %e, "https failed; insecure: trying plain http");
                let client = self.client(ClientProtocol::Http);
                let image = self.resolve_with(&client).await?;
                Ok((client, image))
            }
            other => other.map(|image| (client, image)),
        }
    }

    fn pull_error(&self, source: OciDistributionError) -> RegistryError {
        let reference = self.display.clone();
        match &source {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                RegistryError::Auth { reference, source }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                RegistryError::Auth { reference, source }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) =>
            {
                RegistryError::ManifestUnknown { reference, source }
            }
            OciDistributionError::ServerError { code: 404, .. } => {
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
        client: &Client,
        reference: &Reference,
    ) -> Result<ManifestDoc, RegistryError> {
        let accepted = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
        let (body, digest) = client
            .pull_manifest_raw(reference, &self.auth, &accepted)
            .await
            .map_err(|e| self.pull_error(e))?;
        tracing::debug!(%digest, len = body.len(), "manifest");
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

    async fn resolve_with(&self, client: &Client) -> Result<Image, RegistryError> {
        let top = self.fetch_manifest(client, &self.reference).await?;
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
            let child = self.reference.clone_with_digest(entry.digest.clone());
            (self.fetch_manifest(client, &child).await?, true)
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
        let config = self.fetch_config(client, &config).await?;
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
        client: &Client,
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
        let mut stream = client
            .pull_blob_stream(&self.reference, &descriptor.oci())
            .await
            .map_err(|e| self.pull_error(e))?;
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > descriptor.size() {
                        break;
                    }
                }
                // The client's own digest check: ours below gives the verdict.
                Err(e) if layer::is_digest_error(&e) => break,
                Err(e) => return Err(blob_error(e)),
            }
        }
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

/// Blocking reads over the runtime's chunk channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
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
        assert_eq!(load_certificates(dir.path()).unwrap().len(), 3);
        std::fs::write(dir.path().join("d.crt"), "junk").unwrap();
        assert!(load_certificates(dir.path()).is_err());
    }

    #[test]
    fn a_certificate_rustls_cannot_use_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("broken.crt"), garbage).unwrap();
        let error = load_certificates(dir.path()).unwrap_err().to_string();
        assert!(error.contains("broken.crt"), "{error}");
    }
}
