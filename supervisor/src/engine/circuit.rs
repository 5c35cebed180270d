//! An outage is not the ids' fault: when nearly every request fails, the API is down, and the
//! fleet stops spending the ids' attempts on it.
//!
//! [`Health`] counts, over the last [`WINDOW`], the requests that ended and the failures among
//! them: no answer (refused, reset, timed out), a 5xx, a 408. When [`OPEN_SHARE`] of at least
//! [`ENOUGH`] failed, the circuit opens ([`Circuit`]): the fleet sends nothing but probes, one
//! request at a time, [`PROBE_FIRST`] after it opened, then twice as long after each failed
//! probe up to [`PROBE_MAX`]. An attempt that met the open circuit (sent as a probe, or failed
//! while it was open) does not count against its id. The first answer that is not a failure
//! closes the circuit, and the fleet resumes at once at the rate and limit it had.
//!
//! Ids that fail on their own look the same as an outage once they are the only ones left:
//! after `--outage-max` the circuit no longer holds the ids' attempts: probes count, and such
//! ids end as failures.
//!
//! An API that has not answered at all in this run (every connection refused, every connect
//! timing out) is not down: it may never have been up, at this address. [`FirstAnswer`] keeps
//! how its requests fail; the fleet says so within seconds (`no answer yet from
//! 127.0.0.1:18999: connection refused (for 30s)`), holds the ids' attempts as an open circuit
//! does, and gives the run up after `--wait-for-api` with nothing stored. Its first answer, of
//! any status, ends that.
//!
//! A 429 is not a failure here: a server that refuses is up, and throttling is answered by
//! [`super::throttle`]'s rules. A 503 is both: one in a hundred is load shed, all of them is an
//! outage. So hystrix and resilience4j open theirs on a failure rate over a sliding window with
//! a minimum number of calls, and probe half-open.
//!
//! Pure, with the clock passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shared::{api_failure, Traffic};

/// What the failure share is counted over, at least. Short: every moment before the circuit
/// opens is attempts spent by every id in flight (at 1,000 requests a second, a window of a
/// second let 960 requests meet an outage before the circuit opened).
pub const WINDOW: Duration = Duration::from_millis(250);
/// When [`WINDOW`] holds fewer than [`ENOUGH`] requests (a slow rate, requests that take
/// seconds to time out), the count goes back this far to find them.
pub const LOOKBACK: Duration = Duration::from_secs(10);
/// At least this many requests to tell an outage from bad luck.
pub const ENOUGH: u64 = 10;
/// This share of failures means the API is down.
pub const OPEN_SHARE: f64 = 0.9;
/// The first probe goes this long after the circuit opens.
pub const PROBE_FIRST: Duration = Duration::from_millis(250);
/// Probes are never further apart than this: the fleet is back at full speed within about
/// this long of the API's return.
pub const PROBE_MAX: Duration = Duration::from_secs(1);

/// What failed: the most common failure over the window, for the words that say why the
/// circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer: refused, reset, timed out.
    NoAnswer,
    /// An answer with this status (5xx or 408).
    Status(u16),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoAnswer => f.write_str("no answer (refused, reset or timed out)"),
            Failure::Status(s) => write!(f, "HTTP {s}"),
        }
    }
}

/// One worker's report, as far as health goes.
#[derive(Debug, Clone, Copy)]
struct Report {
    at: Instant,
    requests: u64,
    failed: u64,
    /// Requests with no answer.
    no_answer: u64,
    /// The most common failing status and its count.
    top: Option<(u16, u64)>,
}

/// The recent requests and failures among them. See the module documentation.
#[derive(Debug, Default)]
pub struct Health {
    reports: VecDeque<Report>,
}

impl Health {
    /// Counts a worker's report.
    pub fn add(&mut self, now: Instant, t: &Traffic) {
        let answered: u64 = t.statuses.iter().map(|&(_, n)| u64::from(n)).sum();
        let requests = u64::from(t.requests);
        let no_answer = requests.saturating_sub(answered);
        let failing = t.statuses.iter().filter(|(s, _)| api_failure(*s));
        let failed = no_answer + failing.clone().map(|&(_, n)| u64::from(n)).sum::<u64>();
        let top = failing.max_by_key(|(_, n)| *n).map(|&(s, n)| (s, u64::from(n)));
        if requests > 0 {
            self.reports.push_back(Report { at: now, requests, failed, no_answer, top });
        }
        while self.reports.front().is_some_and(|r| now.saturating_duration_since(r.at) >= LOOKBACK) {
            self.reports.pop_front();
        }
    }

    /// Forgets everything: the circuit closed, and what came before says nothing of now.
    pub fn clear(&mut self) {
        self.reports.clear();
    }

    /// The share of failures over [`WINDOW`] (or back as far as it takes to reach [`ENOUGH`]
    /// requests, within [`LOOKBACK`]), and the most common failure, once there are enough.
    pub fn failing(&self, now: Instant) -> Option<(f64, Failure)> {
        let (mut requests, mut failed, mut no_answer) = (0, 0, 0);
        let mut top: Option<(u16, u64)> = None;
        for r in self.reports.iter().rev() {
            let age = now.saturating_duration_since(r.at);
            if age >= LOOKBACK || (age >= WINDOW && requests >= ENOUGH) {
                break;
            }
            requests += r.requests;
            failed += r.failed;
            no_answer += r.no_answer;
            if let Some((s, n)) = r.top {
                top = Some(match top {
                    Some((t, m)) if t == s => (t, m + n),
                    Some((t, m)) if m >= n => (t, m),
                    _ => (s, n),
                });
            }
        }
        if requests < ENOUGH {
            return None;
        }
        let failure = match top {
            Some((s, n)) if n > no_answer => Failure::Status(s),
            _ => Failure::NoAnswer,
        };
        Some((failed as f64 / requests as f64, failure))
    }

    /// Whether the API is down, by the recent requests: see the module documentation.
    pub fn down(&self, now: Instant) -> Option<(f64, Failure)> {
        self.failing(now).filter(|&(share, _)| share >= OPEN_SHARE)
    }
}

/// A run with requests unanswered this long, and no HTTP answer yet, is said to be so, once.
pub const WARN_AFTER: Duration = Duration::from_secs(2);
/// ...and at the latest this long after it began, even when no request has failed yet (every
/// connect waits its timeout).
pub const WARN_LATEST: Duration = Duration::from_secs(4);

/// Whether the API has answered in this run and, until it has, how its requests fail. See the
/// module documentation.
#[derive(Debug)]
pub struct FirstAnswer {
    /// The API's host and port, as the job's URL names them.
    api: String,
    /// When the run began.
    since: Instant,
    /// Whether any request got an HTTP answer.
    heard: bool,
    /// Whether any request ended, answered or not.
    tried: bool,
    /// How the latest unanswered request failed, in a few words.
    error: Option<String>,
    warned: bool,
}

impl FirstAnswer {
    /// A run against `api` that began at `now`.
    pub fn new(api: String, now: Instant) -> FirstAnswer {
        FirstAnswer { api, since: now, heard: false, tried: false, error: None, warned: false }
    }

    /// Whether the API has answered in this run.
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// Takes a worker's report.
    pub fn saw(&mut self, t: &Traffic) {
        if !t.statuses.is_empty() {
            self.heard = true;
        }
        self.tried |= t.requests > 0;
        if let Some(e) = &t.unanswered {
            self.error = Some(e.clone());
        }
    }

    /// `no answer yet from 127.0.0.1:18999: connection refused (for 30s)`.
    pub fn describe(&self, now: Instant) -> String {
        let waited = now.saturating_duration_since(self.since).as_secs();
        match &self.error {
            Some(e) => format!("no answer yet from {}: {e} (for {waited}s)", self.api),
            None => format!("no answer yet from {} (for {waited}s)", self.api),
        }
    }

    /// The warning to give at `now`, once: the API has not answered, and requests have failed
    /// for [`WARN_AFTER`] (or the run is [`WARN_LATEST`] old).
    pub fn warning(&mut self, now: Instant) -> Option<String> {
        let age = now.saturating_duration_since(self.since);
        let due = (age >= WARN_AFTER && self.tried) || age >= WARN_LATEST;
        if self.heard || self.warned || !due {
            return None;
        }
        self.warned = true;
        Some(self.describe(now))
    }

    /// Whether the run has waited `limit` without an answer, its requests failing (refused,
    /// timing out: a request still waiting for a slow answer under a long `--io-timeout` is
    /// not a failure, and the run goes on waiting).
    pub fn waited_out(&self, now: Instant, limit: Duration) -> bool {
        !self.heard && self.error.is_some() && now.saturating_duration_since(self.since) >= limit
    }

    /// How the latest unanswered request failed, if one has.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The API, as `host:port`.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// Whether the fleet has been told the API does not answer (and so keeps saying so).
    pub fn warned(&self) -> bool {
        self.warned && !self.heard
    }
}

/// An open circuit: since when, why, and when the next probe goes.
#[derive(Debug, Clone)]
pub struct Circuit {
    /// When it opened.
    pub since: Instant,
    /// The share of failures that opened it.
    pub share: f64,
    /// The most common failure then.
    pub failure: Failure,
    /// Probes sent.
    pub probes: u32,
    next_probe: Instant,
    /// Whether it still holds the ids' attempts (until `--outage-max`).
    pub holds_attempts: bool,
    /// Opened before the API had answered at all in this run: it closes on the first answer
    /// of any status, and holds the attempts until the run gives up (`--wait-for-api`).
    pub unreached: bool,
}

impl Circuit {
    /// Opens at `now`, for `share` of requests failing, most of them with `failure`.
    pub fn open(now: Instant, share: f64, failure: Failure) -> Circuit {
        Circuit {
            since: now,
            share,
            failure,
            probes: 0,
            next_probe: now + PROBE_FIRST,
            holds_attempts: true,
            unreached: false,
        }
    }

    /// When the next probe is due.
    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// A probe went at `now`: the next one goes an interval later.
    pub fn probed(&mut self, now: Instant) {
        self.probes += 1;
        self.next_probe = now + self.interval();
    }

    /// The wait between probes now: [`PROBE_FIRST`], doubled with each probe, up to
    /// [`PROBE_MAX`].
    pub fn interval(&self) -> Duration {
        PROBE_FIRST.saturating_mul(1 << self.probes.min(16)).min(PROBE_MAX)
    }

    /// Pushes the next probe to `at` at the earliest (a server's `Retry-After`).
    pub fn not_before(&mut self, at: Instant) {
        self.next_probe = self.next_probe.max(at);
    }

    /// What holds the fleet back, in words: `circuit open: 100% of requests failed (HTTP 503)
    /// for 20s, probing every 1s`.
    pub fn describe(&self, now: Instant) -> String {
        let open = now.saturating_duration_since(self.since).as_secs();
        format!(
            "circuit open: {:.0}% of requests failed ({}) for {open}s, probing every {}",
            100.0 * self.share,
            self.failure,
            humantime::format_duration(Duration::from_millis(self.interval().as_millis() as u64))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn traffic(requests: u32, statuses: &[(u16, u32)]) -> Traffic {
        Traffic { requests, statuses: statuses.to_vec(), ..Traffic::default() }
    }

    #[test]
    fn nearly_all_failing_is_down_and_a_few_failures_or_refusals_are_not() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.add(t0, &traffic(5, &[(200, 5)]));
        assert_eq!(h.down(t0), None, "5 requests are not enough to tell");
        h.add(t0 + 10 * MS, &traffic(95, &[(503, 90)]));
        let (share, failure) = h.down(t0 + 10 * MS).expect("95 of 100 failed");
        assert!((share - 0.95).abs() < 1e-9);
        assert_eq!(failure, Failure::Status(503), "90 answered 503, 5 not answered at all");
        let mut h = Health::default();
        h.add(t0, &traffic(100, &[(200, 90), (500, 4), (503, 1), (429, 5)]));
        assert_eq!(h.down(t0).map(|d| d.0), None, "4% 500 and 1% 503 is an API with bad luck");
        assert_eq!(h.failing(t0).map(|d| d.0), Some(0.05), "429s are refusals, not failures");
        let mut h = Health::default();
        h.add(t0, &traffic(50, &[(429, 50)]));
        assert_eq!(h.down(t0), None, "a server that refuses everything is up");
        h.add(t0, &traffic(20, &[(200, 2)]));
        assert_eq!(h.down(t0).map(|d| d.1), None, "18 of 70 failed");
    }

    #[test]
    fn the_window_reaches_back_for_enough_requests_and_no_further_than_the_lookback() {
        let t0 = Instant::now();
        let mut h = Health::default();
        // One request a second, every one refused: ten seconds make enough.
        for s in 0..9 {
            h.add(t0 + Duration::from_secs(s), &traffic(1, &[]));
        }
        assert_eq!(h.down(t0 + Duration::from_secs(8)), None, "9 requests");
        h.add(t0 + Duration::from_millis(9500), &traffic(1, &[]));
        let (share, failure) = h.down(t0 + Duration::from_millis(9500)).expect("10 within 10 s");
        assert_eq!((share, failure), (1.0, Failure::NoAnswer));
        assert_eq!(h.down(t0 + Duration::from_millis(10_200)), None, "the first has aged out");
        // At a high rate only the last second counts: the healthy answers before it do not
        // hide an outage that began.
        let mut h = Health::default();
        h.add(t0, &traffic(5000, &[(200, 5000)]));
        h.add(t0 + 1100 * MS, &traffic(200, &[]));
        assert_eq!(h.down(t0 + 1100 * MS).map(|d| d.0), Some(1.0));
        h.clear();
        assert_eq!(h.failing(t0 + 1100 * MS), None);
    }

    #[test]
    fn an_api_that_never_answered_is_named_once_with_how_it_fails_until_it_answers() {
        let t0 = Instant::now();
        let mut f = FirstAnswer::new("127.0.0.1:18999".into(), t0);
        assert_eq!(f.warning(t0 + WARN_AFTER), None, "nothing tried, not yet the latest");
        let refused =
            Traffic { requests: 8, unanswered: Some("connection refused".into()), ..Traffic::default() };
        f.saw(&refused);
        assert_eq!(f.warning(t0 + WARN_AFTER - MS), None);
        assert_eq!(
            f.warning(t0 + WARN_AFTER).as_deref(),
            Some("no answer yet from 127.0.0.1:18999: connection refused (for 2s)")
        );
        assert_eq!(f.warning(t0 + 10 * WARN_AFTER), None, "said once");
        assert!(f.warned());
        assert_eq!(
            f.describe(t0 + Duration::from_secs(30)),
            "no answer yet from 127.0.0.1:18999: connection refused (for 30s)"
        );
        assert!(!f.waited_out(t0 + Duration::from_secs(59), Duration::from_secs(60)));
        assert!(f.waited_out(t0 + Duration::from_secs(60), Duration::from_secs(60)));
        f.saw(&traffic(1, &[(503, 1)]));
        assert!(f.heard() && !f.warned(), "an answer of any status");
        assert!(!f.waited_out(t0 + Duration::from_secs(600), Duration::from_secs(60)));
        // Connects that wait their timeout: said at the latest, with no error to name yet.
        let mut slow = FirstAnswer::new("10.0.0.1:80".into(), t0);
        assert_eq!(
            slow.warning(t0 + WARN_LATEST).as_deref(),
            Some("no answer yet from 10.0.0.1:80 (for 4s)")
        );
        // Requests still in flight (a slow answer under a long --io-timeout) are waited for.
        assert!(
            !slow.waited_out(t0 + Duration::from_secs(600), Duration::from_secs(60)),
            "nothing failed yet"
        );
    }

    #[test]
    fn probes_back_off_to_a_ceiling_and_wait_for_a_servers_retry_after() {
        let t0 = Instant::now();
        let mut c = Circuit::open(t0, 1.0, Failure::Status(503));
        assert_eq!(c.next_probe(), t0 + PROBE_FIRST);
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            at = c.next_probe();
            c.probed(at);
            gaps.push(c.next_probe() - at);
        }
        assert_eq!(gaps, [500 * MS, 1000 * MS, 1000 * MS, 1000 * MS, 1000 * MS]);
        c.not_before(at + 3000 * MS);
        assert_eq!(c.next_probe(), at + 3000 * MS);
        assert_eq!(
            c.describe(t0 + Duration::from_secs(20)),
            "circuit open: 100% of requests failed (HTTP 503) for 20s, probing every 1s"
        );
    }
}
