//! The one retry policy: capped exponential backoff, `Retry-After` honoured up
//! to a cap, a budget of consecutive failures without progress. What is worth
//! retrying is [`NetError::retry`]'s verdict.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{Net, NetError, Retry};

/// Backoff and budget.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Consecutive failures without a byte of progress before giving up.
    pub max_failures: u32,
    /// First backoff, doubled per failure.
    pub backoff_start: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Largest `Retry-After` obeyed.
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_failures: 8,
            backoff_start: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            retry_after_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `failures + 1` (`failures` >= 1).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .backoff_start
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.backoff_max);
        retry_after.map_or(backoff, |r| r.min(self.retry_after_max))
    }

    /// After a failure (the `failures`-th in a row): the error to give up
    /// with, or `Ok(wait)` for another attempt.
    pub fn next(&self, failures: u32, error: NetError) -> Result<(Duration, NetError), NetError> {
        match error.retry() {
            Retry::No => Err(error),
            Retry::After(_) if failures >= self.max_failures => Err(NetError::GaveUp {
                attempts: failures,
                last: Box::new(error),
            }),
            Retry::After(at_least) => Ok((self.delay(failures, at_least), error)),
        }
    }
}

/// Runs `op` until it succeeds, fails for good, or the budget runs out,
/// sleeping (cancellably) between attempts.
pub async fn with_retries<T, F, Fut>(net: &Net, mut op: F) -> Result<T, NetError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let mut failures = 0;
    loop {
        match net.cancel.run(op()).await {
            Ok(value) => return Ok(value),
            Err(error) => {
                failures += 1;
                let (wait, error) = net.policy.next(failures, error)?;
                tracing::warn!(
                    attempt = failures,
                    "{}; retrying in {wait:?}",
                    crate::error::describe_chain(&error)
                );
                net.cancel.sleep(wait).await?;
            }
        }
    }
}

/// `Retry-After`, in either of its forms.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, SystemTime::now())
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 10.2.3); a
/// date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_retry_after_wins() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_millis(200));
        assert_eq!(p.delay(2, None), Duration::from_millis(400));
        assert_eq!(p.delay(30, None), Duration::from_secs(5));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(900))),
            Duration::from_secs(60)
        );
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
}
