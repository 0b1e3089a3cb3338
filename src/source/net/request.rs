//! One GET, as every source sends it: redirects followed by hand (credentials
//! and extra headers only to the origin they were given for), the response's
//! headers awaited under the stall timeout and the cancel token, and the
//! answer turned into an [`Opened`] body or a typed [`NetError`]. Small bodies
//! (manifests, tokens, error bodies) are read with a limit.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_RANGE, ETAG, LAST_MODIFIED, LOCATION,
};
use reqwest::{Response, StatusCode};
use url::Url;

use super::resume::{parse_content_range, Validators};
use super::retry::retry_after;
use super::{DisplayUrl, Net, NetError};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// Largest error body read (for its error codes).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// A body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, NetError>> + Send>>;

/// Where a request goes and what only its origin may see.
#[derive(Clone)]
pub struct Target {
    /// The URL (may hold a query; never shown as is).
    pub url: Url,
    /// Headers for the origin only: credentials, user headers.
    pub origin_headers: HeaderMap,
}

impl Target {
    /// The display form of the URL.
    pub fn shown(&self) -> DisplayUrl {
        DisplayUrl::new(&self.url)
    }
}

/// A successful answer whose body is still to be read.
pub struct Opened {
    /// Whether it is a 206.
    pub partial: bool,
    /// Offset of the first body byte in the object.
    pub start: u64,
    /// Length of the whole object, when known.
    pub total: Option<u64>,
    /// Length of this body, when known.
    pub length: Option<u64>,
    /// The object's validators.
    pub validators: Validators,
    /// Whether the server says it serves ranges.
    pub accepts_ranges: bool,
    /// The body.
    pub body: BodyStream,
}

/// Sends a GET with `extra` headers (sent to every hop), following redirects.
pub async fn get(net: &Net, target: &Target, extra: &HeaderMap) -> Result<Response, NetError> {
    let mut url = target.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let shown = DisplayUrl::new(&url);
        let mut request = net.client.get(url.clone()).headers(extra.clone());
        if same_origin(&url, &target.url) {
            request = request.headers(target.origin_headers.clone());
        }
        let send = async {
            match tokio::time::timeout(net.stall, request.send()).await {
                Ok(result) => {
                    result.map_err(|e| NetError::from_reqwest(&shown, "request failed", e))
                }
                Err(_) => Err(NetError::Stalled {
                    url: shown.clone(),
                    after: net.stall,
                    offset: 0,
                }),
            }
        };
        let response = net.cancel.run(send).await?;
        let status = response.status();
        if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let next = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| url.join(location).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        match next {
            Some(next) => {
                tracing::debug!(from = %shown, to = %DisplayUrl::new(&next), "redirect");
                url = next;
            }
            None => {
                return Err(NetError::Protocol {
                    url: shown,
                    detail: format!("HTTP {status} without a usable Location"),
                })
            }
        }
    }
    Err(NetError::Protocol {
        url: target.shown(),
        detail: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// A 200 or 206 as an [`Opened`]; any other status as its error.
pub async fn open_response(
    net: &Net,
    shown: &DisplayUrl,
    response: Response,
) -> Result<Opened, NetError> {
    let status = response.status().as_u16();
    if !matches!(status, 200 | 206) {
        return Err(status_error(net, shown, response).await);
    }
    let headers = response.headers();
    if let Some(coding) = headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        if !coding.eq_ignore_ascii_case("identity") {
            tracing::debug!(url = %shown, coding, "the server applied a content coding; its bytes are taken as served");
        }
    }
    let validators = validators(headers);
    let accepts_ranges = headers
        .get(ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("bytes"));
    let length = response.content_length();
    let (start, total) = if status == 206 {
        let range = headers
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range)
            .ok_or_else(|| NetError::Protocol {
                url: shown.clone(),
                detail: "206 without a usable Content-Range".into(),
            })?;
        (range.0, range.1)
    } else {
        (0, length)
    };
    Ok(Opened {
        partial: status == 206,
        start,
        total,
        length,
        validators,
        accepts_ranges: accepts_ranges || status == 206,
        body: body_stream(net, shown, response),
    })
}

/// The body of `response` as chunks, each awaited under the stall timeout.
pub fn body_stream(net: &Net, shown: &DisplayUrl, response: Response) -> BodyStream {
    let shown = shown.clone();
    let stall = net.stall;
    let stream = response.bytes_stream();
    Box::pin(futures_util::stream::unfold(
        (stream, shown, 0u64),
        move |(mut stream, shown, offset)| async move {
            match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let next = offset + chunk.len() as u64;
                    Some((Ok(chunk), (stream, shown, next)))
                }
                Ok(Some(Err(e))) => {
                    let error = NetError::from_reqwest(&shown, "reading the body failed", e);
                    Some((Err(error), (stream, shown, offset)))
                }
                Ok(None) => None,
                Err(_) => {
                    let error = NetError::Stalled {
                        url: shown.clone(),
                        after: stall,
                        offset,
                    };
                    Some((Err(error), (stream, shown, offset)))
                }
            }
        },
    ))
}

/// The error for a non-success status: auth, or a status with its
/// `Retry-After` and the registry error codes of its (bounded) body.
pub async fn status_error(net: &Net, shown: &DisplayUrl, response: Response) -> NetError {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let detail = match read_bounded(net, shown, response, "error body", MAX_ERROR_BODY).await {
        Ok(body) => error_codes(&body),
        Err(_) => None,
    };
    match status {
        401 | 403 => NetError::Auth {
            url: shown.clone(),
            status,
            detail,
        },
        _ => NetError::Status {
            url: shown.clone(),
            status,
            retry_after,
            detail,
        },
    }
}

/// Reads a whole (small) body, `what` for messages, failing once it passes
/// `limit` bytes: a larger Content-Length is refused before the body is read,
/// and no more than `limit` bytes of a body without one are ever held.
pub async fn read_bounded(
    net: &Net,
    shown: &DisplayUrl,
    response: Response,
    what: &'static str,
    limit: u64,
) -> Result<Bytes, NetError> {
    let too_large = || NetError::TooLarge {
        url: shown.clone(),
        what,
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = body_stream(net, shown, response);
    let mut out = BytesMut::new();
    while let Some(chunk) = net.cancel.run(async { Ok(body.next().await) }).await? {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// `errors[].code` of a distribution-style JSON error body, joined.
fn error_codes(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let codes: Vec<String> = envelope
        .errors
        .into_iter()
        .map(|e| {
            e.code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect()
        })
        .take(4)
        .collect();
    (!codes.is_empty()).then(|| codes.join(", "))
}

/// ETag and Last-Modified of a response.
pub fn validators(headers: &HeaderMap) -> Validators {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    Validators {
        etag: get(ETAG),
        last_modified: get(LAST_MODIFIED),
    }
}

/// Same scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn registry_error_codes_are_read_from_the_body() {
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        assert_eq!(error_codes(body).as_deref(), Some("TOOMANYREQUESTS"));
        assert_eq!(error_codes(b"<html>"), None);
    }
}
