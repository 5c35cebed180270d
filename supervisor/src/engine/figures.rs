//! What the decision core tells of a run: its figures at the end ([`Figures`]) and at any moment
//! ([`Snapshot`], for progress, metrics, systemd and the live status file). Both embed the one
//! [`Tally`] and the pacer's [`Pacing`]; nothing is copied field by field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{Pacing, Tally};

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Answered, failed, quarantined, retries, skipped (settled in the store, not fetched again)
    /// and worker restarts.
    pub tally: Tally,
    /// Of the skipped, quarantined by an earlier run (they have no HTTP answer).
    pub skipped_quarantined: u64,
    /// Workers the supervisor killed on purpose (`--chaos kill-every`).
    pub chaos_kills: u64,
    /// Ids stored that had no record before.
    pub new_records: u64,
    /// Results dropped because their worker did not hold the id.
    pub dropped_results: u64,
    /// The signal that stopped the run early, if one did.
    pub stopped_by: Option<i32>,
    /// Requests, 429s, pauses, the rate and the concurrency limit.
    pub pace: Pacing,
    /// Wall time.
    pub wall: Duration,
}

impl Figures {
    /// Ids stored by this run.
    pub fn fetched(&self) -> u64 {
        self.tally.stored()
    }

    /// Ids stored per second of wall time.
    pub fn rate(&self) -> f64 {
        self.fetched() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// A run's figures at one moment. Written as JSON into the live status file, with the tally's
/// and the pacing's keys at the top level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Since the run started.
    pub elapsed_secs: f64,
    /// Ids this run stored (durably): the tally's answered and failed.
    pub stored: u64,
    /// Ids this run has to store in all: the range less what the store already held, once
    /// counted (a thread counts it while the run starts).
    pub to_fetch: Option<u64>,
    /// What was stored, skipped, retried and restarted so far.
    #[serde(flatten)]
    pub tally: Tally,
    /// Workers taking work now.
    pub workers_up: u32,
    /// Worker slots.
    pub workers: u32,
    /// Ids waiting for a worker.
    pub queued: u64,
    /// Requests and 429s so far, the concurrency limit and the rate in force.
    #[serde(flatten)]
    pub pace: Pacing,
    /// A server-asked pause in force, milliseconds left.
    pub paused_ms: Option<u64>,
    /// Whether the circuit is open: the API is down, and only probes go.
    #[serde(default)]
    pub circuit_open: bool,
    /// What holds the fleet back, in words: an open circuit, a pause and why, a rate backed
    /// off on refusals.
    #[serde(default)]
    pub held_back: Option<String>,
}
