//! s3 source: one object read with the AWS SDK, streamed as a blocking `Read`.
//!
//! Locations:
//! - `s3://bucket/key`, with `--endpoint URL` for non-AWS servers (path-style
//!   requests then) and `--region` (default `us-east-1`);
//! - CDI's path-style `http(s)://host[:port]/bucket/key` with `--source-kind s3`:
//!   the endpoint is the URL's scheme, host and port, the bucket its first path
//!   segment, the key the rest.
//!
//! Credentials: `--username`/`--password` (CDI's `IMPORTER_ACCESS_KEY_ID` /
//! `IMPORTER_SECRET_KEY`), else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`) from the environment, else none: requests are then
//! sent unsigned (anonymous access to public buckets).
//!
//! HTTP: the SDK is given its own HTTP client, backed by `reqwest` (rustls), so
//! that TLS trusts the system roots plus every PEM file in `--ca-dir` and
//! `--proxy-ca-dir` (as CDI does with `/certs` and `/proxycerts`), and
//! `--insecure` can skip certificate verification (CDI itself ignores
//! `INSECURE_TLS` for S3). Proxies come from the usual environment variables.
//!
//! Flow: `HeadObject` for the size and ETag (the size goes to
//! [`Progress::set_source_total`]), then `GetObject` on a background thread
//! running a small tokio runtime; chunks reach the reader over a bounded
//! channel, so memory stays bounded. A stream that breaks is resumed with a
//! ranged `GetObject` from the first missing byte, guarded by `If-Match` on the
//! ETag (and by comparing the ETag each response reports), up to a retry budget
//! (50 resumes, or 5 failed attempts in a row without a byte) with capped
//! exponential backoff (0.2 s doubling to 5 s). A body that ends
//! short of the object's size is an error, never a silent success.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::SdkBody;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::{Headers, StatusCode};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::SourceOptions;
use crate::error::describe_chain;
use crate::progress::Progress;

/// Region used when neither `--region`, the endpoint host nor the environment
/// names one.
const DEFAULT_REGION: &str = "us-east-1";
/// Chunks buffered between the download thread and the reader.
const CHANNEL_CHUNKS: usize = 16;
/// Resumes allowed after a broken stream, in total.
const RETRY_BUDGET: u32 = 50;
/// Failed attempts in a row that delivered no byte before giving up.
const STALLED_ATTEMPTS: u32 = 5;
/// First backoff before a resume; doubled per failure without progress.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Largest backoff between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Errors of the s3 source.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The spec or the options do not name an object.
    #[error("invalid S3 source {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA directory could not be read or holds a bad PEM file.
    #[error("S3 CA certificates: {0}")]
    Certificates(String),
    /// The HTTP client could not be built.
    #[error("S3 HTTP client: {0}")]
    Client(String),
    /// The background runtime could not be started.
    #[error("starting the S3 download runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The server refused a request, or it could not be sent.
    #[error(transparent)]
    Request(Box<RequestFailure>),
}

/// A failed S3 request: which object, which operation, the S3 error code.
#[derive(Debug, thiserror::Error)]
#[error("{object} at {endpoint}: {operation} failed: {code}{status}: {message}")]
pub struct RequestFailure {
    /// `s3://bucket/key`.
    pub object: String,
    /// The endpoint the request went to.
    pub endpoint: String,
    /// `HeadObject` or `GetObject`.
    pub operation: &'static str,
    /// The S3 error code (`NoSuchKey`, `AccessDenied`, ...) or a transport
    /// error kind.
    pub code: String,
    /// `" (HTTP 403)"`, or empty when no response came.
    pub status: String,
    /// The server's message, or the transport error's chain.
    pub message: String,
}

/// Where the object is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    /// Endpoint URL, `None` for AWS's own (derived from the region).
    endpoint: Option<String>,
    region: String,
    bucket: String,
    key: String,
}

impl Location {
    fn object(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn endpoint_name(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.region))
    }
}

/// Opens the object named by `spec` and returns its bytes as a stream.
pub fn open(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, S3Error> {
    let location = parse_location(spec, options)?;
    let credentials = credentials(spec, options)?;
    let http = http_client(options)?;

    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(location.region.clone()))
        .http_client(http);
    if let Some(endpoint) = &location.endpoint {
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    match credentials {
        Some(creds) => config = config.credentials_provider(creds),
        None => config = config.allow_no_auth(),
    }
    let client = aws_sdk_s3::Client::from_conf(config.build());

    // The runtime lives on its own thread, so `open` also works when called
    // from inside another runtime; HeadObject's answer comes back first.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(S3Error::Runtime)?;
    let (head_tx, head_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    std::thread::Builder::new()
        .name("s3-source".into())
        .spawn(move || {
            runtime.block_on(async move {
                let head = match head(&client, &location).await {
                    Ok(head) => head,
                    Err(error) => {
                        let _ = head_tx.send(Err(error));
                        return;
                    }
                };
                let _ = head_tx.send(Ok((location.object(), head.size)));
                tracing::debug!(
                    object = %location.object(),
                    size = head.size,
                    etag = ?head.etag,
                    "s3 object found"
                );
                let download = Download {
                    client,
                    location,
                    size: head.size,
                    etag: head.etag,
                    last_modified: head.last_modified,
                    tx,
                };
                download.run().await;
            })
        })
        .map_err(S3Error::Runtime)?;
    let (object, size) = head_rx
        .recv()
        .map_err(|_| S3Error::Runtime(io::Error::other("the S3 download thread ended early")))??;
    progress.set_source_total(size);
    Ok(Box::new(ChannelReader::new(rx, object, size)))
}

/// `spec` as it may appear in messages: without user info or query (a
/// presigned URL's signature, keys in the URL).
fn shown_spec(spec: &str) -> String {
    match url::Url::parse(spec) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => spec
            .split(['?', '@'])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Splits `spec` into endpoint, region, bucket and key.
fn parse_location(spec: &str, options: &SourceOptions) -> Result<Location, S3Error> {
    let bad = |reason: &str| S3Error::Spec {
        spec: shown_spec(spec),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(spec).map_err(|e| bad(&format!("not a URL: {e}")))?;
    let (endpoint, bucket, key) = match url.scheme() {
        "s3" => {
            let bucket = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("no bucket (expected s3://bucket/key)"))?;
            let key = percent_decode(url.path().trim_start_matches('/'));
            let endpoint = match options.endpoint.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => {
                    let parsed = url::Url::parse(e)
                        .map_err(|err| bad(&format!("--endpoint {e:?} is not a URL: {err}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(bad(&format!("--endpoint {e:?} is not http(s)")));
                    }
                    Some(e.trim_end_matches('/').to_string())
                }
                None => None,
            };
            (endpoint, bucket.to_string(), key)
        }
        "http" | "https" => {
            let host = url.host_str().ok_or_else(|| bad("no host"))?;
            let mut endpoint = format!("{}://{}", url.scheme(), host_for_url(host));
            if let Some(port) = url.port() {
                endpoint.push_str(&format!(":{port}"));
            }
            let path = url.path().trim_start_matches('/');
            let (bucket, key) = path
                .split_once('/')
                .ok_or_else(|| bad("expected http(s)://host[:port]/bucket/key"))?;
            (Some(endpoint), percent_decode(bucket), percent_decode(key))
        }
        other => return Err(bad(&format!("unsupported scheme {other:?}"))),
    };
    if bucket.is_empty() {
        return Err(bad("empty bucket name"));
    }
    if key.is_empty() || key.ends_with('/') {
        return Err(bad("no object key"));
    }
    if url.query().is_some() {
        return Err(bad("query strings are not supported"));
    }
    let region = options
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            url::Url::parse(endpoint.as_deref().unwrap_or(""))
                .ok()
                .and_then(|u| u.host_str().and_then(aws_region_of_host))
        })
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    Ok(Location {
        endpoint,
        region,
        bucket,
        key,
    })
}

/// IPv6 hosts need their brackets back in a URL.
fn host_for_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The region in an AWS host name such as `s3.eu-west-1.amazonaws.com` or
/// `s3-eu-west-1.amazonaws.com` (CDI's rule); `None` for other hosts.
fn aws_region_of_host(host: &str) -> Option<String> {
    let rest = host.strip_suffix(".amazonaws.com")?;
    let region = rest
        .strip_prefix("s3.")
        .or_else(|| rest.strip_prefix("s3-"))?;
    let region = region.strip_prefix("dualstack.").unwrap_or(region);
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Decodes `%XX` escapes (URL paths keep them; S3 keys are the decoded bytes).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Static credentials from the options or the environment; `None` means
/// anonymous (unsigned) requests.
fn credentials(spec: &str, options: &SourceOptions) -> Result<Option<Credentials>, S3Error> {
    let user = options.username.as_deref().filter(|s| !s.is_empty());
    let pass = options.password.as_deref().filter(|s| !s.is_empty());
    match (user, pass) {
        (Some(ak), Some(sk)) => {
            return Ok(Some(Credentials::new(ak, sk, None, None, "diskimport")));
        }
        (None, None) => {}
        _ => {
            return Err(S3Error::Spec {
                spec: shown_spec(spec),
                reason: "an access key id (--username) needs a secret key (--password) and \
                         the other way round"
                    .to_string(),
            })
        }
    }
    match (
        env_nonempty("AWS_ACCESS_KEY_ID"),
        env_nonempty("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(ak), Some(sk)) => Ok(Some(Credentials::new(
            ak,
            sk,
            env_nonempty("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ))),
        _ => Ok(None),
    }
}

/// The SDK's HTTP client: reqwest with the system roots plus `ca_dir`'s PEM
/// files, and optionally no certificate verification.
fn http_client(options: &SourceOptions) -> Result<SharedHttpClient, S3Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("diskimport/", env!("CARGO_PKG_VERSION")));
    let mut certs = Vec::new();
    if let Some(dir) = &options.ca_dir {
        certs.extend(load_ca_dir(dir)?);
    }
    // CDI trusts its proxy CA bundle for S3 too; the directory may be absent.
    if let Some(dir) = options.proxy_ca_dir.as_ref().filter(|d| d.exists()) {
        certs.extend(load_ca_dir(dir)?);
    }
    builder = builder.tls_certs_only(super::system_roots::with_system(certs));
    if options.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    let client = builder
        .build()
        .map_err(|e| S3Error::Client(describe_chain(&e)))?;
    let connector = SharedHttpConnector::new(ReqwestConnector { client });
    Ok(http_client_fn(move |_settings, _components| {
        connector.clone()
    }))
}

/// Every non-dot file in `dir` as PEM certificates (CDI mounts a ConfigMap
/// there: any key name, `..data` style entries skipped).
fn load_ca_dir(dir: &std::path::Path) -> Result<Vec<reqwest::Certificate>, S3Error> {
    let paths = super::ca_dir::certificate_files(dir, false)
        .map_err(|e| S3Error::Certificates(format!("reading {}: {e}", dir.display())))?;
    let mut certs = Vec::new();
    for path in paths {
        let pem = std::fs::read(&path)
            .map_err(|e| S3Error::Certificates(format!("reading {}: {e}", path.display())))?;
        let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            S3Error::Certificates(format!("{}: {}", path.display(), describe_chain(&e)))
        })?;
        if found.is_empty() {
            tracing::warn!(path = %path.display(), "no PEM certificate in file");
        }
        certs.extend(found);
    }
    Ok(certs)
}

/// Sends the SDK's (already signed) requests with reqwest.
#[derive(Debug, Clone)]
struct ReqwestConnector {
    client: reqwest::Client,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let (parts, body) = request.into_parts();
            // HeadObject and GetObject have no body; anything else is sent
            // from memory (the SDK hands us in-memory bodies for them).
            let payload = body.bytes().map(Bytes::copy_from_slice).unwrap_or_default();
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(payload)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        ConnectorError::timeout(Box::new(e))
                    } else {
                        ConnectorError::io(Box::new(e))
                    }
                })?;
            let status = StatusCode::try_from(response.status().as_u16())
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let headers = Headers::try_from(response.headers().clone())
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let body = reqwest::Body::wrap_stream(response.bytes_stream());
            let mut out = HttpResponse::new(status, SdkBody::from_body_1_x(body));
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

struct Head {
    size: u64,
    etag: Option<String>,
    last_modified: Option<aws_sdk_s3::primitives::DateTime>,
}

/// HeadObject; when it fails, a one-byte GetObject names the S3 error code
/// (HEAD responses carry no body, so no code).
async fn head(client: &aws_sdk_s3::Client, location: &Location) -> Result<Head, S3Error> {
    let result = client
        .head_object()
        .bucket(&location.bucket)
        .key(&location.key)
        .send()
        .await;
    match result {
        Ok(out) => {
            let size = out.content_length().unwrap_or(-1);
            let size = u64::try_from(size).map_err(|_| {
                S3Error::Request(Box::new(RequestFailure {
                    object: location.object(),
                    endpoint: location.endpoint_name(),
                    operation: "HeadObject",
                    code: "MissingContentLength".into(),
                    status: String::new(),
                    message: "the server did not report the object's size".into(),
                }))
            })?;
            Ok(Head {
                size,
                etag: out.e_tag().map(str::to_string),
                last_modified: out.last_modified().copied(),
            })
        }
        Err(head_error) => {
            let probe = client
                .get_object()
                .bucket(&location.bucket)
                .key(&location.key)
                .range("bytes=0-0")
                .send()
                .await;
            match probe {
                Err(get_error) if get_error.code().is_some() => {
                    Err(request_error(location, "GetObject", &get_error))
                }
                _ => Err(request_error(location, "HeadObject", &head_error)),
            }
        }
    }
}

/// Builds the error for a failed request, with the S3 error code when the
/// server sent one.
fn request_error<E, R>(
    location: &Location,
    operation: &'static str,
    error: &SdkError<E, R>,
) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + HasStatus,
{
    let status = error.raw_response().map(HasStatus::status_code);
    let (code, message) = match error {
        SdkError::ServiceError(_) => {
            let code = error
                .code()
                .map(str::to_string)
                .or_else(|| status.map(status_code_name))
                .unwrap_or_else(|| "UnknownError".into());
            let message = error
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| "(the server gave no message)".into());
            (code, message)
        }
        SdkError::TimeoutError(_) => ("Timeout".into(), describe_chain(error)),
        SdkError::DispatchFailure(_) => ("ConnectionFailed".into(), describe_chain(error)),
        SdkError::ResponseError(_) => ("InvalidResponse".into(), describe_chain(error)),
        _ => ("RequestFailed".into(), describe_chain(error)),
    };
    S3Error::Request(Box::new(RequestFailure {
        object: location.object(),
        endpoint: location.endpoint_name(),
        operation,
        code,
        status: status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
        message,
    }))
}

/// Access to the status code of the SDK's raw response type.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A code for error responses without a body (HEAD).
fn status_code_name(status: u16) -> String {
    match status {
        301 | 307 => "PermanentRedirect (wrong region or endpoint)".into(),
        400 => "BadRequest".into(),
        403 => "Forbidden".into(),
        404 => "NotFound".into(),
        412 => "PreconditionFailed".into(),
        416 => "InvalidRange".into(),
        s => format!("HTTP{s}"),
    }
}

/// The download task: GetObject, resumed with ranged requests on failure.
struct Download {
    client: aws_sdk_s3::Client,
    location: Location,
    size: u64,
    etag: Option<String>,
    /// HeadObject's Last-Modified: the identity check when there is no ETag.
    last_modified: Option<aws_sdk_s3::primitives::DateTime>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

/// Why one attempt stopped.
enum Attempt {
    /// All bytes delivered.
    Complete,
    /// The reader went away.
    Closed,
    /// Worth resuming: the stream broke or a request failed transiently.
    Retry(String),
    /// Not worth resuming.
    Fatal(io::Error),
}

impl Download {
    async fn run(self) {
        let mut offset = 0u64;
        let mut retries = 0u32;
        let mut stalled = 0u32;
        let mut backoff = BACKOFF_START;
        loop {
            let before = offset;
            let outcome = self.attempt(&mut offset).await;
            let reason = match outcome {
                Attempt::Complete | Attempt::Closed => return,
                Attempt::Fatal(error) => {
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
                Attempt::Retry(reason) => reason,
            };
            if offset > before {
                backoff = BACKOFF_START;
                stalled = 0;
            } else {
                stalled += 1;
            }
            if retries >= RETRY_BUDGET || stalled >= STALLED_ATTEMPTS {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: download stopped at byte {offset} of {} after {retries} resumes: \
                         {reason}",
                        self.location.object(),
                        self.size
                    ),
                );
                let _ = self.tx.send(Err(error)).await;
                return;
            }
            retries += 1;
            tracing::warn!(
                object = %self.location.object(),
                offset,
                size = self.size,
                retry = retries,
                "s3 stream broke, resuming: {reason}"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    async fn attempt(&self, offset: &mut u64) -> Attempt {
        let object = self.location.object();
        if *offset >= self.size {
            return Attempt::Complete;
        }
        let mut request = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(&self.location.key);
        if *offset > 0 {
            if self.etag.is_none() && self.last_modified.is_none() {
                // Nothing would tell a replaced object from the same one.
                return Attempt::Fatal(io::Error::other(format!(
                    "{object}: the download broke at byte {offset} and cannot be resumed: the \
                     server gives neither an ETag nor a Last-Modified date to show the object \
                     is unchanged"
                )));
            }
            request = request.range(format!("bytes={offset}-"));
        }
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(error) => {
                let status = error.raw_response().map(HasStatus::status_code);
                let transient = match &error {
                    SdkError::TimeoutError(_)
                    | SdkError::DispatchFailure(_)
                    | SdkError::ResponseError(_) => true,
                    SdkError::ServiceError(_) => {
                        status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
                    }
                    _ => false,
                };
                let described = request_error(&self.location, "GetObject", &error);
                if status == Some(412) {
                    return Attempt::Fatal(io::Error::other(format!(
                        "{object}: the object changed during the download (ETag {} no longer \
                         matches): {described}",
                        self.etag.as_deref().unwrap_or("?")
                    )));
                }
                return if transient {
                    Attempt::Retry(described.to_string())
                } else {
                    Attempt::Fatal(io::Error::other(described))
                };
            }
        };
        // Servers that ignore If-Match (s3s-fs does) still report the ETag.
        if let (Some(expected), Some(got)) = (&self.etag, output.e_tag()) {
            if expected != got {
                return Attempt::Fatal(io::Error::other(format!(
                    "{object}: the object changed during the download (ETag {expected} at \
                     HeadObject, {got} at byte {offset})"
                )));
            }
        }
        if let (Some(expected), Some(got)) = (&self.last_modified, output.last_modified()) {
            if expected != got {
                return Attempt::Fatal(io::Error::other(format!(
                    "{object}: the object changed during the download (Last-Modified {expected} \
                     at HeadObject, {got} at byte {offset})"
                )));
            }
        }
        // A server that ignored the Range header sends the whole object again:
        // skip what was already delivered.
        let mut skip = 0u64;
        if *offset > 0 {
            let range = output.content_range();
            if let Some(total) = range.and_then(range_total) {
                if total != self.size {
                    return Attempt::Fatal(io::Error::other(format!(
                        "{object}: the object changed during the download (it had {} bytes, \
                         now {total})",
                        self.size
                    )));
                }
            }
            let length = output.content_length().and_then(|n| u64::try_from(n).ok());
            match (range.and_then(range_start), length) {
                (Some(start), _) if start == *offset => {}
                (Some(start), _) => {
                    return Attempt::Fatal(io::Error::other(format!(
                        "{object}: asked for bytes from {offset}, the server sent from {start}"
                    )))
                }
                // No Content-Range (a proxy may drop it): the length says
                // whether the body is the rest or the whole object.
                (None, Some(n)) if n == self.size - *offset => {}
                // Without either, a body without a range is the whole object
                // (a 206 must say its range).
                (None, Some(n)) if n == self.size => skip = *offset,
                (None, None) => skip = *offset,
                (None, Some(n)) => {
                    return Attempt::Fatal(io::Error::other(format!(
                        "{object}: asked for bytes from {offset}, the answer has no Content-Range \
                         and {n} bytes, neither the rest ({}) nor the whole object ({})",
                        self.size - *offset,
                        self.size
                    )))
                }
            }
        }
        let mut body = output.body;
        loop {
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        let _ = chunk.split_to(n as usize);
                        skip -= n;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    let len = chunk.len() as u64;
                    if *offset + len > self.size {
                        return Attempt::Fatal(io::Error::other(format!(
                            "{object}: the server sent more than the {} bytes HeadObject reported",
                            self.size
                        )));
                    }
                    *offset += len;
                    if self.tx.send(Ok(chunk)).await.is_err() {
                        return Attempt::Closed;
                    }
                }
                Some(Err(error)) => {
                    let text = describe_chain(&error);
                    // An error after the last byte, or a checksum error, is
                    // the SDK's integrity check failing: resuming would skip it.
                    if *offset >= self.size || text.to_ascii_lowercase().contains("checksum") {
                        return Attempt::Fatal(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{object}: the body failed its integrity check: {text}"),
                        ));
                    }
                    return Attempt::Retry(format!("body broke at byte {offset}: {text}"));
                }
                None => break,
            }
        }
        if *offset == self.size {
            Attempt::Complete
        } else {
            Attempt::Retry(format!(
                "body ended at byte {offset} of {} (short read)",
                self.size
            ))
        }
    }
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL` value.
/// The total of `bytes START-END/TOTAL`, when it is a number.
fn range_total(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

fn range_start(content_range: &str) -> Option<u64> {
    let rest = content_range.trim().strip_prefix("bytes")?.trim_start();
    let (first, _) = rest.split_once('-')?;
    first.trim().parse().ok()
}

/// The blocking end of the channel.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// `s3://bucket/key`, for errors.
    object: String,
    /// The object's size: fewer bytes before the channel closes is an error
    /// (the download thread died without saying why).
    size: u64,
    delivered: u64,
    /// Set once the stream ended; an error stays an error on every later read.
    end: Option<Result<(), (io::ErrorKind, String)>>,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>, object: String, size: u64) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            object,
            size,
            delivered: 0,
            end: None,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match &self.end {
                Some(Ok(())) => return Ok(0),
                Some(Err((kind, message))) => return Err(io::Error::new(*kind, message.clone())),
                None => {}
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => {
                    self.end = Some(Err((error.kind(), error.to_string())));
                    return Err(error);
                }
                // The task ends its sender after the last byte or an error.
                None if self.delivered == self.size => self.end = Some(Ok(())),
                None => {
                    self.end = Some(Err((
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: the download ended at byte {} of {}",
                            self.object, self.delivered, self.size
                        ),
                    )))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        self.delivered += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SourceOptions {
        SourceOptions::default()
    }

    #[test]
    fn path_style_url_splits_into_endpoint_bucket_key() {
        let loc = parse_location("http://127.0.0.1:9000/images/dir/disk%20a.img", &opts()).unwrap();
        assert_eq!(loc.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(loc.bucket, "images");
        assert_eq!(loc.key, "dir/disk a.img");
    }

    #[test]
    fn s3_url_uses_endpoint_and_region_options() {
        let mut o = opts();
        o.endpoint = Some("http://minio:9000/".into());
        o.region = Some("eu-central-1".into());
        let loc = parse_location("s3://bucket/a/b.qcow2", &o).unwrap();
        assert_eq!(loc.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(loc.region, "eu-central-1");
        assert_eq!(
            (loc.bucket.as_str(), loc.key.as_str()),
            ("bucket", "a/b.qcow2")
        );
    }

    #[test]
    fn region_comes_from_aws_host() {
        let loc = parse_location("https://s3.eu-west-1.amazonaws.com/b/k", &opts()).unwrap();
        assert_eq!(loc.region, "eu-west-1");
        assert_eq!(
            aws_region_of_host("s3-us-west-2.amazonaws.com").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(aws_region_of_host("minio.ns.svc"), None);
    }

    #[test]
    fn missing_bucket_or_key_is_rejected() {
        assert!(parse_location("http://host/bucket", &opts()).is_err());
        assert!(parse_location("http://host/bucket/", &opts()).is_err());
        assert!(parse_location("s3://bucket", &opts()).is_err());
        assert!(parse_location("ftp://host/b/k", &opts()).is_err());
    }

    #[test]
    fn half_credentials_are_rejected() {
        let mut o = opts();
        o.username = Some("AK".into());
        assert!(credentials("s3://b/k", &o).is_err());
        o.password = Some("SK".into());
        assert!(credentials("s3://b/k", &o).unwrap().is_some());
    }

    #[test]
    fn content_range_start_is_parsed() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_total("bytes 100-199/200"), Some(200));
        assert_eq!(range_total("bytes 100-199/*"), None);
    }

    #[test]
    fn specs_in_messages_lose_credentials_and_signatures() {
        assert_eq!(
            shown_spec("https://AK:SK@host:9000/b/k?X-Amz-Signature=abc"),
            "https://host:9000/b/k"
        );
        assert_eq!(shown_spec("not a url?secret"), "not a url");
    }

    #[test]
    fn reader_delivers_chunks_then_the_error_with_its_cause() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abcdef"))).unwrap();
        tx.try_send(Err(io::Error::other(
            "s3://b/k: stopped at byte 6 of 9: reset",
        )))
        .unwrap();
        drop(tx);
        let mut reader = ChannelReader::new(rx, "s3://b/k".into(), 9);
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        for _ in 0..2 {
            let error = reader.read(&mut buf).unwrap_err();
            assert!(error.to_string().contains("stopped at byte 6 of 9: reset"));
        }
    }

    #[test]
    fn reader_closed_early_without_error_is_an_error_not_eof() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut reader = ChannelReader::new(rx, "s3://b/k".into(), 9);
        let mut out = Vec::new();
        let error = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            error.to_string().contains("ended at byte 3 of 9"),
            "{error}"
        );

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut reader = ChannelReader::new(rx, "s3://b/k".into(), 3);
        let mut out = Vec::new();
        assert_eq!(reader.read_to_end(&mut out).unwrap(), 3);
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
