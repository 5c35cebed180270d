//! The worker's credential: the newest one the supervisor sent, and the wait of a request that
//! met a 401 for one newer than the one it was sent with.
//!
//! A 401 is never an item's answer. The request that met it says so to the supervisor (once
//! per credential, however many requests meet it: [`FromWorker::Refused`]), steps aside from
//! the gate, and waits here for a newer credential; then it is sent again, not counted as an
//! attempt. The supervisor either finds one (its helper, its token endpoint) or stops the run,
//! which closes this wait as it closes the gate. A credential whose lifetime has run out (the
//! supervisor could not renew it in time) is waited out the same way: the worker does not
//! spend requests that would be refused.
//!
//! Fetch threads keep the credential they send with in their [`Scratch`](crate::fetch::Scratch)
//! and read one atomic per request to see whether a newer one has come; the lock is taken only
//! when one has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use shared::{Credential, FromWorker};

use crate::outbox::Outgoing;

/// A credential as a fetch thread sends it.
#[derive(Debug)]
pub struct Held {
    /// Its generation (0: the job's own headers, no credential of the supervisor's).
    pub generation: u64,
    /// The header it goes in, and its value.
    pub header: Option<(String, String)>,
    /// When it runs out.
    expires: Option<Instant>,
    /// Whether a request sent with it had an answer other than 401.
    proven: AtomicBool,
}

impl Held {
    /// Notes an answer other than 401: the API took it.
    pub fn proven(&self) {
        if !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
    }

    /// It has not run out (the clock is read only for one that can).
    fn usable(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }
}

struct State {
    current: Arc<Held>,
    /// The newest generation this worker has told the supervisor was refused.
    reported: Option<u64>,
    closed: bool,
}

/// The worker's credential, shared by its link (which sets it) and its fetch threads.
pub struct Credentials {
    state: Mutex<State>,
    changed: Condvar,
    /// The newest credential's generation, read without the lock.
    generation: AtomicU64,
    /// The newest generation this worker has seen refused, plus one (0: none), read without
    /// the lock.
    refused: AtomicU64,
    /// Whether requests wait for a credential of the supervisor's (the job has a source).
    sourced: bool,
    out: Sender<Outgoing>,
}

impl Credentials {
    /// Before any credential has come: the job's own headers (generation 0), which a job with
    /// a credential source (`sourced`) does not send with.
    pub fn new(sourced: bool, out: Sender<Outgoing>) -> Credentials {
        let none = Held { generation: 0, header: None, expires: None, proven: AtomicBool::new(false) };
        Credentials {
            state: Mutex::new(State { current: Arc::new(none), reported: None, closed: false }),
            changed: Condvar::new(),
            generation: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            sourced,
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The supervisor's newest credential. An older one than in hand (it cannot happen on one
    /// pipe) is ignored.
    pub fn set(&self, c: Credential) {
        let mut s = self.lock();
        if c.generation <= s.current.generation {
            return;
        }
        // Taken as run out a little early (a tenth of its life, at most half a second): a
        // request sent just before it expires would reach the server after it has.
        let expires =
            c.expires_in_ms.map(|ms| Instant::now() + Duration::from_millis(ms - (ms / 10).min(500)));
        s.current = Arc::new(Held {
            generation: c.generation,
            header: Some((c.header, c.value.0)),
            expires,
            proven: AtomicBool::new(false),
        });
        self.generation.store(c.generation, Ordering::Release);
        drop(s);
        self.changed.notify_all();
    }

    /// Ends every wait: the worker is stopping.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Makes `held` the credential to send the next request with: the newest, once it is
    /// usable (it has come, and has not run out). Waits for one while there is none; `false`
    /// when the worker stops first.
    pub fn ready(&self, held: &mut Option<Arc<Held>>) -> bool {
        if let Some(h) = held {
            if h.generation == self.generation.load(Ordering::Acquire)
                && h.generation >= self.refused.load(Ordering::Acquire)
                && h.usable()
            {
                return true;
            }
        }
        let mut s = self.lock();
        loop {
            if s.closed {
                return false;
            }
            let c = &s.current;
            // One this worker has seen refused is not sent again: its requests wait with the
            // one that met the 401.
            let refused = s.reported.is_some_and(|r| r >= c.generation);
            if (c.generation > 0 || !self.sourced) && !refused && c.usable() {
                *held = Some(c.clone());
                return true;
            }
            // None yet, or run out: a newer one wakes us (the supervisor is after it).
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A request sent with `held` was answered 401: tells the supervisor (once per
    /// credential), then waits for a newer credential. `false` when the worker stops first.
    pub fn refused(&self, held: &Held) -> bool {
        let mut s = self.lock();
        if s.reported.is_none_or(|r| r < held.generation) && s.current.generation == held.generation {
            s.reported = Some(held.generation);
            self.refused.store(held.generation + 1, Ordering::Release);
            let proven = held.proven.load(Ordering::Relaxed);
            let said = FromWorker::Refused { generation: held.generation, proven };
            let _ = self.out.send(Outgoing::Control(said));
        }
        loop {
            if s.closed {
                return false;
            }
            if s.current.generation > held.generation {
                return true;
            }
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Secret;

    fn credential(generation: u64, expires_in_ms: Option<u64>) -> Credential {
        Credential {
            generation,
            header: "Authorization".into(),
            value: Secret(format!("Bearer t{generation}")),
            expires_in_ms,
        }
    }

    #[test]
    fn a_refused_credential_is_reported_once_and_its_requests_wait_for_a_newer_one() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let creds = Arc::new(Credentials::new(true, tx));
        creds.set(credential(1, None));
        let mut held = None;
        assert!(creds.ready(&mut held));
        let first = held.clone().expect("one");
        assert_eq!(first.header.as_ref().map(|h| h.1.as_str()), Some("Bearer t1"));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (creds, first) = (creds.clone(), first.clone());
                std::thread::spawn(move || creds.refused(&first))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        creds.set(credential(2, None));
        assert!(waiters.into_iter().all(|w| w.join().expect("joins")), "every waiter sees the newer one");
        let said: Vec<_> = rx.try_iter().collect();
        assert_eq!(said.len(), 1, "one report for three 401s");
        assert!(matches!(said[0], Outgoing::Control(FromWorker::Refused { generation: 1, proven: false })));
        assert!(creds.ready(&mut held));
        assert_eq!(held.as_ref().map(|h| h.generation), Some(2));
        // A stale 401 (of generation 1, after 2 came) does not wait and is not reported.
        assert!(creds.refused(&first));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_credential_that_ran_out_is_waited_out_and_closing_ends_every_wait() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let creds = Arc::new(Credentials::new(true, tx));
        creds.set(credential(1, Some(0)));
        let waiter = {
            let creds = creds.clone();
            std::thread::spawn(move || {
                let mut held = None;
                creds.ready(&mut held).then(|| held.map(|h| h.generation))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a credential that ran out is not sent");
        creds.set(credential(2, Some(60_000)));
        assert_eq!(waiter.join().expect("joins"), Some(Some(2)));
        let mut none = None;
        let unsourced = Credentials::new(false, crossbeam_channel::unbounded().0);
        assert!(unsourced.ready(&mut none), "the job's own headers need no wait");
        creds.set(credential(3, Some(0)));
        let waiter = {
            let creds = creds.clone();
            std::thread::spawn(move || creds.ready(&mut None))
        };
        std::thread::sleep(Duration::from_millis(20));
        creds.close();
        assert!(!waiter.join().expect("joins"), "closed: no credential");
    }
}
