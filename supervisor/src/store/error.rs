//! Why the store could not be used, in words a user can act on.

use std::path::{Path, PathBuf};

use super::block::BlockError;
use crate::job::Shard;

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// There is no store at the path.
    #[error("store {0} does not exist")]
    Missing(PathBuf),
    /// Something else is at the path.
    #[error("{path} is not a flota store ({why})")]
    NotAStore {
        /// The path given.
        path: PathBuf,
        /// What is there instead.
        why: &'static str,
    },
    /// Another process holds the store.
    #[error("store {path} is in use by {holder}")]
    Locked {
        /// The store.
        path: PathBuf,
        /// "pid N", or "another process" when the pid cannot be read.
        holder: String,
    },
    /// The store belongs to another job.
    #[error("store {path} belongs to the job {stored}, not {given}")]
    JobMismatch {
        /// The store.
        path: PathBuf,
        /// The URL template the store was made for.
        stored: String,
        /// The URL template of this invocation.
        given: String,
    },
    /// The store's format is not one this build reads.
    #[error(
        "store {path} has format {found}, this build reads formats 2 and 3 (upgrading them in place) and 4 \
         (stores of format 1 were made by flota before its block layout: export them with that version, or start a \
         new store; a later format was written by a newer flota)"
    )]
    Format {
        /// The store.
        path: PathBuf,
        /// The format it records.
        found: String,
    },
    /// The directory or lock file could not be created or opened.
    #[error("cannot open store {path}")]
    Io {
        /// The store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// sled refused to open the store.
    #[error("cannot open store {path}")]
    Open {
        /// The store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sled::Error,
    },
    /// A read or write failed while the store was open.
    #[error("store operation failed")]
    Sled(#[from] sled::Error),
    /// A segment could not be written or synced (a full disk, an I/O error).
    #[error("cannot write a segment")]
    Write(#[source] std::io::Error),
    /// The store is damaged: sled panicked on it, or lost what flota keeps in it.
    #[error(
        "store {path} is damaged ({detail}); `supervisor verify --store {path}` shows what is readable, \
         `supervisor salvage --store {path} --into NEW` copies it into a new store a rerun completes",
        path = path.display()
    )]
    Damaged {
        /// The store.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A block of records does not decode.
    #[error(
        "store {path}: the block of ids {first}..{end} is damaged ({why}); `supervisor salvage --store {path} \
         --into NEW` copies the rest into a new store a rerun completes",
        path = path.display()
    )]
    Corrupt {
        /// The store.
        path: PathBuf,
        /// Its first id.
        first: u64,
        /// One past its last id.
        end: u64,
        /// What is wrong with it.
        why: BlockError,
    },
    /// A key in the blocks tree is not a block number.
    #[error("a key of {len} bytes among the blocks is not a block number: the store is damaged")]
    BadKey {
        /// The key's length (block numbers are 8 bytes).
        len: usize,
    },
    /// The store holds another part of the job than the run asks for.
    #[error("{}", shard_mismatch(path, *stored, *given))]
    ShardMismatch {
        /// The store.
        path: PathBuf,
        /// The shard it holds; `None`: the whole job.
        stored: Option<Shard>,
        /// The shard of the run; `None`: the whole job.
        given: Option<Shard>,
    },
    /// The keys file could not be read (it changed since it was checked).
    #[error("--keys {source_label}: {error}")]
    Keys {
        /// The file, or `stdin`.
        source_label: String,
        /// What went wrong.
        error: crate::job::KeyError,
    },
    /// The key table's files could not be read or written.
    #[error("store {path}: its key table: {source}")]
    KeyTable {
        /// The store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The last run's figures do not decode.
    #[error("the last run's figures are unreadable ({0})")]
    BadLastRun(String),
}

fn shard_mismatch(path: &Path, stored: Option<Shard>, given: Option<Shard>) -> String {
    let path = path.display();
    match (stored, given) {
        (Some(s), Some(g)) => format!("store {path} holds shard {s} of its job, not {g}: give each shard a store of its own"),
        (Some(s), None) => format!(
            "store {path} holds shard {s} of its job, and a run without a shard would fetch the other shards' ids \
             into it: run it with --shard {s}, or `supervisor merge` the shards and run on the merged store"
        ),
        (None, Some(g)) => format!("store {path} holds the whole job, not shard {g}: give each shard a new store"),
        (None, None) => format!("store {path}: shards agree"),
    }
}

impl StoreError {
    /// The I/O error behind a failed read or write, if that is what this is.
    pub fn into_io(self) -> Result<std::io::Error, StoreError> {
        match self {
            StoreError::Sled(sled::Error::Io(e)) | StoreError::Write(e) => Ok(e),
            other => Err(other),
        }
    }

    /// Whether the error is the invocation's fault (exit 2) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, StoreError::Sled(_) | StoreError::Write(_) | StoreError::BadLastRun(_))
    }
}
