//! Running flota as an operator does: progress, metrics, systemd, configuration, reload,
//! status of a running store, completions and the man page.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// The number on the line of `text` that starts with `name ` (a Prometheus sample).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_long_run_seen_from_outside_progress_metrics_and_live_status() {
    // 1,700 ids at 150 a second: about 11 s, so one plain progress line (every 10 s) is due.
    let (api, _dir, store) = setup(&[]);
    let running = Job::new(&api.url(), "0..1700", &store)
        .flag("--rate", "150")
        .flag("--metrics", "127.0.0.1:0")
        .spawn();
    let pid = running.pid();
    let s = path_str(&store);
    // status on the store the run holds: its live figures, as text and as JSON.
    let mut live = String::new();
    wait_for("status to show the live run", Duration::from_secs(20), || {
        let out = run(&["status", "--store", s]);
        let ok = out.code() == Some(0);
        live = out.stdout;
        ok && live.contains("running   pid")
    });
    assert!(live.contains(&format!("running   pid {pid}, ids 0..1700")), "{live}");
    assert!(live.contains("of 1,700 (") && live.contains("rate 150.0/s"), "{live}");
    let out = run(&["status", "--store", s, "--json"]);
    out.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["live"]["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(json["live"]["snapshot"]["to_fetch"].as_u64(), Some(1700));
    assert!(json["counts"].is_null(), "{json}");
    let outcome = running.wait(RUN_DEADLINE);
    outcome.assert_code(0);
    assert_complete(&store, 0..1700);
    let progress: Vec<&str> = outcome.stderr.lines().filter(|l| l.contains("progress: ")).collect();
    assert!(!progress.is_empty(), "no progress line in:\n{}", outcome.stderr);
    assert!(progress[0].contains(" of 1,700 (") && progress[0].contains("/s, ETA "), "{}", progress[0]);
    assert!(outcome.stderr.contains("metrics on http://127.0.0.1:"), "{}", outcome.stderr);
    // Once the run is over, status reads the store itself again.
    let out = run(&["status", "--store", s, "--json"]);
    out.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["counts"]["answered"].as_u64(), Some(1700));
    assert_eq!(json["last_run"]["pacing"]["requests"].as_u64(), Some(1700));
    assert!(json["live"].is_null());
}

#[test]
fn metrics_are_scraped_during_a_run() {
    let (api, _dir, store) = setup(&["--missing-every", "10"]);
    let mut args = job_args(&api.url(), "0..900", &store);
    set(&mut args, "--rate", "300");
    // A fixed port, free now: the test scrapes it while the run lasts.
    let addr = format!("127.0.0.1:{}", free_port());
    set(&mut args, "--metrics", &addr);
    let running = spawn(&strs(&args));
    let url = format!("http://{addr}/metrics");
    let mut text = String::new();
    wait_for("a scrape with stored items", Duration::from_secs(20), || {
        text = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        sample(&text, "flota_items_total{outcome=\"ok\"}").is_some_and(|n| n > 50.0)
    });
    for name in [
        "flota_http_requests_total",
        "flota_http_responses_total{code=\"200\"}",
        "flota_http_request_duration_seconds_count",
        "flota_in_flight_requests",
        "flota_queued_ids",
        "flota_workers_up",
        "flota_concurrency_limit",
        "flota_paused",
        "flota_held_results_bytes",
    ] {
        assert!(sample(&text, name).is_some(), "no {name} in:\n{text}");
    }
    assert_eq!(sample(&text, "flota_rate_limit_requests_per_second"), Some(300.0));
    assert_eq!(sample(&text, "flota_ids_to_fetch"), Some(900.0));
    assert!(text.contains("# TYPE flota_store_write_duration_seconds histogram"), "{text}");
    // Counters only grow.
    let before = sample(&text, "flota_http_requests_total").expect("requests");
    wait_for("a later scrape", Duration::from_secs(20), || {
        let later = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        sample(&later, "flota_http_requests_total").is_some_and(|n| n > before)
    });
    running.wait(RUN_DEADLINE).assert_code(0);
    assert_eq!(api.stats().requests, 900);
}

/// Starts a run with a notify socket of its own in `dir` and a 0.4s watchdog.
fn notified(args: &[String], dir: &std::path::Path) -> (Running, UnixDatagram) {
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binds");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("sets a timeout");
    let env = [("NOTIFY_SOCKET", path_str(&socket_path)), ("WATCHDOG_USEC", "400000")];
    (spawn_with_env(&strs(args), &env), socket)
}

#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let (api, dir, store) = setup(&[]);
    let mut args = job_args(&api.url(), "0..800", &store);
    set(&mut args, "--rate", "300");
    let (running, socket) = notified(&args, dir.path());
    let pid = running.pid();
    let started = Instant::now();
    let mut messages: Vec<(Duration, String)> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut reloaded = false;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stopping = text.contains("STOPPING=1");
            messages.push((started.elapsed(), text));
            if stopping {
                break;
            }
        }
        if !reloaded && messages.iter().any(|(_, m)| m.contains("READY=1")) {
            reloaded = true;
            signal(pid, Signal::SIGHUP);
        }
    }
    let outcome = running.wait(RUN_DEADLINE);
    outcome.assert_code(0);
    let all: Vec<&str> = messages.iter().map(|(_, m)| m.as_str()).collect();
    let first_ready = all.iter().position(|m| m.contains("READY=1")).expect("READY=1");
    assert!(all[first_ready].contains("STATUS="), "{all:?}");
    let reloading = all.iter().position(|m| m.contains("RELOADING=1")).expect("RELOADING=1");
    assert!(all[reloading].contains("MONOTONIC_USEC="), "{all:?}");
    assert!(all[reloading + 1..].iter().any(|m| m.contains("READY=1")), "READY=1 after the reload: {all:?}");
    assert!(all.iter().any(|m| m.contains("STATUS=") && m.contains(" of 800 (")), "{all:?}");
    let pings = all.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 4, "{pings} watchdog pings over a ~3s run with a 0.4s watchdog: {all:?}");
    assert!(all.last().is_some_and(|m| m.contains("STOPPING=1")), "{all:?}");
}

#[test]
fn the_watchdog_is_fed_only_while_results_are_stored() {
    // Answers take 2.5s: after the first ping, the run stores nothing for 2.5s, and the
    // watchdog must not be told all is well meanwhile. Then, at 10 requests a second, results
    // come for 2s more, and it is told again.
    let (api, dir, store) = setup(&["--latency-ms", "2500"]);
    let mut args = job_args(&api.url(), "0..20", &store);
    set(&mut args, "--rate", "10");
    let (running, socket) = notified(&args, dir.path());
    let started = Instant::now();
    let mut pings = Vec::new();
    let mut buf = vec![0u8; 4096];
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.contains("WATCHDOG=1") {
                pings.push(started.elapsed());
            }
            if text.contains("STOPPING=1") {
                break;
            }
        }
    }
    running.wait(RUN_DEADLINE).assert_code(0);
    let first = *pings.first().expect("a first ping");
    let starved: Vec<_> = pings
        .iter()
        .filter(|&&t| t > first + Duration::from_millis(300) && t < first + Duration::from_millis(2000))
        .collect();
    assert!(starved.is_empty(), "pinged while nothing was stored: {pings:?}");
    // Results count once durable, and the store writer holds a block's results until the
    // block is complete or a second has passed: pings resume then, not at every answer.
    let after = pings.iter().filter(|&&t| t > first + Duration::from_millis(2400)).count();
    assert!(after >= 1, "pinged again once results were stored: {pings:?}");
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_config_file() {
    let (api, dir, store) = setup(&[]);
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        format!(
            "url = \"{}\"\nids = \"0..50\"\nworkers = 2\nthreads = 3\nchunk_size = 16\nheader = [\"Authorization: Bearer s3cret\"]\n",
            api.url()
        ),
    )
    .expect("writes");
    let env = [("FLOTA_THREADS", "5"), ("FLOTA_STORE", path_str(&store))];
    let out =
        spawn_with_env(&["config", "--config", path_str(&file), "--workers", "4"], &env).wait(RUN_DEADLINE);
    out.assert_code(0);
    let line = |key: &str| -> Vec<String> {
        let l = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key}:\n{}", out.stdout));
        l.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(line("workers")[1..], ["4", "flag"]);
    assert_eq!(line("threads")[1..], ["5", "env", "FLOTA_THREADS"]);
    assert_eq!(line("chunk-size")[1..], ["16", "file", path_str(&file)]);
    assert_eq!(line("max-attempts")[1..], ["8", "default"]);
    assert!(
        !out.stdout.contains("s3cret") && out.stdout.contains("Authorization: <redacted>"),
        "{}",
        out.stdout
    );
    // And a run takes them the same way.
    let out = spawn_with_env(&["--config", path_str(&file), "--workers", "4"], &env).wait(RUN_DEADLINE);
    out.assert_code(0);
    assert!(out.stdout.contains("with 4 workers x 5 threads"), "{}", out.stdout);
    assert_complete(&store, 0..50);
    // A bad file is one line and exit 2; nothing runs.
    std::fs::write(&file, "workres = 3\n").expect("writes");
    let out = run(&["--config", path_str(&file)]);
    out.assert_code(2);
    assert_eq!(
        out.stderr.trim(),
        format!("supervisor: error: config file {}: unknown setting `workres`", file.display())
    );
}

#[test]
fn sighup_rereads_the_rate_from_the_config_file_without_losing_anything() {
    let (api, dir, store) = setup(&[]);
    let file = dir.path().join("job.toml");
    std::fs::write(&file, "rate = \"20/s\"\n").expect("writes");
    let running = Job::new(&api.url(), "0..300", &store).flag("--config", path_str(&file)).spawn();
    wait_for("the first requests", Duration::from_secs(20), || api.requests() >= 10);
    // A file that no longer parses changes nothing...
    std::fs::write(&file, "rate = \n").expect("writes");
    signal(running.pid(), Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300)); // two SIGHUPs back to back can merge
                                                    // ...and a good one applies. At 20/s the 300 ids would take 15s.
    std::fs::write(&file, "rate = \"2000/s\"\n").expect("writes");
    let reloaded = Instant::now();
    signal(running.pid(), Signal::SIGHUP);
    let out = running.wait(RUN_DEADLINE);
    out.assert_code(0);
    assert!(out.stderr.contains("SIGHUP: the settings were not changed: config file"), "{}", out.stderr);
    assert!(out.stderr.contains("SIGHUP: settings reread: rate 2000/s"), "{}", out.stderr);
    assert!(
        reloaded.elapsed() < Duration::from_secs(8),
        "the new rate was not applied: {:?}",
        reloaded.elapsed()
    );
    assert_complete(&store, 0..300);
    let pacing = &summary(&out)["pacing"];
    assert_eq!(
        (pacing["rate"].as_f64(), pacing["rate_source"].as_str()),
        (Some(2000.0), Some("--rate")),
        "{pacing}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        out.assert_code(0);
        let s = &out.stdout;
        assert!(s.contains("supervisor") && s.contains("rate") && s.contains("export"), "{shell}: {s}");
        assert!(s.contains("retry-quarantined") && s.contains("completions"), "{shell}: {s}");
    }
    let out = run(&["man"]);
    out.assert_code(0);
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains(".TH supervisor"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("retry\\-quarantined") || out.stdout.contains("retry-quarantined"));
    let out = run(&["completions", "tcsh"]);
    out.assert_code(2);
    let out = run(&["--help"]);
    out.assert_code(0);
    assert!(out.stdout.contains("Examples:") && out.stdout.contains("FLOTA_<FLAG>"), "{}", out.stdout);
}
