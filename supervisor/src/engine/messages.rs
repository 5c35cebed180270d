//! What goes into the decision core and what comes out of it: [`Event`]s, each seen at a time
//! the loop passes along (a worker's among them, as its reader thread in `fleet` reports it), and
//! [`Command`]s for the loop to carry out.

use std::time::Duration;

use log::Level;
use shared::{ItemResult, Pace};

use super::error::Error;
use crate::job::Durable;
use crate::util::signal_name;

/// Something the core must react to.
#[derive(Debug)]
pub enum Event {
    /// The planner's next chunk (possibly empty), with the settled ids it skipped.
    Planned {
        /// Ids to fetch, sorted.
        ids: Vec<u64>,
        /// Ids of the range already settled in the store.
        skipped: u64,
        /// Of those, quarantined by an earlier run.
        quarantined: u64,
    },
    /// The planner has walked the whole range.
    PlanEnded,
    /// The counter has counted the ids of the range the store already settled.
    Counted {
        /// Settled ids of the range.
        settled: u64,
        /// Ids in the range.
        range: u64,
    },
    /// A [`Command::Spawn`] succeeded.
    Spawned {
        /// The slot.
        slot: usize,
        /// The generation it was asked for.
        gen: u64,
        /// The worker's process id.
        pid: u32,
    },
    /// A [`Command::Spawn`] failed.
    SpawnFailed {
        /// The slot.
        slot: usize,
        /// The generation it was asked for.
        gen: u64,
        /// Why.
        error: Error,
    },
    /// A worker said something, or is gone.
    Worker(FleetEvent),
    /// A [`Command::Assign`] could not be handed over: the worker's stdin is already closed,
    /// so it never received these ids.
    Unsent {
        /// The slot.
        slot: usize,
        /// The generation.
        gen: u64,
        /// The ids, as assigned.
        ids: Vec<u64>,
    },
    /// The store writer flushed these results: they count as done.
    Durable(Durable),
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// Time passes.
    Tick,
    /// The time [`super::Core::next_wake`] asked for has come.
    Wake,
    /// Something outside the core failed (the store, the planner, a helper thread).
    Fatal(Error),
}

/// What the core wants done.
#[derive(Debug)]
pub enum Command {
    /// Start generation `gen` of `slot`, then report [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn {
        /// The slot.
        slot: usize,
        /// Its new generation.
        gen: u64,
    },
    /// Send these ids to the worker; report [`Event::Unsent`] if it cannot take them.
    Assign {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
        /// The ids.
        ids: Vec<u64>,
    },
    /// Tell the worker how it may send.
    Pace {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
        /// Its share of the fleet's concurrency, and whether it needs permits.
        pace: Pace,
    },
    /// Grant the worker this many permits.
    Permits {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
        /// How many.
        n: u32,
    },
    /// Tell the worker to send nothing for `ms` milliseconds and drop its permits.
    Pause {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
        /// How long.
        ms: u64,
    },
    /// Close the worker's stdin: it finishes the requests in hand and exits.
    CloseInput {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
    },
    /// SIGKILL the worker.
    Kill {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        gen: u64,
        /// Why, for the log.
        why: KillReason,
    },
    /// Write these results to the store.
    Store(Vec<ItemResult>),
    /// Results were dropped (the worker did not hold their ids, or is no longer the slot's):
    /// give back the bytes they held of the run's budget.
    Release(usize),
    /// Store `id` as quarantined.
    Quarantine {
        /// The id.
        id: u64,
        /// Workers it killed.
        deaths: u32,
        /// The stored error, starting "quarantined:".
        reason: String,
    },
    /// Say this in the log.
    Log(Level, String),
    /// Every worker is gone: flush the store and conclude.
    Finish,
}

/// Why a worker is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// It sent nothing, not even a heartbeat, for this long.
    Silent(Duration),
    /// Its stdin closed before it had been told to stop: it is dying anyway.
    Undeliverable,
    /// It did not exit after its stdin closed at the end of the run.
    DidNotExit,
    /// The grace period after this signal is over.
    GraceOver(i32),
    /// This signal came a second time.
    SecondSignal(i32),
    /// `--chaos kill-every`.
    Chaos,
    /// The run is stopping on an error.
    Abort,
}

impl std::fmt::Display for KillReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillReason::Silent(d) => write!(f, "silent for {}ms", d.as_millis()),
            KillReason::Undeliverable => f.write_str("closed its stdin"),
            KillReason::DidNotExit => f.write_str("did not exit after its stdin closed"),
            KillReason::GraceOver(sig) => {
                write!(f, "still running when the grace period after {} ended", signal_name(*sig))
            }
            KillReason::SecondSignal(sig) => write!(f, "still running at the second {}", signal_name(*sig)),
            KillReason::Chaos => f.write_str("chosen by chaos (kill-every)"),
            KillReason::Abort => f.write_str("still running as the run stops on an error"),
        }
    }
}

/// What a worker said, or that it is gone. `gen` tells apart successive workers of one slot.
#[derive(Debug)]
pub struct FleetEvent {
    /// The worker's slot.
    pub slot: usize,
    /// Which start of that slot.
    pub gen: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`FleetEvent`].
#[derive(Debug)]
pub enum EventKind {
    /// The handshake completed.
    Hello,
    /// Final answers.
    Results(Vec<ItemResult>),
    /// Proof of life.
    Heartbeat,
    /// It spent this many permits.
    Spent(u32),
    /// What its requests met.
    Traffic(shared::Traffic),
    /// A request it sent with this credential was answered 401 (see
    /// [`shared::FromWorker::Refused`]).
    Refused {
        /// The credential's generation (0: the job's own headers).
        generation: u64,
        /// It had another answer with that credential first.
        proven: bool,
    },
    /// The worker has ended and been reaped. `fault` is set when it was killed for breaking the
    /// protocol.
    Gone {
        /// How it ended.
        ended: Ended,
        /// The protocol violation it was killed for, if any.
        fault: Option<ProtocolFault>,
    },
}

/// How a worker process ended, as its reader reaped it (pueue's `finish.rs`, nextest's
/// `AbortStatus`): an outcome, made into words only for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// This signal killed it.
    Signalled(i32),
    /// It could not be reaped: how it ended is not known.
    Unknown(String),
}

impl Ended {
    /// Whether it ended as a worker should: an exit with code 0.
    pub fn cleanly(&self) -> bool {
        *self == Ended::Exited(0)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with code {code}"),
            Ended::Signalled(sig) => write!(f, "was killed by {}", signal_name(*sig)),
            Ended::Unknown(why) => write!(f, "could not be reaped ({why})"),
        }
    }
}

/// How a worker broke the protocol (the supervisor kills it on the spot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolFault {
    /// A frame that could not be read or decoded.
    Frame(String),
    /// Its hello names another protocol version.
    Version(u32),
    /// Its first frame was not a hello.
    NoHello(String),
    /// It said hello twice.
    SecondHello,
}

impl std::fmt::Display for ProtocolFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolFault::Frame(e) => f.write_str(e),
            ProtocolFault::Version(v) => {
                write!(f, "worker speaks protocol {v}, supervisor {}", shared::PROTOCOL_VERSION)
            }
            ProtocolFault::NoHello(e) => write!(f, "no hello first: {e}"),
            ProtocolFault::SecondHello => f.write_str("a second hello"),
        }
    }
}
