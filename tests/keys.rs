//! Keyed jobs for real: keys that reach the server exactly as listed, a store that is the cache
//! of keys (a rerun fetches nothing, an appended list only the new keys), lists from CSV, JSON
//! Lines and stdin, bad input refused before anything is made, and shards of shuffled lists
//! that merge into every key once.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Keys a naive client would mangle: every character a URL gives a meaning, and then some.
const AWKWARD: &[&str] = &[
    "octocat",
    "with space",
    "a/b/c",
    "why?not",
    "#hashtag",
    "100%",
    "1+1=2",
    "this&that",
    "\"quoted\"",
    "back\\slash",
    "señor-ñandú",
    "日本語",
    "emoji🙂🚀",
    "  leading and trailing  ",
    "%2F",
    "a=b&c=d#e",
    "~-._",
    "{braces}",
    ".",
    "..",
    "tab\there",
];

fn write_keys(dir: &Path, name: &str, keys: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut text = keys.join("\n");
    text.push('\n');
    std::fs::write(&path, text).expect("writes the keys");
    path
}

/// The store's records by key (each key once, or the test fails), with the key each body echoes.
#[track_caller]
fn echoed(store: &Path) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    for rec in export(store) {
        let key =
            rec["key"].as_str().unwrap_or_else(|| panic!("a keyed record names its key: {rec}")).to_owned();
        assert!(rec.get("id").is_none(), "a keyed record has no id: {rec}");
        assert_eq!(rec["status"].as_u64(), Some(200), "{rec}");
        let body: serde_json::Value =
            serde_json::from_str(rec["body"].as_str().expect("a body")).expect("JSON");
        let echo = body["key"].as_str().expect("the echo").to_owned();
        assert!(seen.insert(key.clone(), echo).is_none(), "{key:?} stored twice");
    }
    seen
}

#[test]
fn every_key_reaches_the_server_exactly_as_listed_in_the_path_and_in_the_query() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let keys: Vec<String> = AWKWARD.iter().map(|k| (*k).to_owned()).collect();
    let file = write_keys(dir.path(), "keys.txt", &keys);
    for url in
        [format!("http://{}/keys/{{key}}", api.addr), format!("http://{}/search?q={{key}}&x=1", api.addr)]
    {
        let store = dir.path().join(format!("s{}", url.len()));
        let out = Job::keyed(&url, &file, &store).run();
        out.assert_code(0);
        assert_eq!(figure(&out, "answered"), keys.len() as u64);
        let echoed = echoed(&store);
        assert_eq!(echoed.len(), keys.len(), "every key once");
        for key in &keys {
            assert_eq!(echoed.get(key), Some(key), "{url}: {key:?} reached the server as something else");
        }
    }
    // {key:raw} puts it in as it is: a key that is already a path.
    let raw = write_keys(dir.path(), "raw.txt", &["a%20b".to_owned(), "caf%C3%A9".to_owned()]);
    let store = dir.path().join("raw");
    Job::keyed(&format!("http://{}/keys/{{key:raw}}", api.addr), &raw, &store).run().assert_code(0);
    let echoed = echoed(&store);
    assert_eq!(echoed.get("a%20b").map(String::as_str), Some("a b"));
    assert_eq!(echoed.get("caf%C3%A9").map(String::as_str), Some("café"));
}

#[test]
fn a_rerun_fetches_nothing_and_an_appended_list_fetches_exactly_the_new_keys() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let store = dir.path().join("keys.sled");
    let url = format!("http://{}/keys/{{key}}", api.addr);
    let mut keys: Vec<String> = (0..5_000).map(|i| format!("user-{i:05}-{}", "x".repeat(i % 17))).collect();
    // Listed twice: fetched once.
    let mut listed = keys.clone();
    listed.extend(keys[..100].iter().cloned());
    let file = write_keys(dir.path(), "keys.txt", &listed);
    let out = Job::keyed(&url, &file, &store).run();
    out.assert_code(0);
    assert_eq!(figure(&out, "answered"), 5_000);
    assert_eq!(api.requests(), 5_000);

    let again = Job::keyed(&url, &file, &store).run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), 0, "the store is the cache");
    assert_eq!(figure(&again, "skipped"), 5_000);
    assert_eq!(api.requests(), 5_000);

    // The same list in another order is the same job.
    let mut shuffled = keys.clone();
    fastrand::Rng::with_seed(3).shuffle(&mut shuffled);
    let file = write_keys(dir.path(), "shuffled.txt", &shuffled);
    assert_eq!(figure(&Job::keyed(&url, &file, &store).run(), "pacing.requests"), 0);

    keys.extend((0..1_000).map(|i| format!("new-{i}")));
    let file = write_keys(dir.path(), "more.txt", &keys);
    let more = Job::keyed(&url, &file, &store).run();
    more.assert_code(0);
    assert_eq!(figure(&more, "answered"), 1_000);
    assert_eq!(api.requests(), 6_000, "exactly the 1,000 new keys were requested");
    let echoed = echoed(&store);
    assert_eq!(echoed.len(), 6_000);
    assert!(keys.iter().all(|k| echoed.get(k) == Some(k)));

    let status: serde_json::Value =
        serde_json::from_str(&stdout_of(&["status", "--store", path_str(&store), "--json"])).expect("JSON");
    assert_eq!(status["coverage"]["total"].as_u64(), Some(6_000), "{status}");
    assert_eq!(status["coverage"]["missing"].as_u64(), Some(0), "{status}");
    assert_eq!(status["counts"]["answered"].as_u64(), Some(6_000), "{status}");
}

#[test]
fn keys_come_from_a_csv_column_a_json_field_or_stdin_and_export_by_key() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let url = format!("http://{}/keys/{{key}}", api.addr);
    let csv = dir.path().join("items.csv");
    std::fs::write(&csv, "sku,name\n\"A,1\",first\nB 2,\"second, with comma\"\n,none\nC/3,third\n")
        .expect("writes");
    let store = dir.path().join("csv");
    Job::keyed(&url, &csv, &store).flag("--keys-column", "sku").run().assert_code(0);
    let got = echoed(&store);
    assert_eq!(got.len(), 3);
    assert!(["A,1", "B 2", "C/3"].iter().all(|k| got.get(*k).map(String::as_str) == Some(*k)), "{got:?}");

    let jsonl = dir.path().join("users.jsonl");
    std::fs::write(&jsonl, "{\"login\":\"ann\",\"n\":1}\n{\"login\":\"b\\\"ob\"}\n{\"login\":42}\n")
        .expect("writes");
    let store = dir.path().join("jsonl");
    Job::keyed(&url, &jsonl, &store).flag("--keys-field", "login").run().assert_code(0);
    let got = echoed(&store);
    assert_eq!(got.len(), 3);
    assert!(["ann", "b\"ob", "42"].iter().all(|k| got.get(*k).map(String::as_str) == Some(*k)), "{got:?}");

    // stdin, read once and kept for the run.
    let store = dir.path().join("stdin");
    let mut args = job_args(&url, "0..1", &store);
    let at = args.iter().position(|a| a == "--ids").expect("--ids");
    args.splice(at..at + 2, ["--keys".to_owned(), "-".to_owned()]);
    let mut child = std::process::Command::new(SUPERVISOR)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"x\ny y\nz/z\nx\n").expect("writes");
    let out = watch(child).wait(RUN_DEADLINE);
    out.assert_code(0);
    assert_eq!(figure(&out, "answered"), 3);
    assert_eq!(echoed(&store).len(), 3);

    // Export: a key column in CSV; --keys keeps the keys listed.
    let csv_out = stdout_of(&["export", "--store", path_str(&store), "--format", "csv"]);
    assert!(csv_out.starts_with("key,status,attempts,fetched_at,body,body_base64,error\n"), "{csv_out}");
    assert_eq!(csv_out.lines().count(), 4);
    let only = dir.path().join("only.txt");
    std::fs::write(&only, "z/z\nnot stored\n").expect("writes");
    let picked = stdout_of(&["export", "--store", path_str(&store), "--keys", path_str(&only)]);
    let picked: Vec<serde_json::Value> =
        picked.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0]["key"].as_str(), Some("z/z"));
    let refused = run(&["export", "--store", path_str(&store), "--ids", "0..5"]);
    refused.assert_code(2);
}

#[test]
fn bad_keys_input_is_refused_in_one_line_and_creates_nothing() {
    let dir = tempdir();
    let good = write_keys(dir.path(), "good.txt", &["a".to_owned(), "b".to_owned()]);
    let bad_utf8 = dir.path().join("bad.txt");
    std::fs::write(&bad_utf8, b"fine\nalso fine\n\xff\xfe broken\n").expect("writes");
    let crlf = dir.path().join("crlf.txt");
    std::fs::write(&crlf, b"a\r\nb\r\n").expect("writes");
    let csv = dir.path().join("k.csv");
    std::fs::write(&csv, "sku,name\nA,b\n").expect("writes");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").expect("writes");
    let store = dir.path().join("never.sled");
    let (g, k) = (path_str(&good), "http://127.0.0.1:9/u/{key}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--url", k, "--ids", "0..5"], "--url has {key}: give the keys with --keys"),
        (vec!["--url", "http://127.0.0.1:9/u/{id}", "--keys", g], "write {key} in --url"),
        (vec!["--url", k, "--ids", "0..5", "--keys", g], "--ids and --keys are two ways"),
        (vec!["--url", k, "--keys", g, "--keys-column", "sku", "--keys-field", "x"], "give one"),
        (vec!["--url", "http://127.0.0.1:9/u/{id}", "--ids", "0..5", "--keys-column", "sku"], "give --keys"),
        (vec!["--url", k, "--keys", path_str(&csv), "--keys-column", "isbn"], "has no column `isbn`"),
        (vec!["--url", k, "--keys", g, "--keys-field", "login"], "line 1 is not JSON"),
        (vec!["--url", k, "--keys", path_str(&bad_utf8)], "line 3 is not UTF-8"),
        (vec!["--url", k, "--keys", path_str(&crlf)], "line 1 holds a CR"),
        (vec!["--url", k, "--keys", path_str(&empty)], "holds no key"),
        (vec!["--url", k, "--keys", "/nonexistent/keys.txt"], "--keys /nonexistent/keys.txt"),
        (vec!["--url", "http://127.0.0.1:9/u/{key:path}", "--keys", g], "{key:path}` is not a placeholder"),
        (vec!["--url", k, "--keys", g, "--model", "async"], "--model async fetches ids only"),
    ];
    assert_refused_in_one_line(&cases, &store);
}

#[test]
fn three_shards_of_a_300k_key_list_in_shuffled_orders_merge_into_every_key_once() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let url = format!("http://{}/keys/{{key}}", api.addr);
    let keys: Vec<String> =
        (0..300_000u64).map(|i| format!("sku-{:x}-{i}", i.wrapping_mul(0x9e37_79b9))).collect();
    let mut rng = fastrand::Rng::with_seed(33);
    let mut stores = Vec::new();
    for n in 0..3 {
        let mut order = keys.clone();
        rng.shuffle(&mut order);
        let file = write_keys(dir.path(), &format!("list{n}.txt"), &order);
        let store = dir.path().join(format!("shard{n}"));
        let out = Job::keyed(&url, &file, &store)
            .flag("--shard", &format!("{n}/3"))
            .flag("--chunk-size", "512")
            .run();
        out.assert_code(0);
        stores.push(store);
    }
    assert_eq!(api.requests(), 300_000, "each key fetched by one shard");
    let merged = dir.path().join("merged");
    let out =
        run(&["merge", path_str(&merged), path_str(&stores[0]), path_str(&stores[1]), path_str(&stores[2])]);
    out.assert_code(0);
    let echoed = echoed(&merged);
    assert_eq!(echoed.len(), 300_000, "every key once");
    assert!(keys.iter().all(|k| echoed.get(k) == Some(k)), "each key's own answer");

    // The merged store is the whole job's: the list again fetches nothing.
    let file = write_keys(dir.path(), "all.txt", &keys);
    let again = Job::keyed(&url, &file, &merged).run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), 0);

    // A whole keyed store beside a shard's would put two keys at one ordinal.
    let refused = run(&["merge", path_str(&dir.path().join("m2")), path_str(&merged), path_str(&stores[0])]);
    refused.assert_code(2);
    assert!(refused.stderr.contains("merge as the shards of one cut"), "{}", refused.stderr);
}

#[test]
fn a_salvaged_keyed_store_keeps_its_keys_and_a_rerun_sends_nothing() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let url = format!("http://{}/keys/{{key}}", api.addr);
    let keys: Vec<String> = (0..2_000).map(|i| format!("k/{i} é")).collect();
    let file = write_keys(dir.path(), "keys.txt", &keys);
    let store = dir.path().join("keys.sled");
    Job::keyed(&url, &file, &store).run().assert_code(0);
    let saved = dir.path().join("saved.sled");
    run(&["salvage", "--store", path_str(&store), "--into", path_str(&saved)]).assert_code(0);
    assert_eq!(echoed(&saved), echoed(&store), "every key with its own answer");
    let again = Job::keyed(&url, &file, &saved).run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), 0);
    assert_eq!(api.requests(), 2_000);
}

#[test]
fn a_keyed_run_killed_while_it_plans_or_fetches_loses_nothing_and_the_rerun_completes() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let url = format!("http://{}/keys/{{key}}", api.addr);
    let store = dir.path().join("keys.sled");
    let mut keys: Vec<String> =
        (0..400_000u64).map(|i| format!("key-{:x}-{i}", i.wrapping_mul(0x9e37_79b9))).collect();
    let mut rng = fastrand::Rng::with_seed(34);
    let (mut killed, mut ended) = (0, Vec::new());
    for round in 0..5 {
        // The list grows between kills: new keys are appended to a table a kill may have left
        // half written (names and rows past its commit point).
        keys.extend((0..20_000).map(|i| format!("round{round}-{i}")));
        let file = write_keys(dir.path(), "keys.txt", &keys);
        let running = Job::keyed(&url, &file, &store).spawn();
        // The first two while it reads and plans the list (0.3 s for 400,000 keys here), the
        // others while it fetches.
        let ms = if round < 2 { rng.u64(30..350) } else { rng.u64(400..1500) };
        let at = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < at && !is_dead(running.pid()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let workers = children_of(running.pid());
        let out = running.kill();
        match out.code() {
            None => killed += 1,
            Some(code) => {
                ended.push(format!("exit {code}: {}", out.stderr.lines().last().unwrap_or_default()))
            }
        }
        // The next run opens the store once the killed one's workers are gone (they hold
        // nothing of it, but a run that finds them there could be refused by a busy machine).
        wait_for("the killed supervisor's workers to go", Duration::from_secs(10), || {
            workers.iter().all(|&w| is_dead(w))
        });
    }
    assert!(killed >= 3, "only {killed} runs were killed before they ended: {ended:?}");
    let file = write_keys(dir.path(), "keys.txt", &keys);
    let out = Job::keyed(&url, &file, &store).run();
    out.assert_code(0);
    let echoed = echoed(&store);
    assert_eq!(echoed.len(), keys.len(), "every key once");
    assert!(keys.iter().all(|k| echoed.get(k) == Some(k)), "each key's own answer");
    run(&["verify", "--store", path_str(&store)]).assert_code(0);
}
