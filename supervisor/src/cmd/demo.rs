//! `supervisor demo`: the whole job, end to end, on one machine with nothing installed.
//!
//! Starts mockapi (this same executable, re-executed in its hidden `mockapi` mode) on a free
//! loopback port, runs the job against it, prints the summary, and stops mockapi. The store is
//! a temporary directory unless `--store` keeps it; a demo rerun on a kept store asks mockapi
//! for the port recorded in it, so the job is the same and the run resumes.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{run, summary};
use crate::cli::{self, DemoArgs, RunArgs};
use crate::drive::Watch;
use crate::engine::Error;
use crate::store::Store;
use crate::util::thousands;

/// A mockapi child process, killed when dropped.
struct MockApi {
    child: Child,
    addr: String,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mockapi(listen: &str, latency_ms: u64) -> Result<MockApi, Error> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["mockapi", "--listen", listen, "--latency-ms", &latency_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.process_group(0); // Ctrl-C is for the supervisor, which stops mockapi itself
    crate::fleet::harden(&mut cmd, None);
    let mut child = cmd.spawn().map_err(|e| Error::Demo(e.to_string()))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let addr = line.trim().to_owned();
    let mock = MockApi { child, addr };
    match read {
        Ok(_) if !mock.addr.is_empty() => Ok(mock),
        _ => Err(Error::Demo(format!("it did not report an address (listening on {listen})"))),
    }
}

/// The mockapi address a kept demo store was made with, so a rerun can resume it.
fn recorded_listen_addr(store: &Path) -> Option<String> {
    let job = Store::open_existing(store).ok()?.job().ok()??;
    let rest = job.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/')?;
    (path == "items/{id}" && addr.starts_with("127.0.0.1:")).then(|| addr.to_owned())
}

/// Runs the demo.
pub fn run(args: DemoArgs, watch: Watch) -> Result<i32, Error> {
    if args.items == 0 {
        return Err(Error::Usage("--items must be at least 1".into()));
    }
    let tmp;
    let store = match args.store {
        Some(path) => path,
        None => {
            tmp = tempfile::Builder::new()
                .prefix("flota-demo-")
                .tempdir()
                .map_err(|source| Error::Output { path: std::env::temp_dir(), source })?;
            tmp.path().join("store.sled")
        }
    };
    let listen = recorded_listen_addr(&store).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    // Validate before starting anything; the real address is known once mockapi runs.
    let placeholder = "http://127.0.0.1:1/items/{id}";
    let mut cfg = cli::run_config(&RunArgs::of_ids(
        Some(placeholder.to_owned()),
        Some(format!("0..{}", args.items)),
        store,
        args.tuning.clone(),
    ))
    .map_err(Error::Usage)?;
    // The demo is one machine's job, even inside a Slurm array.
    (cfg.scope.shard, cfg.shard_from) = (None, None);
    let mock = start_mockapi(&listen, args.latency_ms)?;
    cfg.job.url_template = format!("http://{}/items/{{id}}", mock.addr);
    println!(
        "demo: mockapi on {} (latency {} ms); fetching {} items",
        mock.addr,
        args.latency_ms,
        thousands(args.items)
    );
    let (r, _) = run::execute(&mut cfg, &watch, None)?;
    drop(mock);
    summary::print(&cfg, &r);
    Ok(run::exit_code(&r))
}
