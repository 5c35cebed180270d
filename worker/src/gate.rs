//! The gate of a worker's fetch threads: its share of the fleet's concurrency limit (how many
//! threads work on an id at once), and before every request, retries included, the rate
//! permits the supervisor grants and any pause a server asked for. It is also where what the
//! requests met is counted for the supervisor.
//!
//! The supervisor decides; the gate only obeys. Until the first [`Pace`] arrives nothing is
//! sent, so a worker never sends outside the fleet's limits, even for its first request. A
//! limit announced as used up pauses this worker at once, before the supervisor has heard of it
//! and paused the others. A `Retry-After` is reported at once, and waited by its request alone:
//! whether it is the whole fleet's is the supervisor's to decide, from every worker's answers.
//!
//! Two more rules hold the ids' attempts: while the fleet's circuit is open (the API is down),
//! an attempt that met it does not count against its id ([`Ticket`]); and retries wait for the
//! worker's retry budget ([`RetryBudget`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use shared::{Announced, FromWorker, Pace, Traffic};

use crate::outbox::Outgoing;
use crate::policy::RetryBudget;

/// Failed requests in a row that make a worker wait for the fleet's verdict before it gives an
/// id up: the supervisor opens the circuit at 90% of at least 10.
pub const OUTAGE_STREAK: u32 = 10;

/// A request let through the gate: when it started, and whether the circuit was open then
/// (it is a probe).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// When it was let through.
    pub started: Instant,
    probe: bool,
}

/// What one request met, as far as the fleet's pacing cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Met {
    /// The HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// How long the server asked us to wait (`Retry-After`, or a limit announced as used up
    /// until its reset), already capped.
    pub wait: Option<Duration>,
    /// The rate limit its headers announced.
    pub announced: Option<Announced>,
    /// The wait is the limit's, announced used up: the whole client's, not this request's.
    pub used_up: bool,
    /// How it failed, in a few words, when it got no HTTP answer at all.
    pub unanswered: Option<String>,
}

/// See the module documentation. Shared by the fetch threads, the link reader (which applies
/// the supervisor's orders) and the reporter.
pub struct Gate {
    state: Mutex<State>,
    /// Threads waiting for a place (a larger share, or a place given up).
    places: Condvar,
    /// Threads holding a place, waiting to send (a pace, permits, a pause's end).
    sends: Condvar,
    /// Threads waiting for the retry budget (they poll it: a deposit wakes nobody).
    retries: Condvar,
    out: Sender<Outgoing>,
}

#[derive(Default)]
struct State {
    /// `None` until the supervisor's first word: nothing may be sent.
    pace: Option<Pace>,
    /// Fetch threads holding a place (working on an id).
    active: u32,
    /// Requests being sent (entered, not yet left).
    sending: u32,
    /// `sending` as last reported.
    reported_sending: u32,
    /// Permits in hand (metered only).
    permits: u32,
    /// Permits spent since the supervisor was last told.
    spent: u32,
    /// The largest grant so far: spending half of one is worth a report.
    batch: u32,
    /// No request starts before this.
    paused_until: Option<Instant>,
    /// The worker is stopping: no request starts at all.
    closed: bool,
    traffic: Traffic,
    /// The limit and window last reported, to report a change at once.
    told: Option<(Option<u64>, Option<u64>)>,
    /// The retry budget, if the job has one.
    budget: Option<RetryBudget>,
    /// Requests in a row, across the worker's threads, that failed (no answer, a 5xx, a 408).
    failing_streak: u32,
}

impl Gate {
    /// A closed gate (no pace yet) that reports through `out`, and holds retries to `budget`.
    pub fn new(out: Sender<Outgoing>, budget: Option<RetryBudget>) -> Gate {
        Gate {
            state: Mutex::new(State { budget, ..State::default() }),
            places: Condvar::new(),
            sends: Condvar::new(),
            retries: Condvar::new(),
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding this lock can panic halfway through a change, and a panic aborts
        // the worker anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor's new limits. Only as many sleeping threads are woken as there are new
    /// places: the adaptive limit moves every 100ms, and waking a few hundred idle threads each
    /// time cost more than the requests themselves on a fast server.
    pub fn set_pace(&self, pace: Pace) {
        let mut s = self.lock();
        if !pace.metered {
            s.permits = 0;
            s.spent = 0;
        }
        let freed = pace.concurrency.saturating_sub(s.active.max(s.pace.map_or(0, |p| p.concurrency)));
        let sending_changed =
            s.pace.is_none_or(|p| p.metered != pace.metered || p.circuit_open != pace.circuit_open);
        s.pace = Some(pace);
        drop(s);
        notify(&self.places, freed);
        if sending_changed {
            self.sends.notify_all();
        }
    }

    /// Adds permits granted by the supervisor.
    pub fn grant(&self, permits: u32) {
        let mut s = self.lock();
        s.permits = s.permits.saturating_add(permits);
        s.batch = s.batch.max(permits);
        drop(s);
        notify(&self.sends, permits);
    }

    /// The supervisor pauses the fleet: nothing starts for `wait`, and the permits in hand are
    /// dropped (the supervisor counts them as returned).
    pub fn pause(&self, wait: Duration) {
        let mut s = self.lock();
        s.permits = 0;
        s.spent = 0;
        let until = Instant::now() + wait;
        s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
    }

    /// No request starts from now on; waiting threads give up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.places.notify_all();
        self.sends.notify_all();
        self.retries.notify_all();
    }

    /// Whether the fleet's circuit is open, or opens within `grace`: waited only while this
    /// worker's last [`OUTAGE_STREAK`] requests or more all failed (an API failing some ids
    /// costs their threads no wait).
    pub fn circuit_opens_within(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        let mut s = self.lock();
        loop {
            if s.pace.is_some_and(|p| p.circuit_open) {
                return true;
            }
            if s.failing_streak < OUTAGE_STREAK {
                return false;
            }
            let now = Instant::now();
            if s.closed || now >= until {
                return false;
            }
            s = self.sends.wait_timeout(s, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until the budget allows a retry, and takes it. Called without a place at the
    /// gate: a retry waiting for budget is not one of the requests in flight. Returns `false`
    /// once the gate is closed.
    pub fn retry(&self) -> bool {
        let mut s = self.lock();
        loop {
            if s.closed {
                return false;
            }
            let now = Instant::now();
            let Some(budget) = &mut s.budget else { return true };
            if budget.try_retry(now) {
                return true;
            }
            let wait = budget.next_chance(now).min(Duration::from_millis(100));
            s = self.retries.wait_timeout(s, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until the calling fetch thread may work on an id: one of the worker's share of
    /// the fleet's concurrency. `holding` is the thread's own flag: a thread that holds a place
    /// keeps it from one id to the next, with no hand-over to a sleeping thread, until the
    /// share shrinks below the number held. Returns `false` once the gate is closed.
    pub fn hold(&self, holding: &mut bool) -> bool {
        let mut s = self.lock();
        loop {
            if s.closed {
                if std::mem::take(holding) {
                    s.active -= 1;
                }
                return false;
            }
            let share = s.pace.map_or(0, |p| p.concurrency);
            if *holding {
                if s.active <= share {
                    return true;
                }
                // The share shrank: this thread steps down.
                *holding = false;
                s.active -= 1;
            }
            if s.active < share {
                s.active += 1;
                *holding = true;
                return true;
            }
            s = self.places.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A thread back from waiting to retry takes a place again at once, past the share if it
    /// must (threads holding places may be waiting for ids that will not come): the next of
    /// them to ask steps down. Returns `false` once the gate is closed.
    pub fn rejoin(&self, holding: &mut bool) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        if !std::mem::replace(holding, true) {
            s.active += 1;
        }
        true
    }

    /// The calling thread gives its place up: it is ending, or waiting to retry (it rejoins
    /// before it does).
    pub fn release(&self, holding: &mut bool) {
        if std::mem::take(holding) {
            self.lock().active -= 1;
            self.places.notify_one();
        }
    }

    /// Waits until one request may be sent: no pause in force, and a permit if metered (which
    /// it takes). `first`: it is an id's first attempt, which adds to the retry budget.
    /// Returns its ticket, or `None` once the gate is closed.
    pub fn enter(&self, first: bool) -> Option<Ticket> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            let now = Instant::now();
            if let Some(until) = s.paused_until {
                if now < until {
                    s = self.sends.wait_timeout(s, until - now).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
                s.paused_until = None;
            }
            let Some(pace) = s.pace else {
                s = self.sends.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            if pace.metered {
                if s.permits == 0 {
                    s = self.sends.wait(s).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                s.permits -= 1;
                s.spent += 1;
                if s.permits == 0 || s.spent >= (s.batch / 2).max(1) {
                    let spent = std::mem::take(&mut s.spent);
                    let _ = self.out.send(Outgoing::Control(FromWorker::Spent(spent)));
                }
            }
            s.sending += 1;
            if first {
                if let Some(b) = &mut s.budget {
                    b.first(now);
                }
            }
            return Some(Ticket { started: now, probe: pace.circuit_open });
        }
    }

    /// A request let through with `ticket` has ended, having met `met`. Returns whether it
    /// met the open circuit: sent as a probe, or ended while the circuit was open (its failure
    /// is the API's, not its id's).
    pub fn leave(&self, ticket: Ticket, met: Met) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        s.sending -= 1;
        let open = ticket.probe || s.pace.is_some_and(|p| p.circuit_open);
        let failed = met.status.is_none_or(shared::api_failure);
        s.failing_streak = if failed { s.failing_streak.saturating_add(1) } else { 0 };
        s.traffic.count(now.duration_since(ticket.started), met.status);
        if met.unanswered.is_some() {
            s.traffic.unanswered = met.unanswered;
        }
        let t = &mut s.traffic;
        let mut urgent = false;
        if let Some(wait) = met.wait {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            t.wait_ms = Some(t.wait_ms.map_or(ms, |w| w.max(ms)));
            if met.used_up {
                let until = now + wait;
                s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
            }
            urgent = true;
        }
        if let Some(a) = met.announced {
            s.traffic.announced = Some(a);
            let policy = Some((a.limit, a.window_ms));
            if s.told != policy {
                s.told = policy;
                urgent = true;
            }
        }
        let report = if urgent { Some(s.take_traffic()) } else { None };
        drop(s);
        if let Some(t) = report {
            let _ = self.out.send(Outgoing::Control(FromWorker::Traffic(t)));
        }
        open
    }

    /// What the requests met since the last report, if anything.
    pub fn take_traffic(&self) -> Option<Traffic> {
        let mut s = self.lock();
        if s.traffic.is_empty() && s.sending == s.reported_sending {
            return None;
        }
        Some(s.take_traffic())
    }
}

impl State {
    fn take_traffic(&mut self) -> Traffic {
        self.reported_sending = self.sending;
        Traffic { sending: self.sending, ..std::mem::take(&mut self.traffic) }
    }
}

/// Wakes up to `n` threads waiting on `cv`.
fn notify(cv: &Condvar, n: u32) {
    if n >= 64 {
        cv.notify_all();
    } else {
        for _ in 0..n {
            cv.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{unbounded, Receiver};
    use std::sync::Arc;

    fn gate() -> (Arc<Gate>, Receiver<Outgoing>) {
        let (tx, rx) = unbounded();
        (Arc::new(Gate::new(tx, None)), rx)
    }

    fn controls(rx: &Receiver<Outgoing>) -> Vec<FromWorker> {
        rx.try_iter()
            .filter_map(|o| match o {
                Outgoing::Control(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Starts a thread that enters once; returns whether it got in within `wait`.
    fn enters_within(g: &Arc<Gate>, wait: Duration) -> bool {
        let (tx, rx) = unbounded();
        let g2 = g.clone();
        std::thread::spawn(move || {
            let _ = tx.send(g2.enter(true).is_some());
        });
        let got = rx.recv_timeout(wait).unwrap_or(false);
        if !got {
            g.close(); // frees the thread
        }
        got
    }

    #[test]
    fn nothing_is_sent_before_the_first_pace() {
        let (g, _rx) = gate();
        assert!(!enters_within(&g, Duration::from_millis(50)));
        let g2 = g.clone();
        let holder = std::thread::spawn(move || g2.hold(&mut false));
        std::thread::sleep(Duration::from_millis(30));
        g.close();
        assert!(!holder.join().expect("joins"), "a place taken before the first pace");
    }

    #[test]
    fn the_share_bounds_the_threads_at_work_and_a_holder_keeps_its_place() {
        let (g, _rx) = gate();
        g.set_pace(Pace { concurrency: 2, metered: false, circuit_open: false });
        let (mut a, mut b) = (false, false);
        assert!(g.hold(&mut a) && g.hold(&mut b));
        assert!(g.hold(&mut a), "a holder goes on to its next id");
        let g2 = g.clone();
        let (tx, rx) = unbounded();
        let third = std::thread::spawn(move || {
            let mut c = false;
            let _ = tx.send(g2.hold(&mut c));
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "a third thread got a place");
        g.release(&mut a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true), "a released place goes to the waiter");
        third.join().expect("joins");
        // The share shrinks to one: of the two holders, the first to ask again steps down.
        g.set_pace(Pace { concurrency: 1, metered: false, circuit_open: false });
        let g2 = g.clone();
        let stepped_down = std::thread::spawn(move || g2.hold(&mut b));
        std::thread::sleep(Duration::from_millis(30));
        g.close();
        assert!(!stepped_down.join().expect("joins"));
    }

    #[test]
    fn metered_requests_wait_for_a_permit() {
        let (g, _rx) = gate();
        g.set_pace(Pace { concurrency: 100, metered: true, circuit_open: false });
        assert!(!enters_within(&g, Duration::from_millis(30)), "entered without a permit");
    }

    #[test]
    fn metered_requests_spend_permits_and_report_them() {
        let (g, rx) = gate();
        g.set_pace(Pace { concurrency: 100, metered: true, circuit_open: false });
        g.grant(4);
        for _ in 0..4 {
            let t = g.enter(true).expect("a permit");
            g.leave(t, Met::default());
        }
        assert!(!enters_within(&g, Duration::from_millis(30)), "a fifth request with 4 permits");
        // Half a batch, then the last: 2 + 2.
        assert_eq!(controls(&rx), vec![FromWorker::Spent(2), FromWorker::Spent(2)]);
    }

    #[test]
    fn a_retry_after_is_reported_at_once_and_a_used_up_limit_pauses_the_worker() {
        let (g, rx) = gate();
        g.set_pace(Pace { concurrency: 10, metered: false, circuit_open: false });
        let t = g.enter(true).expect("open");
        let wait = Some(Duration::from_millis(300));
        g.leave(t, Met { status: Some(429), wait, ..Met::default() });
        let sent = controls(&rx);
        match &sent[..] {
            [FromWorker::Traffic(t)] => {
                assert_eq!((t.requests, t.too_many, t.throttled, t.wait_ms), (1, 1, 1, Some(300)));
            }
            other => panic!("expected one traffic report, got {other:?}"),
        }
        assert!(enters_within(&g, Duration::from_millis(100)), "one request's Retry-After pauses no other");
        let t = g.enter(true).expect("open");
        g.leave(t, Met { status: Some(200), wait, used_up: true, ..Met::default() });
        let started = Instant::now();
        g.enter(true).expect("opens again");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "paused only {waited:?}");
    }

    #[test]
    fn a_pause_from_the_supervisor_drops_the_permits_in_hand() {
        let (g, _rx) = gate();
        g.set_pace(Pace { concurrency: 10, metered: true, circuit_open: false });
        g.grant(10);
        g.pause(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!enters_within(&g, Duration::from_millis(30)), "spent a permit dropped by the pause");
    }

    #[test]
    fn a_new_announced_policy_is_reported_at_once_and_repeats_wait_for_the_tick() {
        let (g, rx) = gate();
        g.set_pace(Pace { concurrency: 10, metered: false, circuit_open: false });
        let a = Announced { limit: Some(100), window_ms: Some(1000), remaining: Some(99), reset_ms: None };
        for remaining in [99, 98] {
            let t = g.enter(true).expect("open");
            let announced = Some(Announced { remaining: Some(remaining), ..a });
            g.leave(t, Met { status: Some(200), announced, ..Met::default() });
        }
        assert_eq!(controls(&rx).len(), 1, "the same policy again is not urgent");
        let t = g.take_traffic().expect("one request since");
        assert_eq!((t.requests, t.announced.and_then(|a| a.remaining)), (1, Some(98)));
        assert!(g.take_traffic().is_none());
    }

    #[test]
    fn an_attempt_that_met_the_open_circuit_says_so() {
        let (g, _rx) = gate();
        let closed = Pace { concurrency: 10, metered: false, circuit_open: false };
        g.set_pace(closed);
        let before = g.enter(true).expect("open");
        assert!(!g.leave(before, Met::default()), "the circuit is closed");
        let sent_before = g.enter(true).expect("open");
        g.set_pace(Pace { metered: true, circuit_open: true, ..closed });
        assert!(g.leave(sent_before, Met::default()), "it failed while the circuit was open");
        g.grant(1);
        let probe = g.enter(false).expect("a probe's permit");
        g.set_pace(closed);
        assert!(g.leave(probe, Met { status: Some(200), ..Met::default() }), "a probe met it");
    }

    #[test]
    fn a_retry_waits_for_the_budget_and_first_attempts_fill_it() {
        let (tx, _rx) = unbounded();
        // 50%, no floor: one retry per two first attempts.
        let g = Arc::new(Gate::new(tx, Some(RetryBudget::new(50, 0, Instant::now()))));
        g.set_pace(Pace { concurrency: 10, metered: false, circuit_open: false });
        let g2 = g.clone();
        let (done, waited) = unbounded();
        std::thread::spawn(move || {
            let _ = done.send(g2.retry());
        });
        assert!(waited.recv_timeout(Duration::from_millis(150)).is_err(), "a retry with no budget went");
        for _ in 0..2 {
            let t = g.enter(true).expect("open");
            g.leave(t, Met::default());
        }
        assert_eq!(waited.recv_timeout(Duration::from_secs(5)), Ok(true), "two first attempts allow a retry");
        let t = g.enter(false).expect("open");
        g.leave(t, Met::default());
        let g2 = g.clone();
        let blocked = std::thread::spawn(move || g2.retry());
        std::thread::sleep(Duration::from_millis(30));
        g.close();
        assert!(!blocked.join().expect("joins"), "a retry enters nothing once the gate closes");
    }

    #[test]
    fn closing_frees_every_waiting_thread() {
        let (g, _rx) = gate();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.enter(true))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        g.close();
        for w in waiters {
            assert!(w.join().expect("joins").is_none());
        }
    }
}
