//! flota's supervisor.
//!
//! [`main`] parses the command line (`cli`, then `config` validates it) and maps errors to exit
//! codes, here and only here (`error`). A run (`run`) opens the `store`, then the `dispatch`er
//! plans chunks of the id range (`partition`), hands them to worker processes (`fleet`) and
//! merges their results into the store. `export` and `report` read a store back; `demo` runs a
//! job against a local mockapi. Nothing but [`main`] is public: the modules are the binary's
//! rooms, not an API.
//!
//! Exit codes: 0 every id has an HTTP answer; 3 finished, some ids failed; 2 bad invocation
//! (flags, or an unusable, mismatched or busy store); 1 any other fatal error.
#![deny(unsafe_code)]

mod cli;
mod config;
mod demo;
mod dispatch;
mod doctor;
mod error;
mod export;
mod fleet;
mod panics;
mod partition;
mod report;
mod run;
mod store;
mod threads;

use clap::Parser;

use crate::cli::{Cli, Command};

use worker::error_chain;

/// The supervisor's `main`: returns the exit code.
pub fn main() -> i32 {
    panics::install();
    match panics::catching(run_main) {
        Ok(code) => code,
        Err(panic) => {
            eprintln!("supervisor: error: internal error: {panic}; please report this bug");
            1
        }
    }
}

fn run_main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    match cli.command {
        Some(Command::Worker) => {
            init_logging("warn");
            return worker::run();
        }
        Some(Command::Mockapi(args)) => return mockapi::run(args),
        _ => {}
    }
    init_logging("info");
    fleet::seal_inherited_fds();
    // Whatever the caller's umask, what this process creates (a store, its files, an export)
    // is its owner's alone. An existing store's modes are left as they are.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let result = match cli.command {
        None => run::run_command(cli.run),
        Some(Command::Export(args)) => export::run(&args),
        Some(Command::Status(args)) => report::status(&args),
        Some(Command::Verify(args)) => doctor::verify(&args),
        Some(Command::Salvage(args)) => doctor::salvage(&args),
        Some(Command::Demo(args)) => demo::run(args),
        Some(Command::Worker | Command::Mockapi(_)) => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("supervisor: error: {}", error_chain(&e));
            e.exit_code()
        }
    }
}

/// Help and version go to stdout with exit 0; anything else is one line on stderr, exit 2.
fn clap_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("supervisor: error: {first} (see --help)");
    2
}

/// Logs to stderr at `RUST_LOG`'s levels, or `default`. sled's own lines are left out unless
/// `RUST_LOG` names sled: it logs every failed write at error level, several lines for one full
/// disk, which flota reports once in its own words.
fn init_logging(default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if f.contains("sled") => f,
        Ok(f) => format!("{f},sled=off"),
        Err(_) => format!("{default},sled=off"),
    };
    env_logger::Builder::new().parse_filters(&filter).format_target(false).init();
}
