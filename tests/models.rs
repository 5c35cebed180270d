//! `--model async`: the same job made by coroutines on one event loop, and what a fault costs
//! it (the crash experiment of docs/concurrency-models.md).

use crate::util::*;

fn async_args(url: &str, ids: &str, store: &std::path::Path) -> Vec<String> {
    let mut args = job_args(url, ids, store);
    set(&mut args, "--model", "async");
    set(&mut args, "--concurrency", "64");
    args
}

#[test]
fn coroutines_fetch_every_id_once_into_the_same_store() {
    let (api, _dir, store) = setup(&[]);
    let out = run(&strs(&as_text(async_args(&api.url(), "0..3000", &store))));
    out.assert_code(0);
    assert!(out.stdout.contains("with coroutines on one thread (64 at once)"), "{}", out.stdout);
    assert_complete(&store, 0..3000);
    assert_eq!(api.requests(), 3000);
    // The store is the fleet's: a fleet run on it has nothing left to do.
    let out = Job::new(&api.url(), "0..3000", &store).run();
    out.assert_code(0);
    assert_eq!(api.requests(), 3000);
}

#[test]
fn coroutines_retry_as_the_workers_do() {
    let (api, _dir, store) = setup(&["--error-rate", "0.3", "--seed", "4"]);
    let out = run(&strs(&async_args(&api.url(), "0..1000", &store)));
    out.assert_code(0);
    assert_complete(&store, 0..1000);
    assert!(figure(&out, "retries") > 100, "{}", out.stdout);
}

#[test]
fn a_panic_in_one_task_costs_that_id_only() {
    let (api, _dir, store) = setup(&[]);
    let mut args = async_args(&api.url(), "0..2000", &store);
    set(&mut args, "--chaos", "panic-on=77");
    let out = run(&strs(&args));
    out.assert_code(3);
    let records = export(&store);
    assert_eq!(records.len(), 2000);
    for (rec, id) in records.iter().zip(0u64..) {
        if id == 77 {
            assert_eq!(rec["error"].as_str(), Some("its task panicked"), "{rec}");
        } else {
            assert_eq!(rec["body"].as_str(), Some(mockapi::body_for(id).as_str()), "{rec}");
        }
    }
}

#[test]
fn an_abort_in_the_event_loop_ends_the_run_and_a_rerun_fetches_what_was_lost() {
    let (api, _dir, store) = setup(&[]);
    let mut args = async_args(&api.url(), "0..20000", &store);
    set(&mut args, "--chaos", "crash-on=15000");
    let out = run(&strs(&args));
    assert_eq!(out.code(), None, "killed by its own SIGABRT: {}", out.stderr);
    let kept = export(&store).len() as u64;
    assert!(kept < 20000, "the whole run stopped, {kept} ids stored");
    let asked = api.requests();
    let out = run(&strs(&async_args(&api.url(), "0..20000", &store)));
    out.assert_code(0);
    assert_complete(&store, 0..20000);
    assert_eq!(api.requests() - asked, 20000 - kept, "the rerun fetched exactly what was not stored");
}

#[test]
fn what_the_event_loop_does_not_do_is_refused() {
    let (api, dir, store) = setup(&[]);
    for (extra, want) in [
        (vec![("--rate", "10")], "--model async has no --rate"),
        (vec![("--chaos", "kill-every=1s")], "its faults are crash-on and panic-on"),
    ] {
        let mut args = async_args(&api.url(), "0..10", &store);
        for (flag, value) in extra {
            set(&mut args, flag, value);
        }
        let out = run(&strs(&args));
        out.assert_code(2);
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    let out = run(&strs(&async_args("https://127.0.0.1:9/items/{id}", "0..10", &store)));
    out.assert_code(2);
    assert!(out.stderr.contains("http:// URLs only"), "{}", out.stderr);
    let out = Job::new(&api.url(), "0..10", &store).flag("--chaos", "panic-on=3").run();
    out.assert_code(2);
    assert!(out.stderr.contains("panic-on needs --model async"), "{}", out.stderr);
    assert!(!store.exists(), "nothing created");
    drop(dir);
}
