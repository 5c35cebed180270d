//! Every rule of the decision core, checked in microseconds: no process, no clock, no sleep.
//!
//! [`Sim`] plays the loop's part: it carries out the core's commands on a model of the fleet
//! (a Spawn is answered by Spawned and, unless told otherwise, Hello; a Store is acked as
//! durable) and lets a test make workers deliver, die, fall silent, or receive signals.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;
use proptest::prelude::*;
use shared::{ItemResult, Outcome};

use super::*;
use crate::job::{Durable, Tally};

const CHUNK: usize = 4;
const WINDOW: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(5);

fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        chunk_size: CHUNK,
        max_in_flight: WINDOW,
        worker_timeout: TIMEOUT,
        grace: GRACE,
        kill_every: None,
        pace: PaceSettings {
            rate: None,
            burst: None,
            concurrency: None,
            ceiling: 64,
            outage_max: Duration::from_secs(300),
            wait_for_api: Duration::from_secs(180),
            api: "127.0.0.1:9".into(),
        },
    }
}

fn ok(id: u64) -> ItemResult {
    ItemResult {
        id,
        attempts: 1,
        outcome: Outcome::Response {
            status: 200,
            body: id.to_string().into_bytes(),
            validators: Default::default(),
        },
    }
}

/// The loop's part, on a model of the fleet.
struct Sim {
    core: Core,
    now: Instant,
    /// Current generation of each slot, as the core asked for it.
    gens: Vec<u64>,
    /// Ids each slot's current worker was sent and has not answered.
    held: Vec<Vec<u64>>,
    /// Ids written to the store, in order, quarantined ones included.
    stored: Vec<u64>,
    quarantined: Vec<u64>,
    assigns: Vec<(usize, Vec<u64>)>,
    spawns: Vec<(usize, u64)>,
    kills: Vec<(usize, KillReason)>,
    closed: Vec<usize>,
    logs: Vec<(Level, String)>,
    /// Every command, in order, as `Debug` text (pacing and assignment order is checked here).
    said: Vec<String>,
    finished: bool,
    /// Whether new workers say hello at once.
    auto_hello: bool,
    /// Slots whose stdin is closed: an Assign to them comes back Unsent.
    deaf: Vec<usize>,
    /// A Spawn fails with this, if set.
    spawn_error: Option<fn() -> Error>,
    /// Whether a Kill makes the worker gone at once, as a real SIGKILL soon does.
    kills_take_effect: bool,
    feedback: VecDeque<Event>,
    /// Bytes of the budget given back for dropped results.
    released: usize,
}

impl Sim {
    fn new(workers: usize) -> Sim {
        Self::with(settings(workers))
    }

    fn with(settings: Settings) -> Sim {
        let now = Instant::now();
        let n = settings.workers;
        let core = Core::new(settings, now, fastrand::Rng::with_seed(7));
        Sim {
            core,
            now,
            gens: vec![0; n],
            held: vec![Vec::new(); n],
            stored: Vec::new(),
            quarantined: Vec::new(),
            assigns: Vec::new(),
            spawns: Vec::new(),
            kills: Vec::new(),
            closed: Vec::new(),
            logs: Vec::new(),
            said: Vec::new(),
            finished: false,
            auto_hello: true,
            deaf: Vec::new(),
            spawn_error: None,
            kills_take_effect: false,
            feedback: VecDeque::new(),
            released: 0,
        }
    }

    /// Starts every slot and plans `ids` in chunks.
    fn started(workers: usize, ids: std::ops::Range<u64>) -> Sim {
        let mut sim = Sim::new(workers);
        sim.tick(Duration::ZERO);
        sim.plan(ids);
        sim
    }

    fn feed(&mut self, event: Event) {
        self.feedback.push_back(event);
        while let Some(event) = self.feedback.pop_front() {
            for cmd in self.core.handle(event, self.now) {
                self.apply(cmd);
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        assert!(!self.finished, "a command after Finish: {cmd:?}");
        self.said.push(format!("{cmd:?}"));
        match cmd {
            Command::Spawn { slot, gen } => {
                assert!(gen > self.gens[slot], "generations only grow");
                self.gens[slot] = gen;
                self.held[slot].clear();
                self.deaf.retain(|&s| s != slot);
                self.spawns.push((slot, gen));
                match self.spawn_error {
                    Some(error) => self.feedback.push_back(Event::SpawnFailed { slot, gen, error: error() }),
                    None => {
                        self.feedback.push_back(Event::Spawned {
                            slot,
                            gen,
                            pid: 1000 * gen as u32 + slot as u32,
                        });
                        if self.auto_hello {
                            self.feedback.push_back(worker(slot, gen, EventKind::Hello));
                        }
                    }
                }
            }
            Command::Assign { slot, gen, ids } => {
                assert_eq!(gen, self.gens[slot], "assigned to the current worker");
                if self.deaf.contains(&slot) {
                    self.feedback.push_back(Event::Unsent { slot, gen, ids });
                } else {
                    self.held[slot].extend(&ids);
                    self.assigns.push((slot, ids));
                }
            }
            Command::CloseInput { slot, .. } => self.closed.push(slot),
            Command::Kill { slot, gen, why } => {
                self.kills.push((slot, why));
                if self.kills_take_effect {
                    self.held[slot].clear();
                    let gone = EventKind::Gone { ended: Ended::Signalled(9), fault: None };
                    self.feedback.push_back(worker(slot, gen, gone));
                }
            }
            Command::Store(results) => {
                let answered = results.len() as u64;
                self.stored.extend(results.iter().map(|r| r.id));
                self.feedback.push_back(Event::Durable(Durable {
                    tally: Tally { answered, ..Tally::default() },
                    ..Durable::default()
                }));
            }
            Command::Quarantine { id, .. } => {
                self.stored.push(id);
                self.quarantined.push(id);
                let d = Durable {
                    tally: Tally { failed: 1, quarantined: 1, ..Tally::default() },
                    ..Durable::default()
                };
                self.feedback.push_back(Event::Durable(d));
            }
            Command::Log(level, line) => self.logs.push((level, line)),
            Command::Pace { .. } | Command::Permits { .. } | Command::Pause { .. } => {}
            Command::Release(bytes) => self.released += bytes,
            Command::Finish => self.finished = true,
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.feed(Event::Tick);
    }

    fn plan(&mut self, ids: std::ops::Range<u64>) {
        let ids: Vec<u64> = ids.collect();
        for chunk in ids.chunks(CHUNK) {
            self.feed(Event::Planned { ids: chunk.to_vec(), skipped: 0, quarantined: 0 });
        }
        self.feed(Event::PlanEnded);
    }

    /// The slot's worker reports these ids.
    fn report(&mut self, slot: usize, ids: &[u64]) {
        self.held[slot].retain(|id| !ids.contains(id));
        let results = ids.iter().map(|&id| ok(id)).collect();
        self.feed(worker(slot, self.gens[slot], EventKind::Results(results)));
    }

    /// The slot's worker reports everything it holds.
    fn deliver(&mut self, slot: usize) {
        let ids = self.held[slot].clone();
        if !ids.is_empty() {
            self.report(slot, &ids);
        }
    }

    fn die(&mut self, slot: usize) {
        self.held[slot].clear();
        let gone = EventKind::Gone { ended: Ended::Signalled(9), fault: None };
        self.feed(worker(slot, self.gens[slot], gone));
    }

    fn heartbeat(&mut self, slot: usize) {
        self.feed(worker(slot, self.gens[slot], EventKind::Heartbeat));
    }

    /// Every live worker reports everything it holds, until the run needs nothing more.
    fn deliver_all(&mut self) {
        for _ in 0..10_000 {
            let busy: Vec<usize> = (0..self.held.len()).filter(|&s| !self.held[s].is_empty()).collect();
            if busy.is_empty() {
                return;
            }
            for slot in busy {
                self.deliver(slot);
            }
        }
        panic!("the run never settled");
    }

    /// Every closed or killed worker exits.
    fn all_exit(&mut self) {
        for slot in 0..self.gens.len() {
            self.die(slot);
        }
    }

    fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|(_, l)| l.contains(text))
    }

    fn sorted_stored(&self) -> Vec<u64> {
        let mut s = self.stored.clone();
        s.sort_unstable();
        s
    }

    fn conclude(self) -> Result<Figures, Error> {
        self.core.conclude()
    }
}

fn worker(slot: usize, gen: u64, kind: EventKind) -> Event {
    Event::Worker(FleetEvent { slot, gen, kind })
}

fn killed_for(sim: &Sim, slot: usize) -> Vec<KillReason> {
    sim.kills.iter().filter(|(s, _)| *s == slot).map(|(_, why)| *why).collect()
}

// ---- Starting, flow control, exactly once -------------------------------------------------

#[test]
fn every_slot_starts_at_once_and_gets_work_only_after_its_hello() {
    let mut sim = Sim::new(3);
    sim.auto_hello = false;
    sim.tick(Duration::ZERO);
    assert_eq!(sim.spawns, vec![(0, 1), (1, 1), (2, 1)]);
    sim.plan(0..40);
    assert!(sim.assigns.is_empty(), "no worker has said hello");
    sim.feed(worker(1, 1, EventKind::Hello));
    assert_eq!(sim.assigns, vec![(1, vec![0, 1, 2, 3]), (1, vec![4, 5, 6, 7])]);
}

#[test]
fn no_worker_ever_holds_more_than_max_in_flight() {
    let mut sim = Sim::started(2, 0..200);
    for round in 0..100 {
        for slot in 0..2 {
            assert!(sim.held[slot].len() <= WINDOW, "slot {slot} holds {} ids", sim.held[slot].len());
            // Deliver a few at a time, so refills come in every shape.
            let some: Vec<u64> = sim.held[slot].iter().copied().take(1 + round % 3).collect();
            sim.report(slot, &some);
        }
    }
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..200).collect::<Vec<_>>());
}

#[test]
fn a_complete_run_stores_every_id_once_then_drains_and_finishes() {
    let mut sim = Sim::started(3, 0..100);
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..100).collect::<Vec<_>>(), "every id once");
    assert_eq!(sim.closed, vec![0, 1, 2], "every worker told to leave");
    assert!(!sim.finished, "not before they are gone");
    sim.all_exit();
    assert!(sim.finished);
    assert_eq!(sim.core.report.tally.restarts, 0, "leaving workers are not restarted");
    let report = sim.conclude().expect("a clean run");
    assert_eq!((report.tally.answered, report.tally.failed, report.dropped_results), (100, 0, 0));
}

#[test]
fn a_result_for_an_id_the_worker_does_not_hold_is_dropped() {
    let mut sim = Sim::started(2, 0..8);
    assert_eq!(sim.held[0], vec![0, 1, 2, 3, 4, 5, 6, 7]);
    // Slot 1 reports an id slot 0 holds; slot 0 reports one twice.
    sim.feed(worker(1, 1, EventKind::Results(vec![ok(3)])));
    sim.report(0, &[3]);
    sim.feed(worker(0, 1, EventKind::Results(vec![ok(3), ok(999)])));
    assert_eq!(sim.stored, vec![3], "stored once, from its holder");
    assert_eq!(sim.core.report.dropped_results, 3);
    let dropped = 2 * ok(3).held_bytes() + ok(999).held_bytes();
    assert_eq!(sim.released, dropped, "what is dropped gives its budget back");
    // A result from a worker that is no longer the slot's gives its budget back too.
    sim.feed(worker(1, 7, EventKind::Results(vec![ok(4)])));
    assert_eq!(sim.released, dropped + ok(4).held_bytes());
    assert_eq!(sim.stored, vec![3]);
}

#[test]
fn events_from_an_earlier_worker_of_the_slot_are_ignored() {
    let mut sim = Sim::started(1, 0..8);
    let first_held = sim.held[0].clone();
    sim.die(0);
    sim.tick(restart_delay(1));
    assert_eq!(sim.gens[0], 2);
    // A late frame of generation 1 changes nothing.
    sim.feed(worker(0, 1, EventKind::Results(first_held.iter().map(|&id| ok(id)).collect())));
    sim.feed(worker(0, 1, EventKind::Gone { ended: Ended::Exited(1), fault: None }));
    assert!(sim.stored.is_empty());
    assert_eq!(sim.core.report.tally.restarts, 1);
}

#[test]
fn a_dead_workers_ids_are_requeued_ahead_of_new_work() {
    let mut sim = Sim::started(2, 0..40);
    let lost = sim.held[0].clone();
    assert_eq!(lost, (0..8).collect::<Vec<_>>());
    sim.die(0);
    assert!(sim.logged("it held 8 ids: 8 requeued"), "{:?}", sim.logs);
    // Slot 1 has room once it delivers; the requeued ids come before anything new.
    sim.deliver(1);
    assert_eq!(sim.held[1], lost, "the dead worker's ids first");
    sim.tick(restart_delay(1));
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..40).collect::<Vec<_>>());
}

#[test]
fn an_assignment_the_worker_never_received_goes_back_unchanged() {
    let mut sim = Sim::new(2);
    sim.tick(Duration::ZERO);
    sim.deaf.push(0);
    sim.plan(0..16);
    assert_eq!(killed_for(&sim, 0), vec![KillReason::Undeliverable]);
    assert!(sim.held[0].is_empty());
    sim.die(0);
    // Nothing was counted against the ids: none is a suspect, however often it happens.
    assert!(sim.core.poison.deaths_held.is_empty());
    assert!(sim.logged("it held 0 ids"), "{:?}", sim.logs);
    sim.tick(restart_delay(1));
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..16).collect::<Vec<_>>());
}

#[test]
fn the_planner_is_asked_for_more_only_while_the_queue_is_short() {
    let mut sim = Sim::new(2);
    sim.auto_hello = false;
    sim.tick(Duration::ZERO);
    assert!(sim.core.wants_plans());
    sim.feed(Event::Planned { ids: vec![0, 1], skipped: 3, quarantined: 1 });
    sim.feed(Event::Planned { ids: vec![5], skipped: 0, quarantined: 0 });
    assert!(!sim.core.wants_plans(), "two chunks wait for two workers");
    sim.feed(Event::PlanEnded);
    assert!(!sim.core.wants_plans());
    assert_eq!(
        (sim.core.report.tally.skipped, sim.core.report.skipped_quarantined, sim.core.planned),
        (3, 1, 3)
    );
}

// ---- Poison ids ----------------------------------------------------------------------------

/// A run where id 5 kills whoever holds it: slot `s` dies whenever it holds 5.
fn poison_run(workers: usize, poison: u64, ids: std::ops::Range<u64>) -> Sim {
    let mut sim = Sim::started(workers, ids);
    for _ in 0..1000 {
        if sim.finished || sim.core.error.is_some() {
            break;
        }
        for slot in 0..workers {
            if sim.held[slot].contains(&poison) {
                sim.die(slot);
            } else {
                sim.deliver(slot);
            }
        }
        sim.tick(Duration::from_secs(1));
        if sim.core.done_fetching() {
            sim.all_exit();
        }
    }
    sim
}

#[test]
fn two_deaths_make_a_suspect_and_a_suspect_runs_alone() {
    let mut sim = Sim::started(2, 0..16);
    assert!(sim.held[0].contains(&5));
    sim.die(0);
    sim.tick(restart_delay(1));
    assert!(sim.core.poison.suspects.is_empty(), "one death is not enough");
    let holder = (0..2).find(|&s| sim.held[s].contains(&5)).expect("5 was requeued and reassigned");
    sim.die(holder);
    assert!(sim.core.poison.suspects.contains(&5), "held at two deaths");
    sim.tick(Duration::from_secs(1));
    sim.deliver_all();
    let alone: Vec<_> = sim.assigns.iter().filter(|(_, ids)| ids.contains(&5)).collect();
    assert_eq!(alone.last().map(|(_, ids)| ids.clone()), Some(vec![5]), "then alone: {alone:?}");
    assert!(sim.logged("retrying id 5 alone"));
}

#[test]
fn a_suspect_goes_only_to_a_worker_holding_nothing() {
    let mut sim = Sim::started(2, 0..64);
    sim.core.poison.suspects.push_back(1000);
    sim.report(0, &[0]); // slot 0 still holds 7 ids: no suspect for it
    assert!(!sim.held[0].contains(&1000) && !sim.held[1].contains(&1000));
    let all0 = sim.held[0].clone();
    sim.report(0, &all0);
    assert_eq!(sim.held[0], vec![1000], "idle, it takes the suspect and nothing else");
    sim.deliver(1);
    assert!(!sim.held[0].iter().any(|&id| id != 1000), "nothing joins a suspect");
}

#[test]
fn while_suspects_wait_the_least_loaded_worker_takes_no_new_chunk() {
    let mut sim = Sim::started(2, 0..64);
    sim.core.poison.suspects.push_back(1000);
    sim.report(0, &[0, 1, 2, 3]); // slot 0: 4 ids left, slot 1: 8
    assert_eq!(sim.held[0], vec![4, 5, 6, 7], "the least loaded is reserved: no new chunk");
    sim.report(1, &[8, 9, 10, 11]);
    assert_eq!(sim.held[1].len(), 8, "the other worker refills");
    sim.report(0, &[4, 5, 6, 7]);
    assert_eq!(sim.held[0], vec![1000]);
}

#[test]
fn a_suspect_that_kills_two_workers_alone_is_quarantined() {
    let sim = poison_run(2, 5, 0..32);
    assert_eq!(sim.quarantined, vec![5]);
    let stored = sim.sorted_stored();
    assert_eq!(stored, (0..32).collect::<Vec<_>>(), "every other id completes, each once");
    assert!(sim.finished);
    assert!(sim.logged("id 5 quarantined: killed 4 workers, 2 of them holding it alone"), "{:?}", sim.logs);
    let report = sim.conclude().expect("quarantine is not an error");
    assert_eq!((report.tally.answered, report.tally.failed, report.tally.quarantined), (31, 1, 1));
}

#[test]
fn a_suspect_that_survives_alone_is_forgotten() {
    let mut sim = Sim::started(1, 0..8);
    sim.die(0);
    sim.tick(restart_delay(1));
    sim.die(0); // every id 0..8 is now held at two deaths
    assert_eq!(sim.core.poison.suspects.len(), 8);
    sim.tick(Duration::from_secs(1));
    assert_eq!(sim.held[0], vec![0]);
    sim.die(0); // a strike against 0 alone
    assert_eq!(sim.core.poison.solo_deaths.get(&0), Some(&1));
    sim.tick(Duration::from_secs(1));
    assert_eq!(sim.held[0], vec![0], "a suspect with one strike is retried first");
    sim.deliver(0);
    assert!(
        !sim.core.poison.solo_deaths.contains_key(&0) && !sim.core.poison.deaths_held.contains_key(&0),
        "forgotten"
    );
    sim.deliver_all();
    assert!(sim.quarantined.is_empty());
    assert_eq!(sim.sorted_stored(), (0..8).collect::<Vec<_>>());
}

#[test]
fn five_quarantines_in_a_row_stop_the_run() {
    // A worker that dies on every id: ids are suspected, then quarantined, five in a row.
    let mut sim = Sim::started(1, 0..40);
    for _ in 0..200 {
        if sim.core.error.is_some() {
            break;
        }
        if sim.held[0].is_empty() {
            sim.tick(Duration::from_secs(1));
        } else {
            sim.die(0);
        }
    }
    // Two barren deaths make all eight ids suspects; run alone, each is quarantined in turn.
    assert_eq!(sim.quarantined, vec![0, 1, 2, 3, 4]);
    match sim.core.error {
        Some(Error::WorkersFailing { ref last, deaths, .. }) => {
            assert_eq!(deaths, MAX_QUARANTINES_IN_A_ROW);
            assert!(last.ends_with("was killed by SIGKILL; every id it is given kills it"), "{last}");
        }
        ref other => panic!("expected WorkersFailing, got {other:?}"),
    }
}

#[test]
fn quarantines_stop_the_run_only_when_nothing_succeeds_in_between() {
    let mut sim = Sim::started(1, 0..4);
    sim.report(0, &[0]); // a result resets every count
    for id in 100..100 + u64::from(MAX_QUARANTINES_IN_A_ROW) - 1 {
        sim.core.strike(id, 0, "was killed", sim.now);
        sim.core.strike(id, 0, "was killed", sim.now);
    }
    assert!(sim.core.error.is_none(), "four in a row");
    sim.report(0, &[1]);
    sim.core.strike(200, 0, "was killed", sim.now);
    sim.core.strike(200, 0, "was killed", sim.now);
    assert!(sim.core.error.is_none(), "a result in between starts the count again");
    assert_eq!(sim.core.poison.quarantines_in_a_row(), 1);
}

// ---- Restarts -------------------------------------------------------------------------------

#[test]
fn restart_backoff_doubles_from_100ms_to_5s() {
    let ms = |k| restart_delay(k).as_millis();
    assert_eq!(
        [ms(0), ms(1), ms(2), ms(3), ms(4), ms(6), ms(7), ms(40)],
        [0, 100, 200, 400, 800, 3200, 5000, 5000]
    );
}

#[test]
fn a_worker_that_delivered_is_restarted_at_once() {
    let mut sim = Sim::started(1, 0..40);
    sim.report(0, &[0]);
    sim.die(0);
    assert!(sim.logged("restarting in 0ms"));
    sim.tick(Duration::ZERO);
    assert_eq!(sim.spawns.len(), 2);
}

#[test]
fn barren_deaths_back_off_and_five_in_a_row_stop_the_run() {
    // Workers that die before their hello hold nothing: only the slot's count is at stake.
    let mut sim = Sim::new(1);
    sim.auto_hello = false;
    sim.tick(Duration::ZERO);
    sim.plan(0..40);
    for k in 1..MAX_BARREN_DEATHS {
        sim.die(0);
        let delay = restart_delay(k);
        sim.tick(delay - Duration::from_millis(1));
        assert_eq!(sim.spawns.len(), k as usize, "death {k}: not before {delay:?}");
        sim.tick(Duration::from_millis(1));
        assert_eq!(sim.spawns.len(), k as usize + 1, "death {k}: restarted after {delay:?}");
    }
    sim.die(0);
    assert!(matches!(sim.core.error, Some(Error::WorkersFailing { deaths: MAX_BARREN_DEATHS, .. })));
    assert!(sim.finished, "nothing is left running");
    let err = sim.conclude().expect_err("the run failed");
    assert!(
        err.to_string()
            .contains("died 5 times in a row without delivering a result (last it was killed by SIGKILL)"),
        "{err}"
    );
}

#[test]
fn a_result_anywhere_resets_the_barren_count_of_every_slot() {
    let mut sim = Sim::new(2);
    sim.auto_hello = false;
    sim.tick(Duration::ZERO);
    sim.feed(worker(1, 1, EventKind::Hello));
    sim.plan(0..400);
    for _ in 0..MAX_BARREN_DEATHS - 1 {
        sim.die(0);
        sim.heartbeat(1);
        sim.tick(Duration::from_secs(6));
    }
    assert_eq!(sim.core.slots[0].barren_deaths, MAX_BARREN_DEATHS - 1);
    sim.report(1, &[sim.held[1][0]]);
    assert_eq!(sim.core.slots[0].barren_deaths, 0);
    sim.die(0);
    assert!(sim.core.error.is_none());
}

#[test]
fn spawn_failures_back_off_and_five_stop_the_run_with_the_cause() {
    let mut sim = Sim::new(1);
    sim.spawn_error = Some(|| Error::Internal("no such file".into()));
    sim.tick(Duration::ZERO);
    for k in 1..MAX_BARREN_DEATHS {
        assert!(sim.logged("no such file"));
        sim.tick(restart_delay(k));
    }
    assert_eq!(sim.spawns.len(), MAX_BARREN_DEATHS as usize);
    assert!(sim.finished);
    assert_eq!(sim.conclude().expect_err("failed").to_string(), "internal error: no such file");
}

// ---- Hung workers -----------------------------------------------------------------------------

#[test]
fn a_silent_worker_is_killed_once_after_the_timeout() {
    let mut sim = Sim::started(2, 0..40);
    for _ in 0..10 {
        sim.tick(Duration::from_secs(1));
        sim.heartbeat(1);
    }
    assert!(sim.kills.is_empty(), "10s of silence is not past the timeout");
    sim.tick(Duration::from_millis(500));
    assert_eq!(sim.kills, vec![(0, KillReason::Silent(Duration::from_millis(10_500)))]);
    for _ in 0..30 {
        sim.heartbeat(1);
        sim.tick(Duration::from_secs(1));
    }
    assert_eq!(killed_for(&sim, 0).len(), 1, "one kill; its reader reports it gone");
    assert!(killed_for(&sim, 1).is_empty(), "heartbeats keep a worker alive");
}

#[test]
fn a_stalled_dispatcher_does_not_blame_its_workers() {
    let mut sim = Sim::started(1, 0..40);
    // The dispatcher was held up for 30s (the next tick comes late): the heartbeats sent
    // meanwhile are still unread in the channel, so that silence proves nothing...
    sim.tick(Duration::from_secs(30));
    assert!(sim.kills.is_empty());
    // ...but silence after it does.
    for _ in 0..9 {
        sim.tick(Duration::from_secs(1));
    }
    assert!(sim.kills.is_empty());
    sim.tick(Duration::from_secs(1));
    assert_eq!(sim.kills, vec![(0, KillReason::Silent(Duration::from_millis(10_500)))]);
}

// ---- Signals -----------------------------------------------------------------------------------

#[test]
fn sigterm_closes_every_worker_and_stops_handing_out_work() {
    let mut sim = Sim::started(2, 0..400);
    let assigned = sim.assigns.len();
    sim.feed(Event::Signal(15));
    assert_eq!(sim.closed, vec![0, 1]);
    assert!(sim.logged("received SIGTERM: stopping; workers get 5000ms"));
    sim.deliver(0); // results of the requests in hand are still stored...
    assert_eq!(sim.assigns.len(), assigned, "...but no new work goes out");
    assert_eq!(sim.stored.len(), 8);
    sim.all_exit();
    assert!(sim.finished);
    assert_eq!(sim.core.report.tally.restarts, 0, "nothing restarts while stopping");
    let report = sim.conclude().expect("a stop is not an error");
    assert_eq!((report.stopped_by, report.tally.answered), (Some(15), 8), "no end-of-run check on a stop");
}

#[test]
fn workers_still_running_when_the_grace_period_ends_are_killed() {
    let mut sim = Sim::started(2, 0..40);
    sim.feed(Event::Signal(2));
    sim.die(1);
    sim.tick(GRACE - Duration::from_millis(100));
    assert!(sim.kills.is_empty());
    sim.tick(Duration::from_millis(100));
    assert_eq!(sim.kills, vec![(0, KillReason::GraceOver(2))]);
    assert!(sim.logged("grace period after SIGINT over"));
    sim.die(0);
    assert!(sim.finished);
}

#[test]
fn a_second_signal_kills_every_worker_at_once() {
    let mut sim = Sim::started(3, 0..40);
    sim.feed(Event::Signal(15));
    sim.tick(Duration::from_millis(200));
    sim.feed(Event::Signal(15));
    assert_eq!(sim.kills.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(sim.kills.iter().all(|(_, why)| *why == KillReason::SecondSignal(15)));
    assert!(sim.logged("received SIGTERM again: killing the workers now"));
    sim.feed(Event::Signal(15));
    assert_eq!(sim.kills.len(), 3, "a worker is killed once");
}

#[test]
fn a_signal_while_a_restart_is_pending_ends_the_run_without_it() {
    let mut sim = Sim::started(1, 0..40);
    sim.die(0); // restart pending
    sim.feed(Event::Signal(15));
    assert!(sim.finished, "no worker left: the run ends without a restart");
    assert_eq!(sim.spawns.len(), 1);
}

// ---- The end of a run ----------------------------------------------------------------------------

#[test]
fn a_worker_that_does_not_leave_after_the_run_is_killed() {
    let mut sim = Sim::started(2, 0..8);
    sim.deliver_all();
    sim.die(1);
    sim.tick(DRAIN_GRACE);
    assert!(sim.kills.is_empty());
    sim.heartbeat(0);
    sim.tick(Duration::from_millis(100));
    assert_eq!(sim.kills, vec![(0, KillReason::DidNotExit)]);
}

#[test]
fn the_end_of_run_check_catches_an_id_planned_but_not_stored() {
    let mut sim = Sim::started(1, 0..8);
    sim.deliver_all();
    sim.all_exit();
    sim.core.report.tally.answered -= 1; // as if the writer had lost one
    let err = sim.conclude().expect_err("7 stored of 8 planned");
    assert_eq!(err.to_string(), "internal error: planned 8 ids but stored 7: please report this bug");
}

#[test]
fn a_fatal_error_kills_the_workers_and_stores_what_they_already_sent() {
    let mut sim = Sim::started(2, 0..40);
    sim.feed(Event::Fatal(Error::Internal("the store writer ended early".into())));
    assert_eq!(sim.kills, vec![(0, KillReason::Abort), (1, KillReason::Abort)]);
    sim.deliver(0); // frames read before the kill
    assert_eq!(sim.stored.len(), 8);
    sim.feed(Event::Fatal(Error::Internal("a later error".into())));
    sim.all_exit();
    assert!(sim.finished);
    assert_eq!(
        sim.conclude().expect_err("failed").to_string(),
        "internal error: the store writer ended early"
    );
}

#[test]
fn an_aborting_run_finishes_after_its_grace_even_if_a_worker_lingers() {
    let mut sim = Sim::started(2, 0..40);
    sim.feed(Event::Fatal(Error::Internal("boom".into())));
    sim.die(0);
    sim.tick(ABORT_GRACE - Duration::from_millis(1));
    assert!(!sim.finished);
    sim.tick(Duration::from_millis(1));
    assert!(sim.finished);
}

#[test]
fn chaos_kills_one_live_worker_each_period() {
    let mut sim = Sim::with(Settings { kill_every: Some(Duration::from_secs(1)), ..settings(3) });
    sim.tick(Duration::ZERO);
    sim.plan(0..400);
    sim.tick(Duration::from_millis(900));
    assert!(sim.kills.is_empty());
    sim.tick(Duration::from_millis(100));
    assert_eq!(sim.kills.len(), 1);
    assert_eq!(sim.kills[0].1, KillReason::Chaos);
    sim.tick(Duration::from_millis(999));
    assert_eq!(sim.kills.len(), 1);
    sim.tick(Duration::from_millis(1));
    assert_eq!(sim.kills.len(), 2);
    assert_eq!(sim.core.report.chaos_kills, 2);
}

/// Workers chosen by chaos die at once; `kills` of them, one a second, each while it holds work.
fn chaos_run(workers: usize, ids: std::ops::Range<u64>, kills: usize) -> Sim {
    let mut sim = Sim::with(Settings { kill_every: Some(Duration::from_secs(1)), ..settings(workers) });
    sim.kills_take_effect = true;
    sim.tick(Duration::ZERO);
    sim.plan(ids);
    while sim.kills.len() < kills {
        sim.tick(Duration::from_secs(1));
    }
    sim
}

#[test]
fn a_chaos_kill_counts_against_no_id_it_held() {
    let mut sim = chaos_run(1, 0..8, 4);
    assert!(sim.kills.iter().all(|(_, why)| *why == KillReason::Chaos));
    sim.tick(Duration::from_millis(1));
    assert!(sim.core.poison.suspects.is_empty(), "held at 4 deaths, none of them its fault");
    assert!(sim.core.poison.deaths_held.is_empty());
    assert_eq!(sim.sorted_stored(), Vec::<u64>::new());
    assert_eq!(sim.held[0], (0..8).collect::<Vec<_>>(), "given back whole, in order");
    assert!(sim.logged("it held 8 ids: 8 requeued, 0 suspects waiting; restarting in 0ms"), "{:?}", sim.logs);
    sim.core.settings.kill_every = None;
    sim.deliver_all();
    sim.all_exit();
    assert_eq!(sim.sorted_stored(), (0..8).collect::<Vec<_>>());
    let report = sim.conclude().expect("chaos is not an error");
    assert_eq!((report.tally.quarantined, report.chaos_kills), (0, 4));
}

#[test]
fn a_suspect_killed_alone_by_chaos_is_not_struck() {
    let mut sim = chaos_run(1, 0..64, 0);
    sim.core.poison.suspects.push_back(1000);
    sim.deliver(0);
    assert_eq!(sim.held[0], vec![1000]);
    for kills in 1..=3 {
        sim.tick(Duration::from_secs(1));
        assert_eq!(sim.kills.len(), kills);
        sim.tick(Duration::from_millis(1));
        assert_eq!(sim.held[0], vec![1000], "retried alone again after chaos kill {kills}");
    }
    assert!(sim.quarantined.is_empty() && sim.core.poison.solo_deaths.is_empty());
}

#[test]
fn the_snapshot_counts_what_is_stored_queued_and_to_fetch() {
    let mut sim = Sim::started(2, 0..40);
    let s = sim.core.snapshot(sim.now);
    assert_eq!((s.stored, s.to_fetch, s.workers_up, s.workers), (0, None, 2, 2));
    assert_eq!(s.queued, 40 - 2 * WINDOW as u64, "what the workers do not hold waits");
    sim.feed(Event::Counted { settled: 0, range: 40 });
    sim.deliver(0);
    let s = sim.core.snapshot(sim.now);
    assert_eq!((s.stored, s.to_fetch), (WINDOW as u64, Some(40)));
    assert!(sim.core.fleet_up());
}

proptest! {
    /// Whatever dies when, and however results are split, every id is stored exactly once
    /// (answered, or quarantined if it was unlucky enough to be held at every death), and the
    /// run ends.
    #[test]
    fn deaths_anywhere_lose_and_repeat_nothing(
        workers in 1usize..4,
        len in 1u64..300,
        script in proptest::collection::vec((0usize..4, 0u8..10), 1..400),
    ) {
        let mut sim = Sim::started(workers, 0..len);
        sim.kills_take_effect = true;
        for (slot, action) in script {
            let slot = slot % workers;
            if sim.finished || sim.core.error.is_some() {
                break;
            }
            match action {
                0 => sim.die(slot),
                1 => sim.tick(Duration::from_secs(1)),
                2 => {
                    let ids = std::mem::take(&mut sim.held[slot]);
                    if !ids.is_empty() {
                        sim.feed(Event::Unsent { slot, gen: sim.gens[slot], ids });
                    }
                    sim.die(slot);
                }
                _ => {
                    let n = sim.held[slot].len().min(usize::from(action));
                    let some: Vec<u64> = sim.held[slot][..n].to_vec();
                    sim.report(slot, &some);
                }
            }
        }
        if sim.core.error.is_none() && !sim.finished {
            // Then let the survivors finish, restarting what died.
            for _ in 0..100 {
                sim.tick(Duration::from_secs(6));
                sim.deliver_all();
                if sim.core.done_fetching() {
                    break;
                }
            }
            sim.all_exit();
        }
        if sim.core.error.is_none() {
            prop_assert!(sim.finished);
            prop_assert_eq!(sim.sorted_stored(), (0..len).collect::<Vec<_>>());
            let report = sim.conclude().expect("the run completes");
            prop_assert_eq!(report.fetched(), len);
        } else {
            // Only a broken worker stops a run, and what was stored is still each id once.
            let mut seen = sim.sorted_stored();
            seen.dedup();
            prop_assert_eq!(seen.len(), sim.stored.len());
        }
    }
}

#[test]
fn a_worker_is_paced_before_its_first_assignment() {
    let sim = Sim::started(2, 0..16);
    for slot in 0..2 {
        let first = |what: &str| {
            sim.said.iter().position(|c| c.starts_with(what) && c.contains(&format!("slot: {slot},")))
        };
        let (pace, assign) = (first("Pace"), first("Assign"));
        assert!(
            pace.is_some() && pace < assign,
            "slot {slot}: pace at {pace:?}, first assignment at {assign:?}"
        );
    }
}

#[test]
fn a_server_wait_reported_by_one_worker_pauses_every_worker() {
    let mut sim = Sim::started(3, 0..64);
    sim.said.clear();
    let t =
        // A quarter of 40 answers refused: the whole client is limited.
        shared::Traffic {
            requests: 40,
            too_many: 10,
            throttled: 10,
            wait_ms: Some(1500),
            statuses: vec![(200, 30), (429, 10)],
            ..Default::default()
        };
    sim.feed(worker(1, sim.gens[1], EventKind::Traffic(t)));
    let paused: Vec<&String> = sim.said.iter().filter(|c| c.starts_with("Pause")).collect();
    assert_eq!(paused.len(), 3, "{paused:?}");
    assert!(paused.iter().all(|c| c.contains("ms: 1500")));
    assert_eq!(sim.core.next_wake(sim.now), Some(sim.now + Duration::from_millis(1500)));
}

// ---- An API that cannot be reached, or never answers ----------------------------------------

fn certificate(id: u64) -> ItemResult {
    ItemResult {
        id,
        attempts: 1,
        outcome: Outcome::Unreachable {
            why: shared::Unreachable::Certificate,
            error: "TLS: invalid peer certificate: UnknownIssuer (pass its CA to --ca-cert)".into(),
        },
    }
}

/// Four requests, every connection refused.
fn refused_traffic() -> EventKind {
    EventKind::Traffic(shared::Traffic {
        requests: 4,
        unanswered: Some("connection refused".into()),
        ..Default::default()
    })
}

fn answered_traffic(status: u16) -> EventKind {
    EventKind::Traffic(shared::Traffic { requests: 1, statuses: vec![(status, 1)], ..Default::default() })
}

#[test]
fn a_certificate_refused_before_any_answer_stops_the_run_and_stores_nothing_for_it() {
    let mut sim = Sim::started(2, 0..40);
    let held = sim.held[0].clone();
    sim.held[0].clear();
    let results = held.iter().map(|&id| certificate(id)).collect();
    sim.feed(worker(0, sim.gens[0], EventKind::Results(results)));
    assert!(sim.stored.is_empty(), "nothing stored for it: {:?}", sim.stored);
    assert_eq!(sim.kills, vec![(0, KillReason::Abort), (1, KillReason::Abort)]);
    assert!(sim.released > 0, "their bytes go back to the budget");
    sim.all_exit();
    let error = sim.conclude().expect_err("stopped");
    assert_eq!(error.exit_code(), 4);
    assert!(
        error.to_string().starts_with("cannot fetch from 127.0.0.1:9: TLS: invalid peer certificate"),
        "{error}"
    );
}

#[test]
fn after_the_api_has_answered_an_unreachable_id_is_that_ids_failure() {
    let mut sim = Sim::started(1, 0..8);
    sim.feed(worker(0, sim.gens[0], answered_traffic(200)));
    let held = sim.held[0].clone();
    sim.held[0].clear();
    let results = held.iter().map(|&id| if id == 3 { certificate(id) } else { ok(id) }).collect();
    sim.feed(worker(0, sim.gens[0], EventKind::Results(results)));
    assert!(sim.kills.is_empty());
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..8).collect::<Vec<_>>(), "id 3 stored too, as failed");
}

#[test]
fn an_api_that_never_answers_is_said_to_within_seconds_and_given_up_after_the_wait() {
    let mut sim = Sim::started(2, 0..40);
    sim.feed(worker(0, sim.gens[0], refused_traffic()));
    sim.tick(Duration::from_secs(2));
    assert!(sim.logged("no answer yet from 127.0.0.1:9: connection refused (for 2s)"), "{:?}", sim.logs);
    let snapshot = sim.core.snapshot(sim.now + Duration::from_secs(28));
    assert_eq!(
        snapshot.held_back.as_deref(),
        Some("no answer yet from 127.0.0.1:9: connection refused (for 30s)")
    );
    sim.tick(Duration::from_secs(177));
    assert!(sim.kills.is_empty(), "not before --wait-for-api");
    sim.tick(Duration::from_secs(1));
    assert_eq!(sim.kills.len(), 2, "given up at --wait-for-api");
    sim.all_exit();
    let error = sim.conclude().expect_err("given up");
    assert_eq!(error.exit_code(), 4);
    assert_eq!(
        error.to_string(),
        "no answer from 127.0.0.1:9 in 3m (connection refused); nothing was stored, and the same command fetches \
         every id once it answers (--wait-for-api waits longer)"
    );
}

#[test]
fn an_api_that_answers_late_ends_the_wait() {
    let mut sim = Sim::started(1, 0..8);
    sim.feed(worker(0, sim.gens[0], refused_traffic()));
    sim.tick(Duration::from_secs(100));
    sim.feed(worker(0, sim.gens[0], answered_traffic(200)));
    sim.tick(Duration::from_secs(100));
    assert!(sim.kills.is_empty(), "it answered");
    assert_eq!(sim.core.snapshot(sim.now).held_back, None);
    sim.deliver_all();
    assert_eq!(sim.sorted_stored(), (0..8).collect::<Vec<_>>());
}
