//! http(s) source: one streaming GET exposed as a blocking [`Read`], made
//! robust against the faults real servers and networks produce.
//!
//! # Why `reqwest::blocking`
//!
//! The pipeline is synchronous (decoders and format readers pull from a
//! `Read`). `reqwest::blocking` already is the bridge we would otherwise write:
//! it runs the async client on its own background thread with its own tokio
//! runtime and hands each body chunk over on demand, so at most a chunk or two
//! is buffered (memory stays bounded) and no runtime leaks into the caller. Its
//! `timeout` applies to each wait (sending, and every body read), so it acts as
//! a stall detector rather than a limit on the whole transfer.
//!
//! # Behaviour
//!
//! - TLS is verified against the system roots plus every certificate in every
//!   non-dot file of `ca_dir` and `proxy_ca_dir`; `insecure` skips it.
//! - Proxies come from `http_proxy`/`https_proxy`/`all_proxy`/`no_proxy` (upper or
//!   lower case): reqwest's default system proxy matcher reads them.
//! - Redirects are followed by hand (at most [`MAX_REDIRECTS`] hops) so that
//!   basic-auth credentials and extra headers go only to the origin (scheme,
//!   host, port) they were given for, never to another host a redirect names.
//! - A connection that drops mid-body (or a body shorter than its
//!   Content-Length, or a stalled read) is resumed with `Range: bytes=N-`
//!   guarded by `If-Range` (strong ETag, else Last-Modified). A 206 must start
//!   exactly at N. A server that answers 200 instead is re-read from the start,
//!   skipping the N bytes already delivered, but only if its validators (ETag,
//!   Last-Modified, Content-Length) show it is the same object.
//! - Transient failures (connect errors, drops, 408, 429, 5xx) are retried
//!   with exponential backoff (0.2 s doubling to 5 s; `Retry-After` seconds or date
//!   are honoured up to a minute) within a budget of [`MAX_ATTEMPTS`]
//!   consecutive failures without progress; the budget resets whenever bytes
//!   flow. Other 4xx statuses and certificate errors fail at once.
//! - A body longer than its Content-Length is an error: once the advertised
//!   length has been read from a server that accepts ranges, one probe
//!   `Range: bytes=LEN-` must be refused (416); if the server still has bytes
//!   there, the import fails instead of silently truncating.
//!
//! Errors that surface while reading are `io::Error`s wrapping [`HttpError`],
//! whose Display carries the cause.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use reqwest::{Certificate, StatusCode};
use url::Url;

use super::SourceOptions;
use crate::error::describe_chain;
use crate::progress::Progress;

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// Consecutive failed attempts (without any byte delivered in between)
/// before giving up.
pub const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// A single wait (connect, response headers, one body read) longer than this
/// counts as a dropped connection.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the http source.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The spec is not a usable http(s) URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The spec.
        url: String,
        /// Why.
        reason: String,
    },
    /// A CA certificate file could not be used.
    #[error("CA certificates {path}: {reason}")]
    CaFile {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The http client could not be built.
    #[error("http client: {0}")]
    Client(String),
    /// The server rejected the credentials (or sent none were accepted).
    #[error("authentication failed for {url}: HTTP {status}")]
    Auth {
        /// The URL (credentials removed).
        url: String,
        /// Status line code and reason.
        status: String,
    },
    /// A non-retryable status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL (credentials removed).
        url: String,
        /// Status line code and reason.
        status: String,
    },
    /// TLS certificate verification failed.
    #[error("TLS certificate verification failed for {url}: {detail}")]
    Certificate {
        /// The URL (credentials removed).
        url: String,
        /// The cause chain.
        detail: String,
    },
    /// Too many redirect hops, or a redirect without a usable Location.
    #[error("{url}: {detail}")]
    Redirect {
        /// The URL (credentials removed).
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The retry budget ran out.
    #[error("{url}: giving up after {attempts} attempts without progress; last failure: {last}")]
    GaveUp {
        /// The URL (credentials removed).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The object changed (or cannot be shown to be the same) between requests.
    #[error("{url}: cannot resume at byte {offset}: {detail}")]
    Changed {
        /// The URL (credentials removed).
        url: String,
        /// Where the resume was to start.
        offset: u64,
        /// Why.
        detail: String,
    },
    /// The body is longer than, or cannot be completed to, its Content-Length.
    #[error("{url}: body does not match Content-Length {expected}: {detail}")]
    Length {
        /// The URL (credentials removed).
        url: String,
        /// The advertised length.
        expected: u64,
        /// What was seen.
        detail: String,
    },
}

/// Opens `spec`: sends the first GET (retrying transient failures), so that
/// bad URLs, statuses, credentials and certificates fail here, and returns the
/// body as a resuming reader.
pub fn open(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, HttpError> {
    let url = Url::parse(spec).map_err(|e| HttpError::InvalidUrl {
        url: spec.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(HttpError::InvalidUrl {
            url: redact(&url),
            reason: "expected http(s)://host/path".into(),
        });
    }
    let client = build_client(options)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &options.headers {
        let bad = |reason: String| HttpError::Client(format!("header {name:?}: {reason}"));
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
        headers.append(name, value);
    }
    let creds = options
        .username
        .clone()
        .map(|user| (user, options.password.clone()));
    let mut transfer = Transfer {
        client,
        url,
        creds,
        headers,
        pos: 0,
        total: None,
        etag: None,
        last_modified: None,
        accepts_ranges: false,
        started: false,
        body: None,
        failures: 0,
        finished: false,
    };
    transfer.connect()?;
    if let Some(total) = transfer.total {
        progress.set_source_total(total);
    }
    Ok(Box::new(transfer))
}

fn build_client(options: &SourceOptions) -> Result<Client, HttpError> {
    let mut certs = Vec::new();
    for dir in [&options.ca_dir, &options.proxy_ca_dir]
        .into_iter()
        .flatten()
    {
        certs.extend(load_ca_dir(dir)?);
    }
    let mut builder = Client::builder()
        .user_agent(concat!("diskimport/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STALL_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    builder = builder.tls_certs_only(super::system_roots::with_system(certs));
    if options.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| HttpError::Client(describe_chain(&e)))
}

/// Every certificate in every non-dot regular file of `dir` (PEM, any name).
fn load_ca_dir(dir: &Path) -> Result<Vec<Certificate>, HttpError> {
    let err = |path: &Path, reason: String| HttpError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let entries =
        super::ca_dir::certificate_files(dir, false).map_err(|e| err(dir, e.to_string()))?;
    let mut certs = Vec::new();
    for path in entries {
        let pem = fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        let found =
            Certificate::from_pem_bundle(&pem).map_err(|e| err(&path, describe_chain(&e)))?;
        if found.is_empty() {
            return Err(err(&path, "no PEM certificate in file".into()));
        }
        certs.extend(found);
    }
    Ok(certs)
}

/// Why an attempt did not yield a usable body.
enum Failure {
    /// Worth retrying.
    Transient {
        what: String,
        retry_after: Option<Duration>,
    },
    /// Not worth retrying.
    Fatal(HttpError),
}

impl From<HttpError> for Failure {
    fn from(e: HttpError) -> Self {
        Failure::Fatal(e)
    }
}

/// The resuming body reader.
struct Transfer {
    client: Client,
    url: Url,
    creds: Option<(String, Option<String>)>,
    headers: HeaderMap,
    /// Bytes delivered to the caller.
    pos: u64,
    /// Length of the whole object, when known.
    total: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
    accepts_ranges: bool,
    /// The first successful response was seen (validators recorded).
    started: bool,
    body: Option<Response>,
    /// Consecutive failures without progress.
    failures: u32,
    finished: bool,
}

impl Transfer {
    fn shown(&self) -> String {
        redact(&self.url)
    }

    /// Gets a body positioned at `self.pos`, retrying transient failures.
    fn connect(&mut self) -> Result<(), HttpError> {
        loop {
            match self.attempt() {
                Ok(resp) => {
                    self.body = Some(resp);
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient { what, retry_after }) => {
                    self.note_failure(what, retry_after)?
                }
            }
        }
    }

    /// Counts a failure and waits before the next attempt, or gives up.
    fn note_failure(
        &mut self,
        what: String,
        retry_after: Option<Duration>,
    ) -> Result<(), HttpError> {
        self.body = None;
        self.failures += 1;
        if self.failures >= MAX_ATTEMPTS {
            return Err(HttpError::GaveUp {
                url: self.shown(),
                attempts: self.failures,
                last: what,
            });
        }
        let backoff = BACKOFF_START
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(BACKOFF_MAX);
        let wait = retry_after.map_or(backoff, |r| r.min(RETRY_AFTER_MAX));
        tracing::warn!(
            url = %self.shown(),
            offset = self.pos,
            attempt = self.failures,
            "{what}; retrying in {wait:?}"
        );
        std::thread::sleep(wait);
        Ok(())
    }

    /// Sends a GET for `Range: bytes=from-` (or the whole object), following
    /// redirects by hand.
    fn send(&self, from: Option<u64>) -> Result<Response, Failure> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.get(url.clone());
            if same_origin(&url, &self.url) {
                if let Some((user, pass)) = &self.creds {
                    req = req.basic_auth(user, pass.as_deref());
                }
                for (name, value) in &self.headers {
                    req = req.header(name, value);
                }
            }
            if let Some(from) = from {
                req = req.header(RANGE, format!("bytes={from}-"));
                let strong_etag = self.etag.as_ref().filter(|e| !e.starts_with("W/"));
                if let Some(v) = strong_etag.or(self.last_modified.as_ref()) {
                    req = req.header(IF_RANGE, v.as_str());
                }
            }
            let resp = req.send().map_err(|e| classify(&url, &e))?;
            let status = resp.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"));
            match next {
                Some(next) => {
                    tracing::debug!(from = %redact(&url), to = %redact(&next), "redirect");
                    url = next;
                }
                None => {
                    return Err(Failure::Fatal(HttpError::Redirect {
                        url: redact(&url),
                        detail: format!("HTTP {status} without a usable Location"),
                    }))
                }
            }
        }
        Err(Failure::Fatal(HttpError::Redirect {
            url: self.shown(),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    /// One request: a response whose body continues at `self.pos`.
    fn attempt(&mut self) -> Result<Response, Failure> {
        let from = (self.pos > 0).then_some(self.pos);
        let mut resp = self.send(from)?;
        let status = resp.status();
        let code = status.as_u16();
        let status_text = status.to_string();
        match code {
            200 => {
                let (etag, last_modified) = validators(resp.headers());
                let length = resp.content_length();
                // Nothing consumed yet (a retry of the first request): this
                // response is as good as a first one.
                if !self.started || self.pos == 0 {
                    self.started = true;
                    self.etag = etag;
                    self.last_modified = last_modified;
                    self.total = length;
                    self.accepts_ranges = resp
                        .headers()
                        .get(ACCEPT_RANGES)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.to_ascii_lowercase().contains("bytes"));
                } else {
                    self.check_same_object(etag, last_modified, length)?;
                }
                if self.pos > 0 {
                    tracing::info!(offset = self.pos, "server sent the whole object; skipping what was read");
                    skip(&mut resp, self.pos).map_err(|e| Failure::Transient {
                        what: format!("skipping {} bytes already read: {}", self.pos, describe_chain(&e)),
                        retry_after: None,
                    })?;
                }
                Ok(resp)
            }
            206 if from.is_some() => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                let changed = |detail: String| {
                    Failure::Fatal(HttpError::Changed {
                        url: self.shown(),
                        offset: self.pos,
                        detail,
                    })
                };
                let Some((start, total)) = range else {
                    return Err(changed("206 without a usable Content-Range".into()));
                };
                if start != self.pos {
                    return Err(changed(format!("206 starts at byte {start}")));
                }
                if let (Some(have), Some(got)) = (self.total, total) {
                    if have != got {
                        return Err(changed(format!("length is now {got}, was {have}")));
                    }
                }
                // A server that ignores If-Range would send the new object's
                // bytes: its validators still give it away.
                let (etag, last_modified) = validators(resp.headers());
                for (name, was, now) in [
                    ("ETag", &self.etag, etag),
                    ("Last-Modified", &self.last_modified, last_modified),
                ] {
                    if let (Some(was), Some(now)) = (was, now) {
                        if *was != now {
                            return Err(changed(format!(
                                "the object changed ({name} was {was}, is now {now})"
                            )));
                        }
                    }
                }
                // The first response had no length: the range's total now
                // says where the object ends, so a 206 that covers only part
                // of the rest is resumed again instead of taken as the end.
                if self.total.is_none() {
                    self.total = total;
                }
                Ok(resp)
            }
            416 if from.is_some() => match self.total {
                Some(total) => Err(Failure::Fatal(HttpError::Length {
                    url: self.shown(),
                    expected: total,
                    detail: format!(
                        "the connection ended after {} bytes and the server has nothing beyond (HTTP {status_text})",
                        self.pos
                    ),
                })),
                None => Err(Failure::Fatal(HttpError::Status {
                    url: self.shown(),
                    status: status_text,
                })),
            },
            408 | 429 | 500..=599 => Err(Failure::Transient {
                what: format!("HTTP {status_text}"),
                retry_after: retry_after(resp.headers()),
            }),
            401 | 403 => Err(Failure::Fatal(HttpError::Auth {
                url: self.shown(),
                status: status_text,
            })),
            _ => Err(Failure::Fatal(HttpError::Status {
                url: self.shown(),
                status: status_text,
            })),
        }
    }

    /// A 200 on a resume: fine only if the validators show the same object.
    fn check_same_object(
        &self,
        etag: Option<String>,
        last_modified: Option<String>,
        length: Option<u64>,
    ) -> Result<(), Failure> {
        let mut matched = 0;
        let mut differs = Vec::new();
        let mut compare = |name: &str, was: Option<String>, now: Option<String>| {
            if let (Some(was), Some(now)) = (was, now) {
                if was == now {
                    matched += 1;
                } else {
                    differs.push(format!("{name} was {was}, is now {now}"));
                }
            }
        };
        compare("ETag", self.etag.clone(), etag);
        compare("Last-Modified", self.last_modified.clone(), last_modified);
        compare(
            "Content-Length",
            self.total.map(|n| n.to_string()),
            length.map(|n| n.to_string()),
        );
        let detail = if !differs.is_empty() {
            format!("the object changed ({})", differs.join(", "))
        } else if matched == 0 {
            "the server ignored Range and sent no validators to show it is the same object"
                .to_string()
        } else {
            return Ok(());
        };
        Err(Failure::Fatal(HttpError::Changed {
            url: self.shown(),
            offset: self.pos,
            detail,
        }))
    }

    /// After the advertised length was read: checks the server has no more.
    fn probe_beyond_end(&self, total: u64) -> Result<(), HttpError> {
        if !self.accepts_ranges || total == 0 {
            return Ok(());
        }
        let resp = match self.send(Some(total)) {
            Ok(resp) => resp,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient { what, .. }) => {
                tracing::warn!(url = %self.shown(), "end-of-body probe failed: {what}");
                return Ok(());
            }
        };
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let range = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            if let Some((start, Some(real))) = range {
                if start == total && real > total {
                    return Err(HttpError::Length {
                        url: self.shown(),
                        expected: total,
                        detail: format!("the object is longer ({real} bytes)"),
                    });
                }
            }
        }
        Ok(())
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        loop {
            if self.finished {
                return Ok(0);
            }
            if self.body.is_none() {
                self.connect()?;
            }
            let body = self.body.as_mut().expect("connected");
            match body.read(buf) {
                Ok(0) => match self.total {
                    Some(total) if self.pos < total => {
                        let what = format!("connection closed after {} of {total} bytes", self.pos);
                        self.note_failure(what, None)?;
                    }
                    Some(total) => {
                        self.body = None;
                        self.finished = true;
                        self.probe_beyond_end(total)?;
                        return Ok(0);
                    }
                    None => {
                        self.body = None;
                        self.finished = true;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    if let Some(total) = self.total {
                        if self.pos + n as u64 > total {
                            return Err(HttpError::Length {
                                url: self.shown(),
                                expected: total,
                                detail: format!("received more than {total} bytes"),
                            });
                        }
                    }
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.total == Some(self.pos) => {
                    // Every byte arrived; only the end of the response broke
                    // (an HTTP/2 reset, say). Resuming would ask for nothing.
                    tracing::debug!(error = %describe_chain(&e), "error after the whole body");
                    self.body = None;
                    self.finished = true;
                    self.probe_beyond_end(self.pos)?;
                    return Ok(0);
                }
                Err(e) => {
                    let what = format!("read failed at byte {}: {}", self.pos, describe_chain(&e));
                    self.note_failure(what, None)?;
                }
            }
        }
    }
}

impl Read for Transfer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_inner(buf).map_err(io::Error::other)
    }
}

/// Reads and discards `n` bytes of `resp`.
fn skip(resp: &mut Response, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut resp.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {copied} bytes"),
        ));
    }
    Ok(())
}

/// Maps a request error: certificate problems are fatal, the rest transient.
fn classify(url: &Url, e: &reqwest::Error) -> Failure {
    let detail = describe_chain(e);
    if detail.to_ascii_lowercase().contains("certificate") {
        let detail = match super::system_roots::missing_hint() {
            Some(hint) => format!("{detail} ({hint})"),
            None => detail,
        };
        Failure::Fatal(HttpError::Certificate {
            url: redact(url),
            detail,
        })
    } else if e.is_builder() {
        Failure::Fatal(HttpError::InvalidUrl {
            url: redact(url),
            reason: detail,
        })
    } else {
        Failure::Transient {
            what: detail,
            retry_after: None,
        }
    }
}

/// The URL without user info (never print passwords).
fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

fn validators(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    (get(ETAG), get(LAST_MODIFIED))
}

/// `Retry-After`, in either of its forms.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, SystemTime::now())
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 10.2.3); a
/// date in the past means "now".
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `bytes START-END/TOTAL` → (START, TOTAL or None for `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Mon, 30 Nov 2026 12:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 12:00:42 GMT", now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn origin_compares_scheme_host_and_port() {
        let u = |s| Url::parse(s).unwrap();
        assert!(same_origin(
            &u("http://a.example/x"),
            &u("http://A.example:80/y")
        ));
        assert!(!same_origin(
            &u("http://a.example/x"),
            &u("https://a.example/x")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1:8/x"),
            &u("http://localhost:8/x")
        ));
        assert!(!same_origin(&u("http://a:8/x"), &u("http://a:9/x")));
    }

    #[test]
    fn redact_removes_credentials() {
        let u = Url::parse("https://user:secret@host/p").unwrap();
        assert_eq!(redact(&u), "https://host/p");
    }

    #[test]
    fn retry_after_header_is_read() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
