//! The store side of a run, one for both runtimes: the store writer and the planner, each on a
//! thread of its own whose panic reaches the runtime as an error (never a silent end), the
//! budget of results held between the workers (or the tasks) and the disk, and what a failed
//! write means for the run's error.

use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::plan::{plan, PlanMsg};
use crate::engine::Error;
use crate::fleet::threads;
use crate::job::RunConfig;
use crate::store::{self, Covered, Store, WriteAck, WriteCmd};
use crate::util::Budget;

/// The most bytes of results the supervisor holds, from a worker's pipe (or a task) until they
/// are durable: twice what the writer holds back for incomplete blocks, so the writer's hold
/// never stalls the readers.
pub const HELD_BYTES: usize = 2 * store::HOLD_BYTES;

/// Commands queued for the store writer at most: a runtime that hands it results faster than
/// it writes waits (as the budget makes it wait for bytes).
const WRITES_QUEUED: usize = 8;

/// The running store side of a run.
pub struct StoreSide {
    /// To the writer.
    pub writes: Sender<WriteCmd>,
    /// Its acks: results durable, its end, or the write that failed.
    pub acks: Receiver<WriteAck>,
    /// The planner's chunks.
    pub plans: Receiver<PlanMsg>,
    /// Panics of the helper threads (the writer's, the planner's, and any the runtime starts
    /// with [`StoreSide::panic_tx`]).
    pub panics: Receiver<Error>,
    /// Where a helper thread's panic goes.
    pub panic_tx: Sender<Error>,
    /// The results held between the workers and the disk.
    pub held: Arc<Budget>,
    /// What the job covers, for a counter of what is left.
    pub covered: Covered,
}

/// Starts the store writer and the planner of `cfg`'s run on `store`; the planner queues at most
/// `plan_queue` chunks ahead.
pub fn start(cfg: &RunConfig, store: &Store, plan_queue: usize) -> Result<StoreSide, Error> {
    let (plan_tx, plans) = bounded::<PlanMsg>(plan_queue);
    let (writes, write_rx) = bounded::<WriteCmd>(WRITES_QUEUED);
    let (ack_tx, acks) = unbounded::<WriteAck>();
    let (panic_tx, panics) = unbounded::<Error>();
    let writer = store.writer();
    let covered = store.covered()?;
    let held = Arc::new(Budget::new(HELD_BYTES));
    let (on_disk, given) = (covered.clone(), held.clone());
    let settled = (store.reader().refetching(cfg.refetch.clone()), cfg.retry_quarantined);
    threads::spawn("store-writer".into(), &panic_tx, move || {
        store::write_loop(writer, on_disk, Some(settled), store::Timing::DEFAULT, write_rx, ack_tx, given)
    })
    .map_err(Error::Thread)?;
    let (reader, to_plan, chunk, retry_q) = (
        store.reader().refetching(cfg.refetch.clone()),
        covered.clone(),
        cfg.chunk_size as usize,
        cfg.retry_quarantined,
    );
    threads::spawn("planner".into(), &panic_tx, move || plan(reader, &to_plan, chunk, retry_q, &plan_tx))
        .map_err(Error::Thread)?;
    Ok(StoreSide { writes, acks, plans, panics, panic_tx, held, covered })
}

impl StoreSide {
    /// Why the writer ended without a word (no `Failed`, no `Finished`), or could not be
    /// reached: its panic.
    pub fn writer_gone(&self) -> Error {
        threads::ended_early(&self.panics, "the store writer")
    }
}

/// The run's error as the user reads it: a write that failed during the run (a full disk)
/// says what this run had made durable before it, which is safe.
pub fn as_run_error(e: Error, path: &Path, flushed: u64) -> Error {
    match e {
        Error::Store(e) => match e.into_io() {
            Ok(cause) => Error::StoreWrite { path: path.to_owned(), flushed, cause },
            Err(e) => Error::Store(e),
        },
        other => other,
    }
}
