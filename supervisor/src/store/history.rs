//! What a store remembers of its runs: the last run's figures, kept as JSON under `run.last`.

use super::db::Store;
use super::error::StoreError;
use crate::job::{Pacing, Shard, Tally};

/// The figures of a store's last run, kept as JSON under `run.last`: one struct both ways,
/// so a field cannot be written under one name and read under another.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    /// The range, as `A..B`.
    pub ids: String,
    /// When it started, in seconds since the epoch.
    pub started_unix: u64,
    /// When it finished.
    pub finished_unix: u64,
    /// Wall time.
    pub wall_secs: f64,
    /// Ids stored.
    pub fetched: u64,
    /// Answered, failed, quarantined, retries, skipped, restarts.
    #[serde(flatten)]
    pub tally: Tally,
    /// The signal that stopped it, if one did.
    pub stopped_by: Option<i32>,
    /// Ids stored per second.
    pub items_per_sec: f64,
    /// Worker processes.
    pub workers: u32,
    /// Threads per worker.
    pub threads: u32,
    /// Its exit code.
    pub exit_code: i32,
    /// Its shard of the ids, if it had one.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// How it was paced (absent from stores written before pacing existed).
    #[serde(default)]
    pub pacing: Pacing,
}

impl Store {
    /// The last run's figures, as [`Store::set_last_run`] wrote them.
    pub fn last_run(&self) -> Result<Option<LastRun>, StoreError> {
        match self.guard(|| Ok(self.db.get("run.last")?))? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::BadLastRun(e.to_string()))
            }
        }
    }

    /// Records the figures of the run that just ended, durably.
    pub fn set_last_run(&self, run: &LastRun) -> Result<(), StoreError> {
        let json = serde_json::to_vec(run).expect("plain numbers and strings always serialize");
        self.guard(|| {
            self.db.insert("run.last", json)?;
            self.db.flush()?;
            Ok(())
        })
    }
}
