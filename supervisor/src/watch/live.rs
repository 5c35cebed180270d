//! The live status file: while a run holds its store, it keeps `flota.live` in the store
//! directory current (every second, replaced whole by a rename), so that `status` can show the
//! run's figures without opening the store the run has locked. The run removes it when it
//! ends; one left by a run that was killed names a pid that is gone, and `status` says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::Snapshot;

/// The file's name in the store directory.
pub const LIVE_FILE: &str = "flota.live";
/// How often it is rewritten.
const EVERY: Duration = Duration::from_secs(1);

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Live {
    /// The supervisor's pid.
    pub pid: u32,
    /// The range, as `A..B`.
    pub ids: String,
    /// The URL template.
    pub url: String,
    /// When it was written, in seconds since the epoch.
    pub updated_unix: u64,
    /// The progress line, as the log and systemd show it.
    pub line: String,
    /// The figures.
    pub snapshot: Snapshot,
}

impl Live {
    /// Whether the process that wrote it still runs.
    pub fn is_running(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_ok()
    }
}

/// Keeps the file of one run.
pub struct LiveFile {
    path: PathBuf,
    ids: String,
    url: String,
    last: Option<Instant>,
}

impl LiveFile {
    /// The file of a run of `ids` from `url` on the store at `store`.
    pub fn new(store: &Path, ids: String, url: String) -> LiveFile {
        LiveFile { path: store.join(LIVE_FILE), ids, url, last: None }
    }

    /// Rewrites the file if a second has passed. A failure is logged, not fatal: the file
    /// only informs.
    pub fn tick(&mut self, s: &Snapshot, line: &str, now: Instant) {
        if self.last.is_some_and(|at| now.duration_since(at) < EVERY) {
            return;
        }
        self.last = Some(now);
        let live = Live {
            pid: std::process::id(),
            ids: self.ids.clone(),
            url: self.url.clone(),
            updated_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            line: line.to_owned(),
            snapshot: s.clone(),
        };
        let tmp = self.path.with_extension("live.tmp");
        let json = serde_json::to_vec(&live).expect("plain figures always serialize");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            log::debug!("cannot write {}: {e}", self.path.display());
        }
    }
}

impl Drop for LiveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The live file of the store at `store`, if there is a readable one.
pub fn read(store: &Path) -> Option<Live> {
    let bytes = std::fs::read(store.join(LIVE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
