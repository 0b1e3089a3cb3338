//! http(s) source: one object fetched with GETs on the shared network layer
//! ([`super::net`]) and read as a blocking, forward-only stream.
//!
//! - TLS: system roots plus every certificate of every non-dot file of
//!   `--ca-dir` and `--proxy-ca-dir`; `--insecure` skips verification.
//! - Proxies from `http_proxy`/`https_proxy`/`all_proxy`/`no_proxy` (reqwest's
//!   system proxy matcher).
//! - Basic-auth credentials and `--header`s go only to the origin of the URL,
//!   never to another host a redirect names.
//! - Drops, resets, stalls, 408/429/5xx are retried and resumed by the layer
//!   (`Range` + `If-Range`, validators checked); a server without ranges is
//!   re-read and the delivered bytes skipped, when it is provably the same
//!   object. A large object on a server that honours ranges is fetched over
//!   `--connections` connections.
//! - A body longer than its Content-Length is an error (probed at its end).

use std::io;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use url::Url;

use super::net::request::{self, Opened, Target};
use super::net::resume::Identity;
use super::net::transfer::{open_first, OpenFuture, Opener};
use super::net::{block_on, BodyReader, CaError, CaFiles, DisplayUrl, Net, NetError};
use super::SourceOptions;
use crate::progress::Progress;

/// Errors of the http source.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The spec is not a usable http(s) URL.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The spec, without credentials or query.
        url: DisplayUrl,
        /// Why.
        reason: String,
    },
    /// A CA certificate file could not be used.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A `--header` is not a valid header.
    #[error("header {name:?}: {reason}")]
    Header {
        /// The header name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The network runtime could not run.
    #[error("http source: {0}")]
    Runtime(#[source] io::Error),
    /// The request failed for good.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Opens `spec`: sends the first GET (retrying transient failures), so that
/// bad URLs, statuses, credentials and certificates fail here, and returns the
/// body as a resuming reader.
pub fn open(
    spec: &str,
    options: &SourceOptions,
    progress: &Arc<Progress>,
) -> Result<BodyReader, HttpError> {
    let url = Url::parse(spec).map_err(|e| HttpError::InvalidUrl {
        url: DisplayUrl::of_spec(spec),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(HttpError::InvalidUrl {
            url: DisplayUrl::new(&url),
            reason: "expected http(s)://host/path".into(),
        });
    }
    let net = Arc::new(Net::new(options, CaFiles::Any, progress)?);
    let target = Target {
        origin_headers: origin_headers(&url, options)?,
        url,
    };
    let opener: Arc<dyn Opener> = Arc::new(HttpOpener {
        net: net.clone(),
        target,
    });
    let first = {
        let (net, opener) = (net.clone(), opener.clone());
        block_on(async move { open_first(&net, &*opener).await }).map_err(HttpError::Runtime)??
    };
    if let Some(total) = first.total {
        progress.set_source_total(total);
    }
    BodyReader::start(net, opener, first, Net::plan(options)).map_err(HttpError::Runtime)
}

/// Basic auth (from the options, else from the URL's user info) and the
/// `--header`s.
fn origin_headers(url: &Url, options: &SourceOptions) -> Result<HeaderMap, HttpError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &options.headers {
        let bad = |reason: String| HttpError::Header {
            name: name.clone(),
            reason,
        };
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let mut value = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
        value.set_sensitive(true);
        headers.append(header, value);
    }
    let user = options
        .username
        .clone()
        .or_else(|| (!url.username().is_empty()).then(|| url.username().to_string()));
    if let Some(user) = user {
        let pass = options
            .password
            .clone()
            .or_else(|| url.password().map(str::to_string));
        headers.insert(AUTHORIZATION, basic_auth(&user, pass.as_deref()));
    }
    Ok(headers)
}

/// An `Authorization: Basic` value, marked sensitive.
pub fn basic_auth(user: &str, pass: Option<&str>) -> HeaderValue {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{user}:{}", pass.unwrap_or_default()));
    let mut value = HeaderValue::from_str(&format!("Basic {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// GETs of the URL.
struct HttpOpener {
    net: Arc<Net>,
    target: Target,
}

impl Opener for HttpOpener {
    fn open<'a>(&'a self, identity: &'a Identity, from: u64, to: Option<u64>) -> OpenFuture<'a> {
        Box::pin(async move {
            let shown = self.target.shown();
            let headers = identity.range_headers(from, to);
            let response = request::get(&self.net, &self.target, &headers).await?;
            let opened: Opened = request::open_response(&self.net, &shown, response).await?;
            Ok(opened)
        })
    }

    fn shown(&self) -> DisplayUrl {
        self.target.shown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_base64() {
        assert_eq!(basic_auth("u", Some("p")).to_str().unwrap(), "Basic dTpw");
    }

    #[test]
    fn an_unparsable_url_is_shown_without_its_credentials() {
        let options = SourceOptions::default();
        let progress = Arc::new(Progress::default());
        let error = open("http://user:pa55@[::1/x?token=t", &options, &progress)
            .err()
            .unwrap()
            .to_string();
        assert!(
            !error.contains("pa55") && !error.contains("token"),
            "{error}"
        );
    }
}
