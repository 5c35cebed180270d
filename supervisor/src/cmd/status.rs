//! `supervisor status --store S [--json]`: what a store holds, whether it is complete, and its
//! last run; while a run holds the store, that run's live figures.

use std::time::UNIX_EPOCH;

use super::summary::{coverage_lines, pacing_lines, refresh_line};
use crate::cli::StatusArgs;
use crate::engine::Error;
use crate::job::{IdRange, Ids, Scope};
use crate::store::{Ages, Counts, Coverage, LastRun, Store, StoreError};
use crate::util::thousands;
use crate::watch::live::{self, Live};

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
    /// When its answers were fetched (Unix seconds), and how many are older than `--older-than`.
    ages: Option<Ages>,
    last_run: Option<LastRun>,
    /// The figures of the run holding the store, if one does.
    live: Option<Live>,
}

/// `supervisor status --store S [--json]`. While a run holds the store, what its live status
/// file says.
pub fn run(args: &StatusArgs) -> Result<i32, Error> {
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
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // As `--refresh 0s`, `--older-than 0s` is every answer.
    let before = args.older_than.map(|age| match age.as_secs() {
        0 => u32::MAX,
        secs => u32::try_from(now.saturating_sub(secs)).unwrap_or(u32::MAX),
    });
    let ages = store.ages(before)?;
    if args.json {
        let json = StatusJson {
            store: args.store.display().to_string(),
            job: store.job()?,
            counts: Some(store.counts()?),
            scope,
            coverage,
            ages: Some(ages),
            last_run: store.last_run()?,
            live: None,
        };
        println!("{}", serde_json::to_string_pretty(&json).expect("plain figures always serialize"));
        return Ok(0);
    }
    let counts = store.counts()?;
    println!("store     {}", args.store.display());
    println!("job       {}", store.job()?.unwrap_or_default());
    let items = if scope.as_ref().is_some_and(|s| matches!(s.ids, Ids::Keys(_))) { "keys" } else { "ids" };
    println!(
        "answered  {} {items} ({} with a 2xx status)",
        thousands(counts.answered),
        thousands(counts.success)
    );
    println!(
        "failed    {} {items} ({} quarantined)",
        thousands(counts.failed),
        thousands(counts.quarantined)
    );
    match (&scope, &coverage) {
        (Some(scope), Some(c)) => {
            println!("covers    {scope}");
            for (label, line) in coverage_lines(c, matches!(scope.ids, Ids::Keys(_))) {
                println!("{label:<9} {line}");
            }
        }
        _ => println!(
            "covers    not recorded (the store was made before flota recorded which ids a job covers)"
        ),
    }
    if let (Some(oldest), Some(median), Some(newest)) = (ages.oldest, ages.median, ages.newest) {
        let at = |t: u32| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(u64::from(t)))
        };
        println!("fetched   oldest {}, median {}, newest {}", at(oldest), at(median), at(newest));
    }
    if ages.unknown > 0 {
        println!(
            "          {} answers of an older format, fetched at a time not kept",
            thousands(ages.unknown)
        );
    }
    if let Some(age) = args.older_than {
        println!(
            "older     {} answers fetched more than {} ago (--refresh {} fetches them again)",
            thousands(ages.older),
            humantime::format_duration(age),
            humantime::format_duration(age)
        );
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
                thousands(run.tally.failed),
                thousands(run.tally.retries),
                thousands(run.tally.restarts),
                run.exit_code
            );
            if let Some(line) = refresh_line(&run.tally, None) {
                println!("          {line}");
            }
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
    let ids = match run.ids.parse::<IdRange>() {
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
    let Some(live) = live::read(&args.store).filter(Live::is_running) else {
        return Err(locked.into());
    };
    if args.json {
        let json = StatusJson {
            store: args.store.display().to_string(),
            job: Some(live.url.clone()),
            counts: None,
            scope: None,
            coverage: None,
            ages: None,
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
