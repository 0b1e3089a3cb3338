//! The cancellation token every network wait watches: connects, response
//! headers, body reads, stall timers and backoff sleeps all end within
//! [`POLL`] of the flag being set (by the SIGTERM handler, through
//! [`Progress`](crate::progress::Progress)), with [`NetError::Cancelled`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::NetError;

/// How often a wait looks at the flag.
pub const POLL: Duration = Duration::from_millis(50);

/// A shared stop flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Watches `flag` (the import's cancel flag).
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Cancel(flag)
    }

    /// Whether the stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Resolves once the stop is asked for.
    pub async fn cancelled(&self) {
        while !self.is_cancelled() {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `work` unless the stop comes first.
    pub async fn run<T>(
        &self,
        work: impl Future<Output = Result<T, NetError>>,
    ) -> Result<T, NetError> {
        tokio::select! {
            biased;
            _ = self.cancelled() => Err(NetError::Cancelled),
            result = work => result,
        }
    }

    /// Sleeps for `duration`, or less when the stop comes first.
    pub async fn sleep(&self, duration: Duration) -> Result<(), NetError> {
        self.run(async {
            tokio::time::sleep(duration).await;
            Ok(())
        })
        .await
    }
}
