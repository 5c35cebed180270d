//! flota's worker process.
//!
//! A worker is started by the supervisor with its stdin and stdout connected to pipes. It reads
//! the job and then batches of ids from stdin ([`link`]), fetches them on a pool of blocking
//! threads, each with its own ureq Agent ([`pool`], [`fetch`], [`connect`]), and writes results back on stdout.
//! It never opens the store; everything it knows arrives through the pipe. When stdin closes it
//! finishes the ids it holds, reports them, and exits 0.
//!
//! Exit codes: 0 after a clean end of stdin; 1 when the supervisor broke the protocol or the
//! pipe failed.
#![deny(unsafe_code)]

pub mod announce;
pub mod auth;
pub mod connect;
pub mod fetch;
pub mod gate;
pub mod link;
pub mod outbox;
pub mod policy;
pub mod pool;
pub mod resolve;

/// Runs a worker on this process's stdin and stdout. Returns the exit code.
///
/// A panic on any of its threads aborts the process: a fetch thread that vanished would leave
/// its id unreported while the worker lives on, and the run would wait for it forever. As a
/// crash, the supervisor sees it die, requeues what it held, and isolates a poison id.
pub fn run() -> i32 {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    match link::serve() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("worker {}: {}", std::process::id(), shared::error_chain(&e));
            1
        }
    }
}
