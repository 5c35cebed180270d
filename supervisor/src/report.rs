//! What is said about runs: the end-of-run summary, and `status`.

use std::time::UNIX_EPOCH;

use crate::cli::StatusArgs;
use crate::config::RunConfig;
use crate::dispatch::core::signal_name;
use crate::dispatch::RunReport;
use crate::error::Error;
use crate::live::Live;
use crate::store::merge::Coverage;
use crate::store::scope::Scope;
use crate::store::{Counts, LastRun, Store, StoreError};

/// The end-of-run summary, on stdout.
pub fn print_summary(cfg: &RunConfig, r: &RunReport) {
    println!("flota: {} from {}", cfg.scope, cfg.job.url_template);
    let shape = match cfg.model {
        crate::cli::Model::Fleet => format!("{} workers x {} threads", cfg.workers, cfg.job.threads),
        crate::cli::Model::Async => format!("coroutines on one thread ({} at once)", r.pace.limit.0),
    };
    println!(
        "  fetched   {} ids in {:.2} s ({} items/s) with {shape}",
        thousands(r.fetched()),
        r.wall.as_secs_f64(),
        thousands(r.rate().round() as u64),
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
    for line in pacing_lines(&crate::run::pacing(&r.pace)) {
        println!("  {line}");
    }
    let chaos = cfg.chaos();
    if chaos != crate::config::Chaos::default() {
        println!("  chaos     {chaos}   workers killed on purpose {}", thousands(r.chaos_kills));
    }
    if let Some(sig) = r.stopped_by {
        let name = signal_name(sig);
        println!("  stopped   by {name}: everything fetched is stored; run the same command again to resume");
    }
    if cfg.job.tls.insecure {
        println!("  tls       certificates NOT verified (--insecure)");
    }
    println!("  store     {}", cfg.store.display());
}

/// Two lines on how a run was paced: its requests and 429s, then its rate and concurrency.
fn pacing_lines(p: &crate::store::Pacing) -> [String; 2] {
    let share = 100.0 * p.too_many as f64 / p.requests.max(1) as f64;
    let mut first = format!(
        "requests  {}   answered 429 {} ({share:.2}%)   server-asked pauses {}",
        thousands(p.requests),
        thousands(p.too_many),
        thousands(p.pauses)
    );
    if p.pauses > 0 {
        first.push_str(&format!(" ({:.1} s)", p.paused_secs));
    }
    let rate = match (p.rate, &p.rate_source) {
        (Some(r), Some(source)) => format!("rate {r:.1}/s ({source})"),
        (Some(r), None) => format!("rate {r:.1}/s"),
        (None, _) => "no rate".to_owned(),
    };
    let (lo, hi) = p.concurrency_range;
    let concurrency = if p.adaptive {
        format!("concurrency adaptive, {} at the end ({lo}..{hi})", p.concurrency)
    } else {
        format!("concurrency fixed at {}", p.concurrency)
    };
    [first, format!("pacing    {rate}   {concurrency}")]
}

/// `status --json`: one object.
#[derive(serde::Serialize)]
struct StatusJson {
    store: String,
    /// The job's URL template; unknown while a run holds the store.
    job: Option<String>,
    counts: Option<Counts>,
    /// The ids the job covers, and the shard of them the store holds.
    scope: Option<Scope>,
    /// How much of them it holds.
    coverage: Option<Coverage>,
    last_run: Option<LastRun>,
    /// The figures of the run holding the store, if one does.
    live: Option<Live>,
}

/// `supervisor status --store S [--json]`. While a run holds the store, what its live status
/// file says.
pub fn status(args: &StatusArgs) -> Result<i32, Error> {
    let store = match Store::open_existing(&args.store) {
        Ok(store) => store,
        Err(e @ StoreError::Locked { .. }) => return live_status(args, e),
        Err(e) => return Err(e.into()),
    };
    let scope = store.scope()?;
    let coverage = match &scope {
        Some(_) => Some(store.coverage(&store.covered()?)?),
        None => None,
    };
    if args.json {
        let json = StatusJson {
            store: args.store.display().to_string(),
            job: store.job()?,
            counts: Some(store.counts()?),
            scope,
            coverage,
            last_run: store.last_run()?,
            live: None,
        };
        println!("{}", serde_json::to_string_pretty(&json).expect("plain figures always serialize"));
        return Ok(0);
    }
    let counts = store.counts()?;
    println!("store     {}", args.store.display());
    println!("job       {}", store.job()?.unwrap_or_default());
    println!(
        "answered  {} ids ({} with a 2xx status)",
        thousands(counts.answered),
        thousands(counts.success)
    );
    println!("failed    {} ids ({} quarantined)", thousands(counts.failed), thousands(counts.quarantined));
    match (&scope, &coverage) {
        (Some(scope), Some(c)) => {
            println!("covers    {scope}");
            for (label, line) in crate::merge::coverage_lines(c) {
                println!("{label:<9} {line}");
            }
        }
        _ => println!(
            "covers    not recorded (the store was made before flota recorded which ids a job covers)"
        ),
    }
    match store.last_run()? {
        Some(run) => {
            let when = UNIX_EPOCH + std::time::Duration::from_secs(run.finished_unix);
            println!(
                "last run  {}, finished {}: {} fetched in {:.2} s ({} items/s), {} failed, {} retries, {} restarts, exit {}",
                last_run_scope(&run),
                humantime::format_rfc3339_seconds(when),
                thousands(run.fetched),
                run.wall_secs,
                thousands(run.items_per_sec.round() as u64),
                thousands(run.failed),
                thousands(run.retries),
                thousands(run.restarts),
                run.exit_code
            );
            if run.pacing.requests > 0 {
                for line in pacing_lines(&run.pacing) {
                    println!("          {line}");
                }
            }
        }
        None => println!("last run  none finished"),
    }
    Ok(0)
}

/// What the last run covered: "ids 0..1000, shard 1/3".
fn last_run_scope(run: &LastRun) -> String {
    let ids = match run.ids.parse::<crate::partition::IdRange>() {
        Ok(_) => format!("ids {}", run.ids),
        Err(_) => format!("the {}", run.ids),
    };
    match run.shard {
        Some(s) => format!("{ids}, shard {s}"),
        None => ids,
    }
}

/// `status` on a store a run holds: the run's live figures.
fn live_status(args: &StatusArgs, locked: StoreError) -> Result<i32, Error> {
    let Some(live) = crate::live::read(&args.store).filter(Live::is_running) else {
        return Err(locked.into());
    };
    if args.json {
        let json = StatusJson {
            store: args.store.display().to_string(),
            job: Some(live.url.clone()),
            counts: None,
            scope: None,
            coverage: None,
            last_run: None,
            live: Some(live),
        };
        println!("{}", serde_json::to_string_pretty(&json).expect("plain figures always serialize"));
        return Ok(0);
    }
    let age = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(live.updated_unix);
    println!("store     {}", args.store.display());
    println!("job       {}", live.url);
    println!("running   pid {}, {} ({age}s ago)", live.pid, live.ids);
    println!("progress  {}", live.line);
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
