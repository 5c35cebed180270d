//! The store's format for real: bodies in segment files, sled as the index. A supervisor
//! SIGKILLed at random moments loses nothing; format-2 and format-3 stores made by the releases
//! before are upgraded in place, also when the upgrade itself is killed; rewritten blocks' dead
//! bytes are reclaimed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

/// A format-2 store made by the release before format 3 (`tests/fixtures/format2/store`): ids
/// 0..20000 of mockapi with `--missing-every 7 --unavailable-every 11`, `--max-attempts 2`,
/// `--chaos crash-on=4242`; and that release's `export` of it.
fn fixture() -> (tempfile::TempDir, PathBuf, String) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/format2");
    let dir = tempdir();
    let store = dir.path().join("format2.sled");
    copy_dir(&here.join("store"), &store);
    let export = std::fs::read_to_string(here.join("export.jsonl")).expect("the fixture's export");
    (dir, store, export)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("reads") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copies");
        }
    }
}

fn segments(store: &Path) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(store.join("segments")) else { return Vec::new() };
    let mut out: Vec<(String, u64)> = dir
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("meta").len()))
        .collect();
    out.sort();
    out
}

fn export_text(store: &Path) -> String {
    stdout_of(&["export", "--store", path_str(store)])
}

#[test]
fn a_format2_store_of_the_release_before_is_upgraded_in_place_and_reads_the_same() {
    let (_dir, store, before) = fixture();
    assert!(segments(&store).is_empty(), "format 2 has no segments");
    let out = run(&["upgrade", "--store", path_str(&store)]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("from format 2 to format 4: 79 blocks moved out of sled into segments"),
        "{}",
        out.stdout
    );
    assert!(!segments(&store).is_empty());
    assert_eq!(export_text(&store), before, "every record as the release before exported it");
    let status = run(&["status", "--store", path_str(&store)]);
    status.assert_code(0);
    assert!(
        status.stdout.contains("complete  yes: each of its 20,000 ids has a record"),
        "{}",
        status.stdout
    );
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
    let again = run(&["upgrade", "--store", path_str(&store)]);
    again.assert_code(0);
    assert!(again.stdout.contains("is already format 4"), "{}", again.stdout);

    // Any command that opens a format-2 store upgrades it on the way.
    let (_dir, store, before) = fixture();
    assert_eq!(export_text(&store), before);
    assert!(!segments(&store).is_empty(), "export upgraded it");
}

/// A format-3 store made by the release before format 4 (`tests/fixtures/format3`, whose README
/// says how), copied into a temporary directory, with that release's export of it.
fn fixture3(name: &str, export: &str) -> (tempfile::TempDir, PathBuf, String) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/format3");
    let dir = tempdir();
    let store = dir.path().join(name);
    copy_dir(&here.join(name), &store);
    let export = std::fs::read_to_string(here.join(export)).expect("the fixture's export");
    (dir, store, export)
}

fn format_of(store: &Path) -> String {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store.join("flota.meta")).expect("meta"))
            .expect("JSON");
    meta["format"].as_str().expect("a format").to_owned()
}

#[test]
fn a_format3_store_of_the_release_before_is_upgraded_in_place_reads_the_same_and_takes_new_records() {
    let (_dir, store, before) = fixture3("store", "export.jsonl");
    assert_eq!(format_of(&store), "3");
    let out = run(&["upgrade", "--store", path_str(&store)]);
    out.assert_code(0);
    assert!(out.stdout.contains("from format 3 to format 4"), "{}", out.stdout);
    assert_eq!(format_of(&store), "4");
    assert_eq!(export_text(&store), before, "every record as the release before exported it");
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
    let status: serde_json::Value =
        serde_json::from_str(&stdout_of(&["status", "--store", path_str(&store), "--json"])).expect("JSON");
    assert_eq!(status["counts"]["answered"].as_u64(), Some(19_860), "{status}");
    assert_eq!(status["counts"]["failed"].as_u64(), Some(140), "{status}");

    // A run retries its failures: their blocks are written in format 4 beside format-3 ones.
    // (The fixture's job names the port it was made on.)
    let api = MockApi::start_on("127.0.0.1:18111", &[]);
    let out =
        Job::new("http://127.0.0.1:18111/items/{id}", "0..20000", &store).switch("--retry-quarantined").run();
    out.assert_code(0);
    assert_eq!(figure(&out, "answered"), 140, "the failures, and nothing else");
    assert_eq!(api.requests(), 140);
    drop(api);
    let after = export(&store);
    assert_eq!(after.len(), 20_000, "every id once");
    for (old, new) in before.lines().zip(&after) {
        let old: serde_json::Value = serde_json::from_str(old).expect("JSON");
        if old.get("error").is_some() {
            let id = old["id"].as_u64().expect("an id");
            assert_eq!(new["status"].as_u64(), Some(200), "{new}");
            assert_eq!(new["body"].as_str(), Some(mockapi::body_for(id).as_str()), "{new}");
        } else {
            assert_eq!(&old, new, "a record the release before stored is as it was");
        }
    }
    run(&["verify", "--store", path_str(&store)]).assert_code(0);

    // A list's store too: the same records, its list still its scope.
    let (_dir, listed, before) = fixture3("listed", "listed-export.jsonl");
    assert_eq!(export_text(&listed), before);
    assert_eq!(format_of(&listed), "4", "export upgraded it");
    let status = stdout_of(&["status", "--store", path_str(&listed)]);
    assert!(status.contains("267 ids listed"), "{status}");
}

#[test]
fn an_upgrade_killed_midway_leaves_a_store_that_opens_as_format_2_or_4() {
    // After 64 of its 79 blocks (format 2 still), and right after the switch (format 3, the old
    // tree not yet dropped).
    for at in ["64", "switched"] {
        let (_dir, store, before) = fixture();
        let killed =
            spawn_with_env(&["upgrade", "--store", path_str(&store)], &[("FLOTA_CHAOS_UPGRADE_ABORT", at)])
                .wait(RUN_DEADLINE);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&killed.status),
            Some(6),
            "aborted at {at}: {}",
            killed.stderr
        );
        let meta = std::fs::read_to_string(store.join("flota.meta")).expect("meta");
        let expected = if at == "64" { "\"format\":\"2\"" } else { "\"format\":\"4\"" };
        assert!(meta.contains(expected), "killed at {at}: {meta}");
        assert_eq!(export_text(&store), before, "killed at {at}, then opened: every record as before");
        run(&["verify", "--store", path_str(&store)]).assert_code(0);
    }
}

#[test]
fn a_supervisor_killed_at_random_moments_loses_nothing_acknowledged_and_the_rerun_completes() {
    let (api, _dir, store) = setup(&["--latency-ms", "1", "--body-bytes", "600"]);
    let ids = 0..40_000u64;
    let args = job_args(&api.url(), "0..40000", &store);
    let mut rng = fastrand::Rng::with_seed(18);
    let mut kills = 0;
    for _ in 0..6 {
        let running = spawn(&strs(&args));
        // Kill at a random moment of the run: from before the store opens to well into writing.
        let at = Instant::now() + Duration::from_millis(rng.u64(50..1500));
        while Instant::now() < at && !is_dead(running.pid()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = running.pid();
        let out = running.kill();
        if out.code().is_none() {
            kills += 1;
        }
        wait_for("the killed supervisor's workers to go", Duration::from_secs(10), || {
            children_of(pid).is_empty()
        });
        if out.code() == Some(0) {
            break;
        }
    }
    assert!(kills >= 3, "the kills landed mid-run ({kills})");
    // Whatever was left, the store opens, is sound, and holds only whole records.
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
    for rec in export(&store) {
        let id = rec["id"].as_u64().expect("an id");
        assert_eq!(rec["body"].as_str(), Some(mockapi::sized_body(id, 600).as_str()), "id {id}");
    }
    run(&strs(&args)).assert_code(0);
    assert_complete_sized(&store, ids, 600);
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
    eprintln!("figure: {kills} SIGKILLs mid-run, then a rerun completed 40,000 ids, verify sound");
}

#[test]
fn blocks_rewritten_by_a_rerun_leave_dead_bytes_that_the_run_reclaims() {
    // Half the ids fail (503) in the first run: each block is written with its failures; the
    // rerun answers them, rewriting every block, so the first run's segment is dead.
    let broken = MockApi::start(&["--error-rate", "0.5", "--body-bytes", "1000"]);
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    Job::new(&broken.url(), "0..20000", &store).flag("--max-attempts", "1").run().assert_code(3);
    let first = segments(&store);
    assert_eq!(first.len(), 1, "{first:?}");
    let addr = broken.addr.clone();
    drop(broken);
    let healthy = MockApi::start_on(&addr, &["--body-bytes", "1000"]);
    let out = Job::new(&healthy.url(), "0..20000", &store).run();
    out.assert_code(0);
    assert!(out.stderr.contains("reclaimed"), "{}", out.stderr);
    let after = segments(&store);
    assert!(!after.iter().any(|(name, _)| *name == first[0].0), "the dead segment is gone: {after:?}");
    let live: u64 = after.iter().map(|(_, len)| len).sum();
    let on_disk_before: u64 = first[0].1;
    assert!(live > on_disk_before, "the rerun's blocks hold twice the answers ({live} vs {on_disk_before})");
    for rec in export(&store) {
        let id = rec["id"].as_u64().expect("an id");
        assert_eq!(rec["status"].as_u64(), Some(200), "id {id}");
        assert_eq!(rec["body"].as_str(), Some(mockapi::sized_body(id, 1000).as_str()), "id {id}");
    }
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
}

/// The supervisor's peak RSS (VmHWM) in KiB, while it runs.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn results_far_larger_than_the_supervisors_budget_pass_through_it_without_raising_its_memory() {
    // 10,000 bodies of 32 KiB: 320 MiB through a supervisor that holds at most 32 MiB of them.
    bodies_pass_through_the_budget(4);
}

#[test]
fn with_sixteen_workers_the_budget_still_bounds_the_supervisor_and_every_body_arrives() {
    // Sixteen readers take each frame's bytes before reading it and settle them once decoded:
    // none waits on another, and what they keep comes off the budget.
    bodies_pass_through_the_budget(16);
}

fn bodies_pass_through_the_budget(workers: u32) {
    let (api, _dir, store) = setup(&["--body-bytes", "32768"]);
    let running = Job::new(&api.url(), "0..10000", &store)
        .flag("--threads", "32")
        .flag("--workers", &workers.to_string())
        .spawn();
    let pid = running.pid();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !is_dead(pid) && Instant::now() < deadline {
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    running.wait(Duration::from_secs(10)).assert_code(0);
    assert_complete_sized(&store, 0..10_000, 32768);
    // The budget (32 MiB) and the writer's buffers, with room to spare; unbounded, the results
    // in flight alone could pass it.
    assert!(peak > 0, "the supervisor's memory was sampled");
    assert!(peak < 128 * 1024, "supervisor VmHWM {} MiB with 32 KiB bodies", peak / 1024);
    eprintln!(
        "figure: 10,000 bodies of 32 KiB, {workers} workers, supervisor VmHWM {:.1} MiB",
        peak as f64 / 1024.0
    );
}
