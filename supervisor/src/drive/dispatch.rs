//! The dispatcher: the one thread that runs a job, as a thin loop around its decision core.
//!
//! The engine's `Core` owns the run's state and decides; this loop only receives events, feeds them
//! to the core with the time they were seen, and carries out the commands it returns. Events
//! come from six sources, `select!`ed: the workers' reader threads, the store writer's acks,
//! the planner's chunks (taken only while the core wants more), signals, panics of helper
//! threads, and a 100ms ticker. Carrying out a command can itself produce an event (a spawn
//! succeeded or failed, an assignment could not be handed over); those are fed back before the
//! next event is taken, so the core sees the outcome of its commands in order.
//!
//! Nothing is shared behind a lock; the loop holds the workers' handles, the core their state.
//! The watchers (progress, systemd, the live file, metrics) see the core's snapshot each tick and
//! change nothing; a SIGHUP's rereading is the loop's, through the closure the command gave it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, bounded, never, select, tick, unbounded, Receiver, Sender};
use shared::{Credential, JobSpec, ToWorker};
use signal_hook::consts::SIGHUP;

use super::plan::PlanMsg;
use super::signals::SignalFeed;
use super::store_side::{self, StoreSide};
use super::{Reload, Watch};
use crate::auth::{Keeper, News};
use crate::engine::{
    Command, Core, Ended, Error, Event, EventKind, Figures, FleetEvent, KillReason, Settings,
};
use crate::fleet::{threads, Spawner, WorkerProc};
use crate::job::RunConfig;
use crate::store::{self, KeyNames, WriteAck, WriteCmd};
use crate::util::Budget;
use crate::watch::{LiveFile, Metrics, Notifier, Progress};

/// How often the core's timers are checked.
const TICK: Duration = Duration::from_millis(100);

impl Settings {
    fn of(cfg: &RunConfig) -> Settings {
        Settings {
            workers: cfg.workers as usize,
            chunk_size: cfg.chunk_size as usize,
            max_in_flight: cfg.job.max_in_flight as usize,
            worker_timeout: cfg.worker_timeout,
            grace: cfg.grace,
            kill_every: cfg.kill_every,
            pace: cfg.pace.clone(),
        }
    }
}

/// Runs the job against an open store. Returns the run's figures, or the error that stopped it
/// (after storing every result already received).
pub fn run(
    cfg: &RunConfig,
    store: &store::Store,
    spawner: Spawner,
    watch: &Watch,
    metrics: Option<Arc<Metrics>>,
) -> Result<Figures, Error> {
    let started = Instant::now();
    let side = store_side::start(cfg, store, 2 * cfg.workers as usize + 2)?;
    let (events_tx, events_rx) = unbounded::<FleetEvent>();
    let signals = SignalFeed::start().map_err(Error::Thread)?;
    let total = side.covered.total()?;
    // The total to fetch, counted beside the planner so the first request does not wait for it.
    let (count_tx, count_rx) = bounded::<u64>(1);
    let (mut counter, covered, retry_q) =
        (store.reader().refetching(cfg.refetch.clone()), side.covered.clone(), cfg.retry_quarantined);
    threads::spawn("counter".into(), &side.panic_tx, move || {
        match counter.count_settled(&covered, retry_q) {
            Ok(settled) => {
                let _ = count_tx.send(settled);
            }
            Err(e) => log::debug!("cannot count what the store holds: {e}"),
        }
    })
    .map_err(Error::Thread)?;
    let mut l = Loop {
        core: Core::new(Settings::of(cfg), Instant::now(), fastrand::Rng::new()),
        reload: watch.reload.as_ref(),
        workers: Workers::new(
            spawner,
            cfg.job.clone(),
            events_tx,
            side.panic_tx.clone(),
            side.held.clone(),
            if cfg.keys.is_some() { store.key_names()? } else { None },
            (!cfg.refetch.is_empty()).then(|| store.reader()),
        ),
        keeper: match &cfg.credentials {
            Some(source) => {
                Some(Keeper::start(source.clone(), super::token_agent(cfg)).map_err(Error::Thread)?)
            }
            None => None,
        },
        api: cfg.pace.api.clone(),
        header_sent: cfg.job.headers.iter().any(|(name, _)| is_credential_header(name)),
        side: &side,
        feedback: VecDeque::new(),
        counted: false,
        watchers: Watchers {
            progress: Progress::new(watch.progress),
            notify: Notifier::from_env(),
            live: LiveFile::new(&cfg.store, cfg.scope.to_string(), cfg.job.url_template.clone()),
            metrics,
            range: total,
            credential_wait: None,
            credentials: 0,
        },
    };
    let sources = Sources {
        events: events_rx,
        signals: signals.rx.clone(),
        counted: count_rx,
        credentials: l.keeper.as_ref().map_or_else(never, |k| k.news.clone()),
    };
    l.run(&sources);
    l.watchers.notify.stopping();
    l.watchers.progress.finish();
    // Whatever happened, store what came back.
    l.finish_writes();
    let flushed = l.core.flushed();
    let mut report = l.core.conclude().map_err(|e| store_side::as_run_error(e, &cfg.store, flushed))?;
    report.wall = started.elapsed();
    report.pace.credentials = l.watchers.credentials;
    if report.dropped_results > 0 {
        log::warn!("dropped {} results for ids their worker did not hold", report.dropped_results);
    }
    Ok(report)
}

/// The channels the loop listens to besides the store side's.
struct Sources {
    events: Receiver<FleetEvent>,
    signals: Receiver<i32>,
    counted: Receiver<u64>,
    /// The credential keeper's news (never, without a source).
    credentials: Receiver<News>,
}

/// Everything that watches the run from outside: progress, systemd, the live status file,
/// metrics. They see the core's snapshot each tick and never change the run.
struct Watchers {
    progress: Progress,
    notify: Notifier,
    live: LiveFile,
    metrics: Option<Arc<Metrics>>,
    /// Ids in the range.
    range: u64,
    /// Why the fleet waits for a credential, while it does.
    credential_wait: Option<String>,
    /// Credentials the keeper has obtained so far.
    credentials: u64,
}

impl Watchers {
    fn tick(&mut self, core: &Core, held: usize, now: Instant) {
        let mut snapshot = core.snapshot(now);
        if let Some(why) = &self.credential_wait {
            snapshot.held_back = Some(why.clone());
        }
        snapshot.pace.credentials = self.credentials;
        let line = self.progress.update(&snapshot, now);
        self.notify.tick(&snapshot, &line, core.fleet_up(), now);
        self.live.tick(&snapshot, &line, now);
        if let Some(m) = &self.metrics {
            m.snapshot(&snapshot, held);
        }
    }

    /// What metrics count from an event, before the core takes it.
    fn saw(&self, event: &Event, killed: Option<KillReason>) {
        let Some(m) = &self.metrics else { return };
        match event {
            Event::Worker(FleetEvent { slot, kind: EventKind::Traffic(t), .. }) => m.traffic(*slot, t),
            Event::Worker(FleetEvent { slot, kind: EventKind::Gone { ended, fault }, .. }) => {
                m.worker_gone(*slot, death_cause(ended, fault.is_some(), killed))
            }
            Event::Durable(d) => m.durable(d),
            _ => {}
        }
    }
}

/// Why a worker ended, for `flota_worker_deaths_total`; `None` for a clean exit.
fn death_cause(ended: &Ended, broke_protocol: bool, killed: Option<KillReason>) -> Option<&'static str> {
    use KillReason as K;
    Some(match (killed, broke_protocol, ended) {
        (Some(K::Silent(_)), ..) => "silent",
        (Some(K::Chaos), ..) => "chaos",
        (Some(K::Undeliverable | K::DidNotExit), ..) => "stuck",
        (Some(K::GraceOver(_) | K::SecondSignal(_) | K::Abort), ..) => "stopped",
        (None, true, _) => "protocol",
        (None, false, e) if e.cleanly() => return None,
        (None, false, Ended::Exited(_)) => "exited",
        (None, false, Ended::Signalled(_) | Ended::Unknown(_)) => "crashed",
    })
}

struct Loop<'w> {
    core: Core,
    /// What a SIGHUP rereads, if anything.
    reload: Option<&'w Reload>,
    watchers: Watchers,
    /// Whether the counter has said (or ended).
    counted: bool,
    workers: Workers,
    /// The credential's keeper, when it comes from a source.
    keeper: Option<Keeper>,
    /// The API's `host:port`, for errors.
    api: String,
    /// Whether the job's own headers carry a credential (`Authorization` and the like).
    header_sent: bool,
    /// The store writer, the planner, and the helpers' panics.
    side: &'w StoreSide,
    /// Outcomes of commands, fed to the core before the next outside event.
    feedback: VecDeque<Event>,
}

impl Loop<'_> {
    /// Feeds events to the core and carries out its commands until it says the run is over.
    fn run(&mut self, sources: &Sources) {
        let ticker = tick(TICK);
        let mut event = Event::Tick;
        loop {
            for command in self.core.handle(event, Instant::now()) {
                if self.carry_out(command) {
                    return;
                }
            }
            event = match self.feedback.pop_front() {
                Some(e) => e,
                None => self.next_event(sources, &ticker),
            };
            let killed = match &event {
                Event::Worker(FleetEvent { slot, gen, kind: EventKind::Gone { .. } }) => {
                    self.workers.killed.remove(&(*slot, *gen))
                }
                _ => None,
            };
            self.watchers.saw(&event, killed);
            if matches!(event, Event::Tick) {
                self.watchers.tick(&self.core, self.workers.held.held(), Instant::now());
            }
            if matches!(event, Event::Signal(SIGHUP)) {
                self.reload(Instant::now());
                event = Event::Wake;
            }
        }
    }

    /// SIGHUP: rereads the settings (the command line and the config file, as the command that
    /// started the run knows how) and applies what can change in flight: only the pacing, against
    /// the ceiling the fleet was started with, and the log level. Settings that no longer parse
    /// change nothing.
    fn reload(&mut self, now: Instant) {
        let Some(reread) = self.reload else { return };
        self.watchers.notify.reloading();
        match reread(self.core.ceiling()) {
            Ok((pace, level)) => {
                let rate = pace.rate.map_or("none".to_owned(), |r| format!("{r}/s"));
                let limit = pace.concurrency.map_or("adaptive".to_owned(), |c| c.to_string());
                log::set_max_level(level);
                self.core.reconfigure(pace, now);
                log::info!("SIGHUP: settings reread: rate {rate}, concurrency {limit}, log level {level}");
            }
            Err(e) => log::warn!("SIGHUP: the settings were not changed: {e}"),
        }
        self.watchers.notify.reloaded();
    }

    /// Waits for the next event from outside.
    fn next_event(&mut self, s: &Sources, ticker: &Receiver<Instant>) -> Event {
        let no_plans = never();
        let plans = if self.core.wants_plans() { &self.side.plans } else { &no_plans };
        let wake = self.core.next_wake(Instant::now()).map_or_else(never, at);
        let no_count = never();
        let counted = if self.counted { &no_count } else { &s.counted };
        select! {
            recv(s.events) -> ev => {
                let ev = ev.expect("the loop holds a sender");
                match ev.kind {
                    EventKind::Gone { .. } => self.workers.gone(ev.slot, ev.gen),
                    EventKind::Refused { generation, proven } => self.refused(generation, proven),
                    _ => {}
                }
                Event::Worker(ev)
            }
            recv(s.credentials) -> news => match news {
                Ok(News::Fresh(credential, expires)) => {
                    self.watchers.credential_wait = None;
                    self.watchers.credentials += 1;
                    self.workers.credential(credential, expires);
                    Event::Wake
                }
                Ok(News::Waiting(why)) => {
                    self.watchers.credential_wait = Some(why);
                    Event::Wake
                }
                Ok(News::Fatal(why)) => Event::Fatal(Error::Credentials(why)),
                Err(_) => Event::Fatal(Error::Internal("the credential keeper ended".into())),
            },
            recv(self.side.acks) -> ack => match ack {
                Ok(WriteAck::Durable(d)) => Event::Durable(d),
                Ok(WriteAck::Failed(e)) => Event::Fatal(Error::Store(e)),
                Ok(WriteAck::Finished) | Err(_) => Event::Fatal(self.side.writer_gone()),
            },
            recv(plans) -> msg => match msg {
                Ok(PlanMsg::Chunk { ids, skipped, quarantined }) => Event::Planned { ids, skipped, quarantined },
                Ok(PlanMsg::End) => Event::PlanEnded,
                Ok(PlanMsg::Failed(e)) => Event::Fatal(Error::Store(e)),
                Err(_) => Event::Fatal(threads::ended_early(&self.side.panics, "the planner")),
            },
            recv(s.signals) -> sig => match sig {
                Ok(sig) => Event::Signal(sig),
                Err(_) => Event::Fatal(Error::Internal("the signal feed ended".into())),
            },
            recv(self.side.panics) -> p => Event::Fatal(p.expect("the store side holds a sender")),
            recv(ticker) -> _ => Event::Tick,
            recv(wake) -> _ => Event::Wake,
            recv(counted) -> settled => {
                self.counted = true;
                match settled {
                    Ok(settled) => Event::Counted { settled, range: self.watchers.range },
                    Err(_) => Event::Wake,
                }
            }
        }
    }

    /// A worker met a 401 with credential `generation`: the keeper obtains a newer one, or,
    /// with the job's own headers, nothing can mend it and the run stops.
    fn refused(&mut self, generation: u64, proven: bool) {
        if let Some(k) = &self.keeper {
            return k.refused(generation, proven);
        }
        let why = if self.header_sent {
            "the credentials the job's headers carry are refused (expired or revoked?): renew them, or give \
             --auth-command or --oauth2-token-url to renew them during the run"
        } else {
            "it asks for credentials: give --header, --auth-command or --oauth2-token-url"
        };
        let error = Error::Unauthorized { api: self.api.clone(), why: why.to_owned() };
        self.feedback.push_back(Event::Fatal(error));
    }

    /// Does what the core said. Returns whether the run is over.
    fn carry_out(&mut self, command: Command) -> bool {
        match command {
            Command::Spawn { slot, gen } => self.feedback.push_back(self.workers.spawn(slot, gen)),
            Command::Assign { slot, gen, ids } => {
                if let Err((ids, error)) = self.workers.assign(slot, gen, ids) {
                    self.feedback.push_back(Event::Unsent { slot, gen, ids });
                    self.feedback.extend(error.map(Event::Fatal));
                }
            }
            Command::Pace { slot, gen, pace } => self.workers.tell(slot, gen, ToWorker::Pace(pace)),
            Command::Permits { slot, gen, n } => self.workers.tell(slot, gen, ToWorker::Permits(n)),
            Command::Pause { slot, gen, ms } => self.workers.tell(slot, gen, ToWorker::Pause { ms }),
            Command::CloseInput { slot, gen } => self.workers.close(slot, gen),
            Command::Kill { slot, gen, why } => self.workers.kill(slot, gen, why),
            Command::Store(results) => self.write(WriteCmd::Put(results)),
            Command::Release(bytes) => self.workers.held.give(bytes),
            Command::Quarantine { id, deaths, reason } => {
                self.write(WriteCmd::Quarantine { id, deaths, reason })
            }
            Command::Log(level, line) => log::log!(level, "{line}"),
            Command::Finish => return true,
        }
        false
    }

    fn write(&mut self, cmd: WriteCmd) {
        if self.side.writes.send(cmd).is_ok() {
            return;
        }
        // The writer has ended. It says why before it ends (a write failed: a full disk), and
        // what it flushed before that counts: take its last acks first, in order.
        for ack in self.side.acks.try_iter() {
            match ack {
                WriteAck::Durable(d) => self.feedback.push_back(Event::Durable(d)),
                WriteAck::Failed(e) => return self.feedback.push_back(Event::Fatal(Error::Store(e))),
                WriteAck::Finished => {}
            }
        }
        let error = self.side.writer_gone();
        self.feedback.push_back(Event::Fatal(error));
    }

    /// Asks the store writer to flush everything and end, and feeds its last acks to the core.
    fn finish_writes(&mut self) {
        let _ = self.side.writes.send(WriteCmd::Finish);
        let now = Instant::now;
        loop {
            let event = match self.side.acks.recv() {
                Ok(WriteAck::Durable(d)) => Event::Durable(d),
                Ok(WriteAck::Finished) => return,
                Ok(WriteAck::Failed(e)) => Event::Fatal(Error::Store(e)),
                Err(_) => Event::Fatal(self.side.writer_gone()),
            };
            let last = matches!(event, Event::Fatal(_));
            // The run is over: the core only counts, and says nothing more to do.
            let _ = self.core.handle(event, now());
            if last {
                return;
            }
        }
    }
}

/// The running workers' handles, by slot. The core knows their state; this knows how to reach
/// them.
struct Workers {
    spawner: Spawner,
    job: JobSpec,
    events: Sender<FleetEvent>,
    panics: Sender<Error>,
    /// The run's budget, which the readers take from.
    held: Arc<Budget>,
    procs: Vec<Option<(u64, WorkerProc)>>,
    /// Why the supervisor killed a worker, until its end is seen.
    killed: HashMap<(usize, u64), KillReason>,
    /// A keyed job's keys, by ordinal: each assignment carries its ids' keys.
    keys: Option<KeyNames>,
    /// In a refresh, the store's blocks, for what each id's stored answer is validated by.
    conditions: Option<store::Reader>,
    /// The newest credential, and when it runs out: every worker has it, a new one from its
    /// hello on.
    credential: Option<(Credential, Option<Instant>)>,
}

impl Workers {
    fn new(
        spawner: Spawner,
        job: JobSpec,
        events: Sender<FleetEvent>,
        panics: Sender<Error>,
        held: Arc<Budget>,
        keys: Option<KeyNames>,
        conditions: Option<store::Reader>,
    ) -> Workers {
        Workers {
            spawner,
            job,
            events,
            panics,
            held,
            procs: Vec::new(),
            killed: HashMap::new(),
            keys,
            conditions,
            credential: None,
        }
    }

    fn get(&mut self, slot: usize, gen: u64) -> Option<&mut WorkerProc> {
        match self.procs.get_mut(slot) {
            Some(Some((g, proc))) if *g == gen => Some(proc),
            _ => None,
        }
    }

    fn spawn(&mut self, slot: usize, gen: u64) -> Event {
        if self.procs.len() <= slot {
            self.procs.resize_with(slot + 1, || None);
        }
        match self.spawner.spawn(slot, gen, &self.job, self.events.clone(), &self.panics, self.held.clone()) {
            Ok(mut proc) => {
                let pid = proc.pid;
                if let Some(c) = self.credential_now() {
                    let _ = proc.send(ToWorker::Credential(c));
                }
                self.procs[slot] = Some((gen, proc));
                Event::Spawned { slot, gen, pid }
            }
            Err(source) => Event::SpawnFailed {
                slot,
                gen,
                error: Error::Spawn { bin: self.spawner.bin.clone(), source },
            },
        }
    }

    /// Gives the ids back when the worker's stdin is closed: it never received them; or, with
    /// the error, when their keys cannot be read.
    fn assign(&mut self, slot: usize, gen: u64, ids: Vec<u64>) -> Result<(), (Vec<u64>, Option<Error>)> {
        let keys = match self.keys.as_mut() {
            None => Vec::new(),
            Some(names) => match ids.iter().map(|&o| names.key(o).map(str::to_owned)).collect() {
                Ok(keys) => keys,
                Err(e) => return Err((ids, Some(Error::Store(e)))),
            },
        };
        let conditions = match self.conditions.as_mut().map(|r| r.conditions(&ids)) {
            None => Vec::new(),
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err((ids, Some(Error::Store(e)))),
        };
        let Some(proc) = self.get(slot, gen) else { return Err((ids, None)) };
        match proc.send(ToWorker::Assign { ids, keys, conditions }) {
            Ok(()) => Ok(()),
            Err(ToWorker::Assign { ids, .. }) => Err((ids, None)),
            Err(_) => unreachable!("an Assign comes back as it was sent"),
        }
    }

    /// Sends a pacing order. One the worker cannot take no longer matters: it is leaving, and
    /// the refused assignment or its end tells the core.
    fn tell(&mut self, slot: usize, gen: u64, msg: ToWorker) {
        if let Some(proc) = self.get(slot, gen) {
            let _ = proc.send(msg);
        }
    }

    /// A newer credential: to every worker now, and to every one started from now on.
    fn credential(&mut self, credential: Credential, expires: Option<Instant>) {
        self.credential = Some((credential, expires));
        let Some(c) = self.credential_now() else { return };
        for (_, proc) in self.procs.iter_mut().flatten() {
            let _ = proc.send(ToWorker::Credential(c.clone()));
        }
    }

    /// The credential as a worker is sent it now: its lifetime counted from now.
    fn credential_now(&self) -> Option<Credential> {
        let (c, expires) = self.credential.as_ref()?;
        let left = expires.map(|at| at.saturating_duration_since(Instant::now()));
        Some(Credential {
            expires_in_ms: left.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            ..c.clone()
        })
    }

    fn close(&mut self, slot: usize, gen: u64) {
        if let Some(proc) = self.get(slot, gen) {
            proc.close();
        }
    }

    fn kill(&mut self, slot: usize, gen: u64, why: KillReason) {
        if let Some(proc) = self.get(slot, gen) {
            // Killing the workers of a run stopping on an error is routine: the error is the news.
            let level = if why == KillReason::Abort { log::Level::Debug } else { log::Level::Warn };
            log::log!(level, "worker {slot} (pid {}) {why}; killing it", proc.pid);
            proc.kill();
            self.killed.insert((slot, gen), why);
        }
    }

    /// The worker has been reaped: its handle is done.
    fn gone(&mut self, slot: usize, gen: u64) {
        if self.get(slot, gen).is_some() {
            self.procs[slot] = None;
        }
    }
}

/// Whether a request header carries a credential: `Authorization`, an API key, a cookie.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "authorization"
        || name == "cookie"
        || ["key", "token", "auth", "secret"].iter().any(|w| name.contains(w))
}
