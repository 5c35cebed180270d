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
//!
//! Shaped as the supervisor's core is: [`Door`] is plain state that decides, with the clock
//! passed in, and says what a thread may do now (go, wait until then, wait for a word, give
//! up); [`Gate`] holds it behind one lock and makes the threads wait and wake as it says. A
//! thread's place in the share is a [`Place`], given back when it is dropped (as tokio's
//! `SemaphorePermit` is).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use shared::{Announced, FromWorker, Pace, Traffic};

use crate::outbox::Outgoing;
use crate::policy::RetryBudget;

/// Failed requests in a row that make a worker wait for the fleet's verdict before it gives an
/// id up: the supervisor opens the circuit at 90% of at least 10.
pub const OUTAGE_STREAK: u32 = 10;

/// How long a thread waiting for the retry budget sleeps before it asks again: a first attempt
/// that adds to the budget wakes nobody.
const BUDGET_POLL: Duration = Duration::from_millis(100);

/// A request let through the gate: when it started, and whether the circuit was open then
/// (it is a probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a request asking to go is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// It goes, on this ticket; the permits spent since the supervisor was last told, when
    /// that is worth telling it now.
    Now(Ticket, Option<u32>),
    /// Not before then (a pause).
    Until(Instant),
    /// Not before a word from the supervisor (the first pace, permits).
    Wait,
    /// Never: the gate is closed.
    Closed,
}

/// What a thread asking for a place in the share is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// It has one.
    Taken,
    /// Not before a place is freed or the share grows.
    Wait,
    /// Never: the gate is closed.
    Closed,
}

/// What a retry asking the budget is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It may go.
    Now,
    /// Not before then, at the earliest.
    Until(Instant),
    /// Never: the gate is closed.
    Closed,
}

/// Whether an id whose last attempt failed met an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The fleet's circuit is open: the attempt was the outage's.
    Open,
    /// Not an outage (or the gate closed): the id is given up.
    No,
    /// This worker's requests all fail of late: wait to hear whether the circuit opens.
    Unknown,
}

/// Threads to wake after a change: how many waiting for a place, and whether every thread
/// waiting to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// Threads waiting for a place that now have one.
    pub places: u32,
    /// Whether threads waiting to send should look again.
    pub sends: bool,
}

/// The gate's state and its decisions, with the clock passed in. See the module documentation.
#[derive(Debug, Default)]
pub struct Door {
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

impl Door {
    /// A closed door (no pace yet) that holds retries to `budget`.
    pub fn new(budget: Option<RetryBudget>) -> Door {
        Door { budget, ..Door::default() }
    }

    /// The supervisor's new limits. Only as many waiting threads are woken as there are new
    /// places: the adaptive limit moves every 100ms, and waking a few hundred idle threads each
    /// time cost more than the requests themselves on a fast server.
    pub fn set_pace(&mut self, pace: Pace) -> Wake {
        if !pace.metered {
            self.permits = 0;
            self.spent = 0;
        }
        let places = pace.concurrency.saturating_sub(self.active.max(self.pace.map_or(0, |p| p.concurrency)));
        let sends =
            self.pace.is_none_or(|p| p.metered != pace.metered || p.circuit_open != pace.circuit_open);
        self.pace = Some(pace);
        Wake { places, sends }
    }

    /// Adds permits granted by the supervisor.
    pub fn grant(&mut self, permits: u32) {
        self.permits = self.permits.saturating_add(permits);
        self.batch = self.batch.max(permits);
    }

    /// The supervisor pauses the fleet: nothing starts before `until`, and the permits in hand
    /// are dropped (the supervisor counts them as returned).
    pub fn pause(&mut self, until: Instant) {
        self.permits = 0;
        self.spent = 0;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    /// No request starts from now on.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// A thread with no place asks for one.
    pub fn take_place(&mut self) -> Seat {
        if self.closed {
            return Seat::Closed;
        }
        if self.active < self.pace.map_or(0, |p| p.concurrency) {
            self.active += 1;
            return Seat::Taken;
        }
        Seat::Wait
    }

    /// A thread holding a place asks to go on to its next id: it keeps the place while the
    /// share has room for it (no hand-over to a sleeping thread), and steps down when the share
    /// shrank below the places held. Returns whether it still holds it.
    pub fn keep_place(&mut self) -> bool {
        if !self.closed && self.active <= self.pace.map_or(0, |p| p.concurrency) {
            return true;
        }
        self.active -= 1;
        false
    }

    /// A thread gives its place up: it is ending, or waiting to retry.
    pub fn give_place(&mut self) {
        self.active -= 1;
    }

    /// A thread back from waiting to retry takes a place again at once, past the share if it
    /// must (threads holding places may be waiting for ids that will not come): the next of
    /// them to ask steps down. Returns `false` once the gate is closed.
    pub fn rejoin(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.active += 1;
        true
    }

    /// Whether one request may be sent at `now`: no pause in force, and a permit if metered
    /// (which it takes). `first`: it is an id's first attempt, which adds to the retry budget.
    pub fn enter(&mut self, first: bool, now: Instant) -> Go {
        if self.closed {
            return Go::Closed;
        }
        if let Some(until) = self.paused_until {
            if now < until {
                return Go::Until(until);
            }
            self.paused_until = None;
        }
        let Some(pace) = self.pace else { return Go::Wait };
        let mut report = None;
        if pace.metered {
            if self.permits == 0 {
                return Go::Wait;
            }
            self.permits -= 1;
            self.spent += 1;
            if self.permits == 0 || self.spent >= (self.batch / 2).max(1) {
                report = Some(std::mem::take(&mut self.spent));
            }
        }
        self.sending += 1;
        if first {
            if let Some(b) = &mut self.budget {
                b.first(now);
            }
        }
        Go::Now(Ticket { started: now, probe: pace.circuit_open }, report)
    }

    /// A request let through with `ticket` has ended at `now`, having met `met`. Returns
    /// whether it met the open circuit (sent as a probe, or ended while the circuit was open:
    /// its failure is the API's, not its id's), and what to report at once, if anything (a
    /// server's wait, a new announced policy).
    pub fn leave(&mut self, ticket: Ticket, met: Met, now: Instant) -> (bool, Option<Traffic>) {
        self.sending -= 1;
        let open = ticket.probe || self.pace.is_some_and(|p| p.circuit_open);
        let failed = met.status.is_none_or(shared::api_failure);
        self.failing_streak = if failed { self.failing_streak.saturating_add(1) } else { 0 };
        self.traffic.count(now.saturating_duration_since(ticket.started), met.status);
        if met.unanswered.is_some() {
            self.traffic.unanswered = met.unanswered;
        }
        let mut urgent = false;
        if let Some(wait) = met.wait {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            self.traffic.wait_ms = Some(self.traffic.wait_ms.map_or(ms, |w| w.max(ms)));
            if met.used_up {
                let until = now + wait;
                self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
            }
            urgent = true;
        }
        if let Some(a) = met.announced {
            self.traffic.announced = Some(a);
            let policy = Some((a.limit, a.window_ms));
            if self.told != policy {
                self.told = policy;
                urgent = true;
            }
        }
        (open, urgent.then(|| self.report()))
    }

    /// Whether a retry may go at `now`, taking it from the budget if so.
    pub fn retry(&mut self, now: Instant) -> Retry {
        if self.closed {
            return Retry::Closed;
        }
        let Some(budget) = &mut self.budget else { return Retry::Now };
        if budget.try_retry(now) {
            return Retry::Now;
        }
        Retry::Until(now + budget.next_chance(now))
    }

    /// Whether an id whose last attempt failed met an outage: the fleet's circuit is open, or
    /// may be about to open (this worker's last [`OUTAGE_STREAK`] requests or more all failed:
    /// an API failing some ids costs their threads no wait).
    pub fn outage(&self) -> Outage {
        if self.pace.is_some_and(|p| p.circuit_open) {
            Outage::Open
        } else if self.closed || self.failing_streak < OUTAGE_STREAK {
            Outage::No
        } else {
            Outage::Unknown
        }
    }

    /// What the requests met since the last report, if anything.
    pub fn take_traffic(&mut self) -> Option<Traffic> {
        if self.traffic.is_empty() && self.sending == self.reported_sending {
            return None;
        }
        Some(self.report())
    }

    fn report(&mut self) -> Traffic {
        self.reported_sending = self.sending;
        Traffic { sending: self.sending, ..std::mem::take(&mut self.traffic) }
    }
}

/// See the module documentation. Shared by the fetch threads, the link reader (which applies
/// the supervisor's orders) and the reporter.
pub struct Gate {
    door: Mutex<Door>,
    /// Threads waiting for a place (a larger share, or a place given up).
    places: Condvar,
    /// Threads holding a place, waiting to send (a pace, permits, a pause's end).
    sends: Condvar,
    /// Threads waiting for the retry budget (they poll it: a deposit wakes nobody).
    retries: Condvar,
    out: Sender<Outgoing>,
}

/// A fetch thread's place among its worker's share of the fleet's requests in flight, held
/// from one id to the next and given back when dropped.
pub struct Place<'g> {
    gate: &'g Gate,
    held: bool,
}

impl Place<'_> {
    /// Waits until the thread may work on an id: it keeps the place it holds while the share
    /// has room for it, or waits for one. Returns `false` once the gate is closed (the place,
    /// if held, given back).
    pub fn keep(&mut self) -> bool {
        let mut door = self.gate.lock();
        // A holder keeps its place while the share has room for it; past a shrunk share (or
        // a closed gate) it steps down here.
        if std::mem::take(&mut self.held) && door.keep_place() {
            self.held = true;
            return true;
        }
        loop {
            match door.take_place() {
                Seat::Taken => {
                    self.held = true;
                    return true;
                }
                Seat::Closed => return false,
                Seat::Wait => door = self.gate.places.wait(door).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Gives the place up while the thread waits (to retry, or to hear of an outage).
    pub fn step_aside(&mut self) {
        if std::mem::take(&mut self.held) {
            self.gate.lock().give_place();
            self.gate.places.notify_one();
        }
    }

    /// Takes a place again at once after such a wait, past the share if it must. Returns
    /// `false` once the gate is closed.
    pub fn rejoin(&mut self) -> bool {
        if self.held {
            return true;
        }
        self.held = self.gate.lock().rejoin();
        self.held
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.step_aside();
    }
}

impl Gate {
    /// A closed gate (no pace yet) that reports through `out`, and holds retries to `budget`.
    pub fn new(out: Sender<Outgoing>, budget: Option<RetryBudget>) -> Gate {
        Gate {
            door: Mutex::new(Door::new(budget)),
            places: Condvar::new(),
            sends: Condvar::new(),
            retries: Condvar::new(),
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Door> {
        // No code holding this lock can panic halfway through a change, and a panic aborts
        // the worker anyway.
        self.door.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fetch thread's place, not yet taken: [`Place::keep`] takes it.
    pub fn place(&self) -> Place<'_> {
        Place { gate: self, held: false }
    }

    /// The supervisor's new limits: wakes as many threads as they free places.
    pub fn set_pace(&self, pace: Pace) {
        let wake = self.lock().set_pace(pace);
        notify(&self.places, wake.places);
        if wake.sends {
            self.sends.notify_all();
        }
    }

    /// Adds permits granted by the supervisor.
    pub fn grant(&self, permits: u32) {
        self.lock().grant(permits);
        notify(&self.sends, permits);
    }

    /// The supervisor pauses the fleet: nothing starts for `wait`, and the permits in hand are
    /// dropped.
    pub fn pause(&self, wait: Duration) {
        self.lock().pause(Instant::now() + wait);
    }

    /// No request starts from now on; waiting threads give up.
    pub fn close(&self) {
        self.lock().close();
        self.places.notify_all();
        self.sends.notify_all();
        self.retries.notify_all();
    }

    /// Whether the fleet's circuit is open, or opens within `grace` (see [`Door::outage`]).
    pub fn circuit_opens_within(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        let mut door = self.lock();
        loop {
            let now = Instant::now();
            match door.outage() {
                Outage::Open => return true,
                Outage::No => return false,
                Outage::Unknown if now >= until => return false,
                Outage::Unknown => {
                    door = self.sends.wait_timeout(door, until - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }

    /// Waits until the budget allows a retry, and takes it. Called without a place at the
    /// gate: a retry waiting for budget is not one of the requests in flight. Returns `false`
    /// once the gate is closed.
    pub fn retry(&self) -> bool {
        let mut door = self.lock();
        loop {
            let now = Instant::now();
            match door.retry(now) {
                Retry::Now => return true,
                Retry::Closed => return false,
                Retry::Until(at) => {
                    let wait = at.saturating_duration_since(now).min(BUDGET_POLL);
                    door = self.retries.wait_timeout(door, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }

    /// Waits until one request may be sent, and lets it through. `first`: it is an id's first
    /// attempt. Returns its ticket, or `None` once the gate is closed.
    pub fn enter(&self, first: bool) -> Option<Ticket> {
        let mut door = self.lock();
        loop {
            let now = Instant::now();
            match door.enter(first, now) {
                Go::Now(ticket, spent) => {
                    drop(door);
                    if let Some(n) = spent {
                        let _ = self.out.send(Outgoing::Control(FromWorker::Spent(n)));
                    }
                    return Some(ticket);
                }
                Go::Until(at) => {
                    door = self.sends.wait_timeout(door, at - now).unwrap_or_else(|p| p.into_inner()).0;
                }
                Go::Wait => door = self.sends.wait(door).unwrap_or_else(|p| p.into_inner()),
                Go::Closed => return None,
            }
        }
    }

    /// A request let through with `ticket` has ended, having met `met`. Returns whether it
    /// met the open circuit.
    pub fn leave(&self, ticket: Ticket, met: Met) -> bool {
        let (open, report) = self.lock().leave(ticket, met, Instant::now());
        if let Some(t) = report {
            let _ = self.out.send(Outgoing::Control(FromWorker::Traffic(t)));
        }
        open
    }

    /// What the requests met since the last report, if anything.
    pub fn take_traffic(&self) -> Option<Traffic> {
        self.lock().take_traffic()
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

    const MS: Duration = Duration::from_millis(1);

    fn pace(concurrency: u32, metered: bool, circuit_open: bool) -> Pace {
        Pace { concurrency, metered, circuit_open }
    }

    fn ticket(go: Go) -> Ticket {
        match go {
            Go::Now(t, _) => t,
            other => panic!("expected to go, told {other:?}"),
        }
    }

    #[test]
    fn nothing_is_sent_or_worked_on_before_the_first_pace() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        assert_eq!(d.enter(true, t0), Go::Wait);
        assert_eq!(d.take_place(), Seat::Wait);
        let wake = d.set_pace(pace(2, false, false));
        assert_eq!(wake, Wake { places: 2, sends: true }, "the first word frees places and sends");
        assert_eq!(d.take_place(), Seat::Taken);
        assert!(matches!(d.enter(true, t0), Go::Now(_, None)));
    }

    #[test]
    fn the_share_bounds_the_threads_at_work_and_a_holder_keeps_its_place() {
        let mut d = Door::new(None);
        d.set_pace(pace(2, false, false));
        assert_eq!((d.take_place(), d.take_place()), (Seat::Taken, Seat::Taken));
        assert!(d.keep_place(), "a holder goes on to its next id");
        assert_eq!(d.take_place(), Seat::Wait, "a third thread waits");
        d.give_place();
        assert_eq!(d.take_place(), Seat::Taken, "a place given back goes to the waiter");
        // The share shrinks to one: of the two holders, the first to ask again steps down.
        assert_eq!(d.set_pace(pace(1, false, false)).places, 0);
        assert!(!d.keep_place(), "steps down");
        assert!(d.keep_place(), "the other keeps its place");
        // Back from a wait to retry, a thread rejoins past the share.
        assert!(d.rejoin());
        assert!(!d.keep_place(), "and the next to ask steps down");
        assert_eq!(d.set_pace(pace(4, false, false)).places, 3, "three new places");
    }

    #[test]
    fn metered_requests_wait_for_a_permit_spend_it_and_report_what_they_spent() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(100, true, false));
        assert_eq!(d.enter(true, t0), Go::Wait, "no permit");
        d.grant(4);
        let reports: Vec<Option<u32>> = (0..4)
            .map(|_| match d.enter(true, t0) {
                Go::Now(_, spent) => spent,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reports, [None, Some(2), None, Some(2)], "half a batch, then the last");
        assert_eq!(d.enter(true, t0), Go::Wait, "a fifth request with 4 permits");
    }

    #[test]
    fn a_retry_after_is_reported_at_once_and_a_used_up_limit_pauses_the_worker() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(10, false, false));
        let t = ticket(d.enter(true, t0));
        let wait = Some(300 * MS);
        let (_, report) = d.leave(t, Met { status: Some(429), wait, ..Met::default() }, t0 + MS);
        let report = report.expect("reported at once");
        assert_eq!(
            (report.requests, report.too_many, report.throttled, report.wait_ms),
            (1, 1, 1, Some(300))
        );
        assert!(matches!(d.enter(true, t0 + MS), Go::Now(..)), "one request's Retry-After pauses no other");
        let t = ticket(d.enter(true, t0 + MS));
        d.leave(t, Met { status: Some(200), wait, used_up: true, ..Met::default() }, t0 + 2 * MS);
        assert_eq!(d.enter(true, t0 + 3 * MS), Go::Until(t0 + 302 * MS), "the worker waits for the reset");
        assert!(matches!(d.enter(true, t0 + 302 * MS), Go::Now(..)));
    }

    #[test]
    fn a_pause_from_the_supervisor_drops_the_permits_in_hand() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(10, true, false));
        d.grant(10);
        d.pause(t0 + MS);
        assert_eq!(d.enter(true, t0), Go::Until(t0 + MS));
        assert_eq!(d.enter(true, t0 + MS), Go::Wait, "its permits were dropped");
    }

    #[test]
    fn a_new_announced_policy_is_reported_at_once_and_repeats_wait_for_the_tick() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(10, false, false));
        let a = Announced { limit: Some(100), window_ms: Some(1000), remaining: Some(99), reset_ms: None };
        let urgent: Vec<bool> = [99, 98]
            .into_iter()
            .map(|remaining| {
                let t = ticket(d.enter(true, t0));
                let announced = Some(Announced { remaining: Some(remaining), ..a });
                d.leave(t, Met { status: Some(200), announced, ..Met::default() }, t0).1.is_some()
            })
            .collect();
        assert_eq!(urgent, [true, false], "the same policy again is not urgent");
        let t = d.take_traffic().expect("one request since");
        assert_eq!((t.requests, t.announced.and_then(|a| a.remaining)), (1, Some(98)));
        assert!(d.take_traffic().is_none());
    }

    #[test]
    fn an_attempt_that_met_the_open_circuit_says_so_and_a_failing_streak_waits_for_the_verdict() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(10, false, false));
        let before = ticket(d.enter(true, t0));
        assert!(!d.leave(before, Met::default(), t0).0, "the circuit is closed");
        let sent_before = ticket(d.enter(true, t0));
        d.set_pace(pace(10, true, true));
        assert!(d.leave(sent_before, Met::default(), t0).0, "it failed while the circuit was open");
        assert_eq!(d.outage(), Outage::Open);
        d.grant(1);
        let probe = ticket(d.enter(false, t0));
        d.set_pace(pace(10, false, false));
        assert!(d.leave(probe, Met { status: Some(200), ..Met::default() }, t0).0, "a probe met it");
        assert_eq!(d.outage(), Outage::No, "an answer ends the streak");
        for _ in 0..OUTAGE_STREAK {
            let t = ticket(d.enter(true, t0));
            d.leave(t, Met { status: Some(503), ..Met::default() }, t0);
        }
        assert_eq!(d.outage(), Outage::Unknown, "ten failures in a row: wait for the fleet's verdict");
        d.close();
        assert_eq!(d.outage(), Outage::No);
    }

    #[test]
    fn a_retry_waits_for_the_budget_and_first_attempts_fill_it() {
        let t0 = Instant::now();
        // 50%, no floor: one retry per two first attempts.
        let mut d = Door::new(Some(RetryBudget::new(50, 0, t0)));
        d.set_pace(pace(10, false, false));
        assert_eq!(d.retry(t0), Retry::Until(t0 + Duration::from_secs(1)), "no budget yet");
        for _ in 0..2 {
            let t = ticket(d.enter(true, t0));
            d.leave(t, Met::default(), t0);
        }
        assert_eq!(d.retry(t0), Retry::Now, "two first attempts allow a retry");
        assert!(matches!(d.retry(t0), Retry::Until(_)), "and only one");
        d.close();
        assert_eq!(d.retry(t0), Retry::Closed);
    }

    #[test]
    fn a_closed_door_lets_nothing_through() {
        let t0 = Instant::now();
        let mut d = Door::new(None);
        d.set_pace(pace(10, false, false));
        assert_eq!(d.take_place(), Seat::Taken);
        d.close();
        assert_eq!(d.enter(true, t0), Go::Closed);
        assert_eq!(d.take_place(), Seat::Closed);
        assert!(!d.keep_place(), "a holder gives its place up");
        assert!(!d.rejoin());
    }

    // The wrapper: threads wait and wake as the door says. Bounded waits on channels, no sleep.

    #[test]
    fn a_place_is_given_back_when_dropped_and_closing_frees_every_waiting_thread() {
        use std::sync::Arc;
        let (tx, _rx) = crossbeam_channel::unbounded();
        let g = Arc::new(Gate::new(tx, None));
        g.set_pace(pace(1, false, false));
        let mut mine = g.place();
        assert!(mine.keep());
        let (got, took) = crossbeam_channel::unbounded();
        let g2 = g.clone();
        let waiter = std::thread::spawn(move || {
            let mut place = g2.place();
            let _ = got.send(place.keep());
        });
        drop(mine);
        assert_eq!(
            took.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "the dropped place went to the waiter"
        );
        waiter.join().expect("joins");
        g.set_pace(pace(1, true, false)); // metered, and no permit: every sender waits
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.enter(true))
            })
            .collect();
        g.close();
        for w in waiters {
            assert_eq!(w.join().expect("joins"), None, "freed, and let nothing through");
        }
        assert!(g.enter(true).is_none(), "closed");
        assert!(!g.place().keep(), "closed");
    }
}
