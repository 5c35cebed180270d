//! When to ask again: the retry policy, its backoff, which answers are worth another attempt,
//! and how long a `Retry-After` asks to wait.
//!
//! Pure and shared: the worker's fetch threads and the supervisor's async model (`--model
//! async`) space their attempts by the same rules, so the two models differ only in how they
//! wait.

use std::time::Duration;

use shared::JobSpec;

/// How often to try an id, and how long to wait between tries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first retry waits up to this long; each further one up to twice as long as the last.
    pub base: Duration,
    /// No backoff wait is longer than this.
    pub max: Duration,
    /// No `Retry-After` wait is longer than this.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// The policy a job asks for.
    pub fn of(job: &JobSpec) -> RetryPolicy {
        RetryPolicy {
            max_attempts: job.max_attempts.max(1),
            base: Duration::from_millis(job.backoff_base_ms),
            max: Duration::from_millis(job.backoff_max_ms),
            retry_after_max: Duration::from_millis(job.retry_after_max_ms),
        }
    }

    /// The waits before each retry, exponential with full jitter: the n-th is uniform in
    /// `[0, min(max, base * 2^(n-1))]`. Yields `max_attempts - 1` items.
    pub fn backoff(&self) -> BackoffIter {
        BackoffIter { policy: *self, retry: 0 }
    }
}

/// The waits of a [`RetryPolicy`], one per retry.
#[derive(Debug, Clone)]
pub struct BackoffIter {
    policy: RetryPolicy,
    retry: u32,
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retry + 1 >= self.policy.max_attempts {
            return None;
        }
        let ceiling = self.policy.base.saturating_mul(1u32 << self.retry.min(20)).min(self.policy.max);
        self.retry += 1;
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(fastrand::u64(0..=nanos)))
    }
}

/// Whether an answer with this status is asked for again: 408, 429 and 5xx. Any other is
/// final.
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Reads `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_yields_one_wait_per_retry_within_its_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            retry_after_max: Duration::from_secs(60),
        };
        for _ in 0..200 {
            let waits: Vec<_> = policy.backoff().collect();
            assert_eq!(waits.len(), 7);
            for (n, w) in waits.iter().enumerate() {
                let ceiling = Duration::from_millis((100u64 << n).min(1000));
                assert!(*w <= ceiling, "retry {n} waited {w:?} > {ceiling:?}");
            }
        }
        let one = RetryPolicy { max_attempts: 1, ..policy };
        assert_eq!(one.backoff().count(), 0);
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let past = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).expect("a date");
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
