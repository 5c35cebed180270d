//! Everything that can stop a command, and the exit code each one means. `main` is the only
//! place that turns one into an exit code.

use std::path::PathBuf;

use crate::store::StoreError;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The invocation is wrong.
    #[error("{0}")]
    Usage(String),
    /// The store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// The API cannot be reached as the job is written, and no attempt would change it (its
    /// certificate, its host name, its scheme): seen before it had answered at all.
    #[error("cannot fetch from {api}: {error}; nothing was stored for it, and the same command fetches every id once this is fixed")]
    Unreachable {
        /// The API's `host:port`.
        api: String,
        /// Which cause.
        why: shared::Unreachable,
        /// What the request met, and what to do.
        error: String,
    },
    /// The API did not answer a single request within `--wait-for-api`.
    #[error(
        "no answer from {api} in {} ({error}); nothing was stored, and the same command fetches every id once it \
         answers (--wait-for-api waits longer)",
        humantime::format_duration(*waited)
    )]
    NoAnswer {
        /// The API's `host:port`.
        api: String,
        /// How its requests failed, in a few words.
        error: String,
        /// How long the run waited.
        waited: std::time::Duration,
    },
    /// No credential can be had from the run's source (`--auth-command`, `--oauth2-*`), or
    /// the API refuses the ones it gives.
    #[error("cannot get a credential the API takes: {0}; nothing was stored for the ids held back, and the same command resumes once this is fixed")]
    Credentials(String),
    /// The API answered 401 to the job's own credentials (`--header`), or to none.
    #[error("{api} answered 401 Unauthorized: {why}; nothing was stored as a 401, and the same command resumes with credentials it takes")]
    Unauthorized {
        /// The API's `host:port`.
        api: String,
        /// What was sent, and what to do.
        why: String,
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
    /// The store could not be written during a run (a full disk, an I/O error): what was
    /// already flushed is safe, and a rerun resumes.
    #[error(
        "cannot write store {}: {}; the {flushed} results this run flushed before that are safe, and the same \
         command resumes once the cause is fixed",
        path.display(),
        describe_io(cause)
    )]
    StoreWrite {
        /// The store.
        path: PathBuf,
        /// Results this run had made durable.
        flushed: u64,
        /// What failed.
        cause: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// A helper thread panicked: a bug.
    #[error("thread {thread} panicked: {message}")]
    Panicked {
        /// The thread's name.
        thread: String,
        /// The panic's message.
        message: String,
    },
    /// An output file could not be written.
    #[error("cannot write {}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--metrics` could not be served.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
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
    /// The process exit code for this error: 2 for a bad invocation (flags, or an unusable,
    /// mismatched or busy store), 4 for an API that cannot be reached as written or never
    /// answered, 5 for credentials the API refuses or that cannot be had, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Metrics { .. } => 2,
            Error::Store(e) if e.is_usage() => 2,
            Error::Unreachable { .. } | Error::NoAnswer { .. } => 4,
            Error::Credentials(_) | Error::Unauthorized { .. } => 5,
            _ => 1,
        }
    }
}

/// An I/O error in plain words: "the disk is full" rather than sled's debug text.
fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull => "the disk is full (no space left on device)".to_owned(),
        ErrorKind::QuotaExceeded => "the disk quota is exceeded".to_owned(),
        ErrorKind::PermissionDenied => "permission denied".to_owned(),
        ErrorKind::ReadOnlyFilesystem => "the filesystem is read-only".to_owned(),
        _ => match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
            None => e.to_string(),
        },
    }
}
