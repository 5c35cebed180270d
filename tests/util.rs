//! Helpers: a mockapi process, a supervisor command with a deadline, store checks.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_supervisor");

/// The longest any single supervisor invocation may take in a test.
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A unique temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("flota-test-").tempdir().expect("tempdir")
}

/// A mockapi process on a free loopback port, killed when dropped.
pub struct MockApi {
    child: Child,
    pub addr: String,
}

impl MockApi {
    pub fn start(args: &[&str]) -> MockApi {
        Self::start_on("127.0.0.1:0", args)
    }

    pub fn start_on(listen: &str, args: &[&str]) -> MockApi {
        let mut cmd = Command::new(SUPERVISOR);
        cmd.args(["mockapi", "--listen", listen, "--threads", "2"]).args(args);
        let (child, _, addr) = listening(&mut cmd, "mockapi");
        MockApi { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/items/{{id}}", self.addr)
    }

    /// The server's counters, as `GET /stats` reports them.
    pub fn stats(&self) -> mockapi::Stats {
        let mut resp = ureq::get(format!("http://{}/stats", self.addr)).call().expect("stats answers");
        let text = resp.body_mut().read_to_string().expect("stats body");
        serde_json::from_str(&text).expect("stats is mockapi's Stats as JSON")
    }

    pub fn requests(&self) -> u64 {
        self.stats().requests
    }

    /// Every item request it logged (`--record`), in arrival order.
    pub fn log(&self) -> Vec<mockapi::Logged> {
        let mut resp = ureq::get(format!("http://{}/log", self.addr)).call().expect("log answers");
        let text = resp.body_mut().read_to_string().expect("log body");
        let mut log: Vec<mockapi::Logged> =
            serde_json::from_str(&text).expect("log is mockapi's Logged list");
        log.sort_by_key(|l| l.ms);
        log
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, a server that prints the loopback address it listens on as its first line:
/// the process, the rest of its stdout, and that address.
fn listening(cmd: &mut Command, what: &str) -> (Child, BufReader<std::process::ChildStdout>, String) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reads address");
    let addr = line.trim().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{what} printed {addr:?}");
    (child, out, addr)
}

/// `supervisor fault-proxy` in front of `upstream` on a free loopback port (or `listen`), with
/// Toxiproxy's toxics; killed when dropped. It prints a line for each connection that met a
/// toxic, collected here for [`FaultProxy::met`].
pub struct FaultProxy {
    child: Child,
    pub addr: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, toxics: &[&str]) -> FaultProxy {
        Self::start_on("127.0.0.1:0", upstream, toxics)
    }

    pub fn start_on(listen: &str, upstream: &str, toxics: &[&str]) -> FaultProxy {
        let mut cmd = Command::new(SUPERVISOR);
        cmd.args(["fault-proxy", "--listen", listen, "--upstream", upstream, "--seed", "7"]);
        for t in toxics {
            cmd.args(["--toxic", t]);
        }
        let (child, out, addr) = listening(&mut cmd, "fault-proxy");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                into.lock().expect("not poisoned").push(line);
            }
        });
        FaultProxy { child, addr, lines }
    }

    /// The item URL through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}/items/{{id}}", self.addr)
    }

    /// How many connections met the toxic `name` so far.
    pub fn met(&self, name: &str) -> usize {
        let lines = self.lines.lock().expect("not poisoned");
        lines
            .iter()
            .filter(|l| l.split_once(": ").is_some_and(|(_, t)| t.split(", ").any(|t| t == name)))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A running supervisor, killed (with its workers, through their death signal) when dropped.
pub struct Running {
    pub child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the supervisor (SIGKILL) and returns what it had printed.
    pub fn kill(mut self) -> Outcome {
        let _ = self.child.kill();
        self.wait(Duration::from_secs(10))
    }

    /// Waits for the exit, failing the test past `deadline`.
    pub fn wait(mut self, deadline: Duration) -> Outcome {
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                panic!("supervisor still running after {deadline:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome {
            status,
            stdout: self.out.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default(),
            stderr: self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Watches a started command (stdout and stderr piped) as a [`Running`]: bounded waits, killed
/// when dropped.
pub fn watch(mut child: Child) -> Running {
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    Running { child, out: Some(out), err: Some(err) }
}

pub fn spawn(args: &[&str]) -> Running {
    spawn_with_env(args, &[])
}

/// Starts the supervisor with extra environment variables; its output is collected.
pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let child = Command::new(SUPERVISOR)
        .args(args)
        .env("RUST_LOG", "info")
        // A test run inside a scheduler's job is not a shard of it.
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("supervisor starts");
    watch(child)
}

/// A loopback port free now, for a server a test starts on a port it must know beforehand. It is
/// below the kernel's ephemeral range: a port in that range, freed, can be taken by any client
/// socket of this busy machine (or by one connecting to it: a TCP self-connect) before the
/// server binds it, and one in TIME_WAIT makes the bind fail; no client is given one below.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 12_000)
        .unwrap_or(32_768);
    loop {
        let port = fastrand::u16(10_000..low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs the supervisor to completion.
pub fn run(args: &[&str]) -> Outcome {
    spawn(args).wait(RUN_DEADLINE)
}

/// Runs the supervisor to completion, asserts exit 0, and returns what it printed on stdout.
#[track_caller]
pub fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    out.assert_code(0);
    out.stdout
}

/// A mockapi started with `api_flags`, a temporary directory (kept alive by the caller) and a
/// store path inside it that does not exist yet.
pub fn setup(api_flags: &[&str]) -> (MockApi, tempfile::TempDir, PathBuf) {
    let api = MockApi::start(api_flags);
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    (api, dir, store)
}

/// A job's flags, with small fleets and fast backoff suitable for this 2-core machine, and the
/// summary as JSON (tests read its figures with [`figure`]; a test of the words sets
/// `--summary text`).
pub fn job_args(url: &str, ids: &str, store: &Path) -> Vec<String> {
    [
        "--summary",
        "json",
        "--url",
        url,
        "--ids",
        ids,
        "--store",
        store.to_str().expect("utf-8 path"),
        "--workers",
        "3",
        "--threads",
        "8",
        "--chunk-size",
        "64",
        "--backoff-base",
        "5ms",
        "--backoff-max",
        "200ms",
        "--connect-timeout",
        "2s",
        "--io-timeout",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with the summary in words: for a test of what a person reads.
pub fn as_text(mut args: Vec<String>) -> Vec<String> {
    set(&mut args, "--summary", "text");
    args
}

/// Sets `flag` to `value` in `args`, replacing an earlier value.
pub fn set(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_owned(),
        None => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every record of the store, by `supervisor export`.
pub fn export(store: &Path) -> Vec<serde_json::Value> {
    let out = run(&["export", "--store", store.to_str().expect("utf-8 path")]);
    out.assert_code(0);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Asserts the store holds exactly the ids of `range`, once each, in order, each with a 200
/// and its own body.
#[track_caller]
pub fn assert_complete(store: &Path, range: std::ops::Range<u64>) {
    let records = export(store);
    assert_eq!(records.len() as u64, range.end - range.start, "one record per id");
    for (rec, id) in records.iter().zip(range) {
        assert_eq!(rec["id"].as_u64(), Some(id), "ids in order, each once");
        assert_eq!(rec["status"].as_u64(), Some(200), "id {id}: {rec}");
        assert_eq!(rec["body"].as_str(), Some(mockapi::body_for(id).as_str()), "id {id} has its own body");
    }
}

/// Asserts the store holds exactly the ids of `range`, once each, in order, each with its own
/// body of mockapi's `--body-bytes size`.
#[track_caller]
pub fn assert_complete_sized(store: &Path, range: std::ops::Range<u64>, size: usize) {
    let records = export(store);
    assert_eq!(records.len() as u64, range.end - range.start, "one record per id");
    for (rec, id) in records.iter().zip(range) {
        assert_eq!(rec["id"].as_u64(), Some(id), "ids in order, each once");
        assert_eq!(rec["body"].as_str(), Some(mockapi::sized_body(id, size).as_str()), "id {id} whole");
    }
}

/// Polls `cond` every 20ms until it holds, failing the test after `deadline`.
#[track_caller]
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The command name is in parentheses and may hold spaces: fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && fields.first() != Some(&"Z") {
            out.push(child);
        }
    }
    out
}

pub fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// Writes an executable shell script at `path`.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("writes the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs each case's flags with `--store store` and asserts exit 2, one line on stderr holding
/// the case's text, and no store made.
#[track_caller]
pub fn assert_refused_in_one_line(cases: &[(Vec<&str>, &str)], store: &Path) {
    for (flags, expected) in cases {
        let mut args = flags.clone();
        args.extend(["--store", path_str(store)]);
        let out = run(&args);
        out.assert_code(2);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line: {}", out.stderr);
        assert!(lines[0].contains(expected), "{flags:?}: {}", out.stderr);
        assert!(!store.exists(), "{flags:?} created the store");
    }
}

/// A run of the supervisor built flag by flag (after ripgrep's `TestCommand`): [`job_args`]'s
/// flags, then the test's own.
pub struct Job {
    args: Vec<String>,
}

impl Job {
    /// `url`'s ids `ids` into `store`, with [`job_args`]'s flags.
    pub fn new(url: &str, ids: &str, store: &Path) -> Job {
        Job { args: job_args(url, ids, store) }
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn flag(mut self, name: &str, value: &str) -> Job {
        set(&mut self.args, name, value);
        self
    }

    /// Adds a flag that takes no value.
    pub fn switch(mut self, name: &str) -> Job {
        self.args.push(name.to_owned());
        self
    }

    /// `url`'s keys listed in `keys` into `store`, with [`job_args`]'s flags.
    pub fn keyed(url: &str, keys: &Path, store: &Path) -> Job {
        let mut args = job_args(url, "0..1", store);
        let at = args.iter().position(|a| a == "--ids").expect("job_args has --ids");
        args.splice(at..at + 2, ["--keys".to_owned(), path_str(keys).to_owned()]);
        Job { args }
    }

    /// Starts it.
    pub fn spawn(&self) -> Running {
        spawn(&strs(&self.args))
    }

    /// Runs it to completion.
    pub fn run(&self) -> Outcome {
        run(&strs(&self.args))
    }
}

/// A figure of a run's JSON summary (`--summary json`, as [`job_args`] asks), by its key:
/// `retries`, `pacing.requests`.
#[track_caller]
pub fn figure(out: &Outcome, key: &str) -> u64 {
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{}", out.stdout));
    let value = key.split('.').fold(&summary, |v, k| &v[k]);
    value.as_u64().unwrap_or_else(|| panic!("no figure {key} in {summary}"))
}

/// The run's JSON summary.
#[track_caller]
pub fn summary(out: &Outcome) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{}", out.stdout))
}

/// The number after `label` in a summary, commas allowed.
#[track_caller]
pub fn summary_figure(stdout: &str, label: &str) -> u64 {
    let at = stdout.find(label).unwrap_or_else(|| panic!("no `{label}` in summary:\n{stdout}"));
    let digits: String = stdout[at + label.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after `{label}` in:\n{stdout}"))
}

/// The threads of `pid`: each one's name and what it is blocked in (its `wchan`, e.g.
/// `pipe_write`; "0" when it is running).
pub fn threads_of(pid: u32) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten()
        .map(|task| {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            (read("comm").trim().to_owned(), read("wchan"))
        })
        .collect()
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true),
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Asserts the store holds `range` complete except `quarantined`, which are stored as
/// quarantined failures.
#[track_caller]
pub fn assert_complete_but(store: &Path, range: std::ops::Range<u64>, quarantined: &[u64]) {
    let records = export(store);
    assert_eq!(records.len() as u64, range.end - range.start, "one record per id");
    for (rec, id) in records.iter().zip(range) {
        assert_eq!(rec["id"].as_u64(), Some(id), "ids in order, each once");
        if quarantined.contains(&id) {
            assert!(rec["status"].is_null(), "{rec}");
            let err = rec["error"].as_str().unwrap_or_default();
            assert!(err.starts_with("quarantined: killed "), "id {id}: {rec}");
        } else {
            assert_eq!(rec["status"].as_u64(), Some(200), "id {id}: {rec}");
            assert_eq!(
                rec["body"].as_str(),
                Some(mockapi::body_for(id).as_str()),
                "id {id} has its own body"
            );
        }
    }
}

/// A server process a test started (not mockapi), killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
