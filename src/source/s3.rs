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
//! Flow, on the shared network layer ([`super::net`]): `HeadObject` (retried)
//! for the size, then `GetObject`s through an [`Opener`]: the layer resumes a
//! broken or stalled stream with a ranged `GetObject` guarded by `If-Match` on
//! the ETag (and compares the validators each answer reports), retries
//! 408/429/5xx under its policy, fetches a large object over `--connections`
//! ranged requests, and stops every wait on SIGTERM. A body that ends short of
//! the object's size is an error, never a silent success. The SDK validates
//! response checksums only when asked (`WhenRequired`): its per-part checksums
//! cannot check a ranged or multipart read, and its warning about that would
//! print on every multipart import.

use std::fmt;
use std::io;
use std::sync::Arc;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, ResponseChecksumValidation, SharedHttpClient,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{DateTimeFormat, SdkBody};
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::{Headers, StatusCode};
use bytes::Bytes;

use super::net::error::chain_has;
use super::net::request::Opened;
use super::net::resume::{parse_content_range, Identity, Validators};
use super::net::transfer::{open_first, OpenFuture, Opener};
use super::net::{block_on, BodyReader, CaFiles, DisplayUrl, Net, NetError};
use super::SourceOptions;
use crate::error::describe_chain;
use crate::progress::Progress;

/// Region used when neither `--region`, the endpoint host nor the environment
/// names one.
const DEFAULT_REGION: &str = "us-east-1";

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
    #[error("the S3 download runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The server refused a request, or it could not be sent.
    #[error(transparent)]
    Request(Box<RequestFailure>),
    /// The download failed for good.
    #[error(transparent)]
    Net(Box<NetError>),
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
) -> Result<BodyReader, S3Error> {
    let location = parse_location(spec, options)?;
    let credentials = credentials(spec, options)?;
    let net = Arc::new(
        Net::new(options, CaFiles::Any, progress)
            .map_err(|e| S3Error::Certificates(e.to_string()))?,
    );
    let http = sdk_http_client(net.clone());

    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(location.region.clone()))
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .http_client(http);
    if let Some(endpoint) = &location.endpoint {
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    match credentials {
        Some(creds) => config = config.credentials_provider(creds),
        None => config = config.allow_no_auth(),
    }
    let client = aws_sdk_s3::Client::from_conf(config.build());
    let opener = Arc::new(S3Opener {
        net: net.clone(),
        client,
        location,
        verify_checksum: std::sync::atomic::AtomicBool::new(false),
    });
    let head = {
        let opener = opener.clone();
        block_on(async move { opener.head().await }).map_err(S3Error::Runtime)??
    };
    tracing::debug!(object = %opener.location.object(), size = head.size, "s3 object found");
    progress.set_source_total(head.size);
    opener
        .verify_checksum
        .store(head.verifiable, std::sync::atomic::Ordering::Relaxed);
    let mut first = {
        let (net, opener) = (net.clone(), opener.clone());
        block_on(async move { open_first(&net, &*opener).await })
            .map_err(S3Error::Runtime)?
            .map_err(|e| S3Error::Net(Box::new(e)))?
    };
    // HeadObject's size is the object's: a GET that does not say its length
    // (close-delimited) must still deliver all of it.
    match first.total {
        None => first.total = Some(head.size),
        Some(total) if total != head.size => {
            return Err(S3Error::Net(Box::new(NetError::Changed {
                url: opener.shown(),
                offset: 0,
                detail: format!(
                    "HeadObject said {} bytes, GetObject says {total}",
                    head.size
                ),
            })))
        }
        Some(_) => {}
    }
    BodyReader::start(net, opener, first, Net::plan(options)).map_err(S3Error::Runtime)
}

/// `spec` as it may appear in messages: without user info or query (a
/// presigned URL's signature, keys in the URL), even when it does not parse.
fn shown_spec(spec: &str) -> String {
    DisplayUrl::of_spec(spec).to_string()
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
                    let parsed = url::Url::parse(e).map_err(|err| {
                        bad(&format!(
                            "--endpoint {} is not a URL: {err}",
                            DisplayUrl::of_spec(e)
                        ))
                    })?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(bad(&format!(
                            "--endpoint {} is not http(s)",
                            DisplayUrl::new(&parsed)
                        )));
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

/// The SDK's HTTP client: the network layer's reqwest client (its TLS
/// policy: system roots, `--ca-dir`, `--proxy-ca-dir`, `--insecure`).
fn sdk_http_client(net: Arc<Net>) -> SharedHttpClient {
    let connector = SharedHttpConnector::new(ReqwestConnector {
        client: net.client.clone(),
    });
    http_client_fn(move |_settings, _components| connector.clone())
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
    /// The object has a full-object checksum the SDK can verify on a whole
    /// GetObject (a multipart object's part-level checksum it cannot).
    verifiable: bool,
}

/// HeadObject; when it fails, a one-byte GetObject names the S3 error code
/// (HEAD responses carry no body, so no code). The error says whether it is
/// transient.
async fn head(client: &aws_sdk_s3::Client, location: &Location) -> Result<Head, (S3Error, bool)> {
    let result = client
        .head_object()
        .bucket(&location.bucket)
        .key(&location.key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await;
    match result {
        Ok(out) => {
            let size = out.content_length().unwrap_or(-1);
            let size = u64::try_from(size).map_err(|_| {
                let failure = S3Error::Request(Box::new(RequestFailure {
                    object: location.object(),
                    endpoint: location.endpoint_name(),
                    operation: "HeadObject",
                    code: "MissingContentLength".into(),
                    status: String::new(),
                    message: "the server did not report the object's size".into(),
                }));
                (failure, false)
            })?;
            let checksums = [
                out.checksum_crc32(),
                out.checksum_crc32_c(),
                out.checksum_crc64_nvme(),
                out.checksum_sha1(),
                out.checksum_sha256(),
            ];
            let verifiable = !checksums.iter().flatten().any(|c| c.contains('-'));
            Ok(Head { size, verifiable })
        }
        Err(head_error) if transient(&head_error) => {
            Err((request_error(location, "HeadObject", &head_error), true))
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
                    Err((request_error(location, "GetObject", &get_error), false))
                }
                _ => Err((request_error(location, "HeadObject", &head_error), false)),
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

/// Whether an SDK failure may pass on another attempt: no response (a
/// connection or timeout failure, except TLS), or 408/429/5xx.
fn transient<E, R>(error: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: fmt::Debug + HasStatus + 'static,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(_) => !chain_has::<rustls::Error>(error),
        SdkError::ServiceError(_) => error
            .raw_response()
            .map(HasStatus::status_code)
            .is_some_and(|s| s >= 500 || s == 429 || s == 408),
        _ => false,
    }
}

/// GetObject and HeadObject of one object, for the network layer.
struct S3Opener {
    net: Arc<Net>,
    client: aws_sdk_s3::Client,
    location: Location,
    /// Ask the SDK to verify the checksum of whole-object reads.
    verify_checksum: std::sync::atomic::AtomicBool,
}

impl S3Opener {
    /// HeadObject, retried while the failure is transient.
    async fn head(&self) -> Result<Head, S3Error> {
        let mut failures = 0;
        loop {
            match head(&self.client, &self.location).await {
                Ok(head) => return Ok(head),
                Err((error, false)) => return Err(error),
                Err((error, true)) => {
                    failures += 1;
                    if failures >= self.net.policy.max_failures {
                        return Err(error);
                    }
                    let wait = self.net.policy.delay(failures, None);
                    tracing::warn!(attempt = failures, "{error}; retrying in {wait:?}");
                    self.net
                        .cancel
                        .sleep(wait)
                        .await
                        .map_err(|e| S3Error::Net(Box::new(e)))?;
                }
            }
        }
    }

    fn net_error<E>(&self, offset: u64, error: SdkError<E, HttpResponse>) -> NetError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let url = self.shown();
        let status = error.raw_response().map(HasStatus::status_code);
        let detail = error.code().map(|code| match error.message() {
            Some(message) => format!("{code}: {message}"),
            None => code.to_string(),
        });
        match (status, &error) {
            (Some(412), _) => NetError::Changed {
                url,
                offset,
                detail: "the object changed during the download (its ETag no longer matches)"
                    .into(),
            },
            (Some(401 | 403), SdkError::ServiceError(_)) => NetError::Auth {
                url,
                status: status.unwrap_or_default(),
                detail,
            },
            (Some(status), SdkError::ServiceError(_)) => NetError::Status {
                url,
                status,
                retry_after: None,
                detail,
            },
            _ if chain_has::<rustls::Error>(&error) => NetError::Tls {
                url,
                hint: crate::source::system_roots::missing_hint(),
                source: Box::new(error),
            },
            _ if transient(&error) => NetError::Transport {
                url,
                what: "GetObject failed".into(),
                source: Box::new(error),
            },
            _ => NetError::Protocol {
                url,
                detail: format!("GetObject failed: {}", describe_chain(&error)),
            },
        }
    }
}

impl Opener for S3Opener {
    fn open<'a>(&'a self, identity: &'a Identity, from: u64, to: Option<u64>) -> OpenFuture<'a> {
        Box::pin(async move {
            let url = self.shown();
            let mut request = self
                .client
                .get_object()
                .bucket(&self.location.bucket)
                .key(&self.location.key);
            if from > 0 || to.is_some() {
                if from > 0 && identity.validators.is_empty() {
                    // Nothing would tell a replaced object from the same one.
                    return Err(NetError::Changed {
                        url,
                        offset: from,
                        detail: "the server gives neither an ETag nor a Last-Modified date to                                  show the object is unchanged"
                            .into(),
                    });
                }
                request = request.range(match to {
                    Some(to) => format!("bytes={from}-{}", to.saturating_sub(1)),
                    None => format!("bytes={from}-"),
                });
            }
            if let Some(etag) = &identity.validators.etag {
                request = request.if_match(etag);
            }
            let whole = from == 0 && to.is_none();
            if whole
                && self
                    .verify_checksum
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                request = request.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
            }
            let output = match tokio::time::timeout(self.net.stall, request.send()).await {
                Err(_) => {
                    return Err(NetError::Stalled {
                        url,
                        after: self.net.stall,
                        offset: from,
                    })
                }
                Ok(result) => result.map_err(|e| self.net_error(from, e))?,
            };
            let range = output.content_range().and_then(parse_content_range);
            let length = output.content_length().and_then(|n| u64::try_from(n).ok());
            let validators = Validators {
                etag: output.e_tag().map(str::to_string),
                last_modified: output
                    .last_modified()
                    .and_then(|d| d.fmt(DateTimeFormat::HttpDate).ok()),
            };
            let (partial, start, total) = match range {
                Some((start, total)) => (true, start, total),
                None => (false, 0, length),
            };
            let stall = self.net.stall;
            let body_end = length.map(|n| start + n);
            let body = futures_util::stream::unfold(
                (output.body, url, start),
                move |(mut body, url, offset)| async move {
                    match tokio::time::timeout(stall, body.next()).await {
                        Ok(Some(Ok(chunk))) => {
                            let next = offset + chunk.len() as u64;
                            Some((Ok(chunk), (body, url, next)))
                        }
                        // After the last byte: the SDK's checksum check failed.
                        Ok(Some(Err(error))) if body_end == Some(offset) => {
                            let error = NetError::Protocol {
                                url: url.clone(),
                                detail: format!(
                                    "the body failed its integrity check (checksum): {}",
                                    describe_chain(&error)
                                ),
                            };
                            Some((Err(error), (body, url, offset)))
                        }
                        Ok(Some(Err(error))) => {
                            let error = NetError::Transport {
                                url: url.clone(),
                                what: format!("the body broke at byte {offset}"),
                                source: Box::new(error),
                            };
                            Some((Err(error), (body, url, offset)))
                        }
                        Ok(None) => None,
                        Err(_) => {
                            let error = NetError::Stalled {
                                url: url.clone(),
                                after: stall,
                                offset,
                            };
                            Some((Err(error), (body, url, offset)))
                        }
                    }
                },
            );
            Ok(Opened {
                partial,
                start,
                total,
                length,
                validators,
                accepts_ranges: true,
                body: Box::pin(body),
            })
        })
    }

    fn shown(&self) -> DisplayUrl {
        DisplayUrl::from_safe_text(self.location.object())
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
    fn specs_in_messages_lose_credentials_and_signatures() {
        assert_eq!(
            shown_spec("https://AK:SK@host:9000/b/k?X-Amz-Signature=abc"),
            "https://host:9000/b/k"
        );
        assert_eq!(shown_spec("not a url?secret"), "not a url");
        // Unparsable, with user info: the secret before the `@` goes too.
        assert_eq!(
            shown_spec("http://AK:SK@[::1/b/k?X-Amz-Signature=abc"),
            "http://[::1/b/k"
        );
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
