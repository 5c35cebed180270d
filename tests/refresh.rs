//! Refresh runs, for real: Python's own file server (`python3 -m http.server`, which answers
//! `If-Modified-Since` with 304) serving files of which 1% change; an API that goes down in
//! the middle of a refresh (no good answer lost); stored statuses fetched again
//! (`--refetch-status`); and the flags' bad input.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::util::*;

/// `python3 -m http.server` serving `root` on a free loopback port, once it answers; its log
/// (a line a request, with the status) goes to `log`.
fn file_server(root: &Path, log: &Path) -> (Server, String) {
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("creates the log"))
        .spawn()
        .expect("python3 starts");
    let server = Server(child);
    let addr = format!("127.0.0.1:{port}");
    wait_for("the file server", Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok());
    (server, addr)
}

/// The bytes of a store's segment files.
fn segments_size(store: &Path) -> u64 {
    let dir = std::fs::read_dir(store.join("segments")).expect("segments");
    dir.flatten().map(|e| e.metadata().expect("meta").len()).sum()
}

fn item(id: u64, version: u32) -> String {
    format!("{{\"id\":{id},\"version\":{version}}}")
}

/// Writes item `id`'s file at `version`, modified at `mtime`.
fn write_item(dir: &Path, id: u64, version: u32, mtime: SystemTime) {
    let path = dir.join(id.to_string());
    std::fs::write(&path, item(id, version)).expect("writes");
    std::fs::File::options().write(true).open(&path).expect("opens").set_modified(mtime).expect("sets mtime");
}

/// Each record's body, by id, as the store exports it.
fn bodies(store: &Path) -> Vec<(u64, u16, String)> {
    export(store)
        .iter()
        .map(|r| {
            let id = r["id"].as_u64().expect("an id");
            let status = r["status"].as_u64().unwrap_or_else(|| panic!("id {id} has no answer: {r}")) as u16;
            (id, status, r["body"].as_str().expect("a body").to_owned())
        })
        .collect()
}

#[test]
fn a_refresh_asks_conditionally_keeps_what_did_not_change_and_takes_what_did() {
    let dir = tempdir();
    let root = dir.path().join("site");
    let items = root.join("items");
    std::fs::create_dir_all(&items).expect("mkdir");
    let then = SystemTime::now() - Duration::from_secs(3600);
    for id in 0..2000 {
        write_item(&items, id, 1, then);
    }
    let log = dir.path().join("server.log");
    let (_server, addr) = file_server(&root, &log);
    let store = dir.path().join("site.sled");
    let url = format!("http://{addr}/items/{{id}}");
    let job = || Job::new(&url, "0..2000", &store).flag("--concurrency", "8");
    job().run().assert_code(0);
    let first_size = segments_size(&store);
    // A time after the first fetch (times are kept to the second): what changes after it is
    // what `export --changed-since` gives.
    let unix = || SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    let fetched = unix();
    wait_for("the next second", Duration::from_secs(3), || unix() > fetched);
    let since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // 1% of the items change on the server.
    let changed: Vec<u64> = (0..2000).filter(|id| id % 100 == 7).collect();
    for &id in &changed {
        write_item(&items, id, 2, SystemTime::now());
    }
    let out = job().flag("--refresh", "0s").run();
    out.assert_code(0);
    assert_eq!(figure(&out, "pacing.requests"), 2000, "every answer asked again");
    assert_eq!((figure(&out, "unchanged"), figure(&out, "changed"), figure(&out, "kept")), (1980, 20, 0));
    // Each block written once, the first run's reclaimed: about the first run's size.
    let size = segments_size(&store);
    assert!(
        size as f64 <= 1.2 * first_size as f64,
        "segments {size} bytes after the refresh, {first_size} before"
    );
    // Asked conditionally: the server answered 304 without a body to all that had not changed.
    let logged = std::fs::read_to_string(&log).expect("the server's log");
    assert_eq!(logged.matches("\" 304 ").count(), 1980, "304s in the server's log");
    let stored = bodies(&store);
    assert_eq!(stored.len(), 2000);
    for (id, status, body) in stored {
        let version = if changed.contains(&id) { 2 } else { 1 };
        assert_eq!((status, body), (200, item(id, version)), "id {id} as the server has it now");
    }
    // What changed since then, for whatever loads it next: exactly the changed items.
    let delta = stdout_of(&["export", "--store", path_str(&store), "--changed-since", &since]);
    let ids: Vec<u64> = delta
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["id"].as_u64().expect("an id"))
        .collect();
    assert_eq!(ids, changed, "changed since {since}");
    let hour = stdout_of(&["export", "--store", path_str(&store), "--changed-since", "1h"]);
    assert_eq!(hour.lines().count(), 2000, "all first answered within the hour");
    // `--body json` embeds each JSON body as JSON; every answer says when it was fetched.
    let json = stdout_of(&["export", "--store", path_str(&store), "--body", "json"]);
    for (line, id) in json.lines().zip(0u64..) {
        let rec: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let version = if changed.contains(&id) { 2 } else { 1 };
        assert_eq!((rec["body"]["id"].as_u64(), rec["body"]["version"].as_u64()), (Some(id), Some(version)));
        let at = rec["fetched_at"].as_str().expect("fetched_at");
        assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
    }
    // A run without --refresh asks nothing: the store is the cache.
    let again = job().run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), 0);
    // `status` says how old the answers are: all within the hour, all older than nothing.
    let ages = |age: &str| -> serde_json::Value {
        let out = stdout_of(&["status", "--store", path_str(&store), "--json", "--older-than", age]);
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")["ages"].clone()
    };
    let (hour, now) = (ages("1h"), ages("0s"));
    assert_eq!((hour["older"].as_u64(), now["older"].as_u64()), (Some(0), Some(2000)), "{hour} {now}");
    assert!(
        hour["oldest"].as_u64() <= hour["median"].as_u64()
            && hour["median"].as_u64() <= hour["newest"].as_u64()
    );
    // Answers fetched a moment ago are not older than an hour: nothing to refresh.
    let recent = job().flag("--refresh", "1h").run();
    recent.assert_code(0);
    assert_eq!(figure(&recent, "pacing.requests"), 0);
}

#[test]
fn refresh_stale_asks_only_for_what_the_servers_freshness_says_has_expired() {
    let dir = tempdir();
    let root = dir.path().join("site");
    let items = root.join("items");
    std::fs::create_dir_all(&items).expect("mkdir");
    // Python's server says only Last-Modified: an answer is fresh for a tenth of its age when
    // fetched. Modified a day ago: fresh for hours. Modified now: stale at once.
    let (day_ago, now) = (SystemTime::now() - Duration::from_secs(86_400), SystemTime::now());
    for id in 0..300 {
        write_item(&items, id, 1, if id < 200 { day_ago } else { now });
    }
    let log = dir.path().join("server.log");
    let (_server, addr) = file_server(&root, &log);
    let store = dir.path().join("stale.sled");
    let job = || Job::new(&format!("http://{addr}/items/{{id}}"), "0..300", &store);
    job().run().assert_code(0);
    let stale = job().flag("--refresh", "stale").run();
    stale.assert_code(0);
    assert_eq!(
        figure(&stale, "pacing.requests"),
        100,
        "only the answers modified just before they were fetched"
    );
    assert_eq!(figure(&stale, "unchanged"), 100);
}

#[test]
fn a_refresh_of_an_api_down_flaky_or_gone_halfway_turns_no_answer_into_a_failure() {
    let (api, _dir, store) = setup(&[]);
    let url = api.url();
    Job::new(&url, "0..3000", &store).run().assert_code(0);
    let addr = api.addr.clone();
    drop(api);
    // Down from the start: the run gives up, nothing stored, every answer as it was.
    let down = Job::new(&url, "0..3000", &store).flag("--refresh", "0s").flag("--wait-for-api", "1s").run();
    down.assert_code(4);
    assert_complete(&store, 0..3000);
    // A flaky API: 30% of answers a 500, one attempt an id. The refetches that fail keep
    // their answers, and nothing counts as failed.
    let api = MockApi::start_on(&addr, &["--error-rate", "0.3"]);
    let refresh = || Job::new(&url, "0..3000", &store).flag("--refresh", "0s").flag("--max-attempts", "1");
    let flaky = refresh().run();
    flaky.assert_code(0);
    let kept = figure(&flaky, "kept");
    assert!((600..1200).contains(&kept), "{}", flaky.stdout);
    assert_eq!((figure(&flaky, "failed"), figure(&flaky, "unchanged") + kept), (0, 3000));
    assert_complete(&store, 0..3000);
    drop(api);
    // Down halfway for three seconds: the fleet's circuit waits it out.
    let api = MockApi::start_on(&addr, &["--outage-after", "1500", "--outage-secs", "3"]);
    let outage = refresh().run();
    outage.assert_code(0);
    // The circuit holds the attempts once it has opened; the few ids whose one attempt failed
    // before it did keep their answers.
    let (unchanged, kept) = (figure(&outage, "unchanged"), figure(&outage, "kept"));
    assert!(
        unchanged >= 2700 && unchanged + kept == 3000 && figure(&outage, "failed") == 0,
        "{}",
        outage.stdout
    );
    assert_complete(&store, 0..3000);
    drop(api);
    // The same command, the API mended, refreshes every answer.
    let _api = MockApi::start_on(&addr, &[]);
    let done = refresh().run();
    done.assert_code(0);
    assert_eq!((figure(&done, "unchanged"), figure(&done, "kept")), (3000, 0));
    assert_complete(&store, 0..3000);
}

#[test]
fn stored_statuses_are_fetched_again_when_asked() {
    let (api, _dir, store) = setup(&["--missing-every", "7"]);
    let url = api.url();
    Job::new(&url, "0..700", &store).run().assert_code(0);
    let missing = 100; // 0, 7, ..., 693
    let again = Job::new(&url, "0..700", &store).flag("--refetch-status", "404").run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), missing);
    assert_eq!(figure(&again, "unchanged"), missing, "still missing: the same 404");
    let addr = api.addr.clone();
    drop(api);
    // The items exist now.
    let api = MockApi::start_on(&addr, &[]);
    let found = Job::new(&url, "0..700", &store).flag("--refetch-status", "4xx,5xx").run();
    found.assert_code(0);
    assert_eq!((figure(&found, "changed"), api.requests()), (missing, missing));
    assert_complete(&store, 0..700);
}

#[test]
fn bad_refresh_flags_are_refused_in_one_line() {
    let dir = tempdir();
    let store = dir.path().join("never.sled");
    let url = "http://127.0.0.1:9/items/{id}";
    let with = |extra: &[&'static str]| {
        let mut v = vec!["--url", url, "--ids", "0..10"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (with(&["--refresh", "yesterday"]), "--refresh"),
        (with(&["--refetch-status", "4x"]), "`4x` is not a status"),
        (with(&["--refetch-status", "99"]), "`99` is not a status"),
        (with(&["--refetch-status", "404,"]), "is not a status"),
        (with(&["--refresh", "0s", "--model", "async"]), "--model async"),
    ];
    assert_refused_in_one_line(&cases, &store);
    let export = run(&["export", "--store", path_str(&store), "--changed-since", "last tuesday"]);
    export.assert_code(2);
    assert!(export.stderr.contains("neither an RFC 3339 time"), "{}", export.stderr);
}
