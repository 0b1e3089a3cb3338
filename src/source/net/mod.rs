//! The network layer under the http, S3 and registry sources: one runtime
//! ([`runtime`]), one TLS and client policy ([`tls`]), one request path with
//! hand-followed redirects and bounded small bodies ([`request`]), one retry
//! policy classified on typed errors ([`retry`], [`error`]), one resume
//! mechanism ([`resume`], [`transfer`], chunks gathered by [`gather`]), one
//! stall timeout, one cancel token ([`cancel`]), one display-safe URL
//! ([`display_url`]), and the blocking, optionally parallel, reader the
//! pipeline pulls from ([`reader`]), which goes parallel by itself only where
//! that proves faster ([`steer`]).

pub mod cancel;
pub mod display_url;
pub mod error;
pub mod gather;
pub mod reader;
pub mod request;
pub mod resume;
pub mod retry;
pub mod runtime;
pub mod steer;
pub mod tls;
pub mod transfer;

use std::time::Duration;

pub use cancel::Cancel;
pub use display_url::DisplayUrl;
pub use error::{NetError, Retry};
pub use reader::{block_on, BodyReader, Plan};
pub use retry::RetryPolicy;
pub use runtime::runtime;
pub use tls::{CaError, CaFiles, TlsPolicy};

use super::SourceOptions;
use crate::progress::Progress;

/// A read that waits this long for a byte counts as a dropped connection.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request of one source shares.
pub struct Net {
    /// The client (TLS policy, HTTP/1.1, no automatic redirects).
    pub client: reqwest::Client,
    /// Backoff and budget.
    pub policy: RetryPolicy,
    /// Stops every wait.
    pub cancel: Cancel,
    /// Longest wait for response headers or a body chunk.
    pub stall: Duration,
}

impl Net {
    /// The network context of a source with `options`, cancelled with the
    /// import (`progress`'s flag).
    pub fn new(
        options: &SourceOptions,
        files: CaFiles,
        progress: &Progress,
    ) -> Result<Net, CaError> {
        Ok(Net {
            client: TlsPolicy::of(options, files).client()?,
            policy: RetryPolicy::default(),
            cancel: Cancel::from_flag(progress.cancel_flag()),
            stall: options.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT),
        })
    }

    /// The download plan for `options`.
    pub fn plan(options: &SourceOptions) -> Plan {
        Plan {
            connections: options
                .connections
                .unwrap_or(reader::DEFAULT_CONNECTIONS)
                .max(1),
            asked: options.connections.is_some(),
            probe_end: true,
        }
    }
}
