//! What a worker can see and do, checked from outside through /proc.

use std::time::Duration;

use crate::util::*;

fn proc_file(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap_or_default()
}

fn limit(limits: &str, name: &str) -> (String, String) {
    let line =
        limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{limits}"));
    let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (fields[0].to_owned(), fields[1].to_owned())
}

#[test]
fn workers_are_confined_and_never_see_secrets_or_the_store() {
    let (api, dir, store) = setup(&["--latency-ms", "20"]);
    let headers = dir.path().join("headers");
    std::fs::write(&headers, "X-Api-Key: filesecret123\n").expect("writes");
    let mut args = job_args(&api.url(), "0..200000", &store);
    set(&mut args, "--workers", "2");
    set(&mut args, "--threads", "8");
    set(&mut args, "--header", "Authorization: Bearer argsecret456");
    set(&mut args, "--header-file", path_str(&headers));
    set(&mut args, "--worker-memory", "1G");
    let running =
        spawn_with_env(&strs(&args), &[("RUST_LOG", "debug"), ("NOTIFY_SOCKET", "/run/systemd/notify")]);
    wait_for("requests", Duration::from_secs(30), || api.requests() > 100);
    let workers = children_of(running.pid());
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        let status = proc_file(w, "status");
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "NoNewPrivs in\n{status}");
        let limits = proc_file(w, "limits");
        assert_eq!(limit(&limits, "Max core file size"), ("0".into(), "0".into()));
        assert_eq!(limit(&limits, "Max address space"), ("1073741824".into(), "1073741824".into()));
        assert_eq!(limit(&limits, "Max open files"), ("80".into(), "80".into()), "2 per thread + 64");
        let environ = proc_file(w, "environ");
        assert!(!environ.contains("NOTIFY_SOCKET"), "NOTIFY_SOCKET leaked into the worker");
        let cmdline = proc_file(w, "cmdline");
        for secret in ["argsecret456", "filesecret123"] {
            assert!(!environ.contains(secret) && !cmdline.contains(secret), "{secret} visible in /proc");
        }
        for fd in std::fs::read_dir(format!("/proc/{w}/fd")).expect("fds").flatten() {
            let n: u32 = fd.file_name().to_str().and_then(|s| s.parse().ok()).expect("numeric fd");
            let target = std::fs::read_link(fd.path()).map(|p| p.display().to_string()).unwrap_or_default();
            assert!(
                n <= 2 || target.starts_with("socket:") || target.starts_with("pipe:"),
                "worker {w} holds fd {n} -> {target}"
            );
            assert!(!target.contains(path_str(dir.path())), "worker {w} holds {target}");
        }
        // stdin is the pipe from the supervisor; the pipe back has one descriptor of its own.
        let target = std::fs::read_link(format!("/proc/{w}/fd/0")).expect("fd 0");
        assert!(target.display().to_string().starts_with("pipe:"), "fd 0: {target:?}");
        let stderr = std::fs::read_link(format!("/proc/{w}/fd/2")).expect("fd 2");
        let others = std::fs::read_dir(format!("/proc/{w}/fd"))
            .expect("fds")
            .flatten()
            .filter(|fd| fd.file_name() != "0")
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|t| t.display().to_string().starts_with("pipe:") && *t != stderr)
            .count();
        assert_eq!(others, 1, "besides stdin and stderr, one pipe: the protocol's");
    }
    let log = running.kill().stderr;
    assert!(log.contains("DEBUG"), "debug logging was on");
    for secret in ["argsecret456", "filesecret123"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn workers_run_as_the_user_given() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    if !others_may_execute(std::path::Path::new(SUPERVISOR)) {
        eprintln!("skipped: {SUPERVISOR} is not reachable by other users (a private checkout)");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody exists");
    let (api, _dir, store) = setup(&["--latency-ms", "20"]);
    let running =
        Job::new(&api.url(), "0..100000", &store).flag("--user", "nobody").flag("--workers", "1").spawn();
    wait_for("requests", Duration::from_secs(30), || api.requests() > 100);
    let workers = children_of(running.pid());
    assert_eq!(workers.len(), 1);
    let status = proc_file(workers[0], "status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).expect("Gid line");
    let want_uid = nobody.uid.to_string();
    let want_gid = nobody.gid.to_string();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == want_uid), "{uid_line}");
    assert!(gid_line.split_whitespace().skip(1).all(|g| g == want_gid), "{gid_line}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).expect("Groups line");
    assert_eq!(groups.trim_end(), "Groups:", "supplementary groups dropped");
}

#[test]
fn an_unknown_user_is_refused() {
    let out = run(&[
        "--url",
        "http://127.0.0.1:9/items/{id}",
        "--ids",
        "0..5",
        "--user",
        "no-such-user-here",
        "--store",
        "/tmp/flota-never-created.sled",
    ]);
    out.assert_code(2);
    assert!(out.stderr.contains("--user no-such-user-here: no such user"), "{}", out.stderr);
    assert!(!std::path::Path::new("/tmp/flota-never-created.sled").exists());
}

/// Whether a user with no relation to the file's owner may execute `path`: o+x on the file and
/// on every directory above it.
fn others_may_execute(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}
