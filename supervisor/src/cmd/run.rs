//! `supervisor --url … --ids …`: opening the job's store, starting the runtime its model names,
//! recording the run's figures, and the exit code they mean.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use std::ffi::OsString;

use super::summary;
use crate::cli::{self, Command, RunArgs, SummaryFormat};
use crate::drive::{coroutines, dispatch, Reload, Watch};
use crate::engine::{Error, Figures};
use crate::fleet::Spawner;
use crate::job::{Ids, Model, RunConfig};
use crate::store::{LastRun, Store};
use crate::util::thousands;
use crate::watch::metrics::{self, Metrics};

/// `supervisor --url … --ids …`.
pub fn run_command(args: RunArgs, watch: Watch) -> Result<i32, Error> {
    let mut cfg = cli::run_config(&args).map_err(Error::Usage)?;
    let metrics = match args.metrics {
        Some(addr) => {
            let m = Metrics::new(cfg.workers as usize);
            let bound = metrics::serve(addr, m.clone()).map_err(|source| Error::Metrics { addr, source })?;
            log::info!("metrics on http://{bound}/metrics");
            Some(m)
        }
        None => None,
    };
    let (report, last) = execute(&mut cfg, &watch, metrics)?;
    match args.summary {
        SummaryFormat::Text => summary::print(&cfg, &report),
        SummaryFormat::Json => summary::print_json(&cfg, &report, &last),
    }
    Ok(exit_code(&report))
}

/// 0 when every id of the range has an HTTP answer, 3 when some failed (in this run, or
/// quarantined by an earlier one and skipped), 128 + the signal's
/// number when a signal stopped the run (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(report: &Figures) -> i32 {
    match report.stopped_by {
        Some(sig) => 128 + sig,
        None if report.tally.failed > 0 || report.skipped_quarantined > 0 => 3,
        None => 0,
    }
}

/// Opens the store and runs the job; records the run's figures in the store, and returns them
/// (as the engine counted them, and as the store keeps them). A keyed job's scope is the
/// store's count of its keys from then on.
pub fn execute(
    cfg: &mut RunConfig,
    watch: &Watch,
    metrics: Option<std::sync::Arc<Metrics>>,
) -> Result<(Figures, LastRun), Error> {
    let store = Store::open_for_job(&cfg.store, &cfg.job_identity())?;
    let listed = cfg.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    match &cfg.keys {
        Some(keys) => {
            let started = std::time::Instant::now();
            let adopted = store.adopt_keys(&keys.source, cfg.scope.shard)?;
            log::info!(
                "--keys {}: {} keys ({} new to the store, {} lines repeating a key), {} of them this store's, \
                 planned in {:.2} s",
                adopted.keyed.source,
                thousands(adopted.keyed.count),
                thousands(adopted.new),
                thousands(adopted.repeated),
                thousands(adopted.keyed.held),
                started.elapsed().as_secs_f64()
            );
            cfg.scope.ids = Ids::Keys(adopted.keyed);
        }
        None => {
            let mut ids = listed.into_iter().flatten().map(Ok);
            let listed: Option<&mut dyn Iterator<Item = _>> =
                if matches!(cfg.scope.ids, Ids::Listed(_)) { Some(&mut ids) } else { None };
            store.adopt_scope(&cfg.scope, listed)?;
        }
    }
    let cfg = &*cfg;
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
        Model::Fleet => dispatch::run(cfg, &store, spawner, watch, metrics)?,
        Model::Async => coroutines::run(cfg, &store)?,
    };
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last = LastRun {
        ids: cfg.scope.ids.to_string(),
        shard: cfg.scope.shard,
        started_unix: unix(started),
        finished_unix: unix(SystemTime::now()),
        wall_secs: report.wall.as_secs_f64(),
        fetched: report.fetched(),
        tally: report.tally,
        stopped_by: report.stopped_by,
        items_per_sec: report.rate(),
        workers: cfg.workers,
        threads: cfg.job.threads,
        exit_code: exit_code(&report),
        pacing: report.pace.clone(),
    };
    store.set_last_run(&last)?;
    store.record_manifest(report.new_records)?;
    Ok((report, last))
}

/// What a SIGHUP rereads: `argv` (the command line, program name first) and the config file
/// it names, parsed again as at the start; only the pacing and the log level are taken, checked
/// against the fleet's ceiling. A demo rereads its own flags.
pub fn reloader(argv: Vec<OsString>) -> Reload {
    Box::new(move |ceiling| {
        let parsed = cli::parse(&argv).map_err(|e| match e {
            cli::ParseError::Clap(e) => e.to_string().lines().next().unwrap_or_default().to_owned(),
            cli::ParseError::File(e) => e,
        })?;
        let tuning = match &parsed.cli.command {
            Some(Command::Demo(demo)) => &demo.tuning,
            _ => &parsed.cli.run.tuning,
        };
        Ok((cli::pace(tuning, ceiling)?, parsed.cli.output.level()))
    })
}
