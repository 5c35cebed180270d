//! The fleet end to end: complete runs, workers killed mid-run, broken workers, final answers.

use std::time::Duration;

use crate::util::*;

#[test]
fn a_complete_run_stores_every_id_once_with_its_own_body() {
    let (api, _dir, store) = setup(&[]);
    let out = Job::new(&api.url(), "0..20000", &store).run();
    out.assert_code(0);
    assert_eq!(figure(&out, "fetched"), 20_000);
    assert_eq!(figure(&out, "failed"), 0);
    assert_eq!(api.requests(), 20_000, "one request per id");
    assert_complete(&store, 0..20_000);
}

#[test]
fn workers_killed_with_sigkill_mid_run_lose_and_duplicate_nothing() {
    let (api, _dir, store) = setup(&["--latency-ms", "5"]);
    let total = 30_000u64;
    let running = Job::new(&api.url(), "0..30000", &store).spawn();
    let mut kills = 0;
    let mut victims = Vec::new();
    // Kill a worker every 300ms while less than half the ids have been asked for.
    while kills < 6 && api.requests() < total / 2 {
        let workers = children_of(running.pid());
        if let Some(&victim) = workers.iter().find(|w| !victims.contains(*w)) {
            sigkill(victim);
            victims.push(victim);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(kills >= 3, "the run ended before the test could kill workers ({kills} kills)");
    let out = running.wait(RUN_DEADLINE);
    out.assert_code(0);
    assert_eq!(figure(&out, "restarts"), kills, "one restart per kill");
    assert_eq!(figure(&out, "quarantined"), 0, "innocent ids survive deaths not theirs");
    assert!(out.stderr.contains("was killed by SIGKILL"), "the deaths are logged:\n{}", out.stderr);
    assert_complete(&store, 0..total);
    // Ids a dead worker held are fetched again, so some requests repeat, but never many.
    let requests = api.requests();
    assert!(requests >= total && requests < total + 6 * 2000, "{requests} requests");
}

#[test]
fn a_worker_binary_that_always_dies_stops_the_run_with_a_clear_error() {
    let (api, _dir, store) = setup(&[]);
    let out = Job::new(&api.url(), "0..100", &store).flag("--worker-bin", "/bin/false").run();
    out.assert_code(1);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("died 5 times in a row without delivering a result")
            && last.contains("exited with code 1"),
        "stderr ends with the reason: {last}"
    );
    assert_eq!(api.requests(), 0);
}

#[test]
fn a_4xx_is_a_final_answer_stored_as_it_is() {
    let (api, _dir, store) = setup(&[]);
    let url = format!("http://{}/missing/{{id}}", api.addr);
    Job::new(&url, "0..50", &store).run().assert_code(0);
    let records = export(&store);
    assert_eq!(records.len(), 50);
    for (id, rec) in records.iter().enumerate() {
        assert_eq!(rec["id"].as_u64(), Some(id as u64));
        assert_eq!(rec["status"].as_u64(), Some(404), "{rec}");
        assert_eq!(rec["attempts"].as_u64(), Some(1), "a 404 is not retried: {rec}");
        assert_eq!(rec["body"].as_str(), Some("not found\n"));
    }
}

#[test]
fn the_demo_runs_end_to_end() {
    let out = run(&["demo", "--items", "3000", "--workers", "2", "--threads", "8"]);
    out.assert_code(0);
    assert!(out.stdout.starts_with("demo: mockapi on 127.0.0.1:"), "{}", out.stdout);
    // The demo's summary is the words a person reads.
    assert_eq!(summary_figure(&out.stdout, "fetched"), 3000);
    assert_eq!(summary_figure(&out.stdout, "answered"), 3000);
}
