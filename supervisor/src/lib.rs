//! flota's supervisor.
//!
//! [`main`] parses the command line (`cli`), routes it to its subcommand (`cmd`), and maps
//! errors to exit codes, here and only here. The layers below, each importing only those under
//! it (docs/design.md draws them; a test keeps them so):
//!
//! | layer | owns |
//! |---|---|
//! | `cmd` | one file per subcommand; the end-of-run summary |
//! | `cli` | raw flags, layered settings, validation into a `RunConfig` |
//! | `drive` | the runtimes: the fleet's loop, the async model, the planner, signals |
//! | `watch` | progress, systemd notify, the live file, metrics: they read, never change |
//! | `fleet` | spawning workers, pipes, reaping, helper threads |
//! | `auth` | the run's credential: its source, renewed ahead of expiry and on a 401 |
//! | `engine` | the decision core, the pacer, poison ids, events, commands, errors, figures |
//! | `store` | the only sled user |
//! | `job` | the job's vocabulary: ids and blocks, scope, run config, pace settings, figures |
//! | `util` | text formatting, panics |
//!
//! Nothing but [`main`] is public: the modules are the binary's rooms, not an API.
//!
//! Exit codes: 0 every id has an HTTP answer; 3 finished, some ids failed; 4 the API cannot be
//! reached as written, or never answered (nothing stored); 5 the API refuses the run's
//! credentials, or none can be had (nothing stored as a 401); 2 bad invocation (flags, or an
//! unusable, mismatched or busy store); 1 any other fatal error.
#![deny(unsafe_code)]

mod auth;
mod cli;
mod cmd;
mod drive;
mod engine;
mod fleet;
mod job;
mod store;
mod util;
mod watch;

use std::io::IsTerminal;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ParseError};
use crate::drive::Watch;
use crate::util::panics;
use crate::watch::progress;
use shared::error_chain;

/// The malloc arenas of a supervisor (glibc's default is eight per core; see `util::arenas`).
const SUPERVISOR_ARENAS: i32 = 2;

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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = match cli::parse(&argv) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e)) => return clap_error(&e),
        Err(ParseError::File(e)) => {
            eprintln!("supervisor: error: {e}");
            return 2;
        }
    };
    let cli = &parsed.cli;
    match &cli.command {
        Some(Command::Worker) => {
            init_logging(log::LevelFilter::Warn, false);
            return worker::run();
        }
        Some(Command::Mockapi(args)) => return mockapi::run(args.clone()),
        Some(Command::FaultProxy(args)) => return mockapi::proxy::run_proxy(args.clone()),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(*shell, &mut Cli::command(), "supervisor", &mut std::io::stdout());
            return 0;
        }
        Some(Command::Man) => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("supervisor: error: cannot write the man page: {e}");
                    1
                }
            };
        }
        _ => {}
    }
    // Before any thread of this process: the readers of many workers' pipes would each grow an
    // arena of their own.
    util::arenas::limit(SUPERVISOR_ARENAS);
    let progress = if cli.output.quiet {
        progress::Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Bar
    } else {
        progress::Mode::Lines
    };
    init_logging(cli.output.level(), progress == progress::Mode::Bar);
    fleet::seal_inherited_fds();
    // Whatever the caller's umask, what this process creates (a store, its files, an export)
    // is its owner's alone. An existing store's modes are left as they are.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let watch = Watch { progress, reload: Some(cmd::run::reloader(argv)) };
    let result = match parsed.cli.command {
        None => cmd::run::run_command(parsed.cli.run, watch),
        Some(Command::Config(_)) => cmd::config::run(&parsed),
        Some(Command::Export(ref args)) => cmd::export::run(args),
        Some(Command::Status(ref args)) => cmd::status::run(args),
        Some(Command::Verify(ref args)) => cmd::doctor::verify(args),
        Some(Command::Salvage(ref args)) => cmd::doctor::salvage(args),
        Some(Command::Upgrade(ref args)) => cmd::doctor::upgrade(args),
        Some(Command::Merge(ref args)) => cmd::merge::run(args),
        Some(Command::Demo(args)) => cmd::demo::run(args, watch),
        Some(
            Command::Worker
            | Command::Mockapi(_)
            | Command::FaultProxy(_)
            | Command::Completions { .. }
            | Command::Man,
        ) => {
            unreachable!("handled above")
        }
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
    // The first line, with the indented lines that finish it (a list of missing flags).
    let mut lines = rendered.lines();
    let mut first = lines.next().unwrap_or("invalid arguments").trim_end().to_owned();
    for more in lines.take_while(|l| l.starts_with("  ")) {
        first.push(' ');
        first.push_str(more.trim());
    }
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    eprintln!("supervisor: error: {first} (see --help)");
    2
}

/// Logs to stderr at `level` (SIGHUP may change it), or at `RUST_LOG`'s levels when that is
/// set. sled's own lines are left out unless `RUST_LOG` names sled: it logs every failed write
/// at error level, several lines for one full disk, which flota reports once in its own words.
/// With a progress bar, each line is printed above the bar.
fn init_logging(level: log::LevelFilter, above_bar: bool) {
    let (filter, max) = match std::env::var("RUST_LOG") {
        Ok(f) if f.contains("sled") => (f, None),
        Ok(f) => (format!("{f},sled=off"), None),
        // Everything passes env_logger; the global maximum level does the filtering, so that
        // a reload can raise it.
        Err(_) => ("trace,sled=off".to_owned(), Some(level)),
    };
    let logger = env_logger::Builder::new().parse_filters(&filter).format_target(false).build();
    let max = max.unwrap_or_else(|| logger.filter());
    let installed = if above_bar {
        log::set_boxed_logger(Box::new(AboveBar(logger)))
    } else {
        log::set_boxed_logger(Box::new(logger))
    };
    if installed.is_ok() {
        log::set_max_level(max);
    }
}

/// A logger that prints its lines above the progress bar.
struct AboveBar(env_logger::Logger);

impl log::Log for AboveBar {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.0.matches(record) {
            progress::multi().suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
