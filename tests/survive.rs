//! Surviving faults for real: hung workers, poison ids, external SIGKILLs, signals, a killed
//! supervisor, hostile frames. Figures the closing notes quote are printed (`--nocapture`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn a_worker_stopped_with_sigstop_is_detected_killed_and_replaced() {
    let (api, _dir, store) = setup(&["--latency-ms", "2"]);
    let running = Job::new(&api.url(), "0..20000", &store).flag("--worker-timeout", "2s").spawn();
    wait_for("workers to start fetching", Duration::from_secs(30), || api.requests() > 500);
    let victim = *children_of(running.pid()).first().expect("a worker");
    signal(victim, Signal::SIGSTOP);
    let stopped = Instant::now();
    wait_for("the stopped worker to be killed", Duration::from_secs(10), || is_dead(victim));
    let detected = stopped.elapsed();
    eprintln!("figure: SIGSTOPped worker killed {detected:?} after the stop (--worker-timeout 2s)");
    assert!(detected >= Duration::from_millis(1500) && detected < Duration::from_secs(4), "{detected:?}");
    let out = running.wait(RUN_DEADLINE);
    out.assert_code(0);
    assert!(out.stderr.contains("silent for"), "{}", out.stderr);
    assert_complete(&store, 0..20000);
}

#[test]
fn a_hanging_id_is_quarantined_after_its_workers_time_out() {
    let (api, _dir, store) = setup(&[]);
    let mut args = as_text(job_args(&api.url(), "0..3000", &store));
    set(&mut args, "--worker-timeout", "2s");
    set(&mut args, "--chaos", "hang-on=1234");
    let out = run(&strs(&args));
    out.assert_code(3);
    assert!(out.stdout.contains("chaos     hang-on=1234"), "the summary says chaos was on:\n{}", out.stdout);
    assert_complete_but(&store, 0..3000, &[1234]);
}

#[test]
fn a_poison_id_is_quarantined_in_a_handful_of_deaths_and_skipped_by_reruns() {
    let (api, _dir, store) = setup(&[]);
    let out = Job::new(&api.url(), "0..20000", &store).flag("--chaos", "crash-on=777").run();
    out.assert_code(3);
    let deaths = out.stderr.matches("was killed by SIGABRT").count();
    eprintln!("figure: poison id quarantined after {deaths} worker deaths");
    assert!((2..=6).contains(&deaths), "{deaths} deaths:\n{}", out.stderr);
    assert_eq!(figure(&out, "quarantined"), 1);
    assert_complete_but(&store, 0..20000, &[777]);

    // A rerun (chaos off) does not fetch it again, and still says the range is not all answered.
    let before = api.requests();
    let out = Job::new(&api.url(), "0..20000", &store).run();
    out.assert_code(3);
    assert_eq!(api.requests(), before, "nothing fetched");
    assert_eq!(figure(&out, "skipped_quarantined"), 1, "{}", out.stdout);

    // Unless asked to.
    let mut args = job_args(&api.url(), "0..20000", &store);
    args.push("--retry-quarantined".into());
    run(&strs(&args)).assert_code(0);
    assert_eq!(api.requests(), before + 1, "exactly the quarantined id");
    assert_complete(&store, 0..20000);
}

#[test]
fn workers_killed_every_half_second_lose_nothing_and_quarantine_nothing() {
    let (api, _dir, store) = setup(&["--latency-ms", "2"]);
    let out = Job::new(&api.url(), "0..30000", &store).flag("--chaos", "kill-every=500ms").run();
    out.assert_code(0);
    let kills = figure(&out, "chaos_kills");
    eprintln!("figure: {kills} workers SIGKILLed by kill-every=500ms, 0 ids quarantined");
    assert!(kills >= 2, "{}", out.stdout);
    assert_eq!(figure(&out, "quarantined"), 0);
    assert_complete(&store, 0..30000);
    // The request count is never short of what the store holds (the killed workers' traffic is
    // reported with their results), nor more than reached the server.
    let stored: u64 = export(&store).iter().map(|r| r["attempts"].as_u64().unwrap_or(0)).sum();
    let counted = figure(&out, "pacing.requests");
    let served = api.requests();
    assert!(stored <= counted && counted <= served, "stored {stored}, counted {counted}, served {served}");
}

#[test]
fn chaos_kills_make_no_suspect_even_of_ids_held_through_many() {
    // 429s with Retry-After: 1 keep ids in their workers for a second or more, through several
    // kills every 100 ms among 2 workers: a chaos kill is the supervisor's own doing and counts
    // against no id (before, such ids were retried alone and could be quarantined).
    let (api, _dir, store) = setup(&["--throttle-rate", "0.03"]);
    let out = Job::new(&api.url(), "0..6000", &store)
        .flag("--workers", "2")
        .flag("--rate", "3000")
        .flag("--chaos", "kill-every=100ms")
        .run();
    out.assert_code(0);
    let kills = figure(&out, "chaos_kills");
    eprintln!("figure: {kills} workers SIGKILLed by kill-every=100ms");
    assert!(kills >= 10, "{}", out.stdout);
    assert!(!out.stderr.contains("alone in worker"), "a suspect retried alone:\n{}", out.stderr);
    assert_eq!(figure(&out, "quarantined"), 0);
    assert_complete(&store, 0..6000);
}

fn stop_with(sig: Signal, code: i32) {
    let (api, _dir, store) = setup(&["--latency-ms", "5"]);
    let args = job_args(&api.url(), "0..100000", &store);
    let running = spawn(&strs(&args));
    let pid = running.pid();
    wait_for("progress", Duration::from_secs(30), || api.requests() > 3000);
    let workers = children_of(pid);
    signal(pid, sig);
    let out = running.wait(Duration::from_secs(20));
    out.assert_code(code);
    assert_eq!(summary(&out)["stopped_by"].as_i64(), Some(sig as i64), "{}", out.stdout);
    for w in workers {
        assert!(is_dead(w), "worker {w} outlived the supervisor");
    }
    // What was stored is right, once each; a rerun completes the range.
    let fetched = figure(&out, "fetched");
    let records = export(&store);
    assert_eq!(records.len() as u64, fetched, "every result in hand was stored");
    for rec in &records {
        let id = rec["id"].as_u64().expect("id");
        assert_eq!(rec["body"].as_str(), Some(mockapi::body_for(id).as_str()));
    }
    run(&strs(&args)).assert_code(0);
    assert_complete(&store, 0..100000);
}

#[test]
fn sigterm_stops_gracefully_with_143_and_a_rerun_resumes() {
    stop_with(Signal::SIGTERM, 143);
}

#[test]
fn sigint_stops_gracefully_with_130() {
    stop_with(Signal::SIGINT, 130);
}

#[test]
fn a_second_signal_stops_at_once() {
    // Every request takes 3 s: a graceful stop would wait for them, up to --grace 20s.
    let (api, _dir, store) = setup(&["--latency-ms", "3000"]);
    let running = Job::new(&api.url(), "0..1000", &store).flag("--grace", "20s").spawn();
    let pid = running.pid();
    wait_for("requests in flight", Duration::from_secs(30), || api.requests() > 0);
    signal(pid, Signal::SIGTERM);
    // Not a wait for a condition: two identical signals sent back to back can merge into one
    // pending signal in the kernel. A pause keeps them two.
    std::thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    signal(pid, Signal::SIGTERM);
    let out = running.wait(Duration::from_secs(15));
    let took = second.elapsed();
    out.assert_code(143);
    assert!(took < Duration::from_secs(2), "exited {took:?} after the second signal");
    assert!(out.stderr.contains("again: killing the workers now"), "{}", out.stderr);
}

#[test]
fn a_supervisor_killed_with_sigkill_leaves_no_orphans_and_a_rerun_completes() {
    let (api, _dir, store) = setup(&["--latency-ms", "2"]);
    let total = 50_000u64;
    let args = job_args(&api.url(), "0..50000", &store);
    let mut running = spawn(&strs(&args));
    wait_for("progress", Duration::from_secs(30), || api.requests() > 10_000);
    let workers = children_of(running.pid());
    assert!(!workers.is_empty());
    let _ = running.child.kill(); // SIGKILL
    let killed = Instant::now();
    let _ = running.child.wait();
    wait_for("every worker to exit", Duration::from_secs(5), || workers.iter().all(|&w| is_dead(w)));
    let gone = killed.elapsed();
    assert!(gone < Duration::from_secs(1), "workers outlived the supervisor by {gone:?}");
    let asked_before = api.requests();
    run(&strs(&args)).assert_code(0);
    assert_complete(&store, 0..total);
    let refetched = api.requests() - total;
    eprintln!(
        "figure: workers gone {gone:?} after the supervisor's SIGKILL; {refetched} ids fetched twice \
         ({asked_before} requests before the kill)"
    );
    // At most what was in flight or not yet flushed: a few hundred ms of work.
    assert!(refetched < 15_000, "{refetched} ids fetched twice");
}

#[test]
fn a_worker_sending_a_malformed_frame_is_killed_and_its_ids_requeued() {
    let (api, _dir, store) = setup(&[]);
    let out = Job::new(&api.url(), "0..5000", &store).flag("--chaos", "bad-frame-on=321").run();
    out.assert_code(3);
    assert!(out.stderr.contains("after a protocol error (frame payload does not decode"), "{}", out.stderr);
    assert_complete_but(&store, 0..5000, &[321]);
}

fn fake_worker(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    let data = dir.join("frame.bin");
    std::fs::write(&data, bytes).expect("writes");
    let script = dir.join("worker.sh");
    write_script(&script, &format!("#!/bin/sh\ncat '{}'\nexec sleep 30\n", data.display()));
    script
}

#[test]
fn hostile_workers_are_refused_without_a_panic_or_an_allocation() {
    let api = MockApi::start(&[]);
    let cases: [(&[u8], &str); 3] = [
        (&[0xff, 0xff, 0xff, 0xff], "frame of 4294967295 bytes exceeds the maximum"),
        // A hello of protocol version 99: variant 0, then the version.
        (&[2, 0, 0, 0, 0, 99], "worker speaks protocol 99"),
        (&[3, 0, 0, 0, 0, 1], "stream ended inside a frame"),
    ];
    for (bytes, want) in cases {
        let dir = tempdir();
        let bin = fake_worker(dir.path(), bytes);
        let store = dir.path().join("items.sled");
        let out = Job::new(&api.url(), "0..100", &store)
            .flag("--worker-bin", path_str(&bin))
            .flag("--workers", "1")
            .run();
        out.assert_code(1);
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(last.contains("died 5 times in a row") && last.contains(want), "{want}: {last}");
        assert!(!out.stderr.contains("panicked"));
    }
    assert_eq!(api.requests(), 0);
}

#[test]
fn a_worker_that_stops_reading_its_stdin_does_not_stall_the_supervisor() {
    // A fake worker that completes the handshake (in this build's protocol) and heartbeats but
    // never reads: the ids sent to it (9 bytes each, this high in the id space) soon fill its
    // stdin pipe.
    let dir = tempdir();
    let script = dir.path().join("deaf-worker.sh");
    let version = shared::PROTOCOL_VERSION;
    assert!(version < 128, "one varint byte");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\nprintf '\\003\\000\\000\\000\\000\\{version:03o}\\005'\n\
             while :; do printf '\\001\\000\\000\\000\\002'; sleep 0.3; done\n"
        ),
    );
    let api = MockApi::start(&[]);
    let store = dir.path().join("items.sled");
    let mut args = job_args(&api.url(), "1152921504606846976..1152921504606906976", &store);
    for (flag, value) in [
        ("--worker-bin", path_str(&script)),
        ("--workers", "2"),
        ("--threads", "4000"),
        ("--worker-memory", "8G"),
        ("--chunk-size", "4096"),
        ("--grace", "1s"),
    ] {
        set(&mut args, flag, value);
    }
    let running = spawn(&strs(&args));
    let pid = running.pid();
    wait_for("the fake workers", Duration::from_secs(10), || children_of(pid).len() == 2);
    wait_for("a writer thread blocked on a full stdin pipe", Duration::from_secs(20), || {
        threads_of(pid).iter().any(|(name, wchan)| name.ends_with("-writer") && wchan.contains("pipe_write"))
    });
    let sent = Instant::now();
    signal(pid, Signal::SIGTERM);
    let out = running.wait(Duration::from_secs(15));
    out.assert_code(143);
    assert!(sent.elapsed() < Duration::from_secs(5), "the supervisor answered the signal late");
    assert!(out.stderr.contains("grace period after SIGTERM over"), "{}", out.stderr);
}
