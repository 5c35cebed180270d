//! flota's supervisor.
//!
//! `main` parses the command line ([`cli`]) and maps errors to exit codes, here and only here.
//! A run opens the [`store`], then the [`dispatch`]er plans chunks of the id range
//! ([`partition`]), hands them to worker processes ([`fleet`]) and merges their results into
//! the store. [`export`] and [`report`] read a store back; [`demo`] runs a job against a local
//! mockapi.
//!
//! Exit codes: 0 every id has an HTTP answer; 3 finished, some ids failed; 2 bad invocation
//! (flags, or an unusable, mismatched or busy store); 1 any other fatal error.
#![deny(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod dispatch;
pub mod export;
pub mod fleet;
pub mod partition;
pub mod report;
pub mod store;

use std::path::PathBuf;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The invocation is wrong.
    #[error("{0}")]
    Usage(String),
    /// The store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A worker slot keeps dying without delivering anything: the worker is broken.
    #[error("worker {slot} died {deaths} times in a row without delivering a result (last it {last})")]
    WorkersFailing {
        /// The slot.
        slot: usize,
        /// Deaths in a row.
        deaths: u32,
        /// How the last one ended.
        last: String,
    },
    /// Workers cannot be started at all.
    #[error("cannot start worker {}", bin.display())]
    Spawn {
        /// The executable.
        bin: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// An output file could not be written.
    #[error("cannot write {}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The demo's mockapi could not be started.
    #[error("cannot start mockapi: {0}")]
    Demo(String),
    /// A broken invariant: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Store(e) if e.is_usage() => 2,
            _ => 1,
        }
    }
}

pub use worker::error_chain;

/// The supervisor's `main`: returns the exit code.
pub fn main() -> i32 {
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
    let result = match cli.command {
        None => report::run_command(cli.run),
        Some(Command::Export(args)) => export::run(&args),
        Some(Command::Status(args)) => report::status(&args),
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

fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_target(false)
        .init();
}
