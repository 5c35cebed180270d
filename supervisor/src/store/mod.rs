//! The store: one sled database, written only by the supervisor. The only module that imports
//! sled.
//!
//! Layout (format 2): the default tree holds metadata (`format`, `job.url`, `run.last`); the
//! `blocks` tree maps each block number (id / 256), as 8 big-endian bytes so scans come out in
//! id order, to the records of those 256 ids, compressed and checksummed: see [`block`] for
//! why and how.
//!
//! Writes go through one writer thread ([`write_loop`]). It gathers results by block, and at
//! each flush merges them into their blocks (a block is read, merged and written again when
//! its ids arrive over several flushes), applies one sled batch and flushes: a result counts as
//! done only after that `flush()`, sled's durability point.
//! A store is held by one process at a time: `flota.lock` in its directory is flock()ed and
//! names the holder's pid.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use shared::{ItemResult, Outcome};

use crate::panics;
use crate::partition::{mask_and, mask_len, mask_set, Mask, Shard};
use block::{BlockError, Index, KIND_ANSWER, KIND_QUARANTINED};

pub mod block;
pub mod merge;
pub mod salvage;
pub mod scope;
mod writer;

/// The store format this build reads and writes. Format 1 kept one sled key per id.
const FORMAT: &str = "2";
const LOCK_FILE: &str = "flota.lock";
/// The job and format again, outside sled, for `salvage` when sled has lost them.
const META_FILE: &str = "flota.meta";
const BLOCKS_TREE: &str = "blocks";
/// sled's page cache. Its default (1 GiB) would let the supervisor grow to that size on a long
/// run; writes go block by block and reads are range scans, so a small cache costs little.
const CACHE_BYTES: u64 = 1 << 20;

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
        "store {path} has format {found}, this build reads format 2 (stores of format 1 were made by \
         flota before its block layout: export them with that version, or start a new store)"
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
            StoreError::Sled(sled::Error::Io(e)) => Ok(e),
            other => Err(other),
        }
    }

    /// Whether the error is the invocation's fault (exit 2) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, StoreError::Sled(_) | StoreError::BadLastRun(_))
    }
}

/// One id's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A final HTTP answer.
    Answer {
        /// Attempts made.
        attempts: u32,
        /// HTTP status.
        status: u16,
        /// The body, byte for byte.
        body: Vec<u8>,
    },
    /// No HTTP answer: the id failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why.
        error: String,
        /// Whether it was quarantined (it killed workers) rather than failing over HTTP.
        quarantined: bool,
    },
}

/// Counts over the whole store, for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Ids with an HTTP answer.
    pub answered: u64,
    /// Of those, with a 2xx status.
    pub success: u64,
    /// Ids that failed, quarantined ones included.
    pub failed: u64,
    /// Of those, quarantined.
    pub quarantined: u64,
}

/// An open store.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    blocks: sled::Tree,
    _lock: Flock<File>,
}

pub(crate) fn key(block: u64) -> [u8; 8] {
    block.to_be_bytes()
}

fn block_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| StoreError::BadKey { len: key.len() })?))
}

/// The error for a block that does not decode.
pub(crate) fn corrupt(path: &Path, block: u64, why: BlockError) -> StoreError {
    let first = block::first_id(block);
    StoreError::Corrupt { path: path.to_owned(), first, end: first.saturating_add(block::BLOCK_IDS), why }
}

/// Runs `f`, which uses sled on the store at `path`: a panic inside sled (as some damage makes
/// it) comes back as [`StoreError::Damaged`], and prints nothing.
pub(crate) fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    panics::catching(f).unwrap_or_else(|panic| {
        Err(StoreError::Damaged { path: path.to_owned(), detail: format!("sled: {panic}") })
    })
}

/// What [`META_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The store format.
    pub format: String,
    /// The job's URL template.
    pub job_url: String,
    /// Records in the store when the last run ended. sled, opening a damaged store, drops what
    /// follows the damage without a word; a count below this one is how flota notices.
    #[serde(default)]
    pub records: u64,
    /// What the job covers, as [`scope::Scope`] (absent before flota recorded it).
    #[serde(default)]
    pub scope: Option<scope::Scope>,
}

/// Reads a store's [`META_FILE`], if it has one.
pub fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(path.join(META_FILE)).ok()?).ok()
}

impl From<ItemResult> for Record {
    fn from(r: ItemResult) -> Record {
        match r.outcome {
            Outcome::Response { status, body } => Record::Answer { attempts: r.attempts, status, body },
            Outcome::Failed { error } => Record::Failed { attempts: r.attempts, error, quarantined: false },
        }
    }
}

impl Record {
    /// The bytes it carries: its body, or its error text.
    pub fn size(&self) -> usize {
        match self {
            Record::Answer { body, .. } => body.len(),
            Record::Failed { error, .. } => error.len(),
        }
    }
}

impl Store {
    /// Opens a store that must already exist (for `export`, `status`, `verify`); creates
    /// nothing.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        match std::fs::metadata(path) {
            Err(_) => return Err(StoreError::Missing(path.to_owned())),
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::NotAStore { path: path.to_owned(), why: "not a directory" })
            }
            Ok(_) if !path.join("db").is_file() => {
                return Err(StoreError::NotAStore { path: path.to_owned(), why: "no sled database in it" })
            }
            Ok(_) => {}
        }
        let store = Self::open(path)?;
        store.check_format()?;
        store.check_manifest()?;
        Ok(store)
    }

    /// Opens the store for a run of the job `url_template`, creating it if there is none.
    /// A store made for another job is refused.
    pub fn open_for_job(path: &Path, url_template: &str) -> Result<Store, StoreError> {
        let fresh = match std::fs::metadata(path) {
            // Owner-only: what a job fetched often needed credentials to fetch. The files sled
            // creates inside follow the process umask, which `main` sets to 077.
            Err(_) => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(path)
                    .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
                true
            }
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::NotAStore { path: path.to_owned(), why: "not a directory" })
            }
            Ok(_) => {
                let empty = std::fs::read_dir(path)
                    .map_err(|source| StoreError::Io { path: path.to_owned(), source })?
                    .next()
                    .is_none();
                if !empty && !path.join("db").is_file() {
                    return Err(StoreError::NotAStore {
                        path: path.to_owned(),
                        why: "a directory with other files in it",
                    });
                }
                empty
            }
        };
        let store = Self::open(path)?;
        match store.guard(|| Ok(store.db.get("job.url")?))? {
            Some(stored) if stored != url_template.as_bytes() => {
                return Err(StoreError::JobMismatch {
                    path: path.to_owned(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    given: url_template.to_owned(),
                });
            }
            Some(_) => {
                store.check_format()?;
                store.check_manifest()?;
            }
            // A store that had files but no metadata lost it: never start it afresh.
            None if !fresh => return Err(store.damaged("its metadata (the job, the format) is gone")),
            None => store.initialise(url_template)?,
        }
        Ok(store)
    }

    fn fresh_meta(&self) -> Meta {
        let job_url = self.job().ok().flatten().unwrap_or_default();
        Meta { format: FORMAT.to_owned(), job_url, records: 0, scope: None }
    }

    fn initialise(&self, url_template: &str) -> Result<(), StoreError> {
        self.write_meta(&Meta {
            format: FORMAT.to_owned(),
            job_url: url_template.to_owned(),
            records: 0,
            scope: None,
        })?;
        self.guard(|| {
            self.db.insert("format", FORMAT.as_bytes())?;
            self.db.insert("job.url", url_template.as_bytes())?;
            self.db.flush()?;
            Ok(())
        })
    }

    fn write_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        let json = serde_json::to_vec(meta).expect("strings and a number always serialize");
        let tmp = self.path.join(format!("{META_FILE}.new"));
        std::fs::write(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, self.path.join(META_FILE)))
            .map_err(|source| StoreError::Io { path: self.path.clone(), source })
    }

    /// Records, outside sled, how many records the store holds at the end of a run that added
    /// `new_records` (counted as they were written: a scan of a large store would cost as much
    /// memory as the store's size, as sled keeps what it reads).
    pub fn record_manifest(&self, new_records: u64) -> Result<(), StoreError> {
        let mut meta = read_meta(&self.path).unwrap_or_else(|| self.fresh_meta());
        meta.job_url = self.job()?.unwrap_or_default();
        meta.records += new_records;
        self.write_meta(&meta)
    }

    /// Checks that sled still reads at least as many records as the last run left.
    fn check_manifest(&self) -> Result<(), StoreError> {
        let Some(meta) = read_meta(&self.path) else { return Ok(()) };
        let c = self.counts()?;
        let now = c.answered + c.failed;
        if now < meta.records {
            return Err(self.damaged(&format!(
                "the last run left {} records and sled now reads {now}: its files were damaged, and sled drops \
                 what follows damage as it opens them",
                meta.records
            )));
        }
        Ok(())
    }

    fn open(path: &Path) -> Result<Store, StoreError> {
        let lock = lock(path)?;
        let opened = panics::catching(|| {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
                .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
            let blocks = db.open_tree(BLOCKS_TREE)?;
            Ok::<_, StoreError>((db, blocks))
        });
        let (db, blocks) = match opened {
            Ok(result) => result?,
            Err(panic) => {
                return Err(StoreError::Damaged { path: path.to_owned(), detail: format!("sled: {panic}") })
            }
        };
        Ok(Store { path: path.to_owned(), db, blocks, _lock: lock })
    }

    /// Runs `f`, which uses sled: a panic inside sled (as some damage makes it) comes back as
    /// [`StoreError::Damaged`].
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        guard(&self.path, f)
    }

    fn damaged(&self, detail: &str) -> StoreError {
        StoreError::Damaged { path: self.path.clone(), detail: detail.to_owned() }
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.guard(|| Ok(self.db.get("format")?))? {
            Some(f) if f == FORMAT.as_bytes() => Ok(()),
            Some(f) => Err(StoreError::Format {
                path: self.path.clone(),
                found: String::from_utf8_lossy(&f).into_owned(),
            }),
            None if self.path.join(META_FILE).is_file() => {
                Err(self.damaged("its metadata (the job, the format) is gone"))
            }
            None => Err(StoreError::NotAStore { path: self.path.clone(), why: "no flota metadata" }),
        }
    }

    /// The URL template the store was made for.
    pub fn job(&self) -> Result<Option<String>, StoreError> {
        self.guard(|| Ok(self.db.get("job.url")?.map(|v| String::from_utf8_lossy(&v).into_owned())))
    }

    /// A read handle for the planner thread.
    pub fn reader(&self) -> Reader {
        Reader { path: self.path.clone(), blocks: self.blocks.clone(), cached: None }
    }

    /// Every record in id order. A damaged block ends the iteration with its error.
    #[cfg(test)]
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Record), StoreError>> + '_ {
        self.records_in(0, u64::MAX)
    }

    /// The records of ids `from..=to`, in id order: only their blocks are read. A damaged
    /// block ends the iteration with its error.
    pub fn records_in(
        &self,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, Record), StoreError>> + '_ {
        let (first, _) = block::locate(from);
        let (last, _) = block::locate(to);
        let mut blocks = self.blocks.range(key(first)..=key(last));
        let mut current = Vec::new().into_iter();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if let Some(record) = current.next() {
                return Some(Ok(record));
            }
            if failed {
                return None;
            }
            let next = self.guard(|| {
                let Some(kv) = blocks.next() else { return Ok(None) };
                let (k, v) = kv?;
                let n = block_of(&k)?;
                let first = block::first_id(n);
                let records = block::decode(&v, n).map_err(|why| corrupt(&self.path, n, why))?;
                Ok(Some(
                    records
                        .into_iter()
                        .map(move |(offset, r)| (first + u64::from(offset), r))
                        .filter(|(id, _)| (from..=to).contains(id))
                        .collect::<Vec<_>>(),
                ))
            });
            match next {
                Ok(Some(records)) => current = records.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// Counts of answered and failed ids, from the blocks' indexes alone.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.guard(|| {
            let mut c = Counts::default();
            for kv in self.blocks.iter() {
                let (k, v) = kv?;
                let n = block_of(&k)?;
                let index = Index::parse(&v, n).map_err(|why| corrupt(&self.path, n, why))?;
                for e in index.entries() {
                    match e.kind {
                        KIND_ANSWER => {
                            c.answered += 1;
                            c.success += u64::from((200..300).contains(&e.status));
                        }
                        KIND_QUARANTINED => {
                            c.failed += 1;
                            c.quarantined += 1;
                        }
                        _ => c.failed += 1,
                    }
                }
            }
            Ok(c)
        })
    }

    /// The last run's figures, as [`Store::set_last_run`] wrote them.
    pub fn last_run(&self) -> Result<Option<LastRun>, StoreError> {
        match self.guard(|| Ok(self.db.get("run.last")?))? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::BadLastRun(e.to_string()))
            }
        }
    }

    /// Records the figures of the run that just ended, durably.
    pub fn set_last_run(&self, run: &LastRun) -> Result<(), StoreError> {
        let json = serde_json::to_vec(run).expect("plain numbers and strings always serialize");
        self.guard(|| {
            self.db.insert("run.last", json)?;
            self.db.flush()?;
            Ok(())
        })
    }

    /// Writes whole blocks (block number → records) and flushes: for `salvage`, into a new store.
    pub fn put_blocks(&self, blocks: BTreeMap<u64, BTreeMap<u16, Record>>) -> Result<(), StoreError> {
        self.guard(|| {
            for chunk in blocks.into_iter().collect::<Vec<_>>().chunks(256) {
                let mut batch = sled::Batch::default();
                for (n, records) in chunk {
                    batch.insert(&key(*n), block::encode(*n, records));
                }
                self.blocks.apply_batch(batch)?;
            }
            self.db.flush()?;
            Ok(())
        })
    }

    /// A handle for the writer thread.
    pub fn writer(&self) -> Writer {
        Writer { path: self.path.clone(), db: self.db.clone(), blocks: self.blocks.clone() }
    }
}

/// The figures of a store's last run, kept as JSON under `run.last`: one struct both ways,
/// so a field cannot be written under one name and read under another.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    /// The range, as `A..B`.
    pub ids: String,
    /// When it started, in seconds since the epoch.
    pub started_unix: u64,
    /// When it finished.
    pub finished_unix: u64,
    /// Wall time.
    pub wall_secs: f64,
    /// Ids stored.
    pub fetched: u64,
    /// Of those, with an HTTP answer.
    pub answered: u64,
    /// Of those, failed (quarantined included).
    pub failed: u64,
    /// Ids already settled, skipped.
    pub skipped: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Worker restarts.
    pub restarts: u64,
    /// Ids quarantined.
    pub quarantined: u64,
    /// The signal that stopped it, if one did.
    pub stopped_by: Option<i32>,
    /// Ids stored per second.
    pub items_per_sec: f64,
    /// Worker processes.
    pub workers: u32,
    /// Threads per worker.
    pub threads: u32,
    /// Its exit code.
    pub exit_code: i32,
    /// Its shard of the ids, if it had one.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// How it was paced (absent from stores written before pacing existed).
    #[serde(default)]
    pub pacing: Pacing,
}

/// A run's pacing figures, as `status` shows them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pacing {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Of those, answered 429.
    pub too_many: u64,
    /// Fleet-wide pauses a server asked for, and their total length.
    pub pauses: u64,
    /// Seconds paused.
    pub paused_secs: f64,
    /// The rate in force at the end, requests per second, if any.
    pub rate: Option<f64>,
    /// Where it came from: "--rate" or "announced".
    pub rate_source: Option<String>,
    /// The fleet's concurrency limit at the end.
    pub concurrency: u32,
    /// Its lowest and highest over the run.
    pub concurrency_range: (u32, u32),
    /// Whether it adapted (no `--concurrency`).
    pub adaptive: bool,
}

/// A read handle on the blocks, for the planner thread. It keeps the last block it read, as
/// consecutive windows usually fall in the same block.
pub struct Reader {
    path: PathBuf,
    blocks: sled::Tree,
    cached: Option<(u64, sled::IVec)>,
}

impl Reader {
    /// How many ids of `covered` are settled (see [`Reader::settled_in`]).
    pub fn count_settled(
        &mut self,
        covered: &scope::Covered,
        retry_quarantined: bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for b in covered.blocks() {
            let (block, mask) = b?;
            let (settled, _) = self.settled_mask(block, retry_quarantined)?;
            n += mask_len(&mask_and(&mask, &settled));
        }
        Ok(n)
    }

    /// The ids of block `n` that are settled (as [`Reader::settled_in`] says), and of those,
    /// the quarantined ones. Reads the block's index only.
    pub fn settled_mask(&mut self, n: u64, retry_quarantined: bool) -> Result<(Mask, Mask), StoreError> {
        let Some(value) = self.block(n)? else { return Ok(([0; 4], [0; 4])) };
        let kinds = Kinds::of(&self.path, n, &value)?;
        if retry_quarantined {
            return Ok((kinds.answered, [0; 4]));
        }
        let settled = [0, 1, 2, 3].map(|w| kinds.answered[w] | kinds.quarantined[w]);
        Ok((settled, kinds.quarantined))
    }

    /// Appends to `out` the ids of `window` that are settled, in order: those with an HTTP
    /// answer, and quarantined ones unless `retry_quarantined`. Returns how many of them are
    /// quarantined. Reads the blocks' indexes only.
    #[cfg(test)]
    pub fn settled_in(
        &mut self,
        window: crate::partition::IdRange,
        retry_quarantined: bool,
        out: &mut Vec<u64>,
    ) -> Result<u64, StoreError> {
        let mut quarantined = 0;
        let (first, _) = block::locate(window.start);
        let (last, _) = block::locate(window.end - 1);
        for n in first..=last {
            let Some(value) = self.block(n)? else { continue };
            let index = Index::parse(&value, n).map_err(|why| corrupt(&self.path, n, why))?;
            let base = block::first_id(n);
            for e in index.entries() {
                let id = base + u64::from(e.offset);
                if id < window.start || id >= window.end {
                    continue;
                }
                match e.kind {
                    KIND_ANSWER => out.push(id),
                    KIND_QUARANTINED if !retry_quarantined => {
                        out.push(id);
                        quarantined += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(quarantined)
    }

    fn block(&mut self, n: u64) -> Result<Option<sled::IVec>, StoreError> {
        if let Some((cached, value)) = &self.cached {
            if *cached == n {
                return Ok(Some(value.clone()));
            }
        }
        let value = guard(&self.path, || Ok(self.blocks.get(key(n))?))?;
        self.cached = value.clone().map(|v| (n, v));
        Ok(value)
    }
}

/// Which ids of a block have a record, and of which kind, from its index alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kinds {
    /// With an HTTP answer.
    pub answered: Mask,
    /// With any record.
    pub recorded: Mask,
    /// Quarantined.
    pub quarantined: Mask,
}

impl Kinds {
    /// The kinds of the records of block `n`, stored as `value` in the store at `path`.
    pub fn of(path: &Path, n: u64, value: &[u8]) -> Result<Kinds, StoreError> {
        let index = Index::parse(value, n).map_err(|why| corrupt(path, n, why))?;
        let base = block::first_id(n);
        let mut k = Kinds::default();
        for e in index.entries() {
            let id = base + u64::from(e.offset);
            mask_set(&mut k.recorded, id);
            match e.kind {
                KIND_ANSWER => mask_set(&mut k.answered, id),
                KIND_QUARANTINED => mask_set(&mut k.quarantined, id),
                _ => {}
            }
        }
        Ok(k)
    }
}

/// Shares the store's lock with other readers, so no run writes it meanwhile; changes nothing
/// (a store without a lock file is read without one).
fn lock_shared(path: &Path) -> Result<Option<Flock<File>>, StoreError> {
    let Ok(file) = File::open(path.join(LOCK_FILE)) else { return Ok(None) };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(locked) => Ok(Some(locked)),
        Err((file, _)) => Err(StoreError::Locked { path: path.to_owned(), holder: holder(file) }),
    }
}

/// Who holds a lock file: "pid N" as it says, or "another process".
fn holder(mut file: File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!("pid {pid}"),
        None => "another process".to_owned(),
    }
}

/// Takes the store's lock file, recording our pid in it; names the holder if it is taken.
fn lock(path: &Path) -> Result<Flock<File>, StoreError> {
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK_FILE))
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io)?;
            locked.rewind().map_err(io)?;
            writeln!(locked, "{}", std::process::id()).map_err(io)?;
            Ok(locked)
        }
        Err((file, _)) => Err(StoreError::Locked { path: path.to_owned(), holder: holder(file) }),
    }
}

/// The writer thread's handle on the store.
pub struct Writer {
    path: PathBuf,
    db: sled::Db,
    blocks: sled::Tree,
}

/// Asks the writer thread to do something.
pub enum WriteCmd {
    /// Store these results.
    Put(Vec<ItemResult>),
    /// Store this id as quarantined: it killed `deaths` workers; `reason` starts "quarantined:".
    Quarantine {
        /// The id.
        id: u64,
        /// Workers it killed.
        deaths: u32,
        /// The stored error.
        reason: String,
    },
    /// Flush everything and end.
    Finish,
}

/// What the writer thread made durable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Results with an HTTP answer.
    pub answered: u64,
    /// Failed results, quarantined ids included.
    pub failed: u64,
    /// Quarantined ids.
    pub quarantined: u64,
    /// Attempts beyond the first, summed.
    pub retries: u64,
    /// Ids that had no record before (the others replaced a failure).
    pub new_records: u64,
    /// Of the answered, with a 2xx status.
    pub success: u64,
    /// How long the write and flush took.
    pub flush: Option<Duration>,
}

impl Durable {
    fn add(&mut self, d: Durable) {
        self.answered += d.answered;
        self.failed += d.failed;
        self.quarantined += d.quarantined;
        self.retries += d.retries;
        self.new_records += d.new_records;
        self.success += d.success;
        self.flush = d.flush.or(self.flush);
    }
}

/// What the writer thread reports.
#[derive(Debug)]
pub enum WriteAck {
    /// These results are flushed: they count as done.
    Durable(Durable),
    /// Everything is flushed and the thread has ended.
    Finished,
    /// A write failed; the thread has ended.
    Failed(StoreError),
}

pub use writer::{write_loop, Timing};

#[cfg(test)]
mod tests;
