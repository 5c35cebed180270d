//! What is said about a run once it is over: the end-of-run summary, and the lines it shares
//! with `status` and `merge` (how a run was paced, how complete a store is).

use crate::engine::Figures;
use crate::job::{Chaos, IdRange, Model, Pacing, RateSource, RunConfig, Tally};
use crate::store::{Coverage, LastRun};
use crate::util::{signal_name, thousands};

/// The end-of-run summary, on stdout.
pub fn print(cfg: &RunConfig, r: &Figures) {
    println!("flota: {} from {}", cfg.scope, cfg.job.url_template);
    let shape = match cfg.model {
        Model::Fleet => format!("{} workers x {} threads", cfg.workers, cfg.job.threads),
        Model::Async => format!("coroutines on one thread ({} at once)", r.pace.concurrency),
    };
    println!(
        "  fetched   {} ids in {:.2} s ({} items/s) with {shape}",
        thousands(r.fetched()),
        r.wall.as_secs_f64(),
        thousands(r.rate().round() as u64),
    );
    println!(
        "  answered  {}   failed {}   already stored {}",
        thousands(r.tally.answered),
        thousands(r.tally.failed),
        thousands(r.tally.skipped)
    );
    if let Some(line) = refresh_line(&r.tally, Some(r.new_records)) {
        println!("  {line}");
    }
    if r.skipped_quarantined > 0 {
        println!(
            "  skipped   {} ids quarantined by an earlier run (--retry-quarantined fetches them)",
            thousands(r.skipped_quarantined)
        );
    }
    println!(
        "  retries   {}   worker restarts {}   quarantined {}",
        thousands(r.tally.retries),
        thousands(r.tally.restarts),
        thousands(r.tally.quarantined)
    );
    for line in pacing_lines(&r.pace) {
        println!("  {line}");
    }
    let chaos = cfg.chaos();
    if chaos != Chaos::default() {
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

/// The end-of-run summary as one JSON object on stdout (`--summary json`): the store, the job,
/// its scope, and the run's figures under the keys `status --json` gives its `last_run`
/// (`answered`, `failed`, `retries`, `skipped`, `restarts`, `exit_code`, `pacing`: `requests`,
/// `too_many`, `pauses`, `backoffs`, `outages`, ...), with what only the summary knows.
pub fn print_json(cfg: &RunConfig, r: &Figures, last: &LastRun) {
    #[derive(serde::Serialize)]
    struct Summary<'a> {
        store: String,
        job: &'a str,
        scope: String,
        #[serde(flatten)]
        run: &'a LastRun,
        /// Of the skipped, quarantined by an earlier run.
        skipped_quarantined: u64,
        /// Workers killed on purpose (`--chaos kill-every`).
        chaos_kills: u64,
        /// Ids stored that had no record before.
        new_records: u64,
        /// Whether certificates went unchecked (`--insecure`).
        insecure: bool,
    }
    let summary = Summary {
        store: cfg.store.display().to_string(),
        job: &cfg.job.url_template,
        scope: cfg.scope.to_string(),
        run: last,
        skipped_quarantined: r.skipped_quarantined,
        chaos_kills: r.chaos_kills,
        new_records: r.new_records,
        insecure: cfg.job.tls.insecure,
    };
    println!("{}", serde_json::to_string(&summary).expect("plain figures always serialize"));
}

/// Two lines on how a run was paced: its requests and 429s, then its rate and concurrency.
pub fn pacing_lines(p: &Pacing) -> [String; 2] {
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
    if p.backoffs > 0 {
        first.push_str(&format!("   rate backed off {}", thousands(p.backoffs)));
    }
    if p.outages > 0 {
        first.push_str(&format!(
            "   API down {} ({:.1} s, {} probes)",
            thousands(p.outages),
            p.outage_secs,
            thousands(p.probes)
        ));
    }
    if p.credentials > 0 || p.unauthorized > 0 {
        first.push_str(&format!(
            "   credentials obtained {}, answered 401 {}",
            thousands(p.credentials),
            thousands(p.unauthorized)
        ));
    }
    let rate = match (p.rate, p.rate_source) {
        (Some(r), Some(RateSource::Given)) => format!("rate {r:.1}/s (--rate)"),
        (Some(r), Some(RateSource::Announced)) => format!("rate {r:.1}/s (announced)"),
        (Some(r), Some(RateSource::Adaptive)) => format!("rate {r:.1}/s (backed off on refusals)"),
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

/// The lines that say how complete a store is, label and text: its gaps, then its failures.
/// A keyed store's gaps are not named (they are ordinals: a run with its list fetches them).
pub fn coverage_lines(c: &Coverage, keyed: bool) -> Vec<(&'static str, String)> {
    let items = if keyed { "keys" } else { "ids" };
    let mut lines = Vec::new();
    if c.complete() {
        lines.push(("complete", format!("yes: each of its {} {items} has a record", thousands(c.total))));
    } else {
        let gaps = if keyed {
            "a run with its --keys list fetches them".to_owned()
        } else {
            let gaps: Vec<String> = c.first_gaps.iter().map(IdRange::to_string).collect();
            format!("the first gaps: {}", gaps.join(", "))
        };
        lines.push((
            "complete",
            format!(
                "no: {} of its {} {items} have no record ({gaps})",
                thousands(c.missing),
                thousands(c.total)
            ),
        ));
    }
    if c.failed > 0 {
        lines.push((
            "unanswered",
            format!(
                "{} {items} have a record but no HTTP answer (`export --only failed` lists them; a run retries them)",
                thousands(c.failed)
            ),
        ));
    }
    lines
}

/// What a run's refetches came to, when it had any: `refreshed N: unchanged U   changed C   new W
/// failed, answer kept F` (the new records when they are known).
pub fn refresh_line(t: &Tally, new_records: Option<u64>) -> Option<String> {
    let refreshed = t.unchanged + t.changed + t.kept;
    (refreshed > 0).then(|| {
        let new = new_records.map(|n| format!("new {}   ", thousands(n))).unwrap_or_default();
        format!(
            "refreshed {}: unchanged {}   changed {}   {new}failed, answer kept {}",
            thousands(refreshed),
            thousands(t.unchanged),
            thousands(t.changed),
            thousands(t.kept)
        )
    })
}
