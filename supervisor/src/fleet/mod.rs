//! Worker processes: starting them, reading what they say, and stopping them.
//!
//! A worker is started with `std::process::Command` (fork+exec), never a bare fork in this
//! threaded process. Between fork and exec the child asks to be SIGKILLed when the supervisor
//! dies, drops the ability to gain privileges, turns off core dumps, takes its resource limits,
//! ignores SIGTERM/SIGINT (the supervisor stops it by closing its stdin), and checks the
//! supervisor is still its parent.
//!
//! Each worker gets two threads. Its writer owns the child's stdin and writes what the
//! dispatcher queues, so a worker that stops reading stalls only that thread. Its reader owns
//! the child's stdout, decodes frames into [`FleetEvent`]s for the dispatcher (taking a
//! frame's bytes from the run's [`Budget`] before it reads the frame, so it stops reading while
//! the supervisor holds too much), and after the end of the stream reaps the child and reports
//! how it ended. A worker that sends anything malformed is killed on the spot: the supervisor
//! never trusts a frame.
//!
//! Signals reach a worker only through its `Child`, shared by the dispatcher's [`WorkerProc`]
//! and the reader behind one lock. The reader waits for the exit without reaping
//! (`waitid(WNOWAIT)`), then reaps under the lock; std's `Child::kill` sends nothing once the
//! child is reaped. So a kill reaches either the live worker or its zombie, never a process
//! that reused its pid.

use std::io::BufReader;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::Sender;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::engine::{Ended, Error, EventKind, FleetEvent, ProtocolFault};
use crate::job::WorkerLimits;
use crate::util::Budget;

pub mod threads;
use shared::frame::{decode, peek_hello_version};
use shared::{
    FrameReader, FrameWriter, FromWorker, ItemResult, JobSpec, ToWorker, HEARTBEAT_EVERY, PROTOCOL_VERSION,
};

/// Variables a worker must not inherit: they address the service manager, which only the
/// supervisor may talk to.
const SUPERVISOR_ONLY_ENV: &[&str] =
    &["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC"];

/// How workers are started.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The executable.
    pub bin: PathBuf,
    /// Whether it is this supervisor, to be started with the hidden `worker` subcommand.
    pub self_exec: bool,
    /// The largest frame a worker may send.
    pub max_frame: usize,
    /// Limits and identity of each worker.
    pub limits: WorkerLimits,
}

/// A running worker, as the dispatcher holds it.
pub struct WorkerProc {
    /// Its process id, for logs.
    pub pid: u32,
    /// Shared with the reader thread, which reaps it.
    child: Arc<Mutex<Child>>,
    /// To the worker's writer thread, which owns its stdin.
    to_worker: Option<Sender<ToWorker>>,
}

impl WorkerProc {
    /// Queues a message for the worker. Never blocks: a worker that stops reading (SIGSTOP)
    /// stalls only its own writer thread, never the dispatcher. Gives the message back when the
    /// worker's stdin is closed (its writer thread has ended), so nothing was sent.
    pub fn send(&mut self, msg: ToWorker) -> Result<(), ToWorker> {
        match &self.to_worker {
            Some(tx) => tx.send(msg).map_err(|e| e.into_inner()),
            None => Err(msg),
        }
    }

    /// Closes the worker's stdin once what is queued is written: it finishes the requests in
    /// hand and exits.
    pub fn close(&mut self) {
        self.to_worker = None;
    }

    /// Kills the worker with SIGKILL, unless it has been reaped already. Its reader thread
    /// then reports it gone.
    pub fn kill(&self) {
        kill_child(&self.child);
    }
}

/// SIGKILLs the child unless it is reaped (std's `kill` is a no-op then).
fn kill_child(child: &Mutex<Child>) {
    // A panic elsewhere while holding the lock leaves the Child as it was: still usable.
    let _ = child.lock().unwrap_or_else(PoisonError::into_inner).kill();
}

impl Spawner {
    /// Starts the worker for `slot`, sends it the job, and starts its reader thread.
    pub fn spawn(
        &self,
        slot: usize,
        gen: u64,
        job: &JobSpec,
        events: Sender<FleetEvent>,
        panics: &Sender<Error>,
        held: Arc<Budget>,
    ) -> std::io::Result<WorkerProc> {
        let mut cmd = Command::new(&self.bin);
        if self.self_exec {
            cmd.arg("worker");
        }
        for var in SUPERVISOR_ONLY_ENV {
            cmd.env_remove(var);
        }
        // The run's settings (FLOTA_HEADER may hold a secret) reach a worker through its pipe,
        // never its environment.
        for (var, _) in std::env::vars_os() {
            if var.to_str().is_some_and(|v| v.starts_with("FLOTA_")) {
                cmd.env_remove(var);
            }
        }
        // glibc reserves an arena of 64 MiB of address space per thread that allocates; with
        // many threads that alone can exhaust the address-space limit.
        cmd.env("MALLOC_ARENA_MAX", "2");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // Out of the terminal's process group: Ctrl-C reaches the supervisor only, which then
        // stops the workers in order.
        cmd.process_group(0);
        if let Some((uid, gid)) = self.limits.user {
            // std drops supplementary groups too when it switches from root.
            cmd.uid(uid).gid(gid);
        }
        harden(&mut cmd, Some(self.limits));
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        let child = Arc::new(Mutex::new(child));
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut proc = WorkerProc { pid, child: child.clone(), to_worker: Some(tx) };
        let started =
            threads::spawn(format!("worker-{slot}-writer"), panics, move || write_worker(slot, stdin, rx))
                .and_then(|_| {
                    let (child, max_frame) = (child.clone(), self.max_frame);
                    let read = move || read_worker(slot, gen, &child, stdout, max_frame, &events, &held);
                    threads::spawn(format!("worker-{slot}-reader"), panics, read)
                });
        if let Err(e) = started {
            // No reader will reap it: do it here.
            proc.kill();
            let _ = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
            return Err(e);
        }
        let _ = proc.send(ToWorker::Hello { version: PROTOCOL_VERSION, job: Box::new(job.clone()) });
        Ok(proc)
    }
}

/// Marks every descriptor this process inherited above stderr close-on-exec, so workers never
/// inherit what the supervisor's own parent leaked to it. (Everything the supervisor opens
/// itself is close-on-exec already: std opens files that way.)
pub fn seal_inherited_fds() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // The directory's own descriptor is in the list and already closed: ignore EBADF.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Sets up a child between fork and exec: it dies with the supervisor, cannot gain privileges,
/// dumps no core, and (for workers) lives within `limits`.
#[allow(unsafe_code)]
pub(crate) fn harden(cmd: &mut Command, limits: Option<WorkerLimits>) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes only raw system calls (prctl, getppid, sigaction to SIG_IGN,
    // setrlimit) through
    // nix's thin wrappers, which neither allocate nor take locks; errors are returned as
    // `io::Error::from(Errno)`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{setrlimit, Resource};
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The supervisor may have died before the line above: then nobody would signal us.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            nix::sys::prctl::set_no_new_privs()?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            if let Some(l) = limits {
                // A worker is stopped by closing its stdin; SIGTERM and SIGINT sent to the whole
                // group (by a service manager) must not cut its requests short. Ignored
                // dispositions survive exec.
                use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
                let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
                sigaction(Signal::SIGTERM, &ignore)?;
                sigaction(Signal::SIGINT, &ignore)?;
                setrlimit(Resource::RLIMIT_AS, l.memory, l.memory)?;
                setrlimit(Resource::RLIMIT_NOFILE, l.open_files, l.open_files)?;
            }
            Ok(())
        });
    }
}

/// The writer thread of one worker: owns its stdin; ends (closing it) when the dispatcher drops
/// its sender or the pipe breaks.
fn write_worker(slot: usize, stdin: ChildStdin, rx: crossbeam_channel::Receiver<ToWorker>) {
    let mut w = FrameWriter::new(stdin);
    for msg in rx {
        if let Err(e) = w.write(&msg) {
            log::debug!("worker {slot}: cannot write to it: {e}");
            return;
        }
    }
}

/// The reader thread of one worker.
fn read_worker(
    slot: usize,
    gen: u64,
    child: &Mutex<Child>,
    stdout: ChildStdout,
    max_frame: usize,
    events: &Sender<FleetEvent>,
    held: &Budget,
) {
    let send = |kind| events.send(FleetEvent { slot, gen, kind }).is_ok();
    let mut reader = FrameReader::new(BufReader::with_capacity(64 * 1024, stdout), max_frame);
    let mut greeted = false;
    let fault = loop {
        // A frame's bytes are taken before it is read, so a reader waiting for room holds
        // nothing of it; once decoded, the bytes are settled to what its results hold.
        let mut taken = 0;
        let frame = reader.read_payload_after(|len| {
            // Waiting here, the worker's heartbeats wait in the pipe: the worker is not silent,
            // the supervisor is not listening (as when the dispatcher stalls), and says so.
            held.take_waiting(len, HEARTBEAT_EVERY, || {
                send(EventKind::Heartbeat);
            });
            taken = len;
        });
        let event = match frame {
            Ok(Some(payload)) => event_of(payload, &mut greeted),
            Ok(None) => break None,
            Err(e) => Err(ProtocolFault::Frame(e.to_string())),
        };
        let kind = match event {
            Ok(kind) => kind,
            Err(fault) => {
                held.give(taken);
                break Some(fault);
            }
        };
        match kind {
            EventKind::Results(ref r) => match ItemResult::held_by(r) {
                more if more > taken => held.take_now(more - taken),
                less => held.give(taken - less),
            },
            _ => held.give(taken),
        }
        if !send(kind) {
            break None; // the dispatcher is gone; the worker dies with the supervisor
        }
    };
    if fault.is_some() {
        kill_child(child);
    }
    drop(reader);
    let ended = match reap(child) {
        Ok(status) => ended(status),
        Err(e) => Ended::Unknown(e.to_string()),
    };
    send(EventKind::Gone { ended, fault });
}

/// What a worker's frame says; the first must be its hello, and only the first.
fn event_of(payload: &[u8], greeted: &mut bool) -> Result<EventKind, ProtocolFault> {
    if !*greeted {
        match peek_hello_version(payload) {
            Ok(PROTOCOL_VERSION) => {}
            Ok(v) => return Err(ProtocolFault::Version(v)),
            Err(e) => return Err(ProtocolFault::NoHello(e.to_string())),
        }
    }
    Ok(match decode::<FromWorker>(payload).map_err(|e| ProtocolFault::Frame(e.to_string()))? {
        FromWorker::Hello(_) if *greeted => return Err(ProtocolFault::SecondHello),
        FromWorker::Hello(_) => {
            *greeted = true;
            EventKind::Hello
        }
        FromWorker::Results(r) => EventKind::Results(r),
        FromWorker::Heartbeat => EventKind::Heartbeat,
        FromWorker::Spent(n) => EventKind::Spent(n),
        FromWorker::Traffic(t) => EventKind::Traffic(t),
        FromWorker::Refused { generation, proven } => EventKind::Refused { generation, proven },
    })
}

/// Waits for the child to exit without holding its lock (so it can still be killed), then
/// reaps it under the lock.
fn reap(child: &Mutex<Child>) -> std::io::Result<ExitStatus> {
    let pid = Pid::from_raw(
        i32::try_from(child.lock().unwrap_or_else(PoisonError::into_inner).id()).expect("pids fit in i32"),
    );
    // Interrupted: wait again. Already reaped (ECHILD) or exited: std's wait below reports it.
    while waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) == Err(nix::errno::Errno::EINTR) {
    }
    child.lock().unwrap_or_else(PoisonError::into_inner).wait()
}

/// How a process ended, by its exit status.
pub fn ended(status: ExitStatus) -> Ended {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ended::Exited(code),
        (None, Some(sig)) => Ended::Signalled(sig),
        (None, None) => Ended::Unknown("no exit code and no signal".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Whether some thread of this process is blocked waiting for a child.
    fn a_thread_waits_for_a_child() -> bool {
        std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.contains("wait")))
    }

    #[test]
    fn a_kill_reaches_a_child_being_waited_for_and_nothing_is_signalled_once_it_is_reaped() {
        let child = Command::new("sleep").arg("30").spawn().expect("sleep starts");
        let child = Arc::new(Mutex::new(child));
        let reader = {
            let child = child.clone();
            std::thread::spawn(move || reap(&child))
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !a_thread_waits_for_a_child() && Instant::now() < until {
            std::thread::yield_now();
        }
        // The reader waits without the lock, so this kill is not held up behind it.
        kill_child(&child);
        let status = reader.join().expect("joins").expect("reaped");
        assert_eq!(ended(status), Ended::Signalled(9));
        assert_eq!(ended(status).to_string(), "was killed by SIGKILL");
        // Reaped: std now sends nothing, so a process that reused the pid is safe.
        kill_child(&child);
        let mut child = child.lock().expect("not poisoned");
        assert_eq!(child.try_wait().expect("known").map(ended), Some(Ended::Signalled(9)));
    }
}
