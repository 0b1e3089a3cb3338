//! What can go wrong on the network, as types: every decision (retry or not,
//! authentication or not) is made on these variants and on the typed causes
//! found by walking an error's chain, never on message text.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use super::display_url::DisplayUrl;

/// A boxed cause.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A network failure. Messages name the URL only in its [`DisplayUrl`] form.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The server answered with a status that is not a success.
    #[error("{url}: HTTP {status}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Status {
        /// Where.
        url: DisplayUrl,
        /// The status code.
        status: u16,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
        /// Error codes from the body (registry JSON errors), when any.
        detail: Option<String>,
    },
    /// The server refused the credentials, or wants some.
    #[error("authentication failed (wrong or missing credentials) for {url}: HTTP {status}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Auth {
        /// Where.
        url: DisplayUrl,
        /// The status code (401 or 403).
        status: u16,
        /// Error codes from the body, when any.
        detail: Option<String>,
    },
    /// TLS failed: an untrusted or invalid certificate, or a handshake error.
    /// `hint` says when the system has no CA certificates at all.
    #[error("TLS with {url} failed{}", .hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Tls {
        /// Where.
        url: DisplayUrl,
        /// Why the system roots could not have helped, if they are missing.
        hint: Option<&'static str>,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The request could not be made or the connection broke.
    #[error("{url}: {what}")]
    Transport {
        /// Where.
        url: DisplayUrl,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// No byte arrived for the stall timeout (the socket stays open).
    #[error("{url}: no data for {}s at byte {offset} (stalled)", after.as_secs())]
    Stalled {
        /// Where.
        url: DisplayUrl,
        /// The stall timeout.
        after: Duration,
        /// Where the transfer stood.
        offset: u64,
    },
    /// The body ended before its length.
    #[error("{url}: the connection closed after {offset} of {expected} bytes")]
    Short {
        /// Where.
        url: DisplayUrl,
        /// Bytes received so far.
        offset: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The body is longer than its length, or cannot be completed.
    #[error("{url}: body does not match its Content-Length {expected}: {detail}")]
    Length {
        /// Where.
        url: DisplayUrl,
        /// The length announced.
        expected: u64,
        /// What was seen.
        detail: String,
    },
    /// The object changed between requests, or cannot be shown to be the same.
    #[error("{url}: cannot resume at byte {offset}: {detail}")]
    Changed {
        /// Where.
        url: DisplayUrl,
        /// Where the resume was to start.
        offset: u64,
        /// Why.
        detail: String,
    },
    /// The server broke the protocol (bad redirect, bad Content-Range, ...).
    #[error("{url}: {detail}")]
    Protocol {
        /// Where.
        url: DisplayUrl,
        /// What was wrong.
        detail: String,
    },
    /// A manifest, token or error body larger than its limit.
    #[error("{url}: the {what} is larger than its size limit of {limit} bytes")]
    TooLarge {
        /// Where.
        url: DisplayUrl,
        /// What the body is (`manifest`, `token response`, ...).
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The retry budget ran out.
    #[error("giving up after {attempts} attempts without progress")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<NetError>,
    },
    /// The import was asked to stop (SIGTERM).
    #[error("the import was stopped by a termination signal")]
    Cancelled,
}

impl NetError {
    /// A failed request or body read from reqwest, classified by its causes:
    /// TLS failures become [`NetError::Tls`], the rest [`NetError::Transport`].
    /// The URL inside reqwest's error is removed (it may carry a query).
    pub fn from_reqwest(url: &DisplayUrl, what: &str, error: reqwest::Error) -> NetError {
        let error = error.without_url();
        if chain_has::<rustls::Error>(&error) {
            return NetError::Tls {
                url: url.clone(),
                hint: crate::source::system_roots::missing_hint(),
                source: Box::new(error),
            };
        }
        NetError::Transport {
            url: url.clone(),
            what: what.to_string(),
            source: Box::new(error),
        }
    }

    /// Whether another attempt may succeed, and after how long at least
    /// (`Retry-After`).
    pub fn retry(&self) -> Retry {
        match self {
            NetError::Status {
                status: 408 | 429 | 500..=599,
                retry_after,
                ..
            } => Retry::After(*retry_after),
            NetError::Transport { source, .. } if !chain_has::<rustls::Error>(&**source) => {
                Retry::After(None)
            }
            NetError::Stalled { .. } | NetError::Short { .. } => Retry::After(None),
            _ => Retry::No,
        }
    }

    /// The error as an `io::Error` for the blocking `Read` side; the NetError
    /// stays reachable with `get_ref`.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            NetError::Short { .. } => io::ErrorKind::UnexpectedEof,
            NetError::Stalled { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// The NetError inside an `io::Error` made by [`into_io`](Self::into_io).
    pub fn in_io(error: &io::Error) -> Option<&NetError> {
        error.get_ref().and_then(|e| e.downcast_ref::<NetError>())
    }
}

/// The verdict of the retry classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Final.
    No,
    /// Worth another attempt, not before the duration when one is given.
    After(Option<Duration>),
}

/// Whether a `T` is somewhere in the chain of `error`. An `io::Error`'s
/// `source()` skips the error it wraps, so that one is looked at as well.
pub fn chain_has<T: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if chain_has::<T>(inner) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> DisplayUrl {
        DisplayUrl::of_spec("https://h/x")
    }

    fn status(code: u16) -> NetError {
        NetError::Status {
            url: url(),
            status: code,
            retry_after: Some(Duration::from_secs(1)),
            detail: None,
        }
    }

    #[test]
    fn statuses_408_429_and_5xx_are_retried_with_retry_after() {
        for code in [408, 429, 500, 502, 503] {
            assert_eq!(
                status(code).retry(),
                Retry::After(Some(Duration::from_secs(1)))
            );
        }
        for code in [400, 404, 410, 416] {
            assert_eq!(status(code).retry(), Retry::No, "{code}");
        }
        let auth = NetError::Auth {
            url: url(),
            status: 401,
            detail: None,
        };
        assert_eq!(auth.retry(), Retry::No);
    }

    #[test]
    fn a_reset_is_retried_and_a_certificate_error_is_not() {
        let reset = NetError::Transport {
            url: url(),
            what: "reading".into(),
            source: Box::new(io::Error::from(io::ErrorKind::ConnectionReset)),
        };
        assert_eq!(reset.retry(), Retry::After(None));
        // A rustls error wrapped in an io::Error wrapped in another error.
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let wrapped = NetError::Transport {
            url: url(),
            what: "connecting".into(),
            source: Box::new(io::Error::other(tls)),
        };
        assert_eq!(wrapped.retry(), Retry::No);
        let stalled = NetError::Stalled {
            url: url(),
            after: Duration::from_secs(1),
            offset: 5,
        };
        assert_eq!(stalled.retry(), Retry::After(None));
        assert_eq!(NetError::Cancelled.retry(), Retry::No);
    }

    #[test]
    fn the_429_message_says_429() {
        assert!(status(429).to_string().contains("HTTP 429"));
    }
}
