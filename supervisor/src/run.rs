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

/// How a run is watched: its progress, its metrics, and the command line a SIGHUP parses again.
#[derive(Debug, Clone)]
pub struct Watch {
    /// How progress is shown.
    pub progress: crate::progress::Mode,
    /// The command line, program name first, for a reload; `None`: SIGHUP rereads nothing.
    pub argv: Option<Vec<std::ffi::OsString>>,
}

/// `supervisor --url … --ids …`.
pub fn run_command(args: RunArgs, watch: Watch) -> Result<i32, Error> {
    let cfg = config::run_config(&args).map_err(Error::Usage)?;
    let metrics = match args.metrics {
        Some(addr) => {
            let m = crate::metrics::Metrics::new(cfg.workers as usize);
            let bound =
                crate::metrics::serve(addr, m.clone()).map_err(|source| Error::Metrics { addr, source })?;
            log::info!("metrics on http://{bound}/metrics");
            Some(m)
        }
        None => None,
    };
    let report = execute(&cfg, &watch, metrics)?;
    report::print_summary(&cfg, &report);
    Ok(exit_code(&report))
}

/// `supervisor config`: every setting of a run, its value and where it came from; then the
/// same checks a run makes.
pub fn show_config(parsed: &crate::settings::Parsed) -> Result<i32, Error> {
    let rows = parsed.sources();
    let width = rows.iter().map(|(k, ..)| k.len()).max().unwrap_or(0);
    let vwidth = rows.iter().map(|(_, v, _)| v.len()).max().unwrap_or(0).min(60);
    for (key, value, from) in &rows {
        println!("{key:width$}  {value:vwidth$}  {from}");
    }
    let args = match &parsed.cli.command {
        Some(crate::cli::Command::Config(args)) => args,
        _ => &parsed.cli.run,
    };
    config::run_config(args).map_err(Error::Usage)?;
    Ok(0)
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
pub fn execute(
    cfg: &RunConfig,
    watch: &Watch,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
) -> Result<RunReport, Error> {
    let store = Store::open_for_job(&cfg.store, &cfg.job.url_template)?;
    let listed = cfg.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    store.adopt_scope(&cfg.scope, listed)?;
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
    if let (Some(shard), Some(from)) = (cfg.scope.shard, cfg.shard_from) {
        log::info!("shard {shard} (from {from})");
    }
    log::info!(
        "fetching {} from {} with {} workers x {} threads into {}",
        cfg.scope,
        cfg.job.url_template,
        cfg.workers,
        cfg.job.threads,
        cfg.store.display()
    );
    if cfg.job.tls.insecure {
        log::warn!(
            "--insecure: https certificates are NOT verified; anyone on the path can read and change what is stored"
        );
    }
    let report = match cfg.model {
        crate::cli::Model::Fleet => dispatch::run(cfg, &store, spawner, watch, metrics)?,
        crate::cli::Model::Async => crate::coroutines::run(cfg, &store)?,
    };
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    store.set_last_run(&LastRun {
        ids: cfg.scope.ids.to_string(),
        shard: cfg.scope.shard,
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
