//! The worker's end of the pipe: the only reader of stdin and the only writer of stdout.
//!
//! The main thread reads frames; one writer thread owns stdout, so frames never interleave, and
//! batches whatever results are waiting into one frame; a reporter thread of its own says the
//! process is alive even when every fetch thread is stuck. Right after taking stdout, fd 1 is
//! pointed at stderr, so a stray print can only reach the log, never corrupt the protocol.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use shared::frame::{peek_hello_version, MAX_FRAME_LEN};
use shared::{
    FrameError, FrameReader, FrameWriter, FromWorker, ItemResult, ToWorker, WorkerHello, HEARTBEAT_EVERY,
    PROTOCOL_VERSION, TRAFFIC_EVERY,
};

use crate::auth::Credentials;
use crate::fetch::Fetcher;
use crate::gate::Gate;
use crate::outbox::Outgoing;
use crate::pool::Item;

/// A results frame holds at most this many results...
const BATCH_MAX_ITEMS: usize = 1024;
/// ...and stops growing once its bodies pass this many bytes.
const BATCH_MAX_BYTES: usize = 256 << 10;

/// How long the writer lets results gather once one has come, before it frames them: a
/// result is not worth a pipe write and a wake-up of the supervisor's reader on its own, and
/// while the writer sleeps (rather than waits on the channel) the fetch threads' sends wake
/// nobody. The supervisor keeps twice a worker's threads in ids queued here, so no thread waits
/// for ids on this account.
const LINGER: Duration = Duration::from_millis(2);

/// Why a worker session failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// stdin or stdout could not be taken over.
    #[error("cannot take over the standard streams")]
    Stdio(#[source] std::io::Error),
    /// A frame from the supervisor could not be read.
    #[error("cannot read from the supervisor")]
    Read(#[source] FrameError),
    /// The supervisor speaks another protocol version.
    #[error("supervisor speaks protocol {theirs}, this worker speaks {PROTOCOL_VERSION}")]
    Version {
        /// The supervisor's version.
        theirs: u32,
    },
    /// The supervisor sent something out of turn.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The results could not be written.
    #[error("cannot write to the supervisor")]
    Write(#[source] FrameError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// A thread panicked (where panics do not abort the process, as they do in `worker::run`).
    #[error("thread {0} panicked")]
    Panicked(&'static str),
}

/// Serves one session on this process's stdin and stdout.
pub fn serve() -> Result<(), LinkError> {
    // stdin is read through std's own buffered handle, on fd 0. stdout moves to a descriptor
    // of its own (std's handle is line-buffered, wrong for binary frames), and fd 1 becomes a
    // copy of stderr.
    let stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned().map_err(LinkError::Stdio)?);
    nix::unistd::dup2(2, 1).map_err(|e| LinkError::Stdio(e.into()))?;

    let mut reader = FrameReader::new(std::io::stdin().lock(), MAX_FRAME_LEN);
    let job = match reader.read_payload().map_err(LinkError::Read)? {
        None => return Ok(()), // closed before the hello: nothing to do
        Some(payload) => {
            let theirs = peek_hello_version(payload).map_err(LinkError::Read)?;
            if theirs != PROTOCOL_VERSION {
                return Err(LinkError::Version { theirs });
            }
            match shared::frame::decode::<ToWorker>(payload).map_err(LinkError::Read)? {
                ToWorker::Hello { job, .. } => *job,
                _ => return Err(LinkError::Protocol("a message before the hello")),
            }
        }
    };
    log::debug!("worker {} serving {} with {} threads", std::process::id(), job.url_template, job.threads);

    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Outgoing>();
    let budget = job
        .retry_budget_pct
        .map(|pct| crate::policy::RetryBudget::new(pct, job.retry_floor_per_min, std::time::Instant::now()));
    let gate = Arc::new(Gate::new(out_tx.clone(), budget));
    let writer = {
        // Weak: the gate holds a sender of the writer's channel, which must close when the
        // worker is done for the writer to end.
        let gate = Arc::downgrade(&gate);
        std::thread::Builder::new()
            .name("link-writer".into())
            .spawn(move || write_loop(stdout, out_rx, &gate))
            .map_err(LinkError::Thread)?
    };

    // The supervisor never has more than max_in_flight ids outstanding here, so this queue
    // never fills and reading the next assignment never waits on the fetch threads.
    let (ids_tx, ids_rx) = crossbeam_channel::bounded::<Item>(job.max_in_flight.max(1) as usize);
    let credentials = Arc::new(Credentials::new(job.credential_source, out_tx.clone()));
    let fetcher = Arc::new(Fetcher::new(&job, credentials.clone()));
    let stopping = Arc::new(AtomicBool::new(false));
    let chaos = Arc::new(job.chaos.clone());
    // Every thread is started before the hello: a worker that cannot start them never says
    // it is ready, so its failure is not mistaken for the fault of the ids it was given.
    let threads = crate::pool::start(
        job.threads,
        crate::pool::Shared { fetcher, gate: gate.clone(), chaos, stopping: stopping.clone() },
        ids_rx,
        out_tx.clone(),
    )
    .map_err(LinkError::Thread)?;
    let _ = out_tx.send(Outgoing::Hello);
    let alive = Arc::new(AtomicBool::new(true));
    let reporter = {
        let (alive, out, gate) = (alive.clone(), out_tx.clone(), gate.clone());
        std::thread::Builder::new()
            .name("reporter".into())
            .spawn(move || report_loop(&alive, &out, &gate))
            .map_err(LinkError::Thread)?
    };
    drop(out_tx);

    let read_result = read_loop(&mut reader, &ids_tx, &gate, &credentials);
    // End of stdin: the supervisor is done with us (it holds nothing else here at the end of a
    // run) or is stopping. Either way, finish the requests in hand, report them, and leave the
    // ids not yet started: the supervisor knows they were never reported.
    stopping.store(true, Ordering::Relaxed);
    gate.close();
    credentials.close();
    drop(ids_tx);
    // A panicked thread would have lost results: never take that for success.
    let fetch_panicked = threads.into_iter().map(|t| t.join()).fold(false, |any, r| any | r.is_err());
    alive.store(false, Ordering::Relaxed);
    reporter.thread().unpark();
    let _ = reporter.join();
    drop((gate, credentials)); // their senders too: the writer ends once every sender is gone
    let write_result = writer.join().unwrap_or(Err(LinkError::Panicked("link-writer")));
    read_result?;
    if fetch_panicked {
        return Err(LinkError::Panicked("fetch"));
    }
    write_result
}

fn read_loop(
    reader: &mut FrameReader<impl std::io::Read>,
    ids: &Sender<Item>,
    gate: &Gate,
    credentials: &Credentials,
) -> Result<(), LinkError> {
    while let Some(msg) = reader.read::<ToWorker>().map_err(LinkError::Read)? {
        match msg {
            ToWorker::Assign { ids: batch, keys, conditions } => {
                let (mut keys, mut conditions) = (keys.into_iter(), conditions.into_iter());
                for id in batch {
                    let item = (id, keys.next().unwrap_or_default(), conditions.next().unwrap_or_default());
                    if ids.send(item).is_err() {
                        return Ok(());
                    }
                }
            }
            ToWorker::Pace(pace) => gate.set_pace(pace),
            ToWorker::Permits(n) => gate.grant(n),
            ToWorker::Pause { ms } => gate.pause(Duration::from_millis(ms)),
            ToWorker::Credential(c) => credentials.set(c),
            ToWorker::Hello { .. } => return Err(LinkError::Protocol("a second hello")),
        }
    }
    Ok(())
}

/// Says the worker is alive every [`HEARTBEAT_EVERY`], whatever the fetch threads are doing,
/// and reports what their requests met every [`TRAFFIC_EVERY`] while there is something to say.
fn report_loop(alive: &AtomicBool, out: &Sender<Outgoing>, gate: &Gate) {
    let mut last_heartbeat: Option<Instant> = None;
    while alive.load(Ordering::Relaxed) {
        if let Some(t) = gate.take_traffic() {
            if out.send(Outgoing::Control(FromWorker::Traffic(t))).is_err() {
                return;
            }
        }
        if last_heartbeat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
            last_heartbeat = Some(Instant::now());
            if out.send(Outgoing::Heartbeat).is_err() {
                return;
            }
        }
        std::thread::park_timeout(TRAFFIC_EVERY);
    }
    // The fetch threads are done: what their last requests met.
    if let Some(t) = gate.take_traffic() {
        let _ = out.send(Outgoing::Control(FromWorker::Traffic(t)));
    }
}

/// Owns stdout. Sends each result once, in batches: after blocking for the first message, it
/// lets results gather for [`LINGER`] when that was one, then takes whatever is waiting, so
/// batches grow with the rate and a lone result waits [`LINGER`] at most. Other messages (the
/// hello, heartbeats, what the server said) go at once.
///
/// The traffic of the requests behind a batch of results goes before it, in the same write:
/// the requests a worker reported results of are counted even if it is killed the next moment
/// (the supervisor's request count is never short of what its store holds).
fn write_loop(stdout: File, rx: Receiver<Outgoing>, gate: &std::sync::Weak<Gate>) -> Result<(), LinkError> {
    let mut w = FrameWriter::new(BufWriter::with_capacity(256 * 1024, stdout));
    let mut batch: Vec<ItemResult> = Vec::with_capacity(BATCH_MAX_ITEMS);
    while let Ok(first) = rx.recv() {
        if matches!(first, Outgoing::Result(_)) {
            std::thread::sleep(LINGER);
        }
        let (mut heartbeat, mut hello, mut malformed, mut bytes) = (false, false, false, 0);
        let mut controls = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Hello => hello = true,
                Outgoing::Heartbeat => heartbeat = true,
                Outgoing::Malformed => malformed = true,
                Outgoing::Control(m) => controls.push(m),
                Outgoing::Result(r) => {
                    if let shared::Outcome::Response { body, .. } = &r.outcome {
                        bytes += body.len();
                    }
                    batch.push(r);
                }
            }
            if batch.len() < BATCH_MAX_ITEMS && bytes < BATCH_MAX_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if hello {
            let hello = WorkerHello { version: PROTOCOL_VERSION, pid: std::process::id() };
            w.write(&FromWorker::Hello(hello)).map_err(LinkError::Write)?;
        }
        if !batch.is_empty() {
            for m in controls.iter().filter(|m| matches!(m, FromWorker::Traffic(_))) {
                w.write(m).map_err(LinkError::Write)?;
            }
            controls.retain(|m| !matches!(m, FromWorker::Traffic(_)));
            if let Some(t) = gate.upgrade().and_then(|g| g.take_traffic()) {
                w.write(&FromWorker::Traffic(t)).map_err(LinkError::Write)?;
            }
            w.write(&FromWorker::Results(std::mem::take(&mut batch))).map_err(LinkError::Write)?;
            batch = Vec::with_capacity(BATCH_MAX_ITEMS);
        }
        for m in &controls {
            w.write(m).map_err(LinkError::Write)?;
        }
        if heartbeat {
            w.write(&FromWorker::Heartbeat).map_err(LinkError::Write)?;
        }
        if malformed {
            // A length of 5, then a variant index no message has.
            let bad = [5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
            let sink = w.get_mut();
            sink.write_all(&bad)
                .and_then(|()| sink.flush())
                .map_err(|e| LinkError::Write(FrameError::Io(e)))?;
        }
    }
    Ok(())
}
