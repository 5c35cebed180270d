//! The dispatcher: the one thread that owns a run's state.
//!
//! It `select!`s over four sources: events from the workers' reader threads, acks from the
//! store writer, chunks from the planner thread, and a ticker for timers (restarts, hung
//! workers, progress). Nothing is shared behind a lock; every decision is made here.
//!
//! Bookkeeping that keeps every id exactly once: an id handed to a worker is in that worker's
//! `outstanding` set until its result arrives, and only then goes to the store writer. When a
//! worker ends, its reader thread has already delivered every frame it sent, so what is still
//! outstanding is exactly what it never reported: that is requeued, ahead of new work. A result
//! for an id the worker does not hold is dropped. Progress counts only what the writer has
//! flushed.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, tick, unbounded, Receiver, Sender};
use shared::{ItemResult, ToWorker};

use crate::cli::RunConfig;
use crate::fleet::{EventKind, FleetEvent, Spawner, WorkerProc};
use crate::partition::{rechunk, unsettled, IdRange};
use crate::store::{self, Durable, StoreError, WriteAck, WriteCmd};
use crate::Error;

/// A slot that dies this many times in a row without delivering a result stops the run.
const MAX_BARREN_DEATHS: u32 = 5;
/// How long draining workers get to exit after their stdin closes.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The range.
    pub ids: Option<IdRange>,
    /// Ids of the range already answered in the store, not fetched again.
    pub skipped: u64,
    /// Ids this run fetched and stored with an HTTP answer.
    pub answered: u64,
    /// Ids this run stored as failed.
    pub failed: u64,
    /// Attempts beyond the first, over the ids stored.
    pub retries: u64,
    /// Workers started again after one ended.
    pub restarts: u64,
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
    Chunk { ids: Vec<u64>, skipped: u64 },
    Failed(StoreError),
}

/// Walks the range, dropping what the store already answered, and feeds chunks to the
/// dispatcher through a small bounded channel: memory stays flat whatever the range.
fn plan(store: &store::Store, range: IdRange, chunk_size: u64, out: Sender<PlanMsg>) {
    let mut answered = Vec::new();
    let mut skipped = 0;
    for window in range.windows(chunk_size) {
        answered.clear();
        if let Err(e) = store.answered_in(window, &mut answered) {
            let _ = out.send(PlanMsg::Failed(e));
            return;
        }
        skipped += answered.len() as u64;
        let ids = unsettled(window, &answered);
        if !ids.is_empty() {
            if out.send(PlanMsg::Chunk { ids, skipped }).is_err() {
                return;
            }
            skipped = 0;
        }
    }
    if skipped > 0 {
        let _ = out.send(PlanMsg::Chunk { ids: Vec::new(), skipped });
    }
}

struct Slot {
    gen: u64,
    proc: Option<WorkerProc>,
    ready: bool,
    outstanding: HashSet<u64>,
    delivered: bool,
    barren_deaths: u32,
    restart_at: Option<Instant>,
    last_heard: Instant,
    closed_at: Option<Instant>,
}

struct Dispatcher<'a> {
    cfg: &'a RunConfig,
    spawner: Spawner,
    slots: Vec<Slot>,
    pending: VecDeque<Vec<u64>>,
    events_tx: Sender<FleetEvent>,
    writes: Sender<WriteCmd>,
    planned: u64,
    planner_done: bool,
    draining: bool,
    report: RunReport,
    started: Instant,
    last_progress: Instant,
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
    let writer = store::spawn_writer(store.writer(), write_rx, ack_tx).map_err(Error::Thread)?;
    std::thread::scope(|scope| {
        let (range, chunk) = (cfg.ids, u64::from(cfg.chunk_size));
        std::thread::Builder::new()
            .name("planner".into())
            .spawn_scoped(scope, move || plan(store, range, chunk, plan_tx))
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
                    delivered: false,
                    barren_deaths: 0,
                    restart_at: Some(now),
                    last_heard: now,
                    closed_at: None,
                })
                .collect(),
            pending: VecDeque::new(),
            events_tx,
            writes: write_tx,
            planned: 0,
            planner_done: false,
            draining: false,
            report: RunReport { ids: Some(cfg.ids), ..RunReport::default() },
            started,
            last_progress: now,
            unexpected: 0,
        };
        let outcome = d.event_loop(&events_rx, &ack_rx, plan_rx);
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
        if report.fetched() != d.planned {
            return Err(Error::Internal(format!(
                "planned {} ids but stored {}: please report this bug",
                d.planned,
                report.fetched()
            )));
        }
        Ok(report)
    })
}

impl Dispatcher<'_> {
    fn event_loop(&mut self, events: &Receiver<FleetEvent>, acks: &Receiver<WriteAck>, plans: Receiver<PlanMsg>) -> Result<(), Error> {
        let ticker = tick(Duration::from_millis(100));
        let no_plans = never();
        self.on_tick()?;
        loop {
            self.assign();
            if self.done_fetching() && !self.draining {
                self.draining = true;
                for slot in &mut self.slots {
                    if let Some(p) = slot.proc.as_mut() {
                        p.close();
                        slot.closed_at = Some(Instant::now());
                    }
                }
            }
            if self.draining && self.slots.iter().all(|s| s.proc.is_none()) {
                return Ok(());
            }
            // Take a new chunk only while the queue is short: the planner waits, memory stays flat.
            let want_plans = !self.planner_done && self.pending.len() < self.slots.len();
            let plan_rx = if want_plans { &plans } else { &no_plans };
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
                    Ok(PlanMsg::Chunk { ids, skipped }) => {
                        self.report.skipped += skipped;
                        self.planned += ids.len() as u64;
                        if !ids.is_empty() {
                            self.pending.push_back(ids);
                        }
                    }
                    Ok(PlanMsg::Failed(e)) => return Err(Error::Store(e)),
                    Err(_) => self.planner_done = true,
                },
                recv(ticker) -> _ => self.on_tick()?,
            }
        }
    }

    fn done_fetching(&self) -> bool {
        self.planner_done && self.pending.is_empty() && self.slots.iter().all(|s| s.outstanding.is_empty())
    }

    /// Hands chunks to every ready worker with room for them.
    fn assign(&mut self) {
        if self.draining {
            return;
        }
        let window = self.cfg.job.max_in_flight as usize;
        for (n, slot) in self.slots.iter_mut().enumerate() {
            let Some(proc) = slot.proc.as_mut().filter(|_| slot.ready) else { continue };
            while let Some(next) = self.pending.front() {
                if slot.outstanding.len() + next.len() > window {
                    break;
                }
                let ids = self.pending.pop_front().expect("front exists");
                slot.outstanding.extend(ids.iter().copied());
                if let Err(e) = proc.send(&ToWorker::Assign { ids }) {
                    // Its ids stay outstanding and are requeued when it is reported gone.
                    log::warn!("worker {n} (pid {}): cannot send it work: {e}; killing it", proc.pid);
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
                if !results.is_empty() {
                    slot.delivered = true;
                    slot.barren_deaths = 0;
                    self.writes
                        .send(WriteCmd::Put(results))
                        .map_err(|_| Error::Internal("the store writer ended early".into()))?;
                }
            }
            EventKind::Gone { how, error } => self.on_gone(ev.slot, how, error)?,
        }
        Ok(())
    }

    fn on_gone(&mut self, n: usize, how: String, error: Option<String>) -> Result<(), Error> {
        let slot = &mut self.slots[n];
        let Some(proc) = slot.proc.take() else { return Ok(()) };
        slot.ready = false;
        let mut ids: Vec<u64> = slot.outstanding.drain().collect();
        ids.sort_unstable();
        let requeued = ids.len();
        for chunk in rechunk(ids, self.cfg.chunk_size as usize).into_iter().rev() {
            self.pending.push_front(chunk);
        }
        if self.draining {
            // Fetching is done (nothing was outstanding anywhere): this is the worker leaving.
            match error {
                None => log::debug!("worker {n} (pid {}) {how}", proc.pid),
                Some(e) => log::warn!("worker {n} (pid {}) {how} after a protocol error ({e})", proc.pid),
            }
            return Ok(());
        }
        let why = error.map(|e| format!(" after a protocol error ({e})")).unwrap_or_default();
        if !slot.delivered {
            slot.barren_deaths += 1;
        }
        slot.delivered = false;
        if slot.barren_deaths >= MAX_BARREN_DEATHS {
            return Err(Error::WorkersFailing {
                slot: n,
                deaths: slot.barren_deaths,
                last: format!("{how}{why}"),
            });
        }
        let delay = match slot.barren_deaths {
            0 => Duration::ZERO,
            k => (Duration::from_millis(100) * (1 << (k - 1))).min(Duration::from_secs(5)),
        };
        log::warn!(
            "worker {n} (pid {}) {how}{why}; requeued {requeued} ids; restarting in {}ms",
            proc.pid,
            delay.as_millis()
        );
        slot.restart_at = Some(Instant::now() + delay);
        self.report.restarts += 1;
        Ok(())
    }

    fn on_durable(&mut self, d: Durable) {
        self.report.answered += d.answered;
        self.report.failed += d.failed;
        self.report.retries += d.retries;
    }

    fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        for n in 0..self.slots.len() {
            let slot = &mut self.slots[n];
            if slot.proc.is_none() && slot.restart_at.is_some_and(|t| t <= now) && !self.draining {
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
                    log::warn!("worker {n} (pid {}) silent for {}ms; killing it", proc.pid, silent.as_millis());
                    proc.kill();
                    slot.last_heard = now; // one kill per timeout period
                }
                if slot.closed_at.is_some_and(|t| now.duration_since(t) > DRAIN_GRACE) {
                    log::warn!("worker {n} (pid {}) did not exit after its stdin closed; killing it", proc.pid);
                    proc.kill();
                    slot.closed_at = Some(now);
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

    /// Kills every worker and waits (briefly) for their reader threads to deliver what they
    /// had read, so those results are stored too.
    fn kill_all(&mut self, events: &Receiver<FleetEvent>) {
        for slot in &self.slots {
            if let Some(p) = &slot.proc {
                p.kill();
            }
        }
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
