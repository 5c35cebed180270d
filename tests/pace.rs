//! Pacing, end to end: the fleet's rate, fleet-wide pauses and sporadic waits, announced limits,
//! the rate backed off on refusals and the adaptive concurrency limit, checked against what mockapi saw arrive (`--record`).

use std::collections::VecDeque;
use std::time::Duration;

use crate::util::*;

/// The most requests that arrived within any `span_ms`.
fn busiest(log: &[mockapi::Logged], span_ms: u64) -> usize {
    let mut window = VecDeque::new();
    let mut most = 0;
    for l in log {
        window.push_back(l.ms);
        while window.front().is_some_and(|&f| l.ms - f >= span_ms) {
            window.pop_front();
        }
        most = most.max(window.len());
    }
    most
}

/// The adaptive limit's end, lowest and highest, from the summary.
fn limits(out: &Outcome) -> (u64, u64, u64) {
    let pacing = &summary(out)["pacing"];
    assert_eq!(pacing["adaptive"].as_bool(), Some(true), "{pacing}");
    let range = &pacing["concurrency_range"];
    let n = |v: &serde_json::Value| v.as_u64().expect("a number");
    (n(&pacing["concurrency"]), n(&range[0]), n(&range[1]))
}

#[test]
fn the_fleet_never_sends_more_than_its_rate_and_burst() {
    let (api, _dir, store) = setup(&["--record"]);
    Job::new(&api.url(), "0..600", &store).flag("--rate", "200").flag("--burst", "10").run().assert_code(0);
    assert_complete(&store, 0..600);
    let log = api.log();
    assert_eq!(log.len(), 600, "one request per id: no faults here");
    // The bound is on sending; arrivals may bunch up by the network's jitter, allowed 50ms.
    for span_ms in [250, 1000] {
        let bound = 10 + 200 * (span_ms + 50) / 1000;
        let most = busiest(&log, span_ms);
        assert!(most as u64 <= bound, "{most} requests arrived within {span_ms}ms; the bound is {bound}");
    }
    let span = log[log.len() - 1].ms - log[0].ms;
    assert!(span >= (600 - 10 - 1) * 1000 / 200 - 50, "600 requests at 200/s took only {span}ms");
}

#[test]
fn a_sporadic_retry_after_is_waited_by_its_request_alone() {
    // Every 1000th request is answered 503 with Retry-After: 1: a server shedding a little
    // load. The request that met it waits its second before its retry; the fleet goes on.
    let (api, _dir, store) = setup(&["--unavailable-every", "1000", "--latency-ms", "20", "--record"]);
    let out = Job::new(&api.url(), "0..3000", &store).flag("--workers", "4").run();
    out.assert_code(0);
    assert_complete(&store, 0..3000);
    assert_eq!(figure(&out, "pacing.pauses"), 0, "{}", out.stdout);
    let log = api.log();
    let refused: Vec<&mockapi::Logged> = log.iter().filter(|l| l.status == 503).collect();
    assert!(refused.len() >= 3, "{} requests answered 503", refused.len());
    let end = log.last().expect("requests").ms;
    for r in refused {
        // Its retry came after the second it was told, and others did not wait for it (unless
        // the run was over by then).
        let retry = log.iter().find(|l| l.id == r.id && l.ms > r.ms).expect("retried");
        assert!(retry.ms >= r.ms + 1000, "id {} retried {}ms after its 503", r.id, retry.ms - r.ms);
        let others = log.iter().filter(|l| l.ms > r.ms + 100 && l.ms < r.ms + 900 && l.id != r.id).count();
        assert!(others > 0 || retry.ms >= end, "nothing was sent in the second after the 503 at {}ms", r.ms);
    }
}

#[test]
fn a_retry_after_among_many_refusals_pauses_every_worker() {
    // Every 4th request is refused: the client as a whole is limited, and a Retry-After met by
    // one worker stops the others too, through the supervisor.
    let (api, _dir, store) = setup(&["--unavailable-every", "4", "--latency-ms", "5", "--record"]);
    let out = Job::new(&api.url(), "0..60", &store).flag("--max-attempts", "20").run();
    out.assert_code(0);
    assert_complete(&store, 0..60);
    assert!(figure(&out, "pacing.pauses") >= 2, "{}", out.stdout);
    // A pause is a stretch with nothing sent, longer than any answer takes.
    let log = api.log();
    let quiet = log.windows(2).filter(|w| w[1].ms - w[0].ms >= 800).count();
    assert!(quiet >= 2, "{quiet} silent stretches of 800ms or more");
}

#[test]
fn a_dead_workers_permits_are_not_lost_for_good() {
    // Id 150 aborts every worker that fetches it, each dying with the permits in its hand, until
    // it is quarantined (two deaths with others, two alone).
    let (api, _dir, store) = setup(&[]);
    let mut args = job_args(&api.url(), "0..300", &store);
    set(&mut args, "--rate", "100");
    set(&mut args, "--burst", "6");
    set(&mut args, "--chaos", "crash-on=150");
    // Were a dead worker's permits lost, the run would starve and hit the deadline.
    let out = spawn(&strs(&args)).wait(Duration::from_secs(30));
    out.assert_code(3);
    assert_complete_but(&store, 0..300, &[150]);
    assert!(figure(&out, "restarts") >= 4, "{}", out.stdout);
}

#[test]
fn an_announced_limit_is_kept_to_without_meeting_it() {
    let (api, _dir, store) = setup(&["--rate-limit", "300", "--announce-limit"]);
    let out = Job::new(&api.url(), "0..900", &store).run();
    out.assert_code(0);
    assert_complete(&store, 0..900);
    let pacing = &summary(&out)["pacing"];
    assert_eq!(
        (pacing["rate"].as_f64(), pacing["rate_source"].as_str()),
        (Some(285.0), Some("announced")),
        "{pacing}"
    );
    let stats = api.stats();
    assert!(stats.rate_limited <= 3, "{} of {} requests answered 429", stats.rate_limited, stats.requests);
}

/// The last run's pacing, as `status --json` reports it.
fn last_pacing(store: &std::path::Path) -> serde_json::Value {
    let out = run(&["status", "--store", path_str(store), "--json"]);
    out.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    status["last_run"]["pacing"].clone()
}

#[test]
fn a_limit_announced_as_slowapi_does_with_a_fractional_unix_reset_is_kept_to() {
    // X-RateLimit-Limit, -Remaining, and -Reset as a Unix time with a fraction: no window named,
    // a fixed window of a second behind it.
    let (api, _dir, store) = setup(&["--rate-limit", "500", "--announce-limit", "--announce-as", "slowapi"]);
    let started = std::time::Instant::now();
    Job::new(&api.url(), "0..3000", &store).run().assert_code(0);
    let took = started.elapsed().as_secs_f64();
    assert_complete(&store, 0..3000);
    let last = last_pacing(&store);
    assert_eq!(last["rate_source"].as_str(), Some("announced"), "{last}");
    assert_eq!(last["rate"].as_f64(), Some(475.0), "0.95 of 500 a second: {last}");
    let stats = api.stats();
    assert!(
        stats.rate_limited * 100 <= stats.requests,
        "{} of {} requests answered 429 (at most 1%)",
        stats.rate_limited,
        stats.requests
    );
    assert!(took > 5.0, "3,000 at 475 a second take over 6 s, not {took:.2} s");
}

#[test]
fn a_fixed_window_without_headers_is_settled_below_blind() {
    // mockapi's fixed window, 2,000 a second, 429 + Retry-After: 1 beyond, nothing announced.
    // Spent at once and refused to its end, window after window, it pauses the fleet again and
    // again: the fleet keeps under what it took over a cycle instead.
    let (api, _dir, store) = setup(&["--rate-limit", "2000"]);
    // Enough in flight to spend a window's quota at once, as the defaults do.
    let job = Job::new(&api.url(), "0..24000", &store).flag("--workers", "4").flag("--threads", "64");
    job.run().assert_code(0);
    assert_complete(&store, 0..24000);
    let last = last_pacing(&store);
    assert!(last["pauses"].as_u64().is_some_and(|p| p <= 4), "a few pauses, not one a window: {last}");
    // scripts/bench-rate holds it to 3% over 40,000 ids; the first windows' refusals weigh
    // more in a shorter run.
    let stats = api.stats();
    assert!(
        stats.rate_limited * 100 <= 5 * stats.requests,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.requests
    );
}

#[test]
fn the_limit_grows_on_a_slow_clean_api_and_a_lone_503_changes_nothing_for_the_fleet() {
    // 20ms answers: the limit doubles from 2 a worker to the ceiling of 200. Then request 3800
    // is answered 503 with Retry-After: 1: one refusal among thousands, which its request
    // waits. The limit is not cut, the rate not backed off, nothing pauses.
    let (api, _dir, store) = setup(&["--latency-ms", "20", "--unavailable-every", "3800"]);
    let out = Job::new(&api.url(), "0..4000", &store).flag("--workers", "2").flag("--threads", "100").run();
    out.assert_code(0);
    assert_complete(&store, 0..4000);
    let (end, lo, hi) = limits(&out);
    assert_eq!((lo, hi), (4, 200), "from 2 a worker up to the ceiling: {}", out.stdout);
    assert_eq!(end, 200, "the limit is not halved: {}", out.stdout);
    assert_eq!(figure(&out, "pacing.pauses"), 0, "{}", out.stdout);
    assert_eq!(figure(&out, "pacing.backoffs"), 0, "{}", out.stdout);
    assert!(summary(&out)["pacing"]["rate"].is_null(), "no rate: {}", out.stdout);
    drop(api);
}

#[test]
fn bad_pacing_flags_are_refused_with_one_line() {
    let (api, dir, store) = setup(&[]);
    for (flags, want) in [
        (&["--rate", "fast"][..], "not a rate like 20, 0.5, 20/s"),
        (&["--rate", "0"], "a rate must be above zero"),
        (&["--rate", "10/day"], "not a rate"),
        (&["--burst", "5"], "--burst needs --rate"),
        (&["--rate", "5", "--burst", "0"], "--burst must be at least 1"),
        (
            &["--concurrency", "25"],
            "--concurrency must be between 1 and --workers times --threads, 24, not 25",
        ),
    ] {
        let mut args = job_args(&api.url(), "0..10", &store);
        for pair in flags.chunks(2) {
            set(&mut args, pair[0], pair[1]);
        }
        let out = run(&strs(&args));
        out.assert_code(2);
        assert!(out.stderr.contains(want), "{flags:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{flags:?}: {}", out.stderr);
        assert!(!store.exists(), "{flags:?} created the store");
    }
    assert_eq!(api.requests(), 0);
    drop(dir);
}

#[test]
fn every_request_names_its_client_in_its_user_agent() {
    let (api, _dir, store) = setup(&["--record"]);
    let mut args = job_args(&api.url(), "0..20", &store);
    run(&strs(&args)).assert_code(0);
    let default = format!("flota/{}", env!("CARGO_PKG_VERSION"));
    assert!(api.log().iter().all(|l| l.user_agent.as_deref() == Some(default.as_str())), "{:?}", api.log());
    let (api, _dir, store) = setup(&["--record"]);
    args = job_args(&api.url(), "0..20", &store);
    set(&mut args, "--user-agent", "acme-sync/2 (ops@example.com)");
    run(&strs(&args)).assert_code(0);
    let log = api.log();
    assert_eq!(log.len(), 20);
    assert!(log.iter().all(|l| l.user_agent.as_deref() == Some("acme-sync/2 (ops@example.com)")), "{log:?}");
    set(&mut args, "--user-agent", " ");
    let out = run(&strs(&args));
    out.assert_code(2);
    assert!(out.stderr.contains("--user-agent must be printable ASCII and not empty"), "{}", out.stderr);
}

#[test]
fn a_burst_of_one_with_idle_workers_does_not_stall_the_run() {
    // Regression: 30 ids make one chunk for one of 3 workers, and a burst of 1 is one permit
    // for the fleet. Granted to an idle worker, it was never spent, and the run stalled.
    let (api, _dir, store) = setup(&[]);
    let out = Job::new(&api.url(), "0..30", &store)
        .flag("--rate", "20")
        .flag("--burst", "1")
        .spawn()
        .wait(Duration::from_secs(20));
    out.assert_code(0);
    assert_complete(&store, 0..30);
}
