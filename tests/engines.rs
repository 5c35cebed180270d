//! The deploy recipes on the real engines: a real Prometheus scraping a run and answering every
//! expression of the Grafana board, `promtool` linting a scrape, a one-node Slurm cluster running
//! the README's commands (`scripts/deploy/slurm/try-local`), the Kubernetes manifests against
//! Kubernetes' schemas, and the systemd unit through `systemd-analyze verify`.
//!
//! An engine that is not installed is skipped, and the skip says why and is listed in
//! `target/tmp/skipped-engines.txt` (`.ci/run` prints it). With `FLOTA_ENGINES=required` (as
//! `.ci/run` sets once it has installed them) a missing engine fails its test instead.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The supervisor package's directory; the repository is its parent.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The path of `program` on PATH, or None after naming the skip (or a panic when engines are
/// required).
fn engine(program: &str, test: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        skip(test, &format!("no {program} on PATH ({install})"));
    }
    found
}

pub(crate) fn skip(test: &str, why: &str) {
    if std::env::var("FLOTA_ENGINES").as_deref() == Ok("required") {
        panic!("{test}: {why}, and FLOTA_ENGINES=required");
    }
    let line = format!("skipped {test}: {why}\n");
    eprint!("{line}");
    let list = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-engines.txt");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(list) {
        let _ = f.write_all(line.as_bytes());
    }
}

fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}

/// Prometheus's answer to an instant query: the vector's values, or its error.
fn query(prometheus: &str, expr: &str) -> Result<Vec<f64>, String> {
    let mut resp = ureq::get(format!("http://{prometheus}/api/v1/query"))
        .query("query", expr)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if json["status"] != "success" {
        return Err(format!("{}: {}", json["errorType"], json["error"]));
    }
    let result = json["data"]["result"].as_array().ok_or_else(|| format!("no result in {text}"))?;
    Ok(result.iter().filter_map(|r| r["value"][1].as_str()?.parse().ok()).collect())
}

/// Every `expr` of the Grafana board, with its panel's title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = Path::new(REPO).join("../scripts/grafana/flota-dashboard.json");
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the board")).expect("JSON");
    let mut exprs = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr.to_owned()));
            }
        }
    }
    assert!(exprs.len() >= 10, "the board has {} expressions", exprs.len());
    exprs
}

#[test]
fn a_real_prometheus_scrapes_a_run_and_answers_every_panel_of_the_board() {
    let test = "a_real_prometheus_scrapes_a_run_and_answers_every_panel_of_the_board";
    let install = "apt-get install prometheus";
    let (Some(prometheus), Some(promtool)) =
        (engine("prometheus", test, install), engine("promtool", test, install))
    else {
        return;
    };
    // A run with something in every panel: 429s and 500s (retries), a worker SIGKILLed once it
    // runs (a death and a restart), long enough for Prometheus's 1-minute rates to have
    // samples.
    let (api, dir, store) = setup(&["--throttle-rate", "0.01", "--error-rate", "0.02"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = job_args(&api.url(), "0..30000", &store);
    set(&mut args, "--rate", "800");
    set(&mut args, "--metrics", &metrics);
    let run = spawn(&strs(&args));

    // The README's configuration, its target the run's port.
    let config = std::fs::read_to_string(Path::new(REPO).join("../scripts/prometheus/prometheus.yml"))
        .expect("scripts/prometheus/prometheus.yml");
    assert!(config.contains("127.0.0.1:9898"), "{config}");
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config.replace("127.0.0.1:9898", &metrics)).expect("writes");
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = watch(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus starts"),
    );
    wait_for("prometheus ready", Duration::from_secs(30), || get(&format!("http://{web}/-/ready")).is_some());

    let mut workers = Vec::new();
    wait_for("the run's workers", Duration::from_secs(20), || {
        workers = children_of(run.pid());
        !workers.is_empty()
    });
    sigkill(workers[0]);

    // promtool lints what the run serves.
    let mut scrape = String::new();
    wait_for("a scrape with stored items", Duration::from_secs(20), || {
        scrape = get(&format!("http://{metrics}/metrics")).unwrap_or_default();
        scrape.contains("flota_items_total{outcome=\"ok\"} ")
            && !scrape.contains("flota_items_total{outcome=\"ok\"} 0\n")
    });
    let mut lint = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    use std::io::Write;
    lint.stdin.take().expect("piped").write_all(scrape.as_bytes()).expect("writes the scrape");
    let lint = lint.wait_with_output().expect("promtool ends");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}\n{}{}",
        lint.status,
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Every expression of the board answers, and with data, while the run goes on: the first
    // error fails at once; an empty (or NaN) answer is asked again until the deadline.
    let exprs = dashboard_exprs();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers: Vec<Result<Vec<f64>, String>>;
    loop {
        answers = exprs.iter().map(|(_, expr)| query(&web, expr)).collect();
        for ((title, expr), answer) in exprs.iter().zip(&answers) {
            if let Err(e) = answer {
                panic!("{title}: `{expr}` is an error: {e}");
            }
        }
        let has_data = |a: &Result<Vec<f64>, String>| {
            a.as_ref().is_ok_and(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
        };
        if answers.iter().all(has_data) {
            break;
        }
        if Instant::now() > deadline {
            let empty: Vec<String> = exprs
                .iter()
                .zip(&answers)
                .filter(|(_, a)| !has_data(a))
                .map(|((title, expr), a)| format!("{title}: `{expr}` = {a:?}"))
                .collect();
            panic!("empty after 60 s of the run:\n{}", empty.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // What the panels show is the run's: part done, some 429s, deaths counted.
    let value = |title: &str| -> f64 {
        let i = exprs.iter().position(|(t, _)| t.starts_with(title)).expect("a panel");
        answers[i].as_ref().expect("answered")[0]
    };
    let done = value("Done");
    assert!(done > 0.0 && done < 1.0, "Done = {done}");
    let throttled = value("Share of requests answered 429");
    assert!(throttled > 0.0 && throttled < 0.1, "429 share = {throttled}");
    assert!(value("Rate limit in force") == 800.0, "the rate panel");
    let deaths = query(&web, "sum(flota_worker_deaths_total)").expect("answers");
    assert!(deaths.first().is_some_and(|&d| d >= 1.0), "deaths: {deaths:?}");

    let outcome = run.wait(RUN_DEADLINE);
    outcome.assert_code(0);
    assert_complete(&store, 0..30000);
}

#[test]
fn slurm_try_local_runs_the_readme_on_a_one_node_cluster() {
    let test = "slurm_try_local_runs_the_readme_on_a_one_node_cluster";
    let script = Path::new(REPO).join("../scripts/deploy/slurm/try-local");
    let mut running = watch(
        Command::new(&script)
            .env("FLOTA_SUPERVISOR", SUPERVISOR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("try-local starts"),
    );
    // Bounded: past 6 minutes its process group is told to stop (it stops its daemons then).
    let started = Instant::now();
    while running.child.try_wait().expect("waits").is_none() {
        if started.elapsed() > Duration::from_secs(360) {
            let group = nix::unistd::Pid::from_raw(running.pid() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
            let outcome = running.wait(Duration::from_secs(30));
            panic!(
                "try-local took over 6 minutes ({}):\n{}{}",
                outcome.status, outcome.stdout, outcome.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Outcome { status, stdout: out, stderr: err } = running.wait(Duration::from_secs(10));
    match status.code() {
        Some(0) => {
            assert!(out.contains("30000 ids in merged-2.sled, each once, each body its own"), "{out}");
        }
        Some(77) => skip(test, err.trim().trim_start_matches("try-local: cannot run here: ")),
        _ => panic!("try-local: {status}\n{out}{err}"),
    }
}

#[test]
fn the_kubernetes_manifests_pass_kubernetes_schemas() {
    let test = "the_kubernetes_manifests_pass_kubernetes_schemas";
    let Some(validate) = engine("kubernetes-validate", test, "pip install kubernetes-validate") else {
        return;
    };
    let dir = Path::new(REPO).join("../scripts/deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the manifests")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    let output = Command::new(&validate).arg("--strict").args(&manifests).output().expect("runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate --strict: {}\n{text}", output.status);
    // Each resource was checked (a file it could not read would say nothing of it).
    for resource in ["persistentvolumeclaim/flota-stores", "job/flota ", "job/flota-merge "] {
        assert!(text.contains(&format!("passed for resource {resource}")), "{resource} in:\n{text}");
    }
    // And the checker fails what is wrong: a misspelt field of a Job.
    let bad = tempdir();
    let wrong = bad.path().join("wrong.yaml");
    let job = std::fs::read_to_string(&manifests[0]).expect("reads").replace("completions:", "completionz:");
    std::fs::write(&wrong, job).expect("writes");
    let output = Command::new(&validate).arg("--strict").arg(&wrong).output().expect("runs");
    assert!(!output.status.success(), "a misspelt field passed");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let test = "systemd_analyze_verifies_the_unit";
    let Some(analyze) = engine("systemd-analyze", test, "apt-get install systemd") else {
        return;
    };
    // The unit as installed, but its ExecStart this build's binary (systemd-analyze checks
    // that the command exists) and no man page lookup (man:supervisor(1) is not installed).
    let unit =
        std::fs::read_to_string(Path::new(REPO).join("../scripts/systemd/flota.service")).expect("the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/supervisor "), "{unit}");
    let dir = tempdir();
    let path = dir.path().join("flota.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/supervisor", SUPERVISOR)).expect("writes");
    let output = Command::new(analyze).args(["verify", "--man=no"]).arg(&path).output().expect("runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {}\n{text}",
        output.status
    );
}
