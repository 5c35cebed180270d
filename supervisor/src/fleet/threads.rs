//! Helper threads whose panics are reported, never swallowed.
//!
//! A helper that panics (a worker's reader or writer, the planner, the store writer) would
//! otherwise vanish: its channel closes, and the dispatcher could read that as a clean end (the
//! planner "done" early) or wait forever (a reader that never reports its worker gone). Every
//! helper is started here instead: a panic is caught and sent to the dispatcher as
//! [`Error::Panicked`], which stops the run with exit 1 and the panic's message.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::engine::Error;

/// Starts a named helper thread; if `body` panics, the panic goes to `panics`.
pub fn spawn<F>(name: String, panics: &Sender<Error>, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let panics = panics.clone();
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        // The body owns nothing the dispatcher shares: after a panic nothing is left half-made
        // that anyone else could observe.
        if let Err(message) = crate::util::panics::catching(body) {
            let _ = panics.send(Error::Panicked { thread: name, message });
        }
    })
}

/// The error to report when the helper `what` ended without saying why: its panic, if one
/// arrives shortly (a panicking thread drops its channels before the panic is caught), or an
/// internal error.
pub fn ended_early(panics: &Receiver<Error>, what: &str) -> Error {
    panics
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| Error::Internal(format!("{what} ended early")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_panic_reaches_the_dispatcher_with_its_message() {
        crate::util::panics::install();
        let (tx, rx) = crossbeam_channel::unbounded();
        let t = spawn("planner".into(), &tx, || panic!("boom at {}", 42)).expect("spawns");
        t.join().expect("the panic is caught inside the thread");
        match rx.try_recv() {
            Ok(Error::Panicked { thread, message }) => {
                assert_eq!(thread, "planner");
                assert!(message.starts_with("boom at 42 (at supervisor/src/fleet/threads.rs:"), "{message}");
            }
            other => panic!("expected Panicked, got {other:?}"),
        }
        drop(tx);
        assert_eq!(ended_early(&rx, "the planner").to_string(), "internal error: the planner ended early");
    }
}
