//! Bad invocations: exit 2, one clear line, nothing created or changed.

use std::time::Duration;

use crate::util::*;

#[test]
fn bad_flags_exit_2_with_one_line_and_create_nothing() {
    let dir = tempdir();
    let store = dir.path().join("s.sled");
    let s = path_str(&store);
    let ok = "http://127.0.0.1:9/items/{id}";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--bogus"], "unexpected argument '--bogus'"),
        (vec!["--ids", "0..5", "--store", s], "--url is required"),
        (vec!["--url", ok, "--store", s], "--ids or --ids-file is required"),
        (vec!["--url", "http://127.0.0.1:9/items", "--ids", "0..5", "--store", s], "has no {id}"),
        (vec!["--url", "ftp://127.0.0.1/{id}", "--ids", "0..5", "--store", s], "not an http"),
        (vec!["--url", ok, "--ids", "5..1", "--store", s], "`5..1` holds no id"),
        (vec!["--url", ok, "--ids", "zero..5", "--store", s], "not an id range"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--workers", "0"], "--workers must be between"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--threads", "x"], "invalid value 'x'"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--max-body", "lots"], "not a size"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--io-timeout", "soon"], "not a duration"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--header", "nocolon"], "--header"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--wait-for-api", "soon"], "not a duration"),
        (vec!["--url", ok, "--ids", "0..5", "--store", s, "--summary", "yaml"], "invalid value 'yaml'"),
        (
            vec!["--url", ok, "--ids", "0..5", "--store", s, "--wait-for-api", "10ms"],
            "--wait-for-api must be at least 1s",
        ),
        (vec!["--url", ok, "--ids", "0..5", "--store", "/nonexistent/dir/s.sled"], "does not exist"),
        (vec!["export", "--store", s], "does not exist"),
        (vec!["status", "--store", s], "does not exist"),
        (vec!["export", "--store", s, "--format", "xml"], "invalid value 'xml'"),
        (vec!["demo", "--items", "0"], "--items must be at least 1"),
    ];
    for (args, want) in cases {
        let out = run(&args);
        assert_eq!(out.code(), Some(2), "{args:?}: stderr {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: one line, got:\n{}", out.stderr);
        assert!(out.stderr.starts_with("supervisor: error: "), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: expected {want:?} in {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{args:?}");
        assert!(!store.exists(), "{args:?} created the store");
    }
    assert!(std::fs::read_dir(dir.path()).expect("lists").next().is_none(), "nothing was created");
}

#[test]
fn help_and_version_exit_0() {
    let out = run(&["--help"]);
    out.assert_code(0);
    assert!(out.stdout.contains("--workers") && out.stdout.contains("Exit codes"), "{}", out.stdout);
    run(&["--version"]).assert_code(0);
}

#[test]
fn a_store_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempdir();
    let file = dir.path().join("file");
    std::fs::write(&file, "precious").expect("writes");
    let notes = dir.path().join("notes");
    std::fs::create_dir(&notes).expect("mkdir");
    std::fs::write(notes.join("a.txt"), "mine").expect("writes");
    for (store, want) in [(&file, "not a directory"), (&notes, "a directory with other files in it")] {
        let out =
            run(&["--url", "http://127.0.0.1:9/items/{id}", "--ids", "0..5", "--store", path_str(store)]);
        out.assert_code(2);
        assert!(out.stderr.contains("is not a flota store") && out.stderr.contains(want), "{}", out.stderr);
    }
    assert_eq!(std::fs::read_to_string(&file).expect("reads"), "precious");
    assert_eq!(std::fs::read_dir(&notes).expect("lists").count(), 1, "nothing added to {notes:?}");
}

#[test]
fn a_store_of_another_job_is_refused_and_unchanged() {
    let (api, _dir, store) = setup(&[]);
    Job::new(&api.url(), "0..100", &store).run().assert_code(0);
    let before = export(&store);
    let other = format!("http://{}/other/{{id}}", api.addr);
    let out = Job::new(&other, "0..200", &store).run();
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("belongs to the job {}, not {other}", api.url())),
        "names both jobs: {}",
        out.stderr
    );
    assert_eq!(export(&store), before, "the store is unchanged");
    assert_eq!(api.requests(), 100, "the refused run sent nothing");
}

#[test]
fn a_second_supervisor_on_a_busy_store_is_refused_with_the_holders_pid() {
    let (api, _dir, store) = setup(&["--latency-ms", "50"]);
    let mut args = job_args(&api.url(), "0..100000", &store);
    set(&mut args, "--workers", "1");
    set(&mut args, "--threads", "2");
    let first = spawn(&strs(&args));
    wait_for("the first run to start fetching", Duration::from_secs(30), || api.requests() > 0);
    let out = run(&strs(&args));
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("is in use by pid {}", first.pid())),
        "names the holder: {}",
        out.stderr
    );
    drop(first); // SIGKILL; its workers die with it
}
