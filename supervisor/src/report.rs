//! Running a job from the command line, and what is said about it: the end-of-run summary,
//! the figures kept in the store, and `status`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::{self, RunArgs, RunConfig, StatusArgs};
use crate::dispatch::{self, RunReport};
use crate::fleet::Spawner;
use crate::store::Store;
use crate::Error;

/// `supervisor --url … --ids …`.
pub fn run_command(args: RunArgs) -> Result<i32, Error> {
    let cfg = cli::run_config(args.url.as_deref(), args.ids.as_deref(), args.store, &args.tuning)
        .map_err(Error::Usage)?;
    let report = execute(&cfg)?;
    print_summary(&cfg, &report);
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
    let figures = serde_json::json!({
        "ids": cfg.ids.to_string(),
        "started_unix": unix(started),
        "finished_unix": unix(SystemTime::now()),
        "wall_secs": report.wall.as_secs_f64(),
        "fetched": report.fetched(),
        "answered": report.answered,
        "failed": report.failed,
        "skipped": report.skipped,
        "retries": report.retries,
        "restarts": report.restarts,
        "quarantined": report.quarantined,
        "stopped_by": report.stopped_by,
        "items_per_sec": report.rate(),
        "workers": cfg.workers,
        "threads": cfg.job.threads,
        "exit_code": exit_code(&report),
    });
    store.set_last_run(&figures.to_string())?;
    Ok(report)
}

/// The end-of-run summary, on stdout.
pub fn print_summary(cfg: &RunConfig, r: &RunReport) {
    println!("flota: ids {} from {}", cfg.ids, cfg.job.url_template);
    println!(
        "  fetched   {} ids in {:.2} s ({} items/s) with {} workers x {} threads",
        thousands(r.fetched()),
        r.wall.as_secs_f64(),
        thousands(r.rate().round() as u64),
        cfg.workers,
        cfg.job.threads
    );
    println!(
        "  answered  {}   failed {}   already stored {}",
        thousands(r.answered),
        thousands(r.failed),
        thousands(r.skipped)
    );
    if r.skipped_quarantined > 0 {
        println!(
            "  skipped   {} ids quarantined by an earlier run (--retry-quarantined fetches them)",
            thousands(r.skipped_quarantined)
        );
    }
    println!(
        "  retries   {}   worker restarts {}   quarantined {}",
        thousands(r.retries),
        thousands(r.restarts),
        thousands(r.quarantined)
    );
    if cfg.chaos != crate::cli::Chaos::default() {
        println!("  chaos     {}   workers killed on purpose {}", cfg.chaos, thousands(r.chaos_kills));
    }
    if let Some(sig) = r.stopped_by {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal");
        println!("  stopped   by {name}: everything fetched is stored; run the same command again to resume");
    }
    println!("  store     {}", cfg.store.display());
}

/// `supervisor status --store S`.
pub fn status(args: &StatusArgs) -> Result<i32, Error> {
    let store = Store::open_existing(&args.store)?;
    let counts = store.counts()?;
    println!("store     {}", args.store.display());
    println!("job       {}", store.job()?.unwrap_or_default());
    println!(
        "answered  {} ids ({} with a 2xx status)",
        thousands(counts.answered),
        thousands(counts.success)
    );
    println!("failed    {} ids ({} quarantined)", thousands(counts.failed), thousands(counts.quarantined));
    match store.last_run()?.and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok()) {
        Some(run) => {
            let n = |k: &str| run[k].as_u64().unwrap_or(0);
            let when = UNIX_EPOCH + std::time::Duration::from_secs(n("finished_unix"));
            println!(
                "last run  ids {}, finished {}: {} fetched in {:.2} s ({} items/s), {} failed, {} retries, {} restarts, exit {}",
                run["ids"].as_str().unwrap_or("?"),
                humantime::format_rfc3339_seconds(when),
                thousands(n("fetched")),
                run["wall_secs"].as_f64().unwrap_or(0.0),
                thousands(run["items_per_sec"].as_f64().unwrap_or(0.0).round() as u64),
                thousands(n("failed")),
                thousands(n("retries")),
                thousands(n("restarts")),
                n("exit_code")
            );
        }
        None => println!("last run  none finished"),
    }
    Ok(0)
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}
