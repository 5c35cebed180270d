//! A bound on the bytes of results the supervisor holds between a worker's pipe and the store.
//!
//! A worker's reader thread takes a frame's bytes before it reads the frame (and settles them
//! to what its results hold once decoded), and blocks while the budget is spent: it stops reading the pipe, the pipe fills, and the worker's
//! results wait in the worker, which holds no more than its window of ids. The store writer
//! gives the bytes back once the results are durable; the core gives back those it drops.
//! So whatever the body size, the results in the supervisor's channels and the writer's
//! pending blocks stay under the limit, and memory stays flat.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Bytes held, bounded. See the module documentation.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    held: usize,
    /// Takes pass in the order they came: the next ticket to hand out, and the one served
    /// next. So a large frame is not starved by a stream of small ones slipping past it.
    next_ticket: u64,
    serving: u64,
    /// Takes no longer wait: the run is ending, or what gives bytes back has stopped.
    open: bool,
}

impl State {
    /// Whether a take is waiting (a notify is a system call even with nobody to wake, and
    /// takes and gives come once a frame and once a write).
    fn queued(&self) -> bool {
        self.next_ticket > self.serving
    }
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget { limit, state: Mutex::new(State::default()), freed: Condvar::new() }
    }

    /// Takes `bytes`, first waiting for the takes before it and then until the bytes fit under
    /// the limit. A take larger than the whole limit waits until nothing else is held, then
    /// passes alone, so no frame waits forever.
    pub fn take(&self, bytes: usize) {
        self.take_waiting(bytes, Duration::MAX, || {});
    }

    /// [`Budget::take`], calling `waiting` every `every` while it waits (without the lock): a
    /// reader waiting here is not reading its worker's heartbeats, and says so for it.
    pub fn take_waiting(&self, bytes: usize, every: Duration, mut waiting: impl FnMut()) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        while !s.open && (s.serving != ticket || (s.held > 0 && s.held + bytes > self.limit)) {
            let (guard, timeout) = self.freed.wait_timeout(s, every).unwrap_or_else(PoisonError::into_inner);
            s = guard;
            if timeout.timed_out() {
                drop(s);
                waiting();
                s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            }
        }
        s.serving += 1;
        s.held += bytes;
        let queued = s.queued();
        drop(s);
        if queued {
            // The next in line may fit too.
            self.freed.notify_all();
        }
    }

    /// Takes `bytes` at once, past the limit if need be: for what a frame already admitted
    /// holds once decoded beyond its length (a result's fixed part, per result). Waiting for
    /// it instead, a reader holding its frame's bytes could wait on others that do the same.
    pub fn take_now(&self, bytes: usize) {
        if bytes > 0 {
            self.state.lock().unwrap_or_else(PoisonError::into_inner).held += bytes;
        }
    }

    /// Gives `bytes` back, waking the takers waiting for them.
    pub fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.held = s.held.saturating_sub(bytes);
        let queued = s.queued();
        drop(s);
        if queued {
            self.freed.notify_all();
        }
    }

    /// From now on takes never wait: nothing will give bytes back (the writer has ended), or
    /// the run is over.
    pub fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).open = true;
        self.freed.notify_all();
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).held
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Polls `cond` until it holds or five seconds pass.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_take_past_the_limit_waits_for_bytes_given_back() {
        let b = Arc::new(Budget::new(100));
        b.take(60);
        let (b2, done) = (b.clone(), Arc::new(AtomicBool::new(false)));
        let done2 = done.clone();
        let t = std::thread::spawn(move || {
            b2.take(50);
            done2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "60 + 50 bytes passed a limit of 100");
        b.give(60);
        assert!(eventually(|| done.load(Ordering::SeqCst)), "the take did not pass once the bytes came back");
        t.join().expect("joins");
        assert_eq!(b.held(), 50);
    }

    #[test]
    fn a_large_take_is_not_overtaken_by_small_ones() {
        let b = Arc::new(Budget::new(100));
        b.take(50);
        let (big, small) = (b.clone(), b.clone());
        let big_done = Arc::new(AtomicBool::new(false));
        let flag = big_done.clone();
        let t_big = std::thread::spawn(move || {
            big.take(80);
            flag.store(true, Ordering::SeqCst);
        });
        assert!(eventually(|| b.state.lock().expect("locks").next_ticket == 2), "the big take is waiting");
        // 50 + 10 fit, but the big take came first: the small one waits behind it.
        let t_small = std::thread::spawn(move || small.take(10));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t_small.is_finished(), "a small take overtook a waiting large one");
        b.give(50);
        assert!(
            eventually(|| big_done.load(Ordering::SeqCst)),
            "the big take passed once the bytes came back"
        );
        assert!(eventually(|| t_small.is_finished()), "then the small one");
        t_big.join().expect("joins");
        t_small.join().expect("joins");
        assert_eq!(b.held(), 90);
    }

    #[test]
    fn a_waiting_take_says_so_every_interval_until_it_passes() {
        let b = Arc::new(Budget::new(10));
        b.take(10);
        let (b2, said) = (b.clone(), Arc::new(std::sync::atomic::AtomicU32::new(0)));
        let said2 = said.clone();
        let t = std::thread::spawn(move || {
            b2.take_waiting(5, Duration::from_millis(10), || {
                said2.fetch_add(1, Ordering::SeqCst);
            })
        });
        assert!(eventually(|| said.load(Ordering::SeqCst) >= 3), "no word while waiting");
        b.give(10);
        assert!(eventually(|| t.is_finished()), "the take did not pass once the bytes came back");
        t.join().expect("joins");
        let after = said.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(said.load(Ordering::SeqCst), after, "no word once it passed");
        assert_eq!(b.held(), 5);
    }

    #[test]
    fn a_take_larger_than_the_limit_passes_alone() {
        let b = Budget::new(100);
        b.take(1000);
        assert_eq!(b.held(), 1000);
        b.give(1000);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_take_now_passes_a_spent_budget_and_later_takes_wait_for_it() {
        let b = Arc::new(Budget::new(100));
        b.take(90);
        b.take_now(30);
        assert_eq!(b.held(), 120);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.take(10));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_finished(), "a take passed while the budget was spent");
        b.give(30);
        assert!(eventually(|| t.is_finished()), "the take did not pass once the bytes came back");
        t.join().expect("joins");
        assert_eq!(b.held(), 100);
    }

    #[test]
    fn once_open_takes_never_wait() {
        let b = Arc::new(Budget::new(10));
        b.take(10);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.take(10));
        std::thread::sleep(Duration::from_millis(20));
        b.open();
        assert!(eventually(|| t.is_finished()), "a waiting take was not released by open");
        t.join().expect("joins");
        b.take(100);
        assert_eq!(b.held(), 120);
    }
}
