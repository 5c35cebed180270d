//! A run's figures, kept once: the counts every view of a run shares ([`Tally`]), what one flush
//! of the store made durable ([`Durable`]), and how the run was paced ([`Pacing`]).
//!
//! The decision core's figures, the live snapshot, the last-run record and the end-of-run
//! summary each embed these instead of copying them field by field (a copy once lost a field).
//! Where they are written as JSON (`run.last`, `flota.live`, `status --json`) they are flattened,
//! so the keys users' scripts read stay where they were.

use std::time::Duration;

use super::pace::RateSource;

/// The counts of a run that every view of it shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Ids stored with an HTTP answer.
    #[serde(default)]
    pub answered: u64,
    /// Ids stored as failed, quarantined ones included.
    #[serde(default)]
    pub failed: u64,
    /// Of the failed, quarantined (they killed workers).
    #[serde(default)]
    pub quarantined: u64,
    /// Attempts beyond the first, over the ids stored.
    #[serde(default)]
    pub retries: u64,
    /// Ids already settled in the store, not fetched again.
    #[serde(default)]
    pub skipped: u64,
    /// Workers started again after one ended.
    #[serde(default)]
    pub restarts: u64,
    /// Of the answered, answers fetched again that had not changed: a `304 Not Modified`, or
    /// the same status and body byte for byte.
    #[serde(default)]
    pub unchanged: u64,
    /// Of the answered, answers fetched again that had changed.
    #[serde(default)]
    pub changed: u64,
    /// Answers fetched again whose refetch failed: the stored answer was kept (not counted
    /// as failed).
    #[serde(default)]
    pub kept: u64,
}

impl Tally {
    /// Ids settled in the store by this run: answered, failed, or refetched in vain with
    /// their answer kept.
    pub fn stored(&self) -> u64 {
        self.answered + self.failed + self.kept
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Tally) {
        self.answered += other.answered;
        self.failed += other.failed;
        self.quarantined += other.quarantined;
        self.retries += other.retries;
        self.skipped += other.skipped;
        self.restarts += other.restarts;
        self.unchanged += other.unchanged;
        self.changed += other.changed;
        self.kept += other.kept;
    }
}

/// What the store writer made durable in one flush (or several, added up).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The results' counts (answered, failed, quarantined, retries; nothing skipped or
    /// restarted).
    pub tally: Tally,
    /// Ids that had no record before (the others replaced a failure).
    pub new_records: u64,
    /// Of the answered, with a 2xx status.
    pub success: u64,
    /// How long the write and flush took.
    pub flush: Option<Duration>,
}

impl Durable {
    /// Adds `d` to this; the latest flush time wins.
    pub fn add(&mut self, d: Durable) {
        self.tally.add(&d.tally);
        self.new_records += d.new_records;
        self.success += d.success;
        self.flush = d.flush.or(self.flush);
    }
}

/// How a run was paced: the pacer's figures, as the summary, `status` and `run.last` show them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pacing {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Of those, answered 429.
    pub too_many: u64,
    /// Fleet-wide pauses a server asked for.
    pub pauses: u64,
    /// Their total length in seconds (overlaps counted once).
    pub paused_secs: f64,
    /// The rate in force at the end, requests per second, if any.
    pub rate: Option<f64>,
    /// Where it came from (`"--rate"`, `"announced"` or `"backed off"` in JSON).
    pub rate_source: Option<RateSource>,
    /// The fleet's concurrency limit at the end.
    pub concurrency: u32,
    /// Its lowest and highest over the run.
    pub concurrency_range: (u32, u32),
    /// Whether it adapted (no `--concurrency`).
    pub adaptive: bool,
    /// Times the fleet's rate backed off on refusals (429, 503).
    #[serde(default)]
    pub backoffs: u64,
    /// Times the circuit opened: the API was down (nearly every request failed).
    #[serde(default)]
    pub outages: u64,
    /// How long it was open in all, in seconds.
    #[serde(default)]
    pub outage_secs: f64,
    /// Probes sent while it was open.
    #[serde(default)]
    pub probes: u64,
    /// Requests answered 401: with credentials from a source, each was sent again with a newer
    /// one (not an attempt of its id); with the job's own headers, they stopped the run.
    #[serde(default)]
    pub unauthorized: u64,
    /// Credentials obtained from `--auth-command` or `--oauth2-token-url` during the run.
    #[serde(default)]
    pub credentials: u64,
}
