//! The dispatcher: the one thread that owns a run's state.
//!
//! It `select!`s over five sources: events from the workers' reader threads, acks from the
//! store writer, chunks from the planner thread, signals, and a ticker for timers (restarts,
//! hung workers, chaos, progress). Nothing is shared behind a lock; every decision is made here.
//!
//! Exactly once: an id handed to a worker is in that worker's `outstanding` set until its result
//! arrives, and only then goes to the store writer. When a worker ends, its reader thread has
//! already delivered every frame it sent, so what is still outstanding is exactly what it never
//! reported: that is requeued, ahead of new work. A result for an id the worker does not hold is
//! dropped. Progress counts only what the writer has flushed.
//!
//! Poison ids: each worker death counts against every id it held. An id held at two deaths
//! becomes a suspect and is retried alone, in a worker holding nothing else; a suspect that
//! kills a worker holding it alone twice is quarantined (stored as failed, not fetched again
//! unless asked). Innocent ids caught in other deaths just succeed when retried alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, tick, unbounded, Receiver, Sender};
use shared::{ItemResult, ToWorker};

use crate::cli::RunConfig;
use crate::fleet::{EventKind, FleetEvent, Spawner, WorkerProc};
use crate::partition::{rechunk, unsettled, IdRange};
use crate::store::{self, Durable, StoreError, WriteAck, WriteCmd};
use crate::Error;

/// A slot that dies this many times in a row, with no result delivered by any worker in
/// between, stops the run: the worker is broken, not the data.
const MAX_BARREN_DEATHS: u32 = 5;
/// An id held by this many dying workers is retried alone.
const SUSPECT_AFTER_DEATHS: u32 = 2;
/// An id that kills this many workers holding it alone is quarantined.
const QUARANTINE_AFTER_SOLO_DEATHS: u32 = 2;
/// This many quarantines in a row with no result in between stop the run.
const MAX_QUARANTINES_IN_A_ROW: u32 = 5;
/// How long draining workers get to exit after their stdin closes at the end of a run.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Ids of the range already settled in the store, not fetched again.
    pub skipped: u64,
    /// Of those, quarantined by an earlier run (they have no HTTP answer).
    pub skipped_quarantined: u64,
    /// Ids this run fetched and stored with an HTTP answer.
    pub answered: u64,
    /// Ids this run stored as failed, quarantined ones included.
    pub failed: u64,
    /// Ids this run quarantined.
    pub quarantined: u64,
    /// Attempts beyond the first, over the ids stored.
    pub retries: u64,
    /// Workers started again after one ended.
    pub restarts: u64,
    /// Workers the supervisor killed on purpose (`--chaos kill-every`).
    pub chaos_kills: u64,
    /// The signal that stopped the run early, if one did.
    pub stopped_by: Option<i32>,
    /// Wall time.
    pub wall: Duration,
}

impl RunReport {
    /// Ids stored by this run.
    pub fn fetched(&self) -> u64 {
        self.answered + self.failed
    }

    /// Ids stored per second of wall time.
    pub fn rate(&self) -> f64 {
        self.fetched() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

enum PlanMsg {
    Chunk { ids: Vec<u64>, skipped: u64, quarantined: u64 },
    Failed(StoreError),
}

/// Walks the range, dropping what the store has settled, and feeds chunks to the dispatcher
/// through a small bounded channel: memory stays flat whatever the range.
fn plan(
    store: &store::Store,
    range: IdRange,
    chunk_size: u64,
    retry_quarantined: bool,
    out: Sender<PlanMsg>,
) {
    let mut settled = Vec::new();
    let (mut skipped, mut quarantined) = (0, 0);
    for window in range.windows(chunk_size) {
        settled.clear();
        match store.settled_in(window, retry_quarantined, &mut settled) {
            Ok(q) => quarantined += q,
            Err(e) => {
                let _ = out.send(PlanMsg::Failed(e));
                return;
            }
        }
        skipped += settled.len() as u64;
        let ids = unsettled(window, &settled);
        if !ids.is_empty() {
            if out.send(PlanMsg::Chunk { ids, skipped, quarantined }).is_err() {
                return;
            }
            (skipped, quarantined) = (0, 0);
        }
    }
    if skipped > 0 {
        let _ = out.send(PlanMsg::Chunk { ids: Vec::new(), skipped, quarantined });
    }
}

struct Slot {
    gen: u64,
    proc: Option<WorkerProc>,
    ready: bool,
    outstanding: HashSet<u64>,
    /// The suspect this worker holds alone, if it is on such an errand.
    solo: Option<u64>,
    delivered: bool,
    barren_deaths: u32,
    restart_at: Option<Instant>,
    last_heard: Instant,
    closed_at: Option<Instant>,
}

/// Why the dispatcher is winding down.
#[derive(Clone, Copy, PartialEq, Eq)]
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
}

struct Dispatcher<'a> {
    cfg: &'a RunConfig,
    spawner: Spawner,
    slots: Vec<Slot>,
    pending: VecDeque<Vec<u64>>,
    suspects: VecDeque<u64>,
    deaths_held: HashMap<u64, u32>,
    solo_deaths: HashMap<u64, u32>,
    quarantines_in_a_row: u32,
    events_tx: Sender<FleetEvent>,
    writes: Sender<WriteCmd>,
    planned: u64,
    planner_done: bool,
    phase: Phase,
    report: RunReport,
    started: Instant,
    last_progress: Instant,
    last_tick: Instant,
    next_chaos_kill: Option<Instant>,
    unexpected: u64,
}

/// Runs the job against an open store. Returns the run's figures, or the error that stopped it
/// (after storing every result already received).
pub fn run(cfg: &RunConfig, store: &store::Store, spawner: Spawner) -> Result<RunReport, Error> {
    let started = Instant::now();
    let (plan_tx, plan_rx) = bounded::<PlanMsg>(2 * cfg.workers as usize + 2);
    let (events_tx, events_rx) = unbounded::<FleetEvent>();
    let (write_tx, write_rx) = bounded::<WriteCmd>(64);
    let (ack_tx, ack_rx) = unbounded::<WriteAck>();
    let signals = SignalFeed::start().map_err(Error::Thread)?;
    let writer = store::spawn_writer(store.writer(), write_rx, ack_tx).map_err(Error::Thread)?;
    std::thread::scope(|scope| {
        let (range, chunk, retry_q) = (cfg.ids, u64::from(cfg.chunk_size), cfg.retry_quarantined);
        std::thread::Builder::new()
            .name("planner".into())
            .spawn_scoped(scope, move || plan(store, range, chunk, retry_q, plan_tx))
            .map_err(Error::Thread)?;
        let now = Instant::now();
        let mut d = Dispatcher {
            cfg,
            spawner,
            slots: (0..cfg.workers)
                .map(|_| Slot {
                    gen: 0,
                    proc: None,
                    ready: false,
                    outstanding: HashSet::new(),
                    solo: None,
                    delivered: false,
                    barren_deaths: 0,
                    restart_at: Some(now),
                    last_heard: now,
                    closed_at: None,
                })
                .collect(),
            pending: VecDeque::new(),
            suspects: VecDeque::new(),
            deaths_held: HashMap::new(),
            solo_deaths: HashMap::new(),
            quarantines_in_a_row: 0,
            events_tx,
            writes: write_tx,
            planned: 0,
            planner_done: false,
            phase: Phase::Fetching,
            report: RunReport::default(),
            started,
            last_progress: now,
            last_tick: now,
            next_chaos_kill: cfg.chaos.kill_every.map(|every| now + every),
            unexpected: 0,
        };
        let outcome = d.event_loop(&events_rx, &ack_rx, plan_rx, &signals.rx);
        if outcome.is_err() {
            d.kill_all(&events_rx);
        }
        // Whatever happened, store what came back.
        let _ = d.writes.send(WriteCmd::Finish);
        let finished = d.await_writer(&ack_rx);
        let _ = writer.join();
        let mut report = d.report.clone();
        report.wall = started.elapsed();
        outcome?;
        finished?;
        if d.unexpected > 0 {
            log::warn!("dropped {} results for ids their worker did not hold", d.unexpected);
        }
        if report.stopped_by.is_none() && report.fetched() != d.planned {
            return Err(Error::Internal(format!(
                "planned {} ids but stored {}: please report this bug",
                d.planned,
                report.fetched()
            )));
        }
        Ok(report)
    })
}

/// SIGTERM and SIGINT, delivered as messages on a channel (signal-hook's self-pipe underneath).
struct SignalFeed {
    rx: Receiver<i32>,
    handle: signal_hook::iterator::Handle,
}

impl SignalFeed {
    fn start() -> std::io::Result<SignalFeed> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let (tx, rx) = unbounded();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })?;
        Ok(SignalFeed { rx, handle })
    }
}

impl Drop for SignalFeed {
    fn drop(&mut self) {
        // Back to the default dispositions is not possible with signal-hook, but closing the
        // feed ends the thread; a late signal then has no listener and is ignored.
        self.handle.close();
    }
}

fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal")
}

impl Dispatcher<'_> {
    fn event_loop(
        &mut self,
        events: &Receiver<FleetEvent>,
        acks: &Receiver<WriteAck>,
        plans: Receiver<PlanMsg>,
        signals: &Receiver<i32>,
    ) -> Result<(), Error> {
        let ticker = tick(Duration::from_millis(100));
        let no_plans = never();
        self.on_tick()?;
        loop {
            self.assign();
            if self.phase == Phase::Fetching && self.done_fetching() {
                self.phase = Phase::Draining;
                self.close_all();
            }
            if self.phase != Phase::Fetching && self.slots.iter().all(|s| s.proc.is_none()) {
                return Ok(());
            }
            // Take a new chunk only while the queue is short: the planner waits, memory stays flat.
            let want_plans = !self.planner_done && self.pending.len() < self.slots.len();
            let plan_rx = if want_plans && self.phase == Phase::Fetching { &plans } else { &no_plans };
            select! {
                recv(events) -> ev => self.on_event(ev.expect("the dispatcher holds a sender"))?,
                recv(acks) -> ack => match ack {
                    Ok(WriteAck::Durable(d)) => self.on_durable(d),
                    Ok(WriteAck::Failed(e)) => return Err(Error::Store(e)),
                    Ok(WriteAck::Finished) | Err(_) => {
                        return Err(Error::Internal("the store writer ended early".into()))
                    }
                },
                recv(plan_rx) -> msg => match msg {
                    Ok(PlanMsg::Chunk { ids, skipped, quarantined }) => {
                        self.report.skipped += skipped;
                        self.report.skipped_quarantined += quarantined;
                        self.planned += ids.len() as u64;
                        if !ids.is_empty() {
                            self.pending.push_back(ids);
                        }
                    }
                    Ok(PlanMsg::Failed(e)) => return Err(Error::Store(e)),
                    Err(_) => self.planner_done = true,
                },
                recv(signals) -> sig => {
                    if let Ok(sig) = sig {
                        self.on_signal(sig);
                    }
                }
                recv(ticker) -> _ => self.on_tick()?,
            }
        }
    }

    fn done_fetching(&self) -> bool {
        self.planner_done
            && self.pending.is_empty()
            && self.suspects.is_empty()
            && self.slots.iter().all(|s| s.outstanding.is_empty())
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if let Some(p) = slot.proc.as_mut() {
                p.close();
                slot.closed_at = Some(now);
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        match self.phase {
            Phase::Stopping { .. } => {
                log::warn!("received {} again: killing the workers now", signal_name(sig));
                self.kill_workers();
            }
            _ => {
                log::warn!(
                    "received {}: stopping; workers get {}ms to finish the requests in hand (signal again to stop at once)",
                    signal_name(sig),
                    self.cfg.grace.as_millis()
                );
                self.report.stopped_by = Some(sig);
                self.phase = Phase::Stopping { signal: sig, deadline: Some(Instant::now() + self.cfg.grace) };
                self.close_all();
            }
        }
    }

    /// Hands work to every ready worker with room for it: suspects alone to idle workers first,
    /// then chunks.
    fn assign(&mut self) {
        if self.phase != Phase::Fetching {
            return;
        }
        let window = self.cfg.job.max_in_flight as usize;
        // While suspects wait, the least loaded worker takes no new chunk, so it soon idles
        // and can take one alone.
        let reserved = if self.suspects.is_empty() {
            None
        } else {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.proc.is_some() && s.ready && s.solo.is_none())
                .min_by_key(|(_, s)| s.outstanding.len())
                .map(|(n, _)| n)
        };
        for (n, slot) in self.slots.iter_mut().enumerate() {
            let Some(proc) = slot.proc.as_mut().filter(|_| slot.ready) else { continue };
            if slot.solo.is_some() {
                continue;
            }
            if slot.outstanding.is_empty() {
                if let Some(id) = self.suspects.pop_front() {
                    if proc.send(ToWorker::Assign { ids: vec![id] }).is_err() {
                        // Its writer thread has ended: the worker is dying and will be reported
                        // gone. It never got the id, so its death is not the id's fault.
                        log::debug!("worker {n} (pid {}): its stdin is closed", proc.pid);
                        self.suspects.push_front(id);
                        proc.kill();
                        slot.ready = false;
                        continue;
                    }
                    log::info!("retrying id {id} alone in worker {n} (pid {})", proc.pid);
                    slot.solo = Some(id);
                    slot.outstanding.insert(id);
                    continue;
                }
            }
            if reserved == Some(n) {
                continue;
            }
            while let Some(next) = self.pending.front() {
                if slot.outstanding.len() + next.len() > window {
                    break;
                }
                let ids = self.pending.pop_front().expect("front exists");
                slot.outstanding.extend(ids.iter().copied());
                if let Err(unsent) = proc.send(ToWorker::Assign { ids }) {
                    // As above: the worker never got these ids; they go back as they were.
                    log::debug!("worker {n} (pid {}): its stdin is closed", proc.pid);
                    if let ToWorker::Assign { ids } = unsent {
                        for id in &ids {
                            slot.outstanding.remove(id);
                        }
                        self.pending.push_front(ids);
                    }
                    proc.kill();
                    slot.ready = false;
                    break;
                }
            }
        }
    }

    fn on_event(&mut self, ev: FleetEvent) -> Result<(), Error> {
        let slot = &mut self.slots[ev.slot];
        if ev.gen != slot.gen {
            return Ok(()); // from an earlier worker of this slot
        }
        match ev.kind {
            EventKind::Hello => {
                slot.ready = true;
                slot.last_heard = Instant::now();
            }
            EventKind::Heartbeat => slot.last_heard = Instant::now(),
            EventKind::Results(mut results) => {
                slot.last_heard = Instant::now();
                let before = results.len();
                results.retain(|r: &ItemResult| slot.outstanding.remove(&r.id));
                self.unexpected += (before - results.len()) as u64;
                if results.is_empty() {
                    return Ok(());
                }
                slot.delivered = true;
                if slot.solo.is_some_and(|id| !slot.outstanding.contains(&id)) {
                    slot.solo = None;
                }
                // Progress anywhere: deaths so far were not a broken worker.
                for s in &mut self.slots {
                    s.barren_deaths = 0;
                }
                self.quarantines_in_a_row = 0;
                if !self.deaths_held.is_empty() || !self.solo_deaths.is_empty() {
                    for r in &results {
                        self.deaths_held.remove(&r.id);
                        self.solo_deaths.remove(&r.id);
                    }
                }
                self.writes
                    .send(WriteCmd::Put(results))
                    .map_err(|_| Error::Internal("the store writer ended early".into()))?;
            }
            EventKind::Gone { how, error } => self.on_gone(ev.slot, how, error)?,
        }
        Ok(())
    }

    fn on_gone(&mut self, n: usize, how: String, error: Option<String>) -> Result<(), Error> {
        let slot = &mut self.slots[n];
        let Some(proc) = slot.proc.take() else { return Ok(()) };
        slot.ready = false;
        let solo = slot.solo.take();
        let delivered = std::mem::take(&mut slot.delivered);
        let mut ids: Vec<u64> = slot.outstanding.drain().collect();
        let why = error.map(|e| format!(" after a protocol error ({e})")).unwrap_or_default();
        if self.phase != Phase::Fetching {
            // Draining (nothing was outstanding) or stopping (what it held stays unfetched and
            // a rerun fetches it): either way, the worker is leaving, not failing.
            log::debug!("worker {n} (pid {}) {how}{why}; {} ids left unfetched", proc.pid, ids.len());
            return Ok(());
        }
        ids.sort_unstable();
        let held = ids.len();
        let mut requeue = Vec::with_capacity(ids.len());
        match solo {
            Some(id) => {
                let strikes = {
                    let s = self.solo_deaths.entry(id).or_insert(0);
                    *s += 1;
                    *s
                };
                if strikes >= QUARANTINE_AFTER_SOLO_DEATHS {
                    let deaths = strikes + self.deaths_held.remove(&id).unwrap_or(0);
                    self.solo_deaths.remove(&id);
                    let reason = format!("quarantined: killed {deaths} workers, {strikes} of them holding it alone (last one {how}{why})");
                    log::warn!("id {id} {reason}");
                    self.writes
                        .send(WriteCmd::Quarantine { id, deaths, reason })
                        .map_err(|_| Error::Internal("the store writer ended early".into()))?;
                    self.quarantines_in_a_row += 1;
                    if self.quarantines_in_a_row >= MAX_QUARANTINES_IN_A_ROW {
                        return Err(Error::WorkersFailing {
                            slot: n,
                            deaths: self.quarantines_in_a_row,
                            last: format!("{how}{why}; every id it is given kills it"),
                        });
                    }
                } else {
                    self.suspects.push_front(id);
                }
            }
            None => {
                if !delivered {
                    slot.barren_deaths += 1;
                    if slot.barren_deaths >= MAX_BARREN_DEATHS {
                        return Err(Error::WorkersFailing {
                            slot: n,
                            deaths: slot.barren_deaths,
                            last: format!("{how}{why}"),
                        });
                    }
                }
                for id in ids {
                    let count = self.deaths_held.entry(id).or_insert(0);
                    *count += 1;
                    if *count >= SUSPECT_AFTER_DEATHS {
                        self.suspects.push_back(id);
                    } else {
                        requeue.push(id);
                    }
                }
            }
        }
        let requeued = requeue.len();
        for chunk in rechunk(requeue, self.cfg.chunk_size as usize).into_iter().rev() {
            self.pending.push_front(chunk);
        }
        let slot = &mut self.slots[n];
        let delay = match slot.barren_deaths {
            0 => Duration::ZERO,
            k => (Duration::from_millis(100) * (1 << (k - 1))).min(Duration::from_secs(5)),
        };
        log::warn!(
            "worker {n} (pid {}) {how}{why}; it held {held} ids: {requeued} requeued, {} suspects waiting; restarting in {}ms",
            proc.pid,
            self.suspects.len(),
            delay.as_millis()
        );
        slot.restart_at = Some(Instant::now() + delay);
        self.report.restarts += 1;
        Ok(())
    }

    fn on_durable(&mut self, d: Durable) {
        self.report.answered += d.answered;
        self.report.failed += d.failed;
        self.report.quarantined += d.quarantined;
        self.report.retries += d.retries;
    }

    fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if now.duration_since(self.last_tick) > Duration::from_secs(1) {
            // The dispatcher itself was held up (a slow flush pushing back): heartbeats may be
            // waiting unread, so silence measured across the stall proves nothing.
            let grace_from = now.checked_sub(Duration::from_millis(500)).unwrap_or(now);
            for slot in &mut self.slots {
                slot.last_heard = slot.last_heard.max(grace_from);
            }
        }
        self.last_tick = now;
        if let Phase::Stopping { signal, deadline: Some(deadline) } = self.phase {
            if now >= deadline {
                log::warn!(
                    "grace period after {} over: killing the workers still running",
                    signal_name(signal)
                );
                self.kill_workers();
                self.phase = Phase::Stopping { signal, deadline: None };
            }
        }
        for n in 0..self.slots.len() {
            let slot = &mut self.slots[n];
            if slot.proc.is_none()
                && slot.restart_at.is_some_and(|t| t <= now)
                && self.phase == Phase::Fetching
            {
                slot.restart_at = None;
                slot.gen += 1;
                slot.last_heard = now;
                match self.spawner.spawn(n, slot.gen, &self.cfg.job, self.events_tx.clone()) {
                    Ok(proc) => {
                        log::debug!("worker {n} started as pid {}", proc.pid);
                        slot.proc = Some(proc);
                    }
                    Err(e) => {
                        slot.barren_deaths += 1;
                        if slot.barren_deaths >= MAX_BARREN_DEATHS {
                            return Err(Error::Spawn { bin: self.spawner.bin.clone(), source: e });
                        }
                        log::warn!("worker {n}: cannot start {}: {e}", self.spawner.bin.display());
                        slot.restart_at = Some(now + Duration::from_millis(100) * (1 << slot.barren_deaths));
                    }
                }
            }
            if let Some(proc) = &slot.proc {
                let silent = now.duration_since(slot.last_heard);
                if silent > self.cfg.worker_timeout {
                    log::warn!(
                        "worker {n} (pid {}) silent for {}ms; killing it",
                        proc.pid,
                        silent.as_millis()
                    );
                    proc.kill();
                    slot.last_heard = now; // one kill per timeout period
                }
                if slot.closed_at.is_some_and(|t| now.duration_since(t) > DRAIN_GRACE)
                    && self.phase == Phase::Draining
                {
                    log::warn!(
                        "worker {n} (pid {}) did not exit after its stdin closed; killing it",
                        proc.pid
                    );
                    proc.kill();
                    slot.closed_at = Some(now);
                }
            }
        }
        if let (Some(at), Some(every)) = (self.next_chaos_kill, self.cfg.chaos.kill_every) {
            if now >= at && self.phase == Phase::Fetching {
                self.next_chaos_kill = Some(now + every);
                let live: Vec<&Slot> = self.slots.iter().filter(|s| s.proc.is_some()).collect();
                if !live.is_empty() {
                    let victim = live[fastrand::usize(..live.len())].proc.as_ref().expect("live");
                    log::warn!("chaos: killing worker pid {} (kill-every)", victim.pid);
                    victim.kill();
                    self.report.chaos_kills += 1;
                }
            }
        }
        if now.duration_since(self.last_progress) >= PROGRESS_EVERY {
            self.last_progress = now;
            let done = self.report.fetched();
            let secs = self.started.elapsed().as_secs_f64();
            log::info!(
                "progress: {done} stored of {} planned so far ({} skipped), {:.0} items/s, {} retries, {} restarts",
                self.planned,
                self.report.skipped,
                done as f64 / secs.max(1e-9),
                self.report.retries,
                self.report.restarts
            );
        }
        Ok(())
    }

    /// SIGKILLs every live worker; their reader threads report them gone.
    fn kill_workers(&self) {
        for p in self.slots.iter().filter_map(|s| s.proc.as_ref()) {
            p.kill();
        }
    }

    /// Kills every worker and waits (briefly) for their reader threads to deliver what they
    /// had read, so those results are stored too.
    fn kill_all(&mut self, events: &Receiver<FleetEvent>) {
        self.kill_workers();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.slots.iter().any(|s| s.proc.is_some()) {
            let Ok(ev) = events.recv_deadline(deadline) else { break };
            let slot = &mut self.slots[ev.slot];
            if ev.gen != slot.gen {
                continue;
            }
            match ev.kind {
                EventKind::Results(mut results) => {
                    results.retain(|r| slot.outstanding.remove(&r.id));
                    let _ = self.writes.send(WriteCmd::Put(results));
                }
                EventKind::Gone { .. } => slot.proc = None,
                _ => {}
            }
        }
    }

    fn await_writer(&mut self, acks: &Receiver<WriteAck>) -> Result<(), Error> {
        loop {
            match acks.recv() {
                Ok(WriteAck::Durable(d)) => self.on_durable(d),
                Ok(WriteAck::Finished) => return Ok(()),
                Ok(WriteAck::Failed(e)) => return Err(Error::Store(e)),
                Err(_) => return Err(Error::Internal("the store writer ended without finishing".into())),
            }
        }
    }
}
