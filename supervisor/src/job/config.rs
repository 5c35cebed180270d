//! A validated run: what `cli` makes of the flags once they are checked, and what every layer
//! below reads. Plain data; the checks that build it are `cli`'s.

use std::path::PathBuf;
use std::time::Duration;

use shared::{JobSpec, WorkerChaos};

use super::auth::CredentialSource;
use super::keys::KeySource;
use super::pace::PaceSettings;
use super::scope::Scope;

/// Faults to inject (`--chaos`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chaos {
    /// The workers' part.
    pub worker: WorkerChaos,
    /// SIGKILL a random worker this often.
    pub kill_every: Option<Duration>,
    /// With `--model async`: panic the task fetching these ids.
    pub panic_on: Vec<u64>,
}

impl std::fmt::Display for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, ids) in [
            ("crash-on", &self.worker.crash_on),
            ("hang-on", &self.worker.hang_on),
            ("bad-frame-on", &self.worker.bad_frame_on),
            ("panic-on", &self.panic_on),
        ] {
            parts.extend(ids.iter().map(|id| format!("{name}={id}")));
        }
        if let Some(d) = self.kill_every {
            parts.push(format!("kill-every={}", humantime::format_duration(d)));
        }
        f.write_str(&parts.join(","))
    }
}

/// The largest `--max-body`: a result frame must stay under the protocol's frame limit.
pub const MAX_BODY_LIMIT: u64 = 128 << 20;

/// A validated run.
#[derive(Debug)]
pub struct RunConfig {
    /// The ids it covers, and its shard of them.
    pub scope: Scope,
    /// Where the shard came from, when a scheduler's environment gave it.
    pub shard_from: Option<&'static str>,
    /// An `--ids-file`'s ids, sorted and distinct, until the store takes them.
    pub listed: std::sync::Mutex<Option<Vec<u64>>>,
    /// A keyed job's keys (`--keys`), checked; the store gives them ordinals.
    pub keys: Option<Keys>,
    /// The store path.
    pub store: PathBuf,
    /// Worker processes.
    pub workers: u32,
    /// Ids per chunk.
    pub chunk_size: u32,
    /// Silence after which a worker is replaced.
    pub worker_timeout: Duration,
    /// Worker executable; `None` for this executable in worker mode.
    pub worker_bin: Option<PathBuf>,
    /// How workers are confined.
    pub limits: WorkerLimits,
    /// Grace period on SIGTERM/SIGINT.
    pub grace: Duration,
    /// Whether quarantined ids are fetched again.
    pub retry_quarantined: bool,
    /// SIGKILL a random worker this often (`--chaos kill-every`); the workers' own faults are
    /// in `job.chaos`.
    pub kill_every: Option<Duration>,
    /// How fast the fleet may send.
    pub pace: PaceSettings,
    /// Processes of threads, or coroutines.
    pub model: Model,
    /// With `--model async`: panic the task fetching these ids (`--chaos panic-on`).
    pub panic_on: Vec<u64>,
    /// Where the credential comes from, when it is not a constant header.
    pub credentials: Option<CredentialSource>,
    /// Stored answers to fetch again.
    pub refetch: Refetch,
    /// What each worker is told.
    pub job: JobSpec,
}

impl RunConfig {
    /// What a store belongs to: the URL template alone for a GET without a body (as stores
    /// made before request templates recorded it), else the method, URL, content type and
    /// body template.
    pub fn job_identity(&self) -> String {
        let job = &self.job;
        match (&job.body, job.method.as_str()) {
            (None, "GET") => job.url_template.clone(),
            (None, method) => format!("{method} {}", job.url_template),
            (Some(body), method) => format!(
                "{method} {} ({}) {body}",
                job.url_template,
                job.content_type.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The faults injected into this run, as `--chaos` gave them.
    pub fn chaos(&self) -> Chaos {
        Chaos { worker: self.job.chaos.clone(), kill_every: self.kill_every, panic_on: self.panic_on.clone() }
    }
}

/// A keyed job's keys, checked.
#[derive(Debug)]
pub struct Keys {
    /// Where they are read from.
    pub source: KeySource,
    /// Non-empty lines (or records) read, repeats included.
    pub lines: u64,
    /// Standard input, copied to a file (keys are read more than once); removed when dropped.
    pub _spool: Option<tempfile::TempPath>,
}

/// Limits and identity applied to each worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// RLIMIT_AS, in bytes.
    pub memory: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// uid and gid to run as.
    pub user: Option<(u32, u32)>,
}

/// How a run's requests are made concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Worker processes, each with a pool of blocking threads.
    Fleet,
    /// Coroutines on one thread's event loop, in the supervisor's process.
    Async,
}

/// Which stored answers a run fetches again (`--refresh`, `--refetch-status`); failures are
/// fetched again by every run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refetch {
    /// Answers fetched before this Unix second (`--refresh AGE`: the run's start less AGE;
    /// `--refresh 0s`: every answer).
    pub fetched_before: Option<u32>,
    /// Answers no longer fresh at this Unix second, by what the server said (`--refresh stale`).
    pub stale_at: Option<u32>,
    /// Answers of these statuses, each an inclusive range (`--refetch-status 404,410,5xx`).
    pub statuses: Vec<(u16, u16)>,
}

impl Refetch {
    /// Whether it asks for anything.
    pub fn is_empty(&self) -> bool {
        self.fetched_before.is_none() && self.stale_at.is_none() && self.statuses.is_empty()
    }

    /// Whether it fetches again every answer of `status` (`--refetch-status`).
    pub fn wants_status(&self, status: u16) -> bool {
        self.statuses.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// Whether it fetches again an answer of `status`, fetched at `at` and fresh until
    /// `fresh_until` (0: the server did not say) with this `Last-Modified`. Without a stated
    /// freshness, an answer with a `Last-Modified` is fresh for a tenth of its age when fetched
    /// (RFC 9111 4.2.2's heuristic, as browsers and requests-cache apply it); one without either
    /// is stale.
    pub fn wants(&self, status: u16, at: u32, fresh_until: u32, last_modified: &str) -> bool {
        if self.wants_status(status) {
            return true;
        }
        if self.fetched_before.is_some_and(|before| at < before) {
            return true;
        }
        let Some(now) = self.stale_at else { return false };
        let until = if fresh_until > 0 {
            fresh_until
        } else {
            let modified = httpdate_secs(last_modified);
            match modified {
                Some(m) if m < at => at + (at - m) / 10,
                _ => return true,
            }
        };
        until <= now
    }
}

/// An HTTP date (RFC 9110 5.6.7) in Unix seconds.
fn httpdate_secs(text: &str) -> Option<u32> {
    let t = httpdate::parse_http_date(text).ok()?;
    u32::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refetch_asks_again_by_age_freshness_and_status() {
        let by_age = Refetch { fetched_before: Some(1000), ..Refetch::default() };
        assert!(by_age.wants(200, 999, 0, "") && !by_age.wants(200, 1000, 0, ""));
        let stale = Refetch { stale_at: Some(1000), ..Refetch::default() };
        assert!(stale.wants(200, 900, 1000, ""), "fresh until now: stale");
        assert!(!stale.wants(200, 900, 1001, ""), "still fresh");
        assert!(stale.wants(200, 900, 0, ""), "no freshness, no Last-Modified: stale");
        // Heuristic: a tenth of its age when fetched. Modified 5000 s before a fetch at 900
        // (Unix 1970), fresh for 500 s.
        let modified = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        let heuristic = Refetch { stale_at: Some(5000 + 400), ..Refetch::default() };
        assert!(!heuristic.wants(200, 5000, 0, &modified));
        let later = Refetch { stale_at: Some(5000 + 500), ..Refetch::default() };
        assert!(later.wants(200, 5000, 0, &modified));
        let statuses = Refetch { statuses: vec![(404, 404), (500, 599)], ..Refetch::default() };
        assert!(
            statuses.wants(404, 0, 0, "") && statuses.wants(503, 0, 0, "") && !statuses.wants(200, 0, 0, "")
        );
    }
}
