//! systemd's notify protocol (`Type=notify`), through the sd-notify crate: `READY=1` once every
//! worker has said hello, `STATUS=` with the progress line, `WATCHDOG=1` only while the run
//! makes progress, `RELOADING=1` around a SIGHUP, `STOPPING=1` on the way out. Without
//! `NOTIFY_SOCKET` every call is a no-op.
//!
//! The watchdog is fed from the dispatcher's tick, and only when results were stored since the
//! last ping, or a server-asked pause explains why none were: a wedged dispatcher or a store
//! that stopped taking writes starves it, and `WatchdogSec=` restarts the service.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::engine::Snapshot;

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// `WATCHDOG_USEC`, as sd_watchdog_enabled(3) reads it: it applies to this process unless
/// `WATCHDOG_PID` names another. (sd-notify's own reading insists on `WATCHDOG_PID`.)
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&u| u > 0)?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        Some(Err(_)) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// The service manager, if there is one.
pub struct Notifier {
    enabled: bool,
    /// Half the watchdog interval: the longest between two pings.
    ping_every: Option<Duration>,
    ready: bool,
    last_ping: Option<(Instant, u64)>,
    last_status: Option<Instant>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (for this process only: `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        Notifier {
            enabled,
            ping_every: watchdog_interval().filter(|_| enabled).map(|d| d / 2),
            ready: false,
            last_ping: None,
            last_status: None,
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                log::debug!("cannot notify the service manager: {e}");
            }
        }
    }

    /// A tick of the run: `line` is the progress line, `up` whether the fleet is up.
    pub fn tick(&mut self, s: &Snapshot, line: &str, up: bool, now: Instant) {
        if !self.enabled {
            return;
        }
        if up && !self.ready {
            self.ready = true;
            self.last_status = Some(now);
            self.send(&[NotifyState::Ready, NotifyState::Status(line)]);
        } else if self.last_status.is_none_or(|at| now.duration_since(at) >= STATUS_EVERY) {
            self.last_status = Some(now);
            self.send(&[NotifyState::Status(line)]);
        }
        let Some(every) = self.ping_every else { return };
        let due = self.last_ping.is_none_or(|(at, _)| now.duration_since(at) >= every);
        // A pause a server asked for and an open circuit (the API down, the fleet probing it)
        // are waits of the API's, not a wedged supervisor's.
        let waiting = s.paused_ms.is_some() || s.circuit_open;
        let progressed = self.last_ping.is_none_or(|(_, stored)| s.stored > stored) || waiting;
        if due && progressed {
            self.last_ping = Some((now, s.stored));
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// A reload begins (`RELOADING=1`, with the monotonic time systemd wants).
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1000)
            .unwrap_or(0);
        self.send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(usec)]);
    }

    /// The reload is done.
    pub fn reloaded(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// The run is ending.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
