//! When to ask again: the retry policy, its backoff, the retry budget, which answers are worth
//! another attempt, and how long a `Retry-After` asks to wait.
//!
//! Pure and shared: the worker's fetch threads and the supervisor's async model (`--model
//! async`) space their attempts by the same rules, so the two models differ only in how they
//! wait.

use std::time::{Duration, Instant};

use shared::{JobSpec, RETRY_BUDGET_WINDOW};

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

    /// The wait before a retry whose request the server told to wait `told`: that long, spread
    /// by up to one first backoff (`base`) so requests told the same time do not come back
    /// together, or the id's own backoff `jittered` if that is longer. Not the two added: the
    /// server has named its time, and an id refused twice in a row would otherwise wait its
    /// growing backoff on top of each `Retry-After`.
    pub fn after_told(&self, told: Duration, jittered: Duration) -> Duration {
        (told + jitter(self.base)).max(jittered)
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
        Some(jitter(ceiling))
    }
}

/// A wait uniform in `[0, ceiling]` (full jitter).
fn jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Seconds in [`RETRY_BUDGET_WINDOW`], each counted apart.
const BUDGET_SECS: usize = RETRY_BUDGET_WINDOW.as_secs() as usize;

/// Retries held to a share of first attempts, as Finagle's `RetryBudget`, Envoy's retry budgets
/// and the AWS SDKs' retry quota do: over the last [`RETRY_BUDGET_WINDOW`], a worker retries at
/// most `pct`% as often as it makes first attempts, plus a floor a minute that is always
/// allowed (so a worker with few ids can still retry them). A failing API is then never sent
/// much more than a healthy one: with every answer failing, eight attempts an id would be eight
/// times the load. A retry past the budget waits for it; it is not given up. Clock passed in.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    share: f64,
    /// Retries allowed over the window whatever the first attempts.
    floor: f64,
    origin: Instant,
    /// First attempts and retries in each second of the window, by second since `origin`
    /// modulo its length.
    secs: [(u32, u32); BUDGET_SECS],
    /// The second the newest slot counts.
    newest: u64,
}

impl RetryBudget {
    /// A budget of `pct`% with a floor of `floor_per_min` retries a minute, from `now`.
    pub fn new(pct: u32, floor_per_min: u32, now: Instant) -> RetryBudget {
        RetryBudget {
            share: f64::from(pct) / 100.0,
            floor: f64::from(floor_per_min) * RETRY_BUDGET_WINDOW.as_secs_f64() / 60.0,
            origin: now,
            secs: [(0, 0); BUDGET_SECS],
            newest: 0,
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (u32, u32) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        if sec > self.newest {
            for s in (self.newest + 1..=sec).take(BUDGET_SECS) {
                self.secs[s as usize % BUDGET_SECS] = (0, 0);
            }
            self.newest = sec;
        }
        &mut self.secs[self.newest as usize % BUDGET_SECS]
    }

    /// A first attempt at `now`: it adds to what may be retried.
    pub fn first(&mut self, now: Instant) {
        self.slot(now).0 += 1;
    }

    /// Takes a retry at `now` if the budget has one.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.slot(now);
        let (firsts, retries) =
            self.secs.iter().fold((0u64, 0u64), |(f, r), &(a, b)| (f + u64::from(a), r + u64::from(b)));
        if (retries + 1) as f64 > self.share * firsts as f64 + self.floor {
            return false;
        }
        self.slot(now).1 += 1;
        true
    }

    /// How long until the window moves on and a retry may fit: to the next second.
    pub fn next_chance(&self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.origin);
        Duration::from_secs(since.as_secs() + 1) - since
    }
}

/// Whether an answer with this status is asked for again: 408, 429 and 5xx. Any other is
/// final.
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Reads `Retry-After`: delay-seconds (possibly fractional, as Shopify writes `2.0`) or an
/// HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
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
    fn a_retry_told_to_wait_waits_that_spread_by_one_base_or_its_own_longer_backoff() {
        let ms = Duration::from_millis;
        let policy =
            RetryPolicy { max_attempts: 8, base: ms(100), max: ms(10_000), retry_after_max: ms(60_000) };
        for _ in 0..200 {
            let w = policy.after_told(ms(1000), ms(50));
            assert!((ms(1000)..=ms(1100)).contains(&w), "{w:?}");
            let w = policy.after_told(ms(1000), ms(3000));
            assert_eq!(w, ms(3000), "its own backoff is longer");
        }
        let waits: Vec<_> = (0..200).map(|_| policy.after_told(ms(1000), Duration::ZERO)).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "spread, not all at once");
    }

    #[test]
    fn retries_are_held_to_a_share_of_first_attempts_over_the_window_plus_a_floor() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        // 20%, and 6 a minute: one retry over the 10 s window whatever the first attempts.
        let mut b = RetryBudget::new(20, 6, t0);
        assert!(b.try_retry(t0), "the floor");
        assert!(!b.try_retry(t0), "the floor is spent");
        for _ in 0..50 {
            b.first(t0);
        }
        let taken = (0..20).filter(|_| b.try_retry(t0 + sec / 2)).count();
        assert_eq!(taken, 10, "20% of 50, plus the floor of 1, less the 1 taken");
        assert!(b.next_chance(t0 + sec / 2) == sec / 2);
        // Ten seconds on, the first attempts and the retries have left the window.
        let later = t0 + RETRY_BUDGET_WINDOW + sec;
        assert!(b.try_retry(later), "the floor again");
        assert!(!b.try_retry(later));
        let mut none = RetryBudget::new(0, 0, t0);
        none.first(t0);
        assert!(!none.try_retry(t0), "a budget of 0% and no floor allows no retry");
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
        assert_eq!(parse_retry_after("2.0"), Some(Duration::from_secs(2)), "Shopify's");
        assert_eq!(parse_retry_after("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("-1"), None);
    }
}
