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
use crate::job::{Model, RunConfig};
use crate::store::{self, Covered, Store, WriteAck, WriteCmd};
use crate::util::Budget;

/// The most bytes of results the supervisor holds, from a worker's pipe (or a task) until they
/// are durable: twice what the writer holds back for incomplete blocks, so the writer's hold
/// never stalls the readers; less [`WORKER_BYTES`] for each worker, down to [`LEAST_HELD`].
pub const HELD_BYTES: usize = 2 * store::HOLD_BYTES;
/// What a worker costs the supervisor besides the results it sends: its reader's 64 KiB read
/// buffer and frame buffer (as large as the largest frame, 256 KiB as workers send them), its
/// two threads' stacks, its writer's frames; measured, 600 KiB a worker (from 4 to 16 workers,
/// 8 KiB bodies: docs/performance.md). Taken off the budget for each worker, so that the
/// supervisor's memory does not grow with `--workers`.
const WORKER_BYTES: usize = 512 << 10;
/// The budget however many workers: above the writer's hold, so that blocks are written
/// incomplete for their bytes only once that much is pending.
const LEAST_HELD: usize = store::HOLD_BYTES + (4 << 20);

/// The run's budget of held results with `workers` worker processes (none with coroutines).
pub fn held_bytes(workers: usize) -> usize {
    HELD_BYTES.saturating_sub(workers * WORKER_BYTES).max(LEAST_HELD)
}

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
    let workers = if cfg.model == Model::Fleet { cfg.workers as usize } else { 0 };
    let held = Arc::new(Budget::new(held_bytes(workers)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_gives_each_worker_its_room_down_to_a_floor() {
        assert_eq!(held_bytes(0), 32 << 20, "coroutines: the whole budget");
        assert_eq!(held_bytes(4), 30 << 20);
        assert_eq!(held_bytes(16), 24 << 20);
        assert_eq!(held_bytes(1000), 20 << 20, "never below the writer's hold and 4 MiB");
        assert!(held_bytes(1000) > store::HOLD_BYTES);
    }
}
