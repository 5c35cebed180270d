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
//! When refusals clearly pass [`BACKOFF_SHARE`] of the recent answers ([`clearly_above`]),
//! unless the rate is `--rate`'s or the server's own announcement, the fleet's *rate* backs off
//! ([`AdaptiveRate`]): to 0.7 of the rate of answers it was measured getting (refusals left
//! out) when they came, held there while the plateau's test below counts (at most a
//! [`PLATEAU`]), then back up along a cubic curve, as the AWS SDKs' adaptive retry mode
//! does (a client-side token bucket, the measured send rate, 0.7x on a throttle, CUBIC growth).
//! A concurrency limit cannot hold a rate: against an API that answers in a fraction of a
//! millisecond, four requests in flight are thousands a second.
//!
//! The plateau tells whether the refusals go with the rate (counted as soon as there are enough
//! of them to tell, [`EVIDENCE`]). Below a rate limiter's rate they stop; refusals a gateway
//! sheds at random (1 in 100 whatever the rate) do not. Unless they
//! fall at the plateau clearly below [`NOISE_RATIO`] of the share that backed the rate off (by
//! more than chance would: [`not_the_rates`]), the rate is given up, and their share is taken as
//! the server's noise (the mean of the two shares):
//! only refusals past it back the rate off again. Without this, a server that refuses 2% of
//! requests at random would ratchet the rate down 0.7x at a time to nothing.
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
/// How long the fleet pauses when enough 429s to be the whole client's name no wait: the
/// shortest window a limiter counts in.
pub const UNNAMED_WAIT: Duration = Duration::from_secs(1);
/// At least this many refusals in [`WINDOW`] to back the rate off: a share of 2% is not told
/// from one refusal among the first fifty answers of a run.
pub const MIN_REFUSED: u64 = 5;
/// Refusals back the rate off only this many standard deviations above the count
/// [`BACKOFF_SHARE`] would give ([`clearly_above`]).
pub const CHANCE: f64 = 3.0;
/// The rate a throttle backs off to, as a share of the rate measured.
pub const BACKOFF: f64 = 0.7;
/// How long the rate takes to climb back to where it was throttled (the cubic's plateau).
pub const RECOVERY: Duration = Duration::from_secs(2);
/// Past where it climbs back to, the rate grows this much slower than CUBIC's symmetric curve
/// would (5% past it about 8 s on, 30% 14 s on, given up about 31 s on): the limit was found
/// there, and a fixed window refuses everything past its quota, so probing above it costs
/// refusals at every step (docs/design.md has the measurements behind the constant).
pub const PROBE: f64 = 0.0001;
/// The rate climbs back to this share of the rate it was refused at (or measured at over a
/// cycle of fleet-wide pauses), and probes past it slowly from there: a limiter that refused
/// at a rate refuses again at it.
pub const SETTLE: f64 = 0.95;
/// After a back-off, the next decision waits for a whole [`WINDOW`] of answers to requests sent
/// since, and for the rate to have climbed back ([`RECOVERY`]): refusals that come whatever the
/// rate then move it between 0.7 and 1 of the peak, never ratchet it down.
pub const HOLD: Duration = WINDOW;
/// The adaptive rate is given up once it has grown this far past where it was throttled: the
/// server has not refused anything for seconds.
pub const GIVE_UP: f64 = 4.0;
/// The shortest span a rate is measured over: the first refusals of a run can come 50 ms
/// after its first answers, when a fleet's first requests have used up a limiter's burst.
pub const MIN_SPAN: Duration = Duration::from_millis(50);
/// The lowest rate a back-off goes to, in requests a second.
pub const MIN_RATE: f64 = 1.0;
/// How long the rate holds at [`BACKOFF`] of the peak before it climbs.
pub const PLATEAU: Duration = Duration::from_secs(1);
/// Answers in the plateau's first moments are to requests sent at the old rate: they are left
/// out of its count.
pub const DRAIN: Duration = Duration::from_millis(250);
/// The most refusals taken as a server's noise: refusals that go on at the plateau at a larger
/// share are a limit the fleet is still above (a fixed window measured just after a pause
/// overstates what it takes), and the rate goes on backing off.
pub const MAX_NOISE: f64 = 0.04;
/// The plateau's refusals are counted once the trigger's share would make this many of them
/// (or once it is over): enough for [`not_the_rates`] to tell a limiter's stop from noise.
pub const EVIDENCE: f64 = 10.0;
/// Refusals at the plateau this large a share of those that backed the rate off did not go
/// with the rate.
pub const NOISE_RATIO: f64 = 0.5;

/// Whether refusals are not the rate's: at 0.7 of the rate, `refused` of `requests` were
/// refusals, against a share of `trigger` when they backed it off. They are the rate's only if
/// they fell below [`NOISE_RATIO`] of the count the trigger's share would give, by more than a
/// standard deviation of that count (a Poisson count's, its square root): with a few hundred
/// requests at the plateau, random refusals fall that far below half by chance in well under
/// 1% of plateaus, and a limiter's refusals, which stop below its rate, always do.
pub fn not_the_rates(trigger: f64, requests: u64, refused: u64) -> bool {
    let expected = trigger * requests as f64;
    let share = refused as f64 / requests.max(1) as f64;
    refused as f64 >= NOISE_RATIO * expected - expected.sqrt() && share < MAX_NOISE
}

/// Whether `refused` of `requests` is clearly more than a share of `share` would give: at least
/// [`MIN_REFUSED`], and more than [`CHANCE`] standard deviations above the count expected (a
/// Poisson count's, its square root). A server that refuses that share at random, whatever the
/// rate, then seldom looks like one refusing more: over the first few hundred answers of a run,
/// a true 2% shows 2.5% or 3% by chance often, and backing off from it costs the noise test's
/// time at 0.7 of a rate measured while the fleet was still starting. A limiter the fleet
/// overruns refuses far more (docs/design.md has the figures).
pub fn clearly_above(share: f64, requests: u64, refused: u64) -> bool {
    let expected = share * requests as f64;
    refused >= MIN_REFUSED && refused as f64 > expected + CHANCE * expected.sqrt()
}

/// Requests that ended and refusals among them, over the last [`WINDOW`], from workers'
/// reports.
#[derive(Debug, Default)]
pub struct Recent {
    reports: VecDeque<(Instant, u64, u64)>,
    /// The send rate is measured from here: the first report (when answers began to come:
    /// not when the pacer began, before its workers had started and connected), or the end of
    /// the last pause. None until the first report.
    since: Option<Instant>,
}

impl Recent {
    /// Counts a report of `requests`, `refused` of them.
    pub fn add(&mut self, now: Instant, requests: u64, refused: u64) {
        self.since.get_or_insert(now);
        self.reports.push_back((now, requests, refused));
        while self.reports.front().is_some_and(|&(at, ..)| now.saturating_duration_since(at) >= WINDOW) {
            self.reports.pop_front();
        }
    }

    /// Since when the send rate is measured: the first report, or the end of the last pause.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// The fleet pauses until `at`: a send rate measured across the pause would be the pause's.
    pub fn resume_at(&mut self, at: Instant) {
        self.since = Some(self.since.map_or(at, |s| s.max(at)));
    }

    /// The requests and refusals reported within the window (and since `from`, if given),
    /// once there are [`ENOUGH`] requests to tell.
    fn counted(&self, now: Instant, from: Option<Instant>) -> Option<(u64, u64)> {
        let (requests, refused) = self
            .reports
            .iter()
            .filter(|&&(at, ..)| now.saturating_duration_since(at) < WINDOW && from.is_none_or(|f| at >= f))
            .fold((0, 0), |(r, f), &(_, req, refused)| (r + req, f + refused));
        (requests >= ENOUGH).then_some((requests, refused))
    }

    /// The requests and refusals over the window, once there are [`ENOUGH`] requests to tell.
    pub fn refusals(&self, now: Instant) -> Option<(u64, u64)> {
        self.counted(now, None)
    }

    /// The share of refusals, once there are [`ENOUGH`] requests to tell.
    pub fn refused_share(&self, now: Instant) -> Option<f64> {
        self.refusals(now).map(|(requests, refused)| refused as f64 / requests as f64)
    }

    /// The share of refusals since the run's first report or the end of the last pause, once
    /// there are [`ENOUGH`] requests to tell.
    pub fn refused_share_since_resume(&self, now: Instant) -> Option<f64> {
        self.counted(now, self.since).map(|(requests, refused)| refused as f64 / requests as f64)
    }

    /// The requests and refusals reported since `from` (within the window), once there are
    /// [`ENOUGH`] requests.
    pub fn refusals_since(&self, from: Instant, now: Instant) -> Option<(u64, u64)> {
        self.counted(now, Some(from))
    }

    /// Answers a second that were not refusals, over the window (or since the first report or
    /// the end of the last pause, if that is shorter, but at least [`MIN_SPAN`]), once there
    /// are [`ENOUGH`] requests to tell: the rate the server took. (Measured over the moments
    /// after a pause it can overstate what a fixed-window limiter takes, which admits its
    /// quota at once; the back-off after then starts from the lower of this and the rate in
    /// force.)
    pub fn accepted_rate(&self, now: Instant) -> Option<f64> {
        let since = self.since?;
        let (requests, refused) = self.counted(now, Some(since))?;
        let span = now.saturating_duration_since(since).min(WINDOW).max(MIN_SPAN);
        Some((requests - refused) as f64 / span.as_secs_f64())
    }
}

/// Whether a server's wait is the whole client's, not one request's: see the module
/// documentation. The share of refusals is counted since the last pause ended: the refusals
/// that made it are not a second one's.
pub fn fleet_wide(wait: Duration, used_up: bool, recent: &Recent, now: Instant) -> bool {
    used_up || wait >= LONG_WAIT || recent.refused_share_since_resume(now).is_some_and(|s| s >= FLEET_SHARE)
}

/// The fleet's rate while it adapts to a server's refusals: a back-off to [`BACKOFF`] of the
/// rate measured when they came, held until the plateau's test has told (at most a
/// [`PLATEAU`]), then a cubic climb, back to that rate [`RECOVERY`] later and past it after,
/// slowly at first.
#[derive(Debug, Clone)]
pub struct AdaptiveRate {
    /// The rate measured at the last back-off.
    peak: f64,
    /// When it was.
    at: Instant,
    /// The share of refusals that backed it off.
    trigger: f64,
    /// Whether the plateau's refusals were counted.
    tested: bool,
    /// When the climb starts: the plateau's end, or its test's if that came first.
    climb_at: Instant,
}

impl AdaptiveRate {
    /// Backs off from `measured` requests a second (the send rate when `trigger` of the
    /// answers were refusals).
    pub fn new(measured: f64, trigger: f64, now: Instant) -> AdaptiveRate {
        let peak = measured.max(MIN_RATE / BACKOFF);
        AdaptiveRate { peak, at: now, trigger, tested: false, climb_at: now + PLATEAU }
    }

    /// Refusals came at `share` of the answers at `now`, the fleet measured sending
    /// `measured`: backs off from what it sends or may send, whichever is lower, unless it did
    /// so within [`HOLD`]. Returns whether it did.
    pub fn refused(&mut self, measured: f64, share: f64, now: Instant) -> bool {
        if now.saturating_duration_since(self.at) < HOLD {
            return false;
        }
        *self = AdaptiveRate::new(measured.min(self.rate(now)), share, now);
        true
    }

    /// The plateau's requests and refusals (`counted` gives them since an instant), once they
    /// tell (the trigger's share would make [`EVIDENCE`] refusals of them) or the plateau is
    /// over; only once. Against a fast API the test is over long before the plateau, and the
    /// climb starts then: the plateau holds the rate only for the test.
    pub fn plateau_test(
        &mut self,
        now: Instant,
        counted: impl FnOnce(Instant) -> Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        if self.tested || now < self.at + DRAIN {
            return None;
        }
        let over = now >= self.at + PLATEAU;
        let counts = counted(self.at + DRAIN);
        let tells = counts.is_some_and(|(requests, _)| requests as f64 * self.trigger >= EVIDENCE);
        if over || tells {
            self.tested = true;
            self.climb_at = self.climb_at.min(now);
            return counts;
        }
        None
    }

    /// The share of refusals that backed it off.
    pub fn trigger(&self) -> f64 {
        self.trigger
    }

    /// A rate the server was measured to take over whole cycles of pauses (a fixed window:
    /// its quota spent at once, refused until the window ends): kept to at [`SETTLE`] of it
    /// from `now`, probed past slowly as after a climb, with no plateau to test.
    pub fn settled(taken: f64, trigger: f64, now: Instant) -> AdaptiveRate {
        let peak = taken.max(MIN_RATE / BACKOFF);
        let climb_at = now.checked_sub(RECOVERY).unwrap_or(now);
        AdaptiveRate { peak, at: now, trigger, tested: true, climb_at }
    }

    /// The rate at `now`: [`BACKOFF`] of the peak over the plateau, then
    /// `target * (1 + c (t - K)^3)` with `t` from the climb's start, `K` = [`RECOVERY`], the
    /// target [`SETTLE`] of the peak and `c` such that it starts at [`BACKOFF`] of the peak
    /// (CUBIC's window, as a rate), at the target at `K`; past it, with [`PROBE`] for `c`.
    pub fn rate(&self, now: Instant) -> f64 {
        let k = RECOVERY.as_secs_f64();
        let t = now.saturating_duration_since(self.climb_at).as_secs_f64();
        let c = if t < k { (1.0 - BACKOFF / SETTLE) / k.powi(3) } else { PROBE };
        (SETTLE * self.peak * (1.0 + c * (t - k).powi(3))).max(MIN_RATE)
    }

    /// Whether the rate has grown so far past the last refusal that it no longer needs to be
    /// kept to.
    pub fn outgrown(&self, now: Instant) -> bool {
        self.rate(now) >= GIVE_UP * SETTLE * self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_refusals_clearly_above_a_share_are_above_it() {
        assert!(!clearly_above(0.02, 200, 4), "4 of 200 is 2%");
        assert!(!clearly_above(0.02, 200, 9), "9 where 4 are expected, by chance now and then");
        assert!(clearly_above(0.02, 200, 11));
        assert!(!clearly_above(0.02, 50_000, 1_060), "2.1% of 50,000 is within chance");
        assert!(clearly_above(0.02, 50_000, 1_250), "2.5% of 50,000 is not");
        assert!(clearly_above(0.02, 148, 35), "a limiter's stop tells in its first answers");
        assert!(!clearly_above(0.0, 100, 4), "never fewer than MIN_REFUSED");
        assert!(clearly_above(0.0, 100, MIN_REFUSED));
    }

    #[test]
    fn a_share_needs_enough_requests_and_forgets_what_is_older_than_the_window() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.add(t0, 5, 5);
        assert_eq!(r.refused_share(t0), None, "5 requests are not enough to tell");
        r.add(t0 + 500 * MS, 35, 0);
        assert_eq!(r.refused_share(t0 + 500 * MS), Some(5.0 / 40.0));
        assert_eq!(r.refused_share(t0 + 2100 * MS), Some(0.0), "the first report has aged out");
        assert_eq!(r.accepted_rate(t0 + 2100 * MS), Some(17.5), "35 in the last 2 s");
        // Early on, the rate is over the time since the first report (not since the pacer
        // began: its workers were starting), at least MIN_SPAN; after a pause, since it ended.
        let mut r = Recent::default();
        assert_eq!(r.accepted_rate(t0), None, "nothing reported");
        r.add(t0 + 200 * MS, 20, 0);
        r.add(t0 + 240 * MS, 100, 20);
        assert_eq!(r.accepted_rate(t0 + 240 * MS), Some(100.0 / 0.05), "a first burst: 100 in MIN_SPAN");
        assert_eq!(r.accepted_rate(t0 + 300 * MS), Some(1000.0), "100 in the 100 ms since the first report");
        r.add(t0 + 1400 * MS, 100, 0);
        assert_eq!(r.accepted_rate(t0 + 1500 * MS), Some(200.0 / 1.3));
        r.resume_at(t0 + 1600 * MS);
        assert_eq!(r.accepted_rate(t0 + 1650 * MS), None, "nothing sent since the pause");
        r.add(t0 + 1700 * MS, 60, 10);
        let rate = r.accepted_rate(t0 + 1750 * MS).expect("60 since, 10 of them refused");
        assert!((rate - 50.0 / 0.15).abs() < 1e-6, "{rate}");
        assert_eq!(r.refused_share(t0 + 1750 * MS), Some(30.0 / 280.0), "the share counts across the pause");
    }

    #[test]
    fn a_wait_is_the_fleets_when_announced_used_up_long_or_one_of_many_refusals() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.add(t0, 1000, 10);
        let second = Duration::from_secs(1);
        assert!(!fleet_wide(second, false, &r, t0), "1% refused: one request's bad luck");
        assert!(fleet_wide(second, true, &r, t0), "the limit announced used up");
        assert!(fleet_wide(LONG_WAIT, false, &r, t0), "a long wait");
        r.add(t0, 100, 100);
        assert!(fleet_wide(second, false, &r, t0), "110 of 1100 refused");
        // Once paused, the refusals that made the pause make no second one.
        r.resume_at(t0 + second);
        r.add(t0 + 1100 * MS, 50, 1);
        assert!(!fleet_wide(second, false, &r, t0 + 1100 * MS), "1 of 50 since it ended");
        r.add(t0 + 1200 * MS, 50, 20);
        assert!(fleet_wide(second, false, &r, t0 + 1200 * MS), "21 of 100 since it ended");
    }

    #[test]
    fn the_rate_backs_off_to_seven_tenths_holds_and_climbs_back_along_a_cubic() {
        let start = Instant::now();
        let mut a = AdaptiveRate::new(2000.0, 0.05, start);
        assert!((a.rate(start) - 1400.0).abs() < 1e-6);
        assert!((a.rate(start + PLATEAU - MS) - 1400.0).abs() < 1e-6, "untested, it holds over the plateau");
        // Its refusals are counted from DRAIN, once they tell: 5% of 200 is 10.
        let mut asked = None;
        assert_eq!(a.plateau_test(start + DRAIN - MS, |_| Some((500, 0))), None, "not before DRAIN");
        assert_eq!(
            a.plateau_test(start + DRAIN, |from| {
                asked = Some(from);
                Some((100, 0))
            }),
            None,
            "5 expected"
        );
        assert_eq!(asked, Some(start + DRAIN));
        let told = start + DRAIN + MS;
        assert_eq!(a.plateau_test(told, |_| Some((200, 1))), Some((200, 1)));
        assert_eq!(a.plateau_test(start + PLATEAU, |_| Some((500, 1))), None, "asked once");
        assert!(a.rate(told + 100 * MS) > 1400.0, "told, it climbs at once, not at the plateau's end");
        let mut slow = AdaptiveRate::new(20.0, 0.05, start);
        assert_eq!(slow.plateau_test(start + PLATEAU - MS, |_| Some((12, 0))), None);
        assert_eq!(
            slow.plateau_test(start + PLATEAU, |_| Some((14, 0))),
            Some((14, 0)),
            "whatever came, at its end"
        );
        assert!((slow.rate(start + PLATEAU + RECOVERY) - 19.0).abs() < 1e-6, "from the plateau's end");
        let t0 = told;
        let half = a.rate(t0 + RECOVERY / 2);
        let climb = 1.0 - BACKOFF / SETTLE;
        assert!(
            (half - 1900.0 * (1.0 - climb / 8.0)).abs() < 1e-6,
            "most of the way in half the time: {half}"
        );
        assert!((a.rate(t0 + RECOVERY) - 1900.0).abs() < 1e-6, "back to 0.95 of where it was refused");
        assert!(a.rate(t0 + RECOVERY + 500 * MS) < 1901.0, "and slowly past it");
        let ten = a.rate(t0 + RECOVERY + Duration::from_secs(10));
        assert!((ten - 2090.0).abs() < 1e-6, "10% past it 10 s on: {ten}");
        assert!(!a.outgrown(t0 + RECOVERY + Duration::from_secs(31)));
        assert!(a.outgrown(t0 + RECOVERY + Duration::from_secs(32)), "{}", a.rate(t0 + 5 * RECOVERY));
        // Within the hold, answers to requests sent before the back-off still count.
        assert!(!a.refused(2000.0, 0.05, start + HOLD / 2));
        // Later, it backs off from what it may send when that is below what was measured.
        let at = t0 + HOLD + 100 * MS;
        let allowed = a.rate(at);
        assert!(a.refused(5000.0, 0.03, at));
        assert!((a.rate(at) - allowed * BACKOFF).abs() < 1e-6);
        assert_eq!(a.trigger(), 0.03);
        let mut low = AdaptiveRate::new(0.1, 0.5, t0);
        assert!(low.rate(t0) >= MIN_RATE && !low.refused(0.0, 0.5, t0));
    }

    #[test]
    fn a_rate_taken_over_cycles_of_pauses_is_kept_to_from_at_once_and_probed_past_slowly() {
        let t0 = Instant::now();
        let mut a = AdaptiveRate::settled(2000.0, 0.2, t0);
        assert!((a.rate(t0) - 1900.0).abs() < 1e-6, "0.95 of it, at once");
        assert!(a.rate(t0 + Duration::from_secs(4)) < 1950.0, "a slow probe past it");
        assert!(!a.refused(1900.0, 0.05, t0 + HOLD / 2), "a hold after it as after any back-off");
    }

    #[test]
    fn refusals_that_stay_at_seven_tenths_of_the_rate_are_not_the_rates() {
        assert!(not_the_rates(0.02, 1000, 20), "2% at random, whatever the rate");
        assert!(not_the_rates(0.03, 400, 5), "6 expected at half of 3%: 5 is chance");
        assert!(!not_the_rates(0.03, 400, 1), "1 of 6 expected is not");
        assert!(!not_the_rates(0.05, 1000, 4), "a limiter: below its rate, refusals stop");
        assert!(not_the_rates(0.05, 40, 0), "too few requests to tell: 1 refusal expected");
        assert!(!not_the_rates(0.25, 1000, 210), "21% at the plateau: a limit still above");
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.add(t0, 100, 20);
        r.add(t0 + 300 * MS, 100, 1);
        assert_eq!(r.refusals_since(t0 + DRAIN, t0 + 400 * MS), Some((100, 1)));
        assert_eq!(r.refusals_since(t0 + 350 * MS, t0 + 400 * MS), None, "nothing since");
    }
}
