//! Pacing: how fast the fleet as a whole may send, decided in one place for every worker.
//!
//! Five rules, each a small type with the clock passed in, so its arithmetic is tested
//! without sleeping:
//! - **A rate** ([`Meter`], a token bucket): with `--rate`, or once a server announces its limit,
//!   every request needs a permit, and the supervisor grants them to workers in small batches.
//!   Permits in workers' hands count against the bucket's capacity (`--burst`), so over any
//!   window of `T` seconds the fleet sends at most `burst + rate * T`, however the permits are
//!   spread. A dead worker's permits leave the count and the bucket refills them at the rate.
//! - **A pause**: a limit announced as used up, or a `Retry-After` that is the whole client's
//!   (a long one, or one of many refusals: [`throttle`]), pauses every worker until then; their
//!   permits are dropped and the bucket starts empty, so sending resumes at the rate, not in a
//!   burst. A sporadic `Retry-After` is only its request's: that request waits it, no other.
//! - **A rate backed off on refusals** ([`throttle::AdaptiveRate`]): without `--rate` or an
//!   announced limit, refusals past 2% of the recent answers meter the fleet at 0.7 of the rate
//!   the server took, which then climbs back along a cubic curve; it is given up once far past
//!   where it was refused.
//! - **A circuit** ([`circuit`]): when nearly every request fails, the API is down; the fleet
//!   sends only probes, one at a time with backoff, until one is answered, and the attempts
//!   that met the open circuit do not count against their ids.
//! - **A concurrency limit** ([`Controller`]): the fleet's requests in flight, split among the
//!   workers. Fixed by `--concurrency`, or adaptive: it doubles from a small start each round
//!   trip while answers stay fast and clean (slow start), then grows by about its square root
//!   per interval. Latency past twice its baseline plus a slack for two intervals in a row is
//!   requests queueing: slow start ends with the limit halved (it overshot) unless answers still
//!   come faster, and later the limit shrinks by a tenth. Between twice the baseline and that
//!   plus the slack it holds. So TCP's AIMD and the Vegas/Gradient limiters do. A 429 or 503
//!   ends slow start and holds the limit for that interval: refusals are answered with a rate,
//!   not by halving the requests in flight (which against a fast API bound no rate at all).

use std::time::{Duration, Instant};

use log::Level;
use shared::{Announced, Pace, Traffic};

use super::circuit::{self, Circuit, FirstAnswer, Health};
use super::messages::Command;
use super::throttle::{self, AdaptiveRate, Recent};
use crate::job::{PaceSettings, Pacing, RateSource};

/// How often the adaptive limit is reconsidered.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// The share of an announced rate the fleet keeps to, leaving room for clock skew and the
/// server's own window edges.
pub const ANNOUNCED_SHARE: f64 = 0.95;
/// The default burst: this long at the rate.
pub const DEFAULT_BURST: Duration = Duration::from_millis(50);
/// Latency this far above twice the baseline is queueing, not noise (a fast loopback answer
/// doubles in microseconds under any load).
const QUEUE_SLACK: Duration = Duration::from_millis(2);
/// The adaptive limit's first value, per worker: small, as TCP's initial window is, so that
/// the fleet hears what the server says of its limits before it sends much.
const START_PER_WORKER: u32 = 2;

/// A token bucket: `rate` permits a second, at most `burst` in the bucket and in workers'
/// hands together.
#[derive(Debug, Clone)]
pub struct Meter {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Meter {
    /// An empty bucket.
    pub fn new(rate: f64, burst: Option<u32>, now: Instant) -> Meter {
        Meter { rate, burst: burst_of(rate, burst), tokens: 0.0, at: now }
    }

    /// Adds what accrued since the last call, keeping `tokens + held <= burst`.
    pub fn refill(&mut self, now: Instant, held: u32) {
        let room = (self.burst - f64::from(held)).max(0.0);
        let accrued = self.tokens + self.rate * now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = accrued.min(room);
        self.at = now;
    }

    /// Empties the bucket and starts filling it at `at`: sending resumes at the rate, not in a
    /// burst.
    pub fn restart(&mut self, at: Instant) {
        self.tokens = 0.0;
        self.at = at;
    }

    /// Takes up to `want` whole permits.
    pub fn take(&mut self, want: u32) -> u32 {
        let n = (self.tokens.floor() as u32).min(want);
        self.tokens -= f64::from(n);
        n
    }

    /// When `n` permits will have accrued (they may still not fit under the burst).
    pub fn ready_at(&self, n: u32) -> Instant {
        let missing = (f64::from(n) - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn burst(&self) -> u32 {
        self.burst as u32
    }
}

fn burst_of(rate: f64, burst: Option<u32>) -> f64 {
    match burst {
        Some(b) => f64::from(b.max(1)),
        None => (rate * DEFAULT_BURST.as_secs_f64()).ceil().max(1.0),
    }
}

/// The adaptive concurrency limit. Fed what requests met; says the new limit each
/// [`INTERVAL`].
#[derive(Debug, Clone)]
pub struct Controller {
    limit: f64,
    max: f64,
    slow_start: bool,
    /// The lowest interval's mean latency, drifting up 1% an interval so a server that slows
    /// for good is relearned.
    baseline_us: Option<f64>,
    /// Whether the last interval looked like queueing.
    queueing: bool,
    /// Requests a second over the last interval.
    last_rate: f64,
    requests: u64,
    latency_us: u64,
    throttled: u64,
    since: Instant,
}

impl Controller {
    /// Starts at `start`, never above `max`.
    pub fn new(start: u32, max: u32, now: Instant) -> Controller {
        Controller {
            limit: f64::from(start.min(max).max(1)),
            max: f64::from(max.max(1)),
            slow_start: true,
            baseline_us: None,
            queueing: false,
            last_rate: 0.0,
            requests: 0,
            latency_us: 0,
            throttled: 0,
            since: now,
        }
    }

    /// Counts a worker's report.
    pub fn sample(&mut self, t: &Traffic) {
        self.requests += u64::from(t.requests);
        self.latency_us += t.latency_us;
        self.throttled += u64::from(t.throttled);
    }

    /// The limit now, at least `min`.
    pub fn limit(&self, min: u32) -> u32 {
        (self.limit as u32).max(min)
    }

    fn reset(&mut self, now: Instant) {
        (self.requests, self.latency_us, self.throttled, self.since) = (0, 0, 0, now);
    }

    /// Reconsiders the limit once an interval has passed with answers in it, or, in slow
    /// start, once a whole limit's worth of requests has ended (a round trip: TCP's slow start
    /// doubles its window each round trip). Returns whether it changed.
    pub fn update(&mut self, now: Instant) -> bool {
        let interval = now.saturating_duration_since(self.since) >= INTERVAL;
        let round_trip = self.slow_start && self.requests as f64 >= self.limit;
        if !(interval || round_trip) || (self.requests == 0 && self.throttled == 0) {
            return false;
        }
        let before = self.limit;
        if self.throttled > 0 {
            // The pacer answers refusals with a rate; here they end slow start, and the limit
            // holds for the interval.
            self.slow_start = false;
            self.reset(now);
            return false;
        }
        let mean = self.latency_us as f64 / self.requests as f64;
        let baseline = self.baseline_us.map_or(mean, |b| (b * 1.01).min(mean));
        self.baseline_us = Some(baseline);
        let elapsed = now.saturating_duration_since(self.since).as_secs_f64().max(1e-3);
        let rate = self.requests as f64 / elapsed;
        let growing = rate > 1.1 * std::mem::replace(&mut self.last_rate, rate);
        let slack = QUEUE_SLACK.as_micros() as f64;
        let queueing = mean > 2.0 * baseline + slack;
        // Between twice the baseline and that plus the slack the limit holds: on a fast server
        // (a baseline of microseconds) that band is wide, and a limit that moved every interval
        // there cost the workers more than the few requests it gained or spared.
        let clean = mean <= 2.0 * baseline;
        let was_queueing = std::mem::replace(&mut self.queueing, queueing);
        match (queueing, self.slow_start, was_queueing) {
            (false, false, _) if !clean => {}
            // One slow interval can be the new connections of a step up being set up: it
            // takes two in a row to call it queueing. Until then the limit holds.
            (true, _, false) => {}
            // Slow start overshot: slower answers and no more of them. Back to the limit
            // before the last doubling, as TCP's slow start does on its first loss. (Slower
            // answers that still come faster are our own CPU busy with more of them.)
            (true, true, true) if !growing => {
                self.limit = (self.limit / 2.0).max(1.0);
                self.slow_start = false;
            }
            (true, true, true) => {}
            (true, false, true) => self.limit = (self.limit * 0.9).max(1.0),
            (false, true, _) => self.limit = (self.limit * 2.0).min(self.max),
            (false, false, _) => self.limit = (self.limit + self.limit.sqrt().max(1.0)).min(self.max),
        }
        self.reset(now);
        self.limit as u32 != before as u32
    }
}

#[derive(Debug)]
struct Member {
    gen: u64,
    /// Whether it holds ids: only then is it granted permits.
    busy: bool,
    /// Permits granted and not yet reported spent.
    held: u32,
    /// The pace it was last told.
    told: Option<Pace>,
}

/// The fleet's pacing. See the module documentation.
#[derive(Debug)]
pub struct Pacer {
    settings: PaceSettings,
    meter: Option<(Meter, RateSource)>,
    controller: Option<Controller>,
    fixed: u32,
    members: Vec<Option<Member>>,
    paused_until: Option<Instant>,
    /// What the workers' requests met over the last [`throttle::WINDOW`].
    recent: Recent,
    /// The rate backed off on refusals, while the meter keeps to it.
    adaptive: Option<AdaptiveRate>,
    /// The share of refusals that came whatever the rate ([`throttle::not_the_rates`]): only
    /// refusals past it back the rate off.
    noise: f64,
    /// What share of the recent requests failed.
    health: Health,
    /// Open while the API is down.
    circuit: Option<Circuit>,
    /// Whether the API has answered this run with something other than a failure.
    answered_once: bool,
    /// Whether it has answered at all, and until then how its requests fail.
    first: FirstAnswer,
    /// The longest reset a server announced, in milliseconds: a window it does not name is
    /// at least this long.
    longest_reset_ms: u64,
    /// The slot the next probe goes to (probes go round the workers).
    probe_turn: usize,
    /// Why the fleet is paused, while it is.
    pause_why: Option<String>,
    /// When the last fleet-wide pause began, and how long it was.
    last_pause: Option<(Instant, Duration)>,
    /// The figures so far; the rate and the current limit are filled in when asked.
    figures: Pacing,
}

impl Pacer {
    /// Pacing for `slots` worker slots, starting at `now`.
    pub fn new(settings: PaceSettings, slots: usize, now: Instant) -> Pacer {
        let meter = settings.rate.map(|r| (Meter::new(r, settings.burst, now), RateSource::Given));
        let start = START_PER_WORKER.saturating_mul(slots as u32);
        let controller = match settings.concurrency {
            Some(_) => None,
            None => Some(Controller::new(start, settings.ceiling, now)),
        };
        let fixed = settings.concurrency.unwrap_or(settings.ceiling).min(settings.ceiling);
        let figures =
            Pacing { adaptive: controller.is_some(), concurrency_range: (u32::MAX, 0), ..Pacing::default() };
        let first = FirstAnswer::new(settings.api.clone(), now);
        let mut p = Pacer {
            settings,
            meter,
            controller,
            fixed,
            members: (0..slots).map(|_| None).collect(),
            paused_until: None,
            recent: Recent::default(),
            adaptive: None,
            noise: 0.0,
            health: Health::default(),
            circuit: None,
            answered_once: false,
            first,
            longest_reset_ms: 0,
            probe_turn: 0,
            pause_why: None,
            last_pause: None,
            figures,
        };
        p.note_limit();
        p
    }

    /// The fleet's concurrency limit now.
    pub fn limit(&self) -> u32 {
        let min = self.members.iter().flatten().count().max(1) as u32;
        match &self.controller {
            Some(c) => c.limit(min),
            None => self.fixed.max(min),
        }
    }

    /// When the pause a server asked for ends, if one is in force at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|&u| u > now)
    }

    /// The figures so far.
    pub fn figures(&self) -> Pacing {
        Pacing {
            rate: self.meter.as_ref().map(|(m, _)| m.rate()),
            rate_source: self.meter.as_ref().map(|(_, s)| *s),
            concurrency: self.limit(),
            ..self.figures.clone()
        }
    }

    /// What holds the fleet back at `now`, in words, if anything does: an open circuit, a
    /// pause (the caller adds until when), a rate backed off on refusals.
    pub fn held_back(&self, now: Instant) -> Option<String> {
        if let Some(c) = &self.circuit {
            return Some(if c.unreached { self.first.describe(now) } else { c.describe(now) });
        }
        if self.first.warned() {
            return Some(self.first.describe(now));
        }
        if self.paused_until(now).is_some() {
            return Some(format!("paused: {}", self.pause_why.as_deref().unwrap_or("the server asked")));
        }
        match &self.meter {
            Some((m, RateSource::Adaptive)) => {
                Some(format!("rate backed off on refusals to {:.0}/s", m.rate()))
            }
            _ => None,
        }
    }

    /// Whether the circuit is open: the API is down.
    pub fn circuit_open(&self) -> bool {
        self.circuit.is_some()
    }

    /// Whether the API has answered in this run (any HTTP status).
    pub fn heard(&self) -> bool {
        self.first.heard()
    }

    /// The API's `host:port`.
    pub fn api(&self) -> &str {
        self.first.api()
    }

    /// Once the API has not answered for `--wait-for-api`: how its requests fail, and for how
    /// long. The run gives up then.
    pub fn waited_out(&self, now: Instant) -> Option<(String, Duration)> {
        self.first.waited_out(now, self.settings.wait_for_api).then(|| {
            let error = self.first.error().unwrap_or("no request was answered").to_owned();
            (error, self.settings.wait_for_api)
        })
    }

    fn note_limit(&mut self) {
        let l = self.limit();
        let (lo, hi) = self.figures.concurrency_range;
        self.figures.concurrency_range = (lo.min(l), hi.max(l));
    }

    /// New settings in flight (SIGHUP): the rate, the burst, and a fixed or adaptive limit.
    /// The ceiling cannot change (the workers and their threads are what they are).
    pub fn reconfigure(&mut self, settings: PaceSettings, now: Instant, out: &mut Vec<Command>) {
        let held: u32 = self.members.iter().flatten().map(|m| m.held).sum();
        match settings.rate {
            Some(rate) => match &mut self.meter {
                Some((m, source)) => {
                    m.refill(now, held);
                    m.rate = rate;
                    m.burst = burst_of(rate, settings.burst);
                    *source = RateSource::Given;
                }
                None => self.meter = Some((Meter::new(rate, settings.burst, now), RateSource::Given)),
            },
            // Unmetered again, until a server announces a limit.
            None if matches!(self.meter, Some((_, RateSource::Given))) => self.meter = None,
            None => {}
        }
        let ceiling = self.settings.ceiling;
        match settings.concurrency {
            Some(c) => {
                self.controller = None;
                self.fixed = c.min(ceiling);
            }
            None if self.controller.is_none() => {
                let mut c = Controller::new(self.limit(), ceiling, now);
                c.slow_start = false;
                self.controller = Some(c);
            }
            None => {}
        }
        self.figures.adaptive = self.controller.is_some();
        let api = std::mem::take(&mut self.settings.api);
        self.settings = PaceSettings { ceiling, api, ..settings };
        self.share(out);
        self.grant(now, out);
    }

    /// A worker is ready for work: tell it how to send.
    pub fn join(&mut self, slot: usize, gen: u64, now: Instant, out: &mut Vec<Command>) {
        if let Some(m) = self.members.get_mut(slot) {
            *m = Some(Member { gen, busy: false, held: 0, told: None });
        }
        self.share(out);
        if let Some(until) = self.paused_until(now) {
            let ms = until.duration_since(now).as_millis() as u64;
            out.push(Command::Pause { slot, gen, ms });
        }
        self.grant(now, out);
    }

    /// A worker stops taking work (closing, killed or gone): its permits leave the count, and
    /// its share of the limit goes to the others.
    pub fn leave(&mut self, slot: usize, out: &mut Vec<Command>) {
        if let Some(m) = self.members.get_mut(slot) {
            if m.take().is_some() {
                self.share(out);
            }
        }
    }

    fn member(&mut self, slot: usize, gen: u64) -> Option<&mut Member> {
        self.members.get_mut(slot)?.as_mut().filter(|m| m.gen == gen)
    }

    /// A worker was given ids (`busy`), or has reported all it held. Permits go only to busy
    /// workers, and an idle one's are taken back: with a small burst, a few permits in the
    /// hand of a worker with nothing to fetch would otherwise starve the rest of the fleet.
    pub fn busy(&mut self, slot: usize, gen: u64, busy: bool, now: Instant, out: &mut Vec<Command>) {
        let Some(m) = self.member(slot, gen) else { return };
        if m.busy == busy {
            return;
        }
        m.busy = busy;
        if !busy && m.held > 0 {
            // A pause of no time: the worker drops its permits. It holds no ids, so no thread
            // of it can be about to spend one.
            m.held = 0;
            out.push(Command::Pause { slot, gen, ms: 0 });
        }
        self.grant(now, out);
    }

    /// A worker spent permits.
    pub fn spent(&mut self, slot: usize, gen: u64, n: u32, now: Instant, out: &mut Vec<Command>) {
        if let Some(m) = self.member(slot, gen) {
            m.held = m.held.saturating_sub(n);
            self.grant(now, out);
        }
    }

    /// A worker's report of what its requests met.
    pub fn traffic(&mut self, t: &Traffic, now: Instant, out: &mut Vec<Command>) {
        self.figures.requests += u64::from(t.requests);
        self.figures.too_many += u64::from(t.too_many);
        let refused = t.statuses.iter().filter(|&&(s, _)| s == 401).map(|&(_, n)| u64::from(n)).sum::<u64>();
        self.figures.unauthorized += refused;
        if let Some(c) = &mut self.controller {
            c.sample(t);
        }
        self.health.add(now, t);
        self.first.saw(t);
        let answered = t.statuses.iter().any(|&(s, _)| !shared::api_failure(s));
        let reached = self.circuit.as_ref().is_some_and(|c| c.unreached) && self.first.heard();
        if self.circuit.is_some() && (answered || reached) {
            self.close(now, out);
        } else if !answered && self.circuit.is_none() && (self.answered_once || !self.first.heard()) {
            if let Some((share, failure)) = self.health.down(now) {
                self.open(share, failure, now, out);
            }
        }
        self.answered_once |= answered;
        self.recent.add(now, u64::from(t.requests), u64::from(t.throttled));
        if let Some(a) = t.announced {
            self.learn(a, now, out);
        }
        if t.throttled > 0 && self.circuit.is_none() {
            self.back_off(now, out);
        }
        if let Some(ms) = t.wait_ms {
            let wait = Duration::from_millis(ms);
            let used_up = t.announced.is_some_and(|a| a.remaining == Some(0));
            if let Some(c) = &mut self.circuit {
                // The next probe waits what the server asked.
                c.not_before(now + wait);
            } else if throttle::fleet_wide(wait, used_up, &self.recent, now) {
                let why = if used_up {
                    "the server announced its limit used up".to_owned()
                } else if wait >= throttle::LONG_WAIT {
                    format!("the server asked to wait {}", humantime::format_duration(wait))
                } else {
                    let share = self.recent.refused_share(now).unwrap_or(0.0);
                    format!("{:.0}% of recent answers refused (429/503) with Retry-After", 100.0 * share)
                };
                self.pause(wait, why, now, out);
            }
        } else if t.too_many > 0 && self.circuit.is_none() {
            // 429s that name no wait, as many as would pause the fleet if they named one (a
            // fixed window answering a bare 429 refuses everything to its end): the client as
            // a whole is limited too, and waits the shortest window there is.
            let wait = throttle::UNNAMED_WAIT;
            if throttle::fleet_wide(wait, false, &self.recent, now) {
                let share = self.recent.refused_share_since_resume(now).unwrap_or(0.0);
                let why =
                    format!("{:.0}% of recent answers refused (429) with no Retry-After", 100.0 * share);
                self.pause(wait, why, now, out);
            }
        }
        self.adapt(now, out);
    }

    /// The API is down: only probes go from now on, and the fleet's workers drop the permits
    /// they hold.
    fn open(&mut self, share: f64, failure: circuit::Failure, now: Instant, out: &mut Vec<Command>) {
        let mut c = Circuit::open(now, share, failure);
        c.unreached = !self.first.heard();
        self.figures.outages += 1;
        // A rate backed off during the outage's first moments measured the outage, not a limit.
        self.adaptive = None;
        if matches!(self.meter, Some((_, RateSource::Adaptive))) {
            self.meter = None;
        }
        for (slot, m) in self.members.iter_mut().enumerate() {
            if let Some(m) = m.as_mut().filter(|m| m.held > 0) {
                m.held = 0;
                out.push(Command::Pause { slot, gen: m.gen, ms: 0 });
            }
        }
        if !c.unreached {
            out.push(Command::Log(
                Level::Warn,
                format!("the API is down: {}; no id spends its attempts on it", c.describe(now)),
            ));
        }
        self.circuit = Some(c);
        self.share(out);
    }

    /// A request was answered while the circuit was open: the API is back, and the fleet
    /// resumes at once at the rate and limit it had (a rate starting from an empty bucket).
    fn close(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(c) = self.circuit.take() else { return };
        let open = now.saturating_duration_since(c.since);
        self.figures.outage_secs += open.as_secs_f64();
        self.health.clear();
        self.recent = Recent::default();
        if let Some((meter, _)) = &mut self.meter {
            meter.restart(now);
        }
        let line = if c.unreached {
            format!("{} answers: fetching", self.first.api())
        } else {
            format!(
                "the API answers again after {:.1}s down ({} probes): circuit closed",
                open.as_secs_f64(),
                c.probes
            )
        };
        out.push(Command::Log(Level::Info, line));
        self.share(out);
        self.grant(now, out);
    }

    /// While the circuit is open: one probe, when due, to the next busy worker in turn.
    fn probe(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(c) = &mut self.circuit else { return };
        let outage_over = !c.unreached && now.saturating_duration_since(c.since) >= self.settings.outage_max;
        if c.holds_attempts && outage_over {
            c.holds_attempts = false;
            let line = format!(
                "the API has been down for {} (--outage-max): attempts count against their ids again",
                humantime::format_duration(self.settings.outage_max)
            );
            out.push(Command::Log(Level::Warn, line));
            self.share(out);
            return self.probe(now, out);
        }
        if now < c.next_probe() {
            return;
        }
        c.probed(now);
        let n = self.members.len();
        for k in 0..n {
            let slot = (self.probe_turn + k) % n;
            if let Some(m) = self.members[slot].as_mut().filter(|m| m.busy) {
                m.held += 1;
                out.push(Command::Permits { slot, gen: m.gen, n: 1 });
                self.figures.probes += 1;
                self.probe_turn = slot + 1;
                return;
            }
        }
    }

    /// The server refused requests: meter the fleet below the rate it was sending, unless
    /// the rate is `--rate`'s or the server's announcement (those stand; the requests that
    /// met a refusal wait their own `Retry-After`).
    fn back_off(&mut self, now: Instant, out: &mut Vec<Command>) {
        if matches!(self.meter, Some((_, RateSource::Given | RateSource::Announced))) {
            return;
        }
        // Sporadic refusals, or too few requests to tell: the refused ones wait their own time.
        let Some((requests, refused)) = self.recent.refusals(now) else { return };
        if !throttle::clearly_above(throttle::BACKOFF_SHARE + self.noise, requests, refused) {
            return;
        }
        let share = refused as f64 / requests as f64;
        let Some(measured) = self.recent.accepted_rate(now) else { return };
        let first = self.adaptive.is_none();
        match &mut self.adaptive {
            Some(a) => {
                if !a.refused(measured, share, now) {
                    return;
                }
            }
            None => self.adaptive = Some(AdaptiveRate::new(measured, share, now)),
        }
        self.figures.backoffs += 1;
        let rate = self.adaptive.as_ref().map_or(measured, |a| a.rate(now));
        self.keep_adaptive_rate(rate, now);
        let level = if first { Level::Info } else { Level::Debug };
        out.push(Command::Log(
            level,
            format!(
                "the server refuses requests: backing off to {rate:.0} requests/s (it took {measured:.0}/s)"
            ),
        ));
        self.share(out);
        self.grant(now, out);
    }

    /// A fleet-wide pause soon after the last one began: the server spends its quota at once
    /// and refuses the rest of its window (a fixed window, unannounced). What it took over the
    /// whole cycle, the pause included, is the rate it allows: the fleet keeps just under it,
    /// instead of spending each window's quota in a burst and meeting the window's end with
    /// every request in flight.
    fn settle_on_cycle(&mut self, wait: Duration, now: Instant, out: &mut Vec<Command>) {
        let cycle = self.last_pause.filter(|&(at, _)| now.saturating_duration_since(at) <= throttle::WINDOW);
        let resumed = self.recent.since();
        self.last_pause = Some((now, wait));
        if matches!(self.meter, Some((_, RateSource::Given | RateSource::Announced))) {
            return;
        }
        let Some((from, waited)) = cycle else { return };
        let Some((requests, refused)) = self.recent.refusals_since(from, now) else { return };
        let span = now.saturating_duration_since(from).as_secs_f64().max(1e-3);
        // Over the whole cycle, pause included; but a pause that outlasted the window it waited
        // for (a Retry-After in whole seconds, counted from the refusal) wasted part of the next,
        // so the quota taken since the fleet resumed, over the wait that preceded it, is the
        // window's too: the larger of the two.
        let over_cycle = (requests - refused) as f64 / span;
        let since_resume = resumed.and_then(|r| self.recent.refusals_since(r, now));
        let per_window = since_resume.map_or(0.0, |(n, k)| (n - k) as f64 / waited.as_secs_f64().max(1e-3));
        let taken = over_cycle.max(per_window);
        let share = refused as f64 / requests as f64;
        let a = AdaptiveRate::settled(taken, share, now);
        let rate = a.rate(now);
        self.adaptive = Some(a);
        self.figures.backoffs += 1;
        self.keep_adaptive_rate(rate, now);
        out.push(Command::Log(
            Level::Info,
            format!(
                "the server refuses in cycles (it took {taken:.0} requests/s from one pause to the next): keeping to \
                 {rate:.0}/s"
            ),
        ));
    }

    /// Meters the fleet at `rate`, the adaptive one.
    fn keep_adaptive_rate(&mut self, rate: f64, now: Instant) {
        let held: u32 = self.members.iter().flatten().map(|m| m.held).sum();
        let burst = self.settings.burst;
        match &mut self.meter {
            Some((m, RateSource::Adaptive)) => {
                m.refill(now, held);
                m.rate = rate;
                m.burst = burst_of(rate, burst);
            }
            _ => self.meter = Some((Meter::new(rate, burst, now), RateSource::Adaptive)),
        }
    }

    /// The adaptive rate climbs as time passes, and is given up once far past where the
    /// server last refused.
    fn climb(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(a) = &mut self.adaptive else { return };
        if !matches!(self.meter, Some((_, RateSource::Adaptive))) {
            self.adaptive = None; // a rate given or announced since took over
            return;
        }
        let trigger = a.trigger();
        let recent = &self.recent;
        let plateau = a.plateau_test(now, |from| recent.refusals_since(from, now));
        if let Some((requests, refused)) = plateau.filter(|&(n, k)| throttle::not_the_rates(trigger, n, k)) {
            let share = refused as f64 / requests as f64;
            // Both shares measured the noise: the trigger's at the rate, the plateau's below it.
            self.noise = ((share + trigger) / 2.0).min(throttle::MAX_NOISE);
            self.adaptive = None;
            self.meter = None;
            out.push(Command::Log(
                Level::Info,
                format!(
                    "{:.1}% of requests are refused whatever the rate (at 0.7 of it too): \
                     not the rate's; the fleet's rate is free again",
                    100.0 * share
                ),
            ));
            self.share(out);
            return;
        }
        let Some(a) = &self.adaptive else { return };
        if a.outgrown(now) {
            self.adaptive = None;
            self.meter = None;
            out.push(Command::Log(
                Level::Debug,
                "no refusals for a while: the fleet's rate is free again".into(),
            ));
            self.share(out);
            return;
        }
        let rate = a.rate(now);
        self.keep_adaptive_rate(rate, now);
    }

    /// Time passed: grant what accrued, reconsider the limit and the adaptive rate, and say
    /// so if the API has not answered yet.
    pub fn wake(&mut self, now: Instant, out: &mut Vec<Command>) {
        if let Some(line) = self.first.warning(now) {
            let waits = humantime::format_duration(self.settings.wait_for_api);
            out.push(Command::Log(
                Level::Warn,
                format!("{line}; the run waits for a first answer up to {waits} (--wait-for-api)"),
            ));
        }
        self.adapt(now, out);
        self.grant(now, out);
    }

    /// When the pacer next has something to do on its own: permits accrue for a worker that
    /// is short of them, or a pause ends.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if let Some(until) = self.paused_until(now) {
            return Some(until);
        }
        if let Some(c) = &self.circuit {
            return Some(c.next_probe());
        }
        let (meter, _) = self.meter.as_ref()?;
        let batch = self.batch(meter);
        let short =
            self.members.iter().flatten().filter(|m| m.busy).map(|m| batch.saturating_sub(m.held)).max()?;
        (short > 0).then(|| meter.ready_at(threshold(short, batch)))
    }

    fn batch(&self, meter: &Meter) -> u32 {
        let n = self.members.iter().flatten().count().max(1) as u32;
        (meter.burst() / n).max(1)
    }

    /// Tops up every worker short of permits, the shortest first, from what the bucket has.
    fn grant(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.paused_until(now).is_some() {
            return;
        }
        if self.circuit.is_some() {
            return self.probe(now, out);
        }
        let Some(batch) = self.meter.as_ref().map(|(m, _)| self.batch(m)) else { return };
        let held: u32 = self.members.iter().flatten().map(|m| m.held).sum();
        let Some((meter, _)) = &mut self.meter else { return };
        meter.refill(now, held);
        let mut order: Vec<usize> = (0..self.members.len()).filter(|&s| self.members[s].is_some()).collect();
        order.sort_by_key(|&s| self.members[s].as_ref().map_or(0, |m| m.held));
        for slot in order {
            let Some(m) = self.members[slot].as_mut().filter(|m| m.busy) else { continue };
            let short = batch.saturating_sub(m.held);
            if short == 0 || meter.tokens < f64::from(threshold(short, batch)) {
                continue;
            }
            let given = meter.take(short);
            m.held += given;
            out.push(Command::Permits { slot, gen: m.gen, n: given });
        }
    }

    /// Pauses the fleet for `wait`, for the reason `why`, unless a pause already covers it.
    fn pause(&mut self, wait: Duration, why: String, now: Instant, out: &mut Vec<Command>) {
        let until = now + wait;
        let current = self.paused_until(now);
        // Reports of one pause arrive from many requests: act on the first, and on one that
        // asks for clearly longer.
        if current.is_some_and(|c| until <= c + Duration::from_millis(100)) {
            return;
        }
        self.settle_on_cycle(wait, now, out);
        self.figures.pauses += 1;
        self.figures.paused_secs += (until - current.unwrap_or(now)).as_secs_f64();
        self.paused_until = Some(until);
        self.pause_why = Some(why);
        self.recent.resume_at(until);
        if let Some((meter, _)) = &mut self.meter {
            meter.restart(until);
        }
        let ms = wait.as_millis() as u64;
        for (slot, m) in self.members.iter_mut().enumerate() {
            if let Some(m) = m {
                m.held = 0;
                out.push(Command::Pause { slot, gen: m.gen, ms });
            }
        }
        let why = self.pause_why.as_deref().unwrap_or_default();
        out.push(Command::Log(Level::Info, format!("{why}: pausing every worker for {ms}ms")));
        self.share(out);
    }

    /// Adopts the rate a server announces, unless `--rate` was given.
    fn learn(&mut self, a: Announced, now: Instant, out: &mut Vec<Command>) {
        if matches!(self.meter, Some((_, RateSource::Given))) {
            return;
        }
        if let Some(reset) = a.reset_ms {
            self.longest_reset_ms = self.longest_reset_ms.max(reset);
        }
        // A limit with a reset but no window (the X-RateLimit headers of slowapi, GitHub, ...):
        // the window is at least the longest reset seen.
        let window =
            a.window_ms.filter(|&w| w > 0).or_else(|| a.limit.and(inferred_window_ms(self.longest_reset_ms)));
        // Never past what remains: what is left, spread over what is left of the window. A
        // window that ends within seconds is left to its limit, and to the pause at its end
        // should it be used up: resets that short are coarse (whole seconds of a Redis TTL).
        // With no limit, what is left is all there is to go by.
        let spread = match (a.remaining, a.reset_ms) {
            (Some(left), Some(reset))
                if left > 0 && (reset >= SPREAD_OVER_MS || (a.limit.is_none() && reset > 1000)) =>
            {
                Some(left as f64 * 1000.0 / reset as f64)
            }
            _ => None,
        };
        let rate = match (a.limit, window, spread) {
            (Some(limit), Some(window), spread) => {
                let per_window = limit as f64 * 1000.0 / window as f64;
                spread.map_or(per_window, |s| s.min(per_window))
            }
            (_, _, Some(spread)) => spread,
            _ => return,
        } * ANNOUNCED_SHARE;
        let current = self.meter.as_ref().map(|(m, _)| m.rate());
        if current.is_some_and(|c| (rate - c).abs() <= 0.1 * c) {
            return;
        }
        let burst = self.settings.burst;
        match &mut self.meter {
            Some((m, source)) => {
                m.refill(now, 0);
                m.rate = rate;
                m.burst = burst_of(rate, burst);
                *source = RateSource::Announced;
            }
            None => self.meter = Some((Meter::new(rate, burst, now), RateSource::Announced)),
        }
        self.adaptive = None;
        out.push(Command::Log(
            Level::Info,
            format!("the server announces its limit: keeping to {rate:.1} requests/s"),
        ));
        self.share(out);
        self.grant(now, out);
    }

    fn adapt(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.climb(now, out);
        let Some(c) = &mut self.controller else { return };
        let mean_ms = c.latency_us as f64 / c.requests.max(1) as f64 / 1000.0;
        if c.update(now) {
            let line = format!(
                "concurrency limit now {} (mean latency {mean_ms:.1}ms, baseline {:.1}ms{})",
                c.limit(1),
                c.baseline_us.unwrap_or(0.0) / 1000.0,
                if c.slow_start { ", slow start" } else { "" }
            );
            out.push(Command::Log(Level::Debug, line));
            self.share(out);
        }
    }

    /// Splits the limit among the workers (each at least one request) and tells those whose
    /// share or metering changed.
    fn share(&mut self, out: &mut Vec<Command>) {
        self.note_limit();
        let limit = self.limit();
        let circuit_open = self.circuit.as_ref().is_some_and(|c| c.holds_attempts);
        let metered = self.meter.is_some() || self.circuit.is_some();
        let n = self.members.iter().flatten().count() as u32;
        if n == 0 {
            return;
        }
        for (k, (slot, m)) in
            self.members.iter_mut().enumerate().filter_map(|(s, m)| Some((s, m.as_mut()?))).enumerate()
        {
            let concurrency = limit / n + u32::from((k as u32) < limit % n);
            let pace = Pace { concurrency: concurrency.max(1), metered, circuit_open };
            if m.told != Some(pace) {
                m.told = Some(pace);
                out.push(Command::Pace { slot, gen: m.gen, pace });
            }
        }
    }
}

/// What remains of a window is spread over what remains of it only when that is this long.
const SPREAD_OVER_MS: u64 = 10_000;

/// The lengths windows are made of, in seconds: a window a server does not name is taken to be
/// the first of these at least as long as the longest reset it announced.
const WINDOW_LENGTHS: [u64; 19] =
    [1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400];

/// The window a server keeps to when it announces a limit and resets but no window: the longest
/// reset seen, rounded up to a length windows are made of. A reset may run past its window by a
/// second, or 5% of a long one: the `limits` library (slowapi, Flask-Limiter) computes it from
/// a Redis key's TTL in whole seconds, so a window of a second announces resets up to 2 s away,
/// and a server's clock may be ahead of ours.
fn inferred_window_ms(longest_reset_ms: u64) -> Option<u64> {
    if longest_reset_ms == 0 {
        return None;
    }
    let fits = |secs: u64| secs * 1000 + (secs * 50).max(1000) >= longest_reset_ms;
    Some(WINDOW_LENGTHS.iter().find(|&&secs| fits(secs)).map_or(longest_reset_ms, |secs| secs * 1000))
}

/// A worker short of `short` permits is topped up once this many have accrued: half a batch,
/// so grants come in batches, not one permit a message.
fn threshold(short: u32, batch: u32) -> u32 {
    short.min((batch / 2).max(1))
}

#[cfg(test)]
mod tests;
