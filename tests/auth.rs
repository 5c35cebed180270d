//! Credentials that expire, for real: mockapi's token endpoint issuing 5-second tokens over a
//! 20,000-id run, a helper's bare tokens met expired (401) and replayed, a rotating refresh
//! token written back, Authlib's token endpoint and resource protector (both client
//! authentication methods), a wrong secret and a failing helper stopping the run at once, a
//! static token revoked mid-run stopping it with nothing stored as a 401; and no secret in the
//! output, the store, `config`, or a worker's argv and environment.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// The records of `store` that hold a 401: none, ever.
fn stored_401s(store: &Path) -> usize {
    export(store).iter().filter(|r| r["status"].as_u64() == Some(401)).count()
}

/// Whether `text` holds one of mockapi's access tokens (`at-SERIAL-HEX`).
fn holds_token(text: &str) -> bool {
    text.match_indices("at-").any(|(i, _)| text[i + 3..].chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// Records the store holds.
fn stored(store: &Path) -> usize {
    if !store.exists() {
        return 0;
    }
    export(store).len()
}

/// A file holding `text` (a secret, a refresh token), readable by its owner.
fn secret_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("writes");
    path
}

/// A credential helper that asks mockapi's token endpoint for a token (client credentials,
/// Basic) and prints its answer as it is (`raw`) or the bare token.
fn token_helper(dir: &Path, api: &MockApi, raw: bool) -> String {
    let script = dir.join("helper.py");
    let print = if raw { "print(answer)" } else { "print(json.loads(answer)['access_token'])" };
    std::fs::write(
        &script,
        format!(
            "import base64, json, urllib.request\n\
             req = urllib.request.Request('http://{}/oauth/token', data=b'grant_type=client_credentials',\n    \
             headers={{'Authorization': 'Basic ' + base64.b64encode(b'flota:s3cret').decode()}})\n\
             answer = urllib.request.urlopen(req).read().decode()\n{print}\n",
            api.addr
        ),
    )
    .expect("writes the helper");
    format!("python3 {}", script.display())
}

#[test]
fn five_second_tokens_over_20000_ids_are_renewed_ahead_and_on_401s_no_attempt_spent() {
    // 20 ms answers, 16 at once: about 25 s, five expiries; every token issued before the
    // 7,000th request is revoked then, so 401s are met too.
    let (api, dir, store) = setup(&["--token-lifetime", "5", "--latency-ms", "20", "--revoke-after", "7000"]);
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let token_url = format!("http://{}/oauth/token", api.addr);
    let out = Job::new(&api.url(), "0..20000", &store)
        .flag("--concurrency", "16")
        .flag("--max-attempts", "1")
        .flag("--oauth2-token-url", &token_url)
        .flag("--oauth2-client-id", "flota")
        .flag("--oauth2-client-secret-file", path_str(&secret))
        .run();
    out.assert_code(0);
    assert_complete(&store, 0..20_000);
    // With one attempt an id, a 401 counted as an attempt would have been a failure.
    assert_eq!(figure(&out, "retries"), 0, "{}", out.stdout);
    let stats = api.stats();
    assert!(stats.unauthorized > 0, "the revocation was met: {stats:?}");
    // The summary counts what the server saw: every token obtained, every 401 met.
    let pacing = &summary(&out)["pacing"];
    assert_eq!(pacing["credentials"].as_u64(), Some(stats.tokens_issued), "{}", out.stdout);
    assert_eq!(pacing["unauthorized"].as_u64(), Some(stats.unauthorized), "{}", out.stdout);
    let wall = summary(&out)["wall_secs"].as_f64().expect("wall_secs");
    let budget = 2.0 * wall / 5.0 + 1.0;
    assert!(
        (stats.tokens_issued as f64) <= budget && stats.tokens_issued >= 4,
        "{} tokens over {wall:.1} s of 5-second tokens (at most {budget:.1})",
        stats.tokens_issued
    );
    assert!(
        !holds_token(&out.stderr) && !out.stderr.contains("s3cret"),
        "a secret in the log:\n{}",
        out.stderr
    );
}

#[test]
fn a_helper_may_print_a_bare_token_met_expired_or_a_token_answer_renewed_ahead() {
    let (api, dir, store) = setup(&["--token-lifetime", "2", "--latency-ms", "20"]);
    // A bare token has no expiry: each one is met expired (401), and its requests replayed.
    let bare = Job::new(&api.url(), "0..5000", &store)
        .flag("--concurrency", "16")
        .flag("--max-attempts", "1")
        .flag("--auth-command", &token_helper(dir.path(), &api, false))
        .run();
    bare.assert_code(0);
    assert_complete(&store, 0..5000);
    assert_eq!(figure(&bare, "retries"), 0);
    let met = api.stats().unauthorized;
    let renewals = api.stats().tokens_issued - 1;
    assert!(renewals >= 1 && met > 0, "{:?}", api.stats());
    // One refusal is met by at most the requests in flight, not by every thread.
    assert!(met <= renewals * 20, "{met} 401s for {renewals} renewals");
    drop(api);
    // The endpoint's own answer (access_token, expires_in), 5-second tokens over a run of about
    // nine seconds: renewed ahead of expiry (at 4 s, a second before), no 401.
    let (api, dir, store) = setup(&["--token-lifetime", "5", "--latency-ms", "20"]);
    let answer = Job::new(&api.url(), "0..7000", &store)
        .flag("--concurrency", "16")
        .flag("--auth-command", &token_helper(dir.path(), &api, true))
        .run();
    answer.assert_code(0);
    assert_complete(&store, 0..7000);
    let stats = api.stats();
    assert!(stats.tokens_issued >= 2, "renewed during the run: {stats:?}");
    assert_eq!(stats.unauthorized, 0, "renewed ahead of expiry: no 401");
}

#[test]
fn renewals_that_fail_hold_the_fleet_and_say_so_until_one_comes() {
    let (api, dir, store) = setup(&["--token-lifetime", "2", "--latency-ms", "20"]);
    let down = dir.path().join("down");
    // The endpoint's answers through a helper that fails while `down` exists.
    let helper = format!("[ -e {} ] && exit 1; {}", down.display(), token_helper(dir.path(), &api, true));
    let running = Job::new(&api.url(), "0..12000", &store)
        .flag("--concurrency", "16")
        .flag("--auth-command", &helper)
        .spawn();
    wait_for("answers", Duration::from_secs(20), || api.stats().ok > 500);
    std::fs::write(&down, "").expect("writes");
    let held_back = || -> String {
        let out = run(&["status", "--store", path_str(&store), "--json"]);
        let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        status["live"]["snapshot"]["held_back"].as_str().unwrap_or_default().to_owned()
    };
    wait_for("the fleet to wait", Duration::from_secs(10), || {
        held_back().contains("waiting for a credential")
    });
    // While it waits, nothing is sent: no request spent on a credential that ran out.
    let waiting = api.stats().requests;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(api.stats().requests, waiting, "requests sent while the fleet waits");
    std::fs::remove_file(&down).expect("removes");
    let out = running.wait(RUN_DEADLINE);
    out.assert_code(0);
    assert_complete(&store, 0..12_000);
    assert_eq!(figure(&out, "retries"), 0);
}

#[test]
fn a_rotated_refresh_token_is_written_back_and_the_next_run_uses_it() {
    use std::os::unix::fs::PermissionsExt;
    let (api, dir, store) =
        setup(&["--token-lifetime", "2", "--latency-ms", "20", "--refresh-token", "rt-first"]);
    let file = secret_file(dir.path(), "refresh", "rt-first");
    let token_url = format!("http://{}/oauth/token", api.addr);
    let job = |ids: &str| {
        Job::new(&api.url(), ids, &store)
            .flag("--concurrency", "16")
            .flag("--oauth2-token-url", &token_url)
            .flag("--oauth2-client-id", "flota")
            .flag("--oauth2-refresh-token-file", path_str(&file))
            .run()
    };
    job("0..4000").assert_code(0);
    assert_complete(&store, 0..4000);
    let issued = api.stats().tokens_issued;
    assert!(issued >= 2, "renewed during the run: {issued}");
    let written = std::fs::read_to_string(&file).expect("reads");
    assert!(written.starts_with("rt-") && written != "rt-first\n", "{written}");
    assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);
    // The old token no longer works: only the one written back lets the next run start.
    job("0..6000").assert_code(0);
    assert_complete(&store, 0..6000);
}

#[test]
fn a_wrong_secret_or_a_failing_helper_stops_the_run_at_once_and_stores_nothing() {
    let (api, dir, store) = setup(&["--token-lifetime", "60"]);
    let wrong = secret_file(dir.path(), "wrong", "not-the-secret");
    let token_url = format!("http://{}/oauth/token", api.addr);
    let job = |secret: &Path| {
        Job::new(&api.url(), "0..3000", &store)
            .flag("--oauth2-token-url", &token_url)
            .flag("--oauth2-client-id", "flota")
            .flag("--oauth2-client-secret-file", path_str(secret))
    };
    let started = Instant::now();
    let out = job(&wrong).spawn().wait(Duration::from_secs(10));
    out.assert_code(5);
    assert!(started.elapsed() < Duration::from_secs(10));
    let error: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "{}", out.stderr);
    assert!(error[0].contains("invalid_client") && !error[0].contains("not-the-secret"), "{}", error[0]);
    assert_eq!((stored(&store), api.requests()), (0, 0), "nothing asked, nothing stored");
    let failing = Job::new(&api.url(), "0..3000", &store)
        .flag("--auth-command", "echo 'no such profile' >&2; exit 3")
        .spawn()
        .wait(Duration::from_secs(10));
    failing.assert_code(5);
    assert!(
        failing.stderr.contains("exit status: 3") && failing.stderr.contains("no such profile"),
        "{}",
        failing.stderr
    );
    assert_eq!(stored(&store), 0);
    // The same command with the secret mended fetches every id.
    let good = secret_file(dir.path(), "good", "s3cret");
    job(&good).run().assert_code(0);
    assert_complete(&store, 0..3000);
}

#[test]
fn a_static_token_revoked_mid_run_stops_it_at_once_with_no_401_stored_and_a_good_one_resumes() {
    let (api, _dir, store) =
        setup(&["--static-token", "tok-a", "--revoke-after", "3000", "--latency-ms", "2"]);
    let url = api.url();
    let job = |token: &str| {
        Job::new(&url, "0..20000", &store).flag("--header", &format!("Authorization: Bearer {token}"))
    };
    let out = job("tok-a").spawn().wait(Duration::from_secs(30));
    out.assert_code(5);
    assert!(out.stderr.contains("401 Unauthorized"), "{}", out.stderr);
    let first_401 = api.stats();
    assert!(first_401.unauthorized > 0);
    // Stopped within moments of the first 401: a few hundred requests, not the other 17,000.
    assert!(first_401.requests < 3000 + 1000, "{first_401:?}");
    assert_eq!(stored_401s(&store), 0, "nothing stored as a 401");
    let kept = stored(&store);
    assert!(kept > 0 && kept <= 3000, "{kept}");
    // The same API with a new token, at the same address (the store's job is its URL).
    let addr = api.addr.clone();
    drop(api);
    let api = MockApi::start_on(&addr, &["--static-token", "tok-b"]);
    let rerun = job("tok-b").run();
    rerun.assert_code(0);
    assert_complete(&store, 0..20_000);
    assert_eq!(api.stats().requests, 20_000 - kept as u64, "the rerun fetched exactly what was missing");
    // No credential at all: the API asks for one.
    let elsewhere = tempdir();
    let none = Job::new(&api.url(), "0..20000", &elsewhere.path().join("n.sled")).run();
    none.assert_code(5);
    assert!(none.stderr.contains("asks for credentials"), "{}", none.stderr);
    // Nor is a 401 an answer to the async model's coroutines.
    let coroutines = elsewhere.path().join("a.sled");
    let none = Job::new(&api.url(), "0..2000", &coroutines).flag("--model", "async").run();
    none.assert_code(5);
    assert_eq!(stored_401s(&coroutines), 0);
}

#[test]
fn secrets_stay_out_of_the_log_the_store_config_and_the_workers() {
    let (api, _dir, store) = setup(&["--token-lifetime", "3", "--latency-ms", "50"]);
    let token_url = format!("http://{}/oauth/token", api.addr);
    let args = job_args(&api.url(), "0..1000", &store)
        .into_iter()
        .chain(
            ["--oauth2-token-url", &token_url, "--oauth2-client-id", "flota", "--concurrency", "8"]
                .map(String::from),
        )
        .collect::<Vec<_>>();
    let env = [("FLOTA_OAUTH2_CLIENT_SECRET", "s3cret"), ("RUST_LOG", "debug")];
    let running = spawn_with_env(&strs(&args), &env);
    let pid = running.pid();
    wait_for("workers", Duration::from_secs(10), || children_of(pid).len() >= 3);
    wait_for("a fetch", Duration::from_secs(10), || api.stats().ok > 0);
    for worker in children_of(pid) {
        for what in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{worker}/{what}")).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("s3cret") && !holds_token(&text), "worker {worker}'s {what}: {text}");
        }
    }
    let out = running.wait(RUN_DEADLINE);
    out.assert_code(0);
    for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains("s3cret") && !holds_token(text), "{what}:\n{text}");
    }
    for entry in walk(&store) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!found(b"s3cret") && !found(b"Bearer at-"), "{} holds a secret", entry.display());
    }
    let config = spawn_with_env(
        &[
            "config",
            "--url",
            &api.url(),
            "--ids",
            "0..10",
            "--oauth2-token-url",
            &token_url,
            "--oauth2-client-id",
            "flota",
            "--auth-command",
            "curl -u flota:s3cret x",
        ],
        &env,
    )
    .wait(RUN_DEADLINE);
    config.assert_code(2);
    assert!(!config.stdout.contains("s3cret") && config.stdout.contains("<redacted>"), "{}", config.stdout);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn bad_credential_flags_are_refused_in_one_line() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let store = dir.path().join("never.sled");
    let url = api.url();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let empty = secret_file(dir.path(), "empty", "");
    let (s, e) = (path_str(&secret), path_str(&empty));
    // The client-credentials flags a case adds to.
    let client = |extra: &[&'static str]| {
        let mut v = vec!["--oauth2-token-url", "http://127.0.0.1:1/t", "--oauth2-client-id", "me"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--auth-command", "x", "--oauth2-token-url", "http://127.0.0.1:1/t"], "two credential sources"),
        (vec!["--auth-command", " "], "--auth-command is empty"),
        (vec!["--oauth2-client-id", "me"], "needs --oauth2-token-url"),
        (vec!["--oauth2-token-url", "ftp://h/t", "--oauth2-client-id", "me"], "not an http://"),
        (vec!["--oauth2-token-url", "http://127.0.0.1:1/t"], "needs --oauth2-client-id"),
        (client(&[]), "needs the client's secret"),
        (
            client(&["--oauth2-client-secret-file", "/nonexistent/s"]),
            "--oauth2-client-secret-file /nonexistent/s",
        ),
        ([client(&["--oauth2-client-secret-file"]), vec![e]].concat(), "holds no secret"),
        ([client(&["--oauth2-refresh-token-file"]), vec![e]].concat(), "holds no refresh token"),
        (
            [client(&["--oauth2-client-auth", "body", "--oauth2-refresh-token-file"]), vec![s]].concat(),
            "there is none",
        ),
        (
            [client(&["--oauth2-client-auth", "digest", "--oauth2-client-secret-file"]), vec![s]].concat(),
            "digest",
        ),
        (
            vec!["--auth-command", "x", "--header", "Authorization: Bearer y"],
            "both give the Authorization header",
        ),
        (vec!["--auth-command", "x", "--model", "async"], "--model async"),
    ];
    let cases: Vec<(Vec<&str>, &str)> =
        cases.into_iter().map(|(flags, expected)| (with(&url, &flags), expected)).collect();
    assert_refused_in_one_line(&cases, &store);
}

/// A job of `url` over ids 0..10, with `extra` flags.
fn with<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--url", url, "--ids", "0..10"];
    v.extend_from_slice(extra);
    v
}

/// Authlib's server, `scripts/servers/oauth_items.py` (Flask), on a free port; `None` after
/// naming the skip when Flask and Authlib are not installed.
fn authlib_server(test: &str) -> Option<(Server, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers/oauth_items.py");
    let has = std::process::Command::new("python3").args(["-c", "import authlib, flask"]).status();
    if !has.is_ok_and(|s| s.success()) {
        crate::engines::skip(test, "python3 cannot import authlib and flask (pip install authlib flask)");
        return None;
    }
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", "0"])
        .env("TOKEN_LIFETIME", "5")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().expect("piped");
    let server = Server(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("the server says where it listens");
    Some((server, line.trim().to_owned()))
}

#[test]
fn authlibs_token_endpoint_and_resource_protector_with_either_client_authentication() {
    let Some((_server, addr)) = authlib_server("authlibs_token_endpoint") else { return };
    let dir = tempdir();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let stats = || -> serde_json::Value {
        let mut resp = ureq::get(format!("http://{addr}/stats")).call().expect("stats");
        serde_json::from_str(&resp.body_mut().read_to_string().expect("a body")).expect("JSON")
    };
    for (client, how) in [("basic-client", "basic"), ("post-client", "body")] {
        let store = dir.path().join(format!("{how}.sled"));
        let before = stats()["tokens_issued"].as_u64().expect("a count");
        let out = Job::new(&format!("http://{addr}/items/{{id}}"), "0..8000", &store)
            .flag("--concurrency", "8")
            .flag("--max-attempts", "1")
            .flag("--oauth2-token-url", &format!("http://{addr}/oauth/token"))
            .flag("--oauth2-client-id", client)
            .flag("--oauth2-client-secret-file", path_str(&secret))
            .flag("--oauth2-client-auth", how)
            .run();
        out.assert_code(0);
        let records = export(&store);
        assert_eq!(records.len(), 8000, "{how}");
        for (rec, id) in records.iter().zip(0u64..) {
            assert_eq!(rec["status"].as_u64(), Some(200), "{how}: {rec}");
            let body: serde_json::Value =
                serde_json::from_str(rec["body"].as_str().expect("a body")).expect("JSON");
            assert_eq!(
                (body["id"].as_u64(), body["name"].as_str()),
                (Some(id), Some(format!("item-{id}").as_str()))
            );
        }
        let wall = summary(&out)["wall_secs"].as_f64().expect("wall_secs");
        let issued = stats()["tokens_issued"].as_u64().expect("a count") - before;
        assert!(
            issued >= 1 && (issued as f64) <= 2.0 * wall / 5.0 + 1.0,
            "{how}: {issued} tokens in {wall:.1} s"
        );
    }
}
