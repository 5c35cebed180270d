//! The dispatcher's decision core: a synchronous state machine with no I/O.
//!
//! It owns a run's state (the queue of chunks, each slot and what its worker holds, death
//! counts, suspects, restart timers, the stop state) and turns each [`Event`] into the
//! [`Command`]s that answer it. It never spawns, kills, writes a pipe, reads a clock or logs:
//! the loop in `drive` feeds it events with the time they were seen and carries out what it
//! says, so every rule below is unit-tested in `tests.rs` without a process or a sleep.
//!
//! Exactly once: an id handed to a worker is in that worker's [`Load`] until its result
//! arrives, and only then goes to the store. When a worker ends, its reader thread has already
//! delivered every frame it sent, so what it still holds is exactly what it never reported:
//! that is requeued, ahead of new work. A result for an id the worker does not hold is dropped.
//! An assignment the worker never received (its stdin was already closed) goes back as it was.
//!
//! Poison ids (ids that kill the workers holding them) are counted by [`Poison`]: the core asks
//! it what a death means and carries out the answer (requeue, retry alone, quarantine).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use log::Level;
use shared::{ItemResult, Outcome, HEARTBEAT_EVERY};

use super::error::Error;
use super::figures::{Figures, Snapshot};
use super::messages::{Command, Ended, Event, EventKind, FleetEvent, KillReason, ProtocolFault};
use super::pace::Pacer;
use super::poison::{Poison, Strike};
use crate::job::{rechunk, PaceSettings};
use crate::util::signal_name;

/// A slot that dies this many times in a row, with no result delivered by any worker in
/// between, stops the run: the worker is broken, not the data.
pub const MAX_BARREN_DEATHS: u32 = 5;
/// This many quarantines in a row with no result in between stop the run.
pub const MAX_QUARANTINES_IN_A_ROW: u32 = 5;
/// How long draining workers get to exit after their stdin closes at the end of a run.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long an aborting run waits for its killed workers' last results.
pub const ABORT_GRACE: Duration = Duration::from_secs(2);
/// A gap this long between two ticks means the dispatcher itself was held up.
const STALL: Duration = Duration::from_secs(1);

/// What the core needs to know of the run's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker slots.
    pub workers: usize,
    /// Ids per requeued chunk.
    pub chunk_size: usize,
    /// The most ids one worker may hold.
    pub max_in_flight: usize,
    /// Silence after which a worker is killed.
    pub worker_timeout: Duration,
    /// How long workers get to finish after SIGTERM/SIGINT.
    pub grace: Duration,
    /// Kill a random worker this often (`--chaos kill-every`).
    pub kill_every: Option<Duration>,
    /// How fast the fleet may send.
    pub pace: PaceSettings,
}

/// How long a slot waits before it starts again, after `barren_deaths` deaths in a row without
/// a result: at once after a worker that delivered, then 100ms doubling to 5s.
pub fn restart_delay(barren_deaths: u32) -> Duration {
    match barren_deaths {
        0 => Duration::ZERO,
        k => (Duration::from_millis(100) * (1 << (k - 1).min(16))).min(Duration::from_secs(5)),
    }
}

/// One worker slot across the workers that fill it in turn.
#[derive(Debug)]
struct Slot {
    /// Which start of this slot is current; events of earlier ones are ignored.
    gen: u64,
    /// Deaths in a row with no result delivered anywhere in between.
    barren_deaths: u32,
    state: SlotState,
}

/// A slot's life: no worker, one being started, or one running.
#[derive(Debug)]
enum SlotState {
    /// No worker. While the run is fetching, one starts at `restart_at`.
    Down { restart_at: Instant },
    /// A [`Command::Spawn`] is being carried out.
    Spawning,
    /// A worker process exists (until its reader reports it gone).
    Up(Worker),
}

#[derive(Debug)]
struct Worker {
    pid: u32,
    stage: Stage,
    load: Load,
    /// Whether it delivered any result.
    delivered: bool,
    last_heard: Instant,
}

/// Where a running worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Started; its hello has not arrived.
    Starting,
    /// Takes work.
    Ready,
    /// Its stdin was closed at `since`: it finishes what it has and exits.
    Closing { since: Instant },
    /// SIGKILL was sent, for this reason; its reader will report it gone.
    Killed(KillReason),
}

/// What a worker holds.
#[derive(Debug)]
enum Load {
    /// Ids from chunks (possibly none).
    Chunks(HashSet<u64>),
    /// One suspect, alone: its death is a strike against that id.
    Alone(u64),
}

impl Load {
    fn is_empty(&self) -> bool {
        matches!(self, Load::Chunks(ids) if ids.is_empty())
    }

    fn len(&self) -> usize {
        match self {
            Load::Chunks(ids) => ids.len(),
            Load::Alone(_) => 1,
        }
    }
}

/// Why the run is winding down, if it is.
#[derive(Debug)]
enum Phase {
    Fetching,
    /// Every id is stored: workers are leaving.
    Draining,
    /// A signal arrived: workers finish the requests in hand until the deadline (`None` once
    /// it has passed and the stragglers were killed).
    Stopping {
        signal: i32,
        deadline: Option<Instant>,
    },
    /// A fatal error: workers are killed; their last results are stored until the deadline.
    Aborting {
        deadline: Instant,
    },
    /// [`Command::Finish`] was given.
    Finished,
}

/// The decision core. See the module documentation.
pub struct Core {
    settings: Settings,
    slots: Vec<Slot>,
    pending: VecDeque<Vec<u64>>,
    poison: Poison,
    planned: u64,
    planner_done: bool,
    /// Ids this run has to store, once the counter has counted what the store held.
    to_fetch: Option<u64>,
    phase: Phase,
    error: Option<Error>,
    report: Figures,
    started: Instant,
    last_tick: Instant,
    next_chaos_kill: Option<Instant>,
    rng: fastrand::Rng,
    pacer: Pacer,
    out: Vec<Command>,
}

impl Core {
    /// A run that starts at `now` with every slot due to start. `rng` picks chaos victims.
    pub fn new(settings: Settings, now: Instant, rng: fastrand::Rng) -> Core {
        Core {
            slots: (0..settings.workers)
                .map(|_| Slot { gen: 0, barren_deaths: 0, state: SlotState::Down { restart_at: now } })
                .collect(),
            next_chaos_kill: settings.kill_every.map(|every| now + every),
            pacer: Pacer::new(settings.pace.clone(), settings.workers, now),
            settings,
            pending: VecDeque::new(),
            poison: Poison::default(),
            planned: 0,
            planner_done: false,
            to_fetch: None,
            phase: Phase::Fetching,
            error: None,
            report: Figures::default(),
            started: now,
            last_tick: now,
            rng,
            out: Vec::new(),
        }
    }

    /// Reacts to `event`, seen at `now`, and says what to do.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        match event {
            Event::Planned { ids, skipped, quarantined } => {
                self.report.tally.skipped += skipped;
                self.report.skipped_quarantined += quarantined;
                self.planned += ids.len() as u64;
                if !ids.is_empty() {
                    self.pending.push_back(ids);
                }
            }
            Event::PlanEnded => self.planner_done = true,
            Event::Counted { settled, range } => self.to_fetch = Some(range.saturating_sub(settled)),
            Event::Spawned { slot, gen, pid } => self.on_spawned(slot, gen, pid, now),
            Event::SpawnFailed { slot, gen, error } => self.on_spawn_failed(slot, gen, error, now),
            Event::Worker(ev) => self.on_worker(ev, now),
            Event::Unsent { slot, gen, ids } => self.on_unsent(slot, gen, ids),
            Event::Durable(d) => {
                self.report.tally.add(&d.tally);
                self.report.new_records += d.new_records;
            }
            Event::Signal(sig) => self.on_signal(sig, now),
            Event::Tick => self.on_tick(now),
            Event::Wake => self.pacer.wake(now, &mut self.out),
            Event::Fatal(error) => self.fail(error, now),
        }
        self.step(now);
        std::mem::take(&mut self.out)
    }

    /// Whether the core wants the planner's next chunk: only while its queue is short, so the
    /// planner waits and memory stays flat whatever the range.
    pub fn wants_plans(&self) -> bool {
        matches!(self.phase, Phase::Fetching) && !self.planner_done && self.pending.len() < self.slots.len()
    }

    /// When the core next wants an [`Event::Wake`], besides the regular ticks: permits accrue
    /// or a pause ends.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        match self.phase {
            Phase::Fetching => self.pacer.next_wake(now),
            _ => None,
        }
    }

    /// The run's figures now, for progress, metrics, systemd and the live status file.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let r = &self.report;
        Snapshot {
            elapsed_secs: now.duration_since(self.started).as_secs_f64(),
            stored: r.fetched(),
            to_fetch: self.to_fetch,
            tally: r.tally,
            workers_up: self
                .slots
                .iter()
                .filter(|s| matches!(&s.state, SlotState::Up(w) if w.stage == Stage::Ready))
                .count() as u32,
            workers: self.slots.len() as u32,
            queued: self.pending.iter().map(|c| c.len() as u64).sum::<u64>() + self.poison.waiting() as u64,
            pace: self.pacer.figures(),
            paused_ms: self.pacer.paused_until(now).map(|u| u.duration_since(now).as_millis() as u64),
            circuit_open: self.pacer.circuit_open(),
            held_back: self.pacer.held_back(now),
        }
    }

    /// Whether every slot's first worker has said hello: the fleet is up.
    pub fn fleet_up(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.gen > 0 && !matches!(&s.state, SlotState::Up(w) if w.stage == Stage::Starting))
            && self.slots.iter().any(|s| matches!(s.state, SlotState::Up(_)))
    }

    /// Workers times threads: the most requests in flight.
    pub fn ceiling(&self) -> u32 {
        self.settings.pace.ceiling
    }

    /// Changes what can change in flight: the rate, the burst and the concurrency limit.
    pub fn reconfigure(&mut self, pace: PaceSettings, now: Instant) {
        self.settings.pace = pace.clone();
        self.pacer.reconfigure(pace, now, &mut self.out);
    }

    /// Results this run has made durable so far.
    pub fn flushed(&self) -> u64 {
        self.report.fetched()
    }

    /// The run's figures once the store writer has finished, or the error that stopped it.
    /// Checks that every planned id was stored.
    pub fn conclude(self) -> Result<Figures, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut report = self.report;
        report.pace = self.pacer.figures();
        if report.stopped_by.is_none() && report.fetched() != self.planned {
            return Err(Error::Internal(format!(
                "planned {} ids but stored {}: please report this bug",
                self.planned,
                report.fetched()
            )));
        }
        Ok(report)
    }

    fn say(&mut self, level: Level, message: String) {
        self.out.push(Command::Log(level, message));
    }

    /// After every event: hand out work, and notice the end of the run.
    fn step(&mut self, now: Instant) {
        self.assign(now);
        if matches!(self.phase, Phase::Fetching) && self.done_fetching() {
            self.phase = Phase::Draining;
            self.close_all(now);
        }
        let winding_down =
            matches!(self.phase, Phase::Draining | Phase::Stopping { .. } | Phase::Aborting { .. });
        if winding_down && self.slots.iter().all(|s| matches!(s.state, SlotState::Down { .. })) {
            self.phase = Phase::Finished;
            self.out.push(Command::Finish);
        }
    }

    fn done_fetching(&self) -> bool {
        self.planner_done
            && self.pending.is_empty()
            && self.poison.waiting() == 0
            && self.slots.iter().all(|s| match &s.state {
                SlotState::Up(w) => w.load.is_empty(),
                SlotState::Down { .. } | SlotState::Spawning => true,
            })
    }

    fn on_spawned(&mut self, slot: usize, gen: u64, pid: u32, now: Instant) {
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.gen == gen) else { return };
        if !matches!(s.state, SlotState::Spawning) {
            return;
        }
        s.state = SlotState::Up(Worker {
            pid,
            stage: Stage::Starting,
            load: Load::Chunks(HashSet::new()),
            delivered: false,
            last_heard: now,
        });
        self.say(Level::Debug, format!("worker {slot} started as pid {pid}"));
        // A worker started just as the run began to wind down is told to leave at once.
        match self.phase {
            Phase::Fetching => {}
            Phase::Draining | Phase::Stopping { .. } => self.close(slot, now),
            Phase::Aborting { .. } | Phase::Finished => self.kill(slot, KillReason::Abort),
        }
    }

    fn on_spawn_failed(&mut self, slot: usize, gen: u64, error: Error, now: Instant) {
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.gen == gen) else { return };
        s.barren_deaths += 1;
        let deaths = s.barren_deaths;
        s.state = SlotState::Down { restart_at: now + restart_delay(deaths) };
        if deaths >= MAX_BARREN_DEATHS {
            self.fail(error, now);
        } else {
            self.say(Level::Warn, format!("worker {slot}: {}", shared::error_chain(&error)));
        }
    }

    fn on_worker(&mut self, ev: FleetEvent, now: Instant) {
        let FleetEvent { slot, gen, kind } = ev;
        if let EventKind::Gone { ended, fault } = kind {
            return self.on_gone(slot, gen, &ended, fault.as_ref(), now);
        }
        let Some(w) = live_worker(&mut self.slots, slot, gen) else {
            if let EventKind::Results(results) = kind {
                self.out.push(Command::Release(ItemResult::held_by(&results)));
            }
            return;
        };
        w.last_heard = now;
        match kind {
            EventKind::Hello if w.stage == Stage::Starting => {
                w.stage = Stage::Ready;
                self.pacer.join(slot, gen, now, &mut self.out);
            }
            EventKind::Results(results) => self.on_results(slot, gen, results, now),
            EventKind::Spent(n) => self.pacer.spent(slot, gen, n, now, &mut self.out),
            EventKind::Traffic(t) => self.pacer.traffic(&t, now, &mut self.out),
            // A refusal is the dispatcher's to act on (the credentials are not the core's).
            EventKind::Hello | EventKind::Heartbeat | EventKind::Refused { .. } | EventKind::Gone { .. } => {}
        }
    }

    fn on_results(&mut self, slot: usize, gen: u64, mut results: Vec<ItemResult>, now: Instant) {
        let Some(w) = live_worker(&mut self.slots, slot, gen) else {
            return self.out.push(Command::Release(ItemResult::held_by(&results)));
        };
        let before = results.len();
        // What is dropped gives its bytes back; counted only for what is dropped, as nearly
        // every result is kept.
        let mut released = 0;
        match &mut w.load {
            Load::Chunks(held) => results.retain(|r| {
                let keep = held.remove(&r.id);
                if !keep {
                    released += r.held_bytes();
                }
                keep
            }),
            Load::Alone(id) => {
                let id = *id;
                let all = ItemResult::held_by(&results);
                results.retain(|r| r.id == id);
                results.truncate(1);
                released = all - ItemResult::held_by(&results);
                if !results.is_empty() {
                    w.load = Load::Chunks(HashSet::new());
                }
            }
        }
        if results.len() < before {
            self.report.dropped_results += (before - results.len()) as u64;
            self.out.push(Command::Release(released));
        }
        if w.load.is_empty() {
            self.pacer.busy(slot, gen, false, now, &mut self.out);
        }
        // Before the API has answered at all, a cause no attempt changes (its certificate, its
        // name, its scheme) is the job's, not the ids': the run stops, and they are not stored.
        if !self.pacer.heard() {
            let (job_faults, kept): (Vec<ItemResult>, Vec<ItemResult>) =
                results.into_iter().partition(|r| matches!(r.outcome, Outcome::Unreachable { .. }));
            results = kept;
            if let Some(first) = job_faults.first() {
                self.out.push(Command::Release(ItemResult::held_by(&job_faults)));
                if let Outcome::Unreachable { why, error } = &first.outcome {
                    let (api, why, error) = (self.pacer.api().to_owned(), *why, error.clone());
                    self.fail(Error::Unreachable { api, why, error }, now);
                }
            }
        }
        let Some(w) = live_worker(&mut self.slots, slot, gen) else { return };
        if results.is_empty() {
            return;
        }
        w.delivered = true;
        // Progress anywhere: the deaths so far were not a broken worker.
        for s in &mut self.slots {
            s.barren_deaths = 0;
        }
        self.poison.delivered(&results);
        self.out.push(Command::Store(results));
    }

    fn on_gone(&mut self, slot: usize, gen: u64, how: &Ended, fault: Option<&ProtocolFault>, now: Instant) {
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.gen == gen) else { return };
        let SlotState::Up(w) = std::mem::replace(&mut s.state, SlotState::Down { restart_at: now }) else {
            return;
        };
        self.pacer.leave(slot, &mut self.out);
        let why = fault.map(|e| format!(" after a protocol error ({e})")).unwrap_or_default();
        if !matches!(self.phase, Phase::Fetching) {
            // Draining (it held nothing) or stopping (what it held stays unfetched and a rerun
            // fetches it): either way the worker is leaving, not failing.
            let left = w.load.len();
            return self.say(
                Level::Debug,
                format!("worker {slot} (pid {}) {how}{why}; {left} ids left unfetched", w.pid),
            );
        }
        let held = w.load.len();
        let requeued = match w.load {
            // A death the supervisor chose for practice is nobody's fault: what it held goes
            // back as it was, with no death counted against the ids or the slot.
            _ if w.stage == Stage::Killed(KillReason::Chaos) => self.requeue_unblamed(w.load),
            Load::Alone(id) => {
                self.strike(id, slot, &format!("{how}{why}"), now);
                0
            }
            Load::Chunks(ids) => {
                if !w.delivered {
                    let s = &mut self.slots[slot];
                    s.barren_deaths += 1;
                    if s.barren_deaths >= MAX_BARREN_DEATHS {
                        let deaths = s.barren_deaths;
                        return self
                            .fail(Error::WorkersFailing { slot, deaths, last: format!("{how}{why}") }, now);
                    }
                }
                self.requeue_after_death(ids)
            }
        };
        let s = &mut self.slots[slot];
        let delay = restart_delay(s.barren_deaths);
        s.state = SlotState::Down { restart_at: now + delay };
        self.report.tally.restarts += 1;
        let message = format!(
            "worker {slot} (pid {}) {how}{why}; it held {held} ids: {requeued} requeued, {} suspects waiting; restarting in {}ms",
            w.pid,
            self.poison.waiting(),
            delay.as_millis()
        );
        self.say(Level::Warn, message);
    }

    /// Counts a death against every id a dead worker held: those held at too many deaths
    /// become suspects, the rest go back to the front of the queue. Returns how many did.
    fn requeue_after_death(&mut self, ids: HashSet<u64>) -> usize {
        let requeue = self.poison.died_holding(ids);
        self.requeue_first(requeue)
    }

    /// Puts back what a worker held at a death that counts against nothing: a suspect first
    /// in its line, ids at the front of the queue. Returns how many ids were requeued.
    fn requeue_unblamed(&mut self, load: Load) -> usize {
        match load {
            Load::Alone(id) => {
                self.poison.put_back(id);
                0
            }
            Load::Chunks(ids) => {
                let mut ids: Vec<u64> = ids.into_iter().collect();
                ids.sort_unstable();
                self.requeue_first(ids)
            }
        }
    }

    /// Puts `ids` at the front of the queue, in chunks, in their order. Returns how many.
    fn requeue_first(&mut self, ids: Vec<u64>) -> usize {
        let requeued = ids.len();
        for chunk in rechunk(ids, self.settings.chunk_size).into_iter().rev() {
            self.pending.push_front(chunk);
        }
        requeued
    }

    /// A worker holding only suspect `id` died: a strike against it; enough strikes
    /// quarantine it.
    fn strike(&mut self, id: u64, slot: usize, how: &str, now: Instant) {
        let Strike::Quarantine { deaths, strikes } = self.poison.died_alone(id) else { return };
        let reason = format!(
            "quarantined: killed {deaths} workers, {strikes} of them holding it alone (last one {how})"
        );
        self.say(Level::Warn, format!("id {id} {reason}"));
        self.out.push(Command::Quarantine { id, deaths, reason });
        let in_a_row = self.poison.quarantines_in_a_row();
        if in_a_row >= MAX_QUARANTINES_IN_A_ROW {
            let error = Error::WorkersFailing {
                slot,
                deaths: in_a_row,
                last: format!("{how}; every id it is given kills it"),
            };
            self.fail(error, now);
        }
    }

    fn on_unsent(&mut self, slot: usize, gen: u64, ids: Vec<u64>) {
        // Only a live worker still holds them; once it is reported gone they were requeued.
        let Some(w) = live_worker(&mut self.slots, slot, gen) else { return };
        match &mut w.load {
            Load::Alone(id) if ids == [*id] => {
                w.load = Load::Chunks(HashSet::new());
                self.poison.put_back(ids[0]);
            }
            Load::Alone(_) => return,
            Load::Chunks(held) => {
                let ids: Vec<u64> = ids.into_iter().filter(|id| held.remove(id)).collect();
                if !ids.is_empty() {
                    self.pending.push_front(ids);
                }
            }
        }
        self.say(
            Level::Debug,
            format!("worker {slot}: its stdin is closed; its assignment goes back unchanged"),
        );
        self.kill(slot, KillReason::Undeliverable);
    }

    fn on_signal(&mut self, sig: i32, now: Instant) {
        match self.phase {
            Phase::Stopping { .. } => {
                self.say(
                    Level::Warn,
                    format!("received {} again: killing the workers now", signal_name(sig)),
                );
                self.kill_all(KillReason::SecondSignal(sig));
            }
            Phase::Fetching | Phase::Draining => {
                self.say(
                    Level::Warn,
                    format!(
                        "received {}: stopping; workers get {}ms to finish the requests in hand (signal again to stop at once)",
                        signal_name(sig),
                        self.settings.grace.as_millis()
                    ),
                );
                self.report.stopped_by = Some(sig);
                self.phase = Phase::Stopping { signal: sig, deadline: Some(now + self.settings.grace) };
                self.close_all(now);
            }
            Phase::Aborting { .. } | Phase::Finished => {}
        }
    }

    /// Stops the run on `error` (the first one wins): workers are killed, what they already
    /// sent is stored.
    fn fail(&mut self, error: Error, now: Instant) {
        if self.error.is_none() {
            self.error = Some(error);
        }
        if matches!(self.phase, Phase::Fetching | Phase::Draining | Phase::Stopping { .. }) {
            self.phase = Phase::Aborting { deadline: now + ABORT_GRACE };
            self.kill_all(KillReason::Abort);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        if now.duration_since(self.last_tick) > STALL {
            // The dispatcher itself was held up (a slow flush pushing back): heartbeats may be
            // waiting unread, so silence measured across the stall proves nothing.
            let grace_from = now.checked_sub(HEARTBEAT_EVERY).unwrap_or(now);
            for s in &mut self.slots {
                if let SlotState::Up(w) = &mut s.state {
                    w.last_heard = w.last_heard.max(grace_from);
                }
            }
        }
        self.last_tick = now;
        match self.phase {
            Phase::Stopping { signal, deadline: Some(deadline) } if now >= deadline => {
                let line = format!(
                    "grace period after {} over: killing the workers still running",
                    signal_name(signal)
                );
                self.say(Level::Warn, line);
                self.kill_all(KillReason::GraceOver(signal));
                self.phase = Phase::Stopping { signal, deadline: None };
            }
            Phase::Aborting { deadline } if now >= deadline => {
                // Killed workers that have not been reported gone die with the supervisor.
                self.phase = Phase::Finished;
                self.out.push(Command::Finish);
                return;
            }
            _ => {}
        }
        for slot in 0..self.slots.len() {
            self.tick_slot(slot, now);
        }
        self.chaos(now);
        if matches!(self.phase, Phase::Fetching) {
            self.pacer.wake(now, &mut self.out);
            if let Some((error, waited)) = self.pacer.waited_out(now) {
                let api = self.pacer.api().to_owned();
                self.fail(Error::NoAnswer { api, error, waited }, now);
            }
        }
    }

    /// Starts a slot that is due, and kills its worker if it went silent or will not leave.
    fn tick_slot(&mut self, slot: usize, now: Instant) {
        let fetching = matches!(self.phase, Phase::Fetching);
        let draining = matches!(self.phase, Phase::Draining);
        let (timeout, s) = (self.settings.worker_timeout, &mut self.slots[slot]);
        let kill = match &mut s.state {
            SlotState::Down { restart_at } if fetching && *restart_at <= now => {
                s.gen += 1;
                s.state = SlotState::Spawning;
                self.out.push(Command::Spawn { slot, gen: s.gen });
                None
            }
            SlotState::Up(w) if !matches!(w.stage, Stage::Killed(_)) => {
                let silent = now.duration_since(w.last_heard);
                match w.stage {
                    _ if silent > timeout => Some(KillReason::Silent(silent)),
                    Stage::Closing { since } if draining && now.duration_since(since) > DRAIN_GRACE => {
                        Some(KillReason::DidNotExit)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(why) = kill {
            self.kill(slot, why);
        }
    }

    fn chaos(&mut self, now: Instant) {
        let (Some(at), Some(every)) = (self.next_chaos_kill, self.settings.kill_every) else { return };
        if now < at || !matches!(self.phase, Phase::Fetching) {
            return;
        }
        self.next_chaos_kill = Some(now + every);
        let live: Vec<usize> = (0..self.slots.len())
            .filter(
                |&n| matches!(&self.slots[n].state, SlotState::Up(w) if !matches!(w.stage, Stage::Killed(_))),
            )
            .collect();
        if !live.is_empty() {
            let victim = live[self.rng.usize(..live.len())];
            self.kill(victim, KillReason::Chaos);
            self.report.chaos_kills += 1;
        }
    }

    /// Hands work to every ready worker with room for it: suspects alone to idle workers first,
    /// then chunks, never more than `max_in_flight` ids to one worker.
    fn assign(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Fetching) {
            return;
        }
        let mut given = Vec::new();
        let window = self.settings.max_in_flight;
        // While suspects wait, the least loaded worker takes no new chunk, so it soon idles
        // and can take one alone.
        let reserved = if self.poison.waiting() == 0 {
            None
        } else {
            (0..self.slots.len())
                .filter_map(|n| match &self.slots[n].state {
                    SlotState::Up(w) if w.stage == Stage::Ready && !matches!(w.load, Load::Alone(_)) => {
                        Some((n, w.load.len()))
                    }
                    _ => None,
                })
                .min_by_key(|&(_, load)| load)
                .map(|(n, _)| n)
        };
        for (n, s) in self.slots.iter_mut().enumerate() {
            let SlotState::Up(w) = &mut s.state else { continue };
            if w.stage != Stage::Ready {
                continue;
            }
            let Load::Chunks(held) = &mut w.load else { continue };
            if held.is_empty() {
                if let Some(id) = self.poison.next_suspect() {
                    self.out.push(Command::Log(
                        Level::Info,
                        format!("retrying id {id} alone in worker {n} (pid {})", w.pid),
                    ));
                    w.load = Load::Alone(id);
                    self.out.push(Command::Assign { slot: n, gen: s.gen, ids: vec![id] });
                    given.push((n, s.gen));
                    continue;
                }
            }
            if reserved == Some(n) {
                continue;
            }
            while let Some(next) = self.pending.front() {
                if held.len() + next.len() > window {
                    break;
                }
                let ids = self.pending.pop_front().expect("front exists");
                held.extend(ids.iter().copied());
                self.out.push(Command::Assign { slot: n, gen: s.gen, ids });
                given.push((n, s.gen));
            }
        }
        for (slot, gen) in given {
            self.pacer.busy(slot, gen, true, now, &mut self.out);
        }
    }

    /// Closes the stdin of every worker that is not already leaving.
    fn close_all(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            self.close(slot, now);
        }
    }

    fn close(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        if let SlotState::Up(w) = &mut s.state {
            if matches!(w.stage, Stage::Starting | Stage::Ready) {
                w.stage = Stage::Closing { since: now };
                self.out.push(Command::CloseInput { slot, gen: s.gen });
                self.pacer.leave(slot, &mut self.out);
            }
        }
    }

    fn kill_all(&mut self, why: KillReason) {
        for slot in 0..self.slots.len() {
            self.kill(slot, why);
        }
    }

    /// SIGKILLs the slot's worker, once.
    fn kill(&mut self, slot: usize, why: KillReason) {
        let s = &mut self.slots[slot];
        if let SlotState::Up(w) = &mut s.state {
            if !matches!(w.stage, Stage::Killed(_)) {
                w.stage = Stage::Killed(why);
                self.out.push(Command::Kill { slot, gen: s.gen, why });
                self.pacer.leave(slot, &mut self.out);
            }
        }
    }
}

/// The running worker of generation `gen` in `slot`, if that is still the slot's worker.
fn live_worker(slots: &mut [Slot], slot: usize, gen: u64) -> Option<&mut Worker> {
    match slots.get_mut(slot).filter(|s| s.gen == gen).map(|s| &mut s.state) {
        Some(SlotState::Up(w)) => Some(w),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
