//! Throttling answered in proportion: what the recent answers say, and the rate the fleet
//! backs off to when a server throttles it.
//!
//! A 429 or 503 says one of two things. **The client as a whole is limited**: the limit is
//! announced used up, or a large share of the recent answers are refusals ([`FLEET_SHARE`] of
//! at least [`ENOUGH`] over [`WINDOW`]), or the server asks for a wait too long to be one
//! request's bad luck ([`LONG_WAIT`]). Then the fleet pauses until then, as the server asked.
//! **Sporadic throttling**: a gateway shedding a little load, one hot backend of many. Then
//! only the request that met it waits its `Retry-After` before its retry, and the fleet does
//! not stop.
//!
//! When refusals pass [`BACKOFF_SHARE`] of the recent answers, unless the rate is `--rate`'s or
//! the server's own announcement, the fleet's *rate* backs off ([`AdaptiveRate`]): to 0.7 of
//! the rate of answers it was measured getting (refusals left out) when they came, then back up
//! along a cubic curve, as the AWS SDKs' adaptive retry mode does
//! (a client-side token bucket, the measured send rate, 0.7x on a throttle, CUBIC growth). A
//! concurrency limit cannot hold a rate: against an API that answers in a fraction of a
//! millisecond, four requests in flight are thousands a second.
//!
//! Decisions come from numbers over a window, not from single events, and the clock is passed
//! in, so the rules are tested in microseconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the recent answers are counted over.
pub const WINDOW: Duration = Duration::from_secs(2);
/// At least this many requests in [`WINDOW`] to tell a share from bad luck.
pub const ENOUGH: u64 = 10;
/// This share of refusals over [`WINDOW`] means the client as a whole is limited.
pub const FLEET_SHARE: f64 = 0.10;
/// This share of refusals over [`WINDOW`] backs the rate off. Below it they are sporadic: they
/// come whatever the rate (1% of requests shed by a gateway), and backing off from them would
/// only ratchet the rate down, refusal after refusal.
pub const BACKOFF_SHARE: f64 = 0.02;
/// A server wait this long is not one request's bad luck: the whole client is told to wait.
pub const LONG_WAIT: Duration = Duration::from_secs(10);
/// The rate a throttle backs off to, as a share of the rate measured.
pub const BACKOFF: f64 = 0.7;
/// How long the rate takes to climb back to where it was throttled (the cubic's plateau).
pub const RECOVERY: Duration = Duration::from_secs(2);
/// After a back-off, the next decision waits for a whole [`WINDOW`] of answers to requests sent
/// since, and for the rate to have climbed back ([`RECOVERY`]): refusals that come whatever the
/// rate then move it between 0.7 and 1 of the peak, never ratchet it down.
pub const HOLD: Duration = WINDOW;
/// The adaptive rate is given up once it has grown this far past where it was throttled: the
/// server has not refused anything for seconds.
pub const GIVE_UP: f64 = 4.0;
/// The lowest rate a back-off goes to, in requests a second.
pub const MIN_RATE: f64 = 1.0;

/// Requests that ended and refusals among them, over the last [`WINDOW`], from workers'
/// reports.
#[derive(Debug)]
pub struct Recent {
    reports: VecDeque<(Instant, u64, u64)>,
    /// The send rate is measured from here: the start, or the end of the last pause.
    since: Instant,
}

impl Recent {
    /// Nothing counted yet, from `now`.
    pub fn new(now: Instant) -> Recent {
        Recent { reports: VecDeque::new(), since: now }
    }

    /// Counts a report of `requests`, `refused` of them.
    pub fn add(&mut self, now: Instant, requests: u64, refused: u64) {
        self.reports.push_back((now, requests, refused));
        while self.reports.front().is_some_and(|&(at, ..)| now.saturating_duration_since(at) >= WINDOW) {
            self.reports.pop_front();
        }
    }

    /// The fleet pauses until `at`: a send rate measured across the pause would be the pause's.
    pub fn resume_at(&mut self, at: Instant) {
        self.since = self.since.max(at);
    }

    fn totals(&self, now: Instant, from: Option<Instant>) -> (u64, u64) {
        self.reports
            .iter()
            .filter(|&&(at, ..)| now.saturating_duration_since(at) < WINDOW && from.is_none_or(|f| at >= f))
            .fold((0, 0), |(r, f), &(_, req, refused)| (r + req, f + refused))
    }

    /// The share of refusals, once there are [`ENOUGH`] requests to tell.
    pub fn refused_share(&self, now: Instant) -> Option<f64> {
        let (requests, refused) = self.totals(now, None);
        (requests >= ENOUGH).then(|| refused as f64 / requests as f64)
    }

    /// Answers a second that were not refusals, over the window (or since counting began or
    /// the last pause ended, if that is shorter), once there are [`ENOUGH`] requests to tell:
    /// the rate the server took.
    pub fn accepted_rate(&self, now: Instant) -> Option<f64> {
        let (requests, refused) = self.totals(now, Some(self.since));
        let span = now.saturating_duration_since(self.since).min(WINDOW).max(Duration::from_millis(100));
        (requests >= ENOUGH).then(|| (requests - refused) as f64 / span.as_secs_f64())
    }
}

/// Whether a server's wait is the whole client's, not one request's: see the module
/// documentation.
pub fn fleet_wide(wait: Duration, used_up: bool, recent: &Recent, now: Instant) -> bool {
    used_up || wait >= LONG_WAIT || recent.refused_share(now).is_some_and(|s| s >= FLEET_SHARE)
}

/// The fleet's rate while it adapts to a server's refusals: a back-off to [`BACKOFF`] of the
/// rate measured when they came, then a cubic climb, back to that rate after [`RECOVERY`] and
/// past it after, slowly at first.
#[derive(Debug, Clone)]
pub struct AdaptiveRate {
    /// The rate measured at the last back-off.
    peak: f64,
    /// When it was.
    at: Instant,
}

impl AdaptiveRate {
    /// Backs off from `measured` requests a second (the send rate when refusals came).
    pub fn new(measured: f64, now: Instant) -> AdaptiveRate {
        AdaptiveRate { peak: measured.max(MIN_RATE / BACKOFF), at: now }
    }

    /// A refusal at `now`, the fleet measured sending `measured`: backs off from what it
    /// sends or may send, whichever is lower, unless it did so within [`HOLD`]. Returns
    /// whether it did.
    pub fn refused(&mut self, measured: f64, now: Instant) -> bool {
        if now.saturating_duration_since(self.at) < HOLD {
            return false;
        }
        *self = AdaptiveRate::new(measured.min(self.rate(now)), now);
        true
    }

    /// The rate at `now`: `peak * (1 + c (t - K)^3)` with `K` = [`RECOVERY`] and `c` such that
    /// it starts at [`BACKOFF`] of the peak (CUBIC's window, as a rate).
    pub fn rate(&self, now: Instant) -> f64 {
        let k = RECOVERY.as_secs_f64();
        let c = (1.0 - BACKOFF) / k.powi(3);
        let t = now.saturating_duration_since(self.at).as_secs_f64();
        (self.peak * (1.0 + c * (t - k).powi(3))).max(MIN_RATE)
    }

    /// Whether the rate has grown so far past the last refusal that it no longer needs to be
    /// kept to.
    pub fn outgrown(&self, now: Instant) -> bool {
        self.rate(now) >= GIVE_UP * self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_share_needs_enough_requests_and_forgets_what_is_older_than_the_window() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        r.add(t0, 5, 5);
        assert_eq!(r.refused_share(t0), None, "5 requests are not enough to tell");
        r.add(t0 + 500 * MS, 35, 0);
        assert_eq!(r.refused_share(t0 + 500 * MS), Some(5.0 / 40.0));
        assert_eq!(r.refused_share(t0 + 2100 * MS), Some(0.0), "the first report has aged out");
        assert_eq!(r.accepted_rate(t0 + 2100 * MS), Some(17.5), "35 in the last 2 s");
        // Early on, the rate is over the time since counting began; after a pause, since it
        // ended.
        let mut r = Recent::new(t0);
        r.add(t0 + 200 * MS, 100, 0);
        assert_eq!(r.accepted_rate(t0 + 250 * MS), Some(400.0));
        r.resume_at(t0 + 600 * MS);
        assert_eq!(r.accepted_rate(t0 + 650 * MS), None, "nothing sent since the pause");
        r.add(t0 + 700 * MS, 60, 10);
        let rate = r.accepted_rate(t0 + 750 * MS).expect("60 since, 10 of them refused");
        assert!((rate - 50.0 / 0.15).abs() < 1e-6, "{rate}");
        assert_eq!(r.refused_share(t0 + 750 * MS), Some(10.0 / 160.0), "the share counts across the pause");
    }

    #[test]
    fn a_wait_is_the_fleets_when_announced_used_up_long_or_one_of_many_refusals() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        r.add(t0, 1000, 10);
        let second = Duration::from_secs(1);
        assert!(!fleet_wide(second, false, &r, t0), "1% refused: one request's bad luck");
        assert!(fleet_wide(second, true, &r, t0), "the limit announced used up");
        assert!(fleet_wide(LONG_WAIT, false, &r, t0), "a long wait");
        r.add(t0, 100, 100);
        assert!(fleet_wide(second, false, &r, t0), "110 of 1100 refused");
    }

    #[test]
    fn the_rate_backs_off_to_seven_tenths_and_climbs_back_along_a_cubic() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::new(2000.0, t0);
        assert!((a.rate(t0) - 1400.0).abs() < 1e-6);
        let half = a.rate(t0 + RECOVERY / 2);
        assert!((half - 2000.0 * (1.0 - 0.3 / 8.0)).abs() < 1e-6, "most of the way in half the time: {half}");
        assert!((a.rate(t0 + RECOVERY) - 2000.0).abs() < 1e-6, "back where it was refused");
        assert!(a.rate(t0 + RECOVERY + 500 * MS) < 2010.0, "and slowly past it");
        assert!(!a.outgrown(t0 + 3 * RECOVERY));
        assert!(a.outgrown(t0 + 5 * RECOVERY), "{}", a.rate(t0 + 5 * RECOVERY));
        // Within the hold, answers to requests sent before the back-off still count.
        assert!(!a.refused(2000.0, t0 + HOLD / 2));
        // Later, it backs off from what it may send when that is below what was measured.
        let at = t0 + HOLD + 100 * MS;
        let allowed = a.rate(at);
        assert!(a.refused(5000.0, at));
        assert!((a.rate(at) - allowed * BACKOFF).abs() < 1e-6);
        let mut low = AdaptiveRate::new(0.1, t0);
        assert!(low.rate(t0) >= MIN_RATE && !low.refused(0.0, t0));
    }
}
