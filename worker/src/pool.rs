//! The fetch threads: each pulls ids from one bounded channel and pushes results to the link.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use shared::{Condition, WorkerChaos};

use crate::fetch::{Fetcher, Scratch};
use crate::gate::Gate;
use crate::outbox::Outgoing;

/// What every fetch thread shares.
pub struct Shared {
    /// The job, the resolver and the retry policy; each thread makes its own agent of it.
    pub fetcher: Arc<Fetcher>,
    /// Every request passes it.
    pub gate: Arc<Gate>,
    /// Faults to inject.
    pub chaos: Arc<WorkerChaos>,
    /// Set once stdin has closed.
    pub stopping: Arc<AtomicBool>,
}

/// An item to fetch: its id, its key (in a keyed job), and in a refresh what its stored answer
/// is validated by.
pub type Item = (u64, String, Condition);

/// Stack of a fetch thread. Rust's default (2 MiB) would make a thousand threads need 2 GiB of
/// address space, the worker's whole default limit; a blocking HTTP(S) call needs far less.
pub const FETCH_STACK: usize = 512 << 10;

/// Starts `threads` fetch threads. They exit once `ids` is closed and drained, or, once
/// `stopping` is set, after the request each has in hand: an id whose next attempt the closed
/// gate refuses is left unreported, for the supervisor to requeue or a rerun to fetch.
pub fn start(
    threads: u32,
    shared: Shared,
    ids: Receiver<Item>,
    out: Sender<Outgoing>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..threads.max(1))
        .map(|n| {
            let (fetcher, gate) = (shared.fetcher.clone(), shared.gate.clone());
            let (chaos, stopping) = (shared.chaos.clone(), shared.stopping.clone());
            let (ids, out) = (ids.clone(), out.clone());
            std::thread::Builder::new().name(format!("fetch-{n}")).stack_size(FETCH_STACK).spawn(move || {
                let session = fetcher.session();
                let mut scratch = Scratch::default();
                // A place at the gate first, then an id: threads beyond the worker's share
                // sleep holding nothing, and the ids wait in the queue for a thread at work.
                // The place is given back when the thread ends (dropped).
                let mut place = gate.place();
                while place.keep() {
                    let Ok((id, key, condition)) = ids.recv() else { break };
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if !chaos.is_empty() && inject(&chaos, id, &out) {
                        continue;
                    }
                    scratch.condition = condition;
                    let Some(result) = fetcher.fetch(&session, id, &key, &mut scratch, &gate, &mut place)
                    else {
                        break;
                    };
                    if out.send(Outgoing::Result(result)).is_err() {
                        // The link writer is gone: the pipe broke and the worker is ending.
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Injects the fault asked for `id`, if any. Returns whether the id was consumed.
fn inject(chaos: &WorkerChaos, id: u64, out: &Sender<Outgoing>) -> bool {
    if chaos.crash_on.contains(&id) {
        log::error!("chaos: worker {} aborts on id {id}", std::process::id());
        std::process::abort();
    }
    if chaos.hang_on.contains(&id) {
        log::error!("chaos: worker {} stops itself on id {id}", std::process::id());
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
    if chaos.bad_frame_on.contains(&id) {
        log::error!("chaos: worker {} sends a malformed frame for id {id}", std::process::id());
        let _ = out.send(Outgoing::Malformed);
        return true;
    }
    false
}
