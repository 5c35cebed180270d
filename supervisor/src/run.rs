//! Running a job: opening its store, starting the dispatcher, recording the run's figures, and
//! the exit code they mean.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::RunArgs;
use crate::config::{self, RunConfig};
use crate::dispatch::{self, RunReport};
use crate::error::Error;
use crate::fleet::Spawner;
use crate::report;
use crate::store::{LastRun, Store};

/// `supervisor --url … --ids …`.
pub fn run_command(args: RunArgs) -> Result<i32, Error> {
    let cfg = config::run_config(args.url.as_deref(), args.ids.as_deref(), args.store, &args.tuning)
        .map_err(Error::Usage)?;
    let report = execute(&cfg)?;
    report::print_summary(&cfg, &report);
    Ok(exit_code(&report))
}

/// 0 when every id of the range has an HTTP answer, 3 when some failed (in this run, or
/// quarantined by an earlier one and skipped), 128 + the signal's
/// number when a signal stopped the run (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(report: &RunReport) -> i32 {
    match report.stopped_by {
        Some(sig) => 128 + sig,
        None if report.failed > 0 || report.skipped_quarantined > 0 => 3,
        None => 0,
    }
}

/// Opens the store and runs the job; records the run's figures in the store.
pub fn execute(cfg: &RunConfig) -> Result<RunReport, Error> {
    let store = Store::open_for_job(&cfg.store, &cfg.job.url_template)?;
    let (bin, self_exec) = match &cfg.worker_bin {
        Some(bin) => (bin.clone(), false),
        // The running executable itself, even if its file was replaced since it started.
        None => (PathBuf::from("/proc/self/exe"), true),
    };
    let spawner = Spawner {
        bin,
        self_exec,
        max_frame: usize::try_from(cfg.job.max_body).unwrap_or(usize::MAX).saturating_add(8 << 20),
        limits: cfg.limits,
    };
    let started = SystemTime::now();
    log::info!(
        "fetching ids {} from {} with {} workers x {} threads into {}",
        cfg.ids,
        cfg.job.url_template,
        cfg.workers,
        cfg.job.threads,
        cfg.store.display()
    );
    let report = dispatch::run(cfg, &store, spawner)?;
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    store.set_last_run(&LastRun {
        ids: cfg.ids.to_string(),
        started_unix: unix(started),
        finished_unix: unix(SystemTime::now()),
        wall_secs: report.wall.as_secs_f64(),
        fetched: report.fetched(),
        answered: report.answered,
        failed: report.failed,
        skipped: report.skipped,
        retries: report.retries,
        restarts: report.restarts,
        quarantined: report.quarantined,
        stopped_by: report.stopped_by,
        items_per_sec: report.rate(),
        workers: cfg.workers,
        threads: cfg.job.threads,
        exit_code: exit_code(&report),
        pacing: pacing(&report.pace),
    })?;
    store.record_manifest(report.new_records)?;
    Ok(report)
}

/// The pacing figures as the store keeps them.
pub fn pacing(p: &crate::dispatch::core::PaceReport) -> crate::store::Pacing {
    use crate::dispatch::core::RateSource;
    crate::store::Pacing {
        requests: p.requests,
        too_many: p.too_many,
        pauses: p.pauses,
        paused_secs: p.paused.as_secs_f64(),
        rate: p.rate.map(|(r, _)| r),
        rate_source: p.rate.map(|(_, s)| match s {
            RateSource::Given => "--rate".to_owned(),
            RateSource::Announced => "announced".to_owned(),
        }),
        concurrency: p.limit.0,
        concurrency_range: (p.limit.1, p.limit.2),
        adaptive: p.adaptive,
    }
}
