//! The store: one sled database, written only by the supervisor. The only module that imports
//! sled.
//!
//! Layout: the default tree holds metadata (`format`, `job.url`, `run.last`); the `items` tree
//! maps each id, as 8 big-endian bytes so scans come out in id order, to its record:
//!
//! ```text
//! kind u8 (1 = HTTP answer, 2 = failed, | attempts u32 BE | answer: status u16 BE, body bytes
//!          3 = quarantined)                               | failed, quarantined: error, UTF-8
//! ```
//!
//! Writes go through one writer thread ([`write_loop`]) in sled batches, and a result counts
//! as done only after the `flush()` that follows its batch: sled's flush is the durability point.
//! A store is held by one process at a time: `flota.lock` in its directory is flock()ed and
//! names the holder's pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::fcntl::{Flock, FlockArg};
use shared::{ItemResult, Outcome};

use crate::partition::IdRange;

const FORMAT: &[u8] = b"1";
const KIND_ANSWER: u8 = 1;
const KIND_FAILED: u8 = 2;
const KIND_QUARANTINED: u8 = 3;
const LOCK_FILE: &str = "flota.lock";
/// sled's page cache. Its default (1 GiB) would let the supervisor grow to that size on a long
/// run; writes are sequential and reads are range scans, so a small cache costs little.
const CACHE_BYTES: u64 = 64 << 20;

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
    #[error("store {path} has format {found}, this build reads format 1")]
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
    /// A record does not decode.
    #[error("the record of id {id} is corrupt")]
    Corrupt {
        /// The record's id.
        id: u64,
    },
    /// A key in the items tree is not an id.
    #[error("a key of {len} bytes in the items is not an id: the store is damaged")]
    BadKey {
        /// The key's length (ids are 8 bytes).
        len: usize,
    },
    /// The last run's figures do not decode.
    #[error("the last run's figures are unreadable ({0})")]
    BadLastRun(String),
}

impl StoreError {
    /// Whether the error is the invocation's fault (exit 2) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            StoreError::Sled(_)
                | StoreError::Corrupt { .. }
                | StoreError::BadKey { .. }
                | StoreError::BadLastRun(_)
        )
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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
    items: sled::Tree,
    _lock: Flock<File>,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| StoreError::BadKey { len: key.len() })?))
}

impl Store {
    /// Opens a store that must already exist (for `export` and `status`); creates nothing.
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
        Ok(store)
    }

    /// Opens the store for a run of the job `url_template`, creating it if there is none.
    /// A store made for another job is refused.
    pub fn open_for_job(path: &Path, url_template: &str) -> Result<Store, StoreError> {
        match std::fs::metadata(path) {
            // Owner-only: what a job fetched often needed credentials to fetch. The files sled
            // creates inside follow the process umask, which `main` sets to 077.
            Err(_) => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(|source| StoreError::Io { path: path.to_owned(), source })?,
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
            }
        }
        let store = Self::open(path)?;
        match store.db.get("job.url")? {
            Some(stored) if stored != url_template.as_bytes() => {
                return Err(StoreError::JobMismatch {
                    path: path.to_owned(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    given: url_template.to_owned(),
                });
            }
            Some(_) => store.check_format()?,
            None => {
                store.db.insert("format", FORMAT)?;
                store.db.insert("job.url", url_template.as_bytes())?;
                store.db.flush()?;
            }
        }
        Ok(store)
    }

    fn open(path: &Path) -> Result<Store, StoreError> {
        let lock = lock(path)?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        let items = db.open_tree("items")?;
        Ok(Store { path: path.to_owned(), db, items, _lock: lock })
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.db.get("format")? {
            Some(f) if f == FORMAT => Ok(()),
            Some(f) => Err(StoreError::Format {
                path: self.path.clone(),
                found: String::from_utf8_lossy(&f).into_owned(),
            }),
            None => Err(StoreError::NotAStore { path: self.path.clone(), why: "no flota metadata" }),
        }
    }

    /// The URL template the store was made for.
    pub fn job(&self) -> Result<Option<String>, StoreError> {
        Ok(self.db.get("job.url")?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// A read handle for the planner thread.
    pub fn reader(&self) -> Reader {
        Reader { items: self.items.clone() }
    }

    /// Every record in id order.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Record), StoreError>> + '_ {
        self.items.iter().map(|kv| {
            let (k, v) = kv?;
            let id = id_of(&k)?;
            Ok((id, decode(&v).ok_or(StoreError::Corrupt { id })?))
        })
    }

    /// Counts of answered and failed ids.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        for kv in self.items.iter() {
            let (k, v) = kv?;
            match (v.first(), v.get(5..7)) {
                (Some(&KIND_ANSWER), Some(s)) => {
                    c.answered += 1;
                    if (200..300).contains(&u16::from_be_bytes([s[0], s[1]])) {
                        c.success += 1;
                    }
                }
                (Some(&KIND_FAILED), _) => c.failed += 1,
                (Some(&KIND_QUARANTINED), _) => {
                    c.failed += 1;
                    c.quarantined += 1;
                }
                _ => return Err(StoreError::Corrupt { id: id_of(&k)? }),
            }
        }
        Ok(c)
    }

    /// The last run's figures, as [`Store::set_last_run`] wrote them.
    pub fn last_run(&self) -> Result<Option<LastRun>, StoreError> {
        match self.db.get("run.last")? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::BadLastRun(e.to_string()))
            }
        }
    }

    /// Records the figures of the run that just ended, durably.
    pub fn set_last_run(&self, run: &LastRun) -> Result<(), StoreError> {
        let json = serde_json::to_vec(run).expect("plain numbers and strings always serialize");
        self.db.insert("run.last", json)?;
        self.db.flush()?;
        Ok(())
    }

    /// A handle for the writer thread.
    pub fn writer(&self) -> Writer {
        Writer { db: self.db.clone(), items: self.items.clone() }
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
}

/// A read handle on the items, for the planner thread.
#[derive(Clone)]
pub struct Reader {
    items: sled::Tree,
}

impl Reader {
    /// Appends to `out` the ids of `window` that are settled, in order: those with an HTTP
    /// answer, and quarantined ones unless `retry_quarantined`. Returns how many of them are
    /// quarantined.
    pub fn settled_in(
        &self,
        window: IdRange,
        retry_quarantined: bool,
        out: &mut Vec<u64>,
    ) -> Result<u64, StoreError> {
        let mut quarantined = 0;
        for kv in self.items.range(key(window.start)..key(window.end)) {
            let (k, v) = kv?;
            let id = id_of(&k)?;
            match v.first() {
                Some(&KIND_ANSWER) => out.push(id),
                Some(&KIND_QUARANTINED) if !retry_quarantined => {
                    out.push(id);
                    quarantined += 1;
                }
                _ => {}
            }
        }
        Ok(quarantined)
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
        Err((mut file, _)) => {
            let mut text = String::new();
            let holder =
                match file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u32>().ok()) {
                    Some(pid) => format!("pid {pid}"),
                    None => "another process".to_owned(),
                };
            Err(StoreError::Locked { path: path.to_owned(), holder })
        }
    }
}

/// Encodes a quarantined id's record.
pub fn encode_quarantined(deaths: u32, reason: &str, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(KIND_QUARANTINED);
    buf.extend_from_slice(&deaths.to_be_bytes());
    buf.extend_from_slice(reason.as_bytes());
}

/// Encodes a result as its record.
pub fn encode(result: &ItemResult, buf: &mut Vec<u8>) {
    buf.clear();
    match &result.outcome {
        Outcome::Response { status, body } => {
            buf.reserve(7 + body.len());
            buf.push(KIND_ANSWER);
            buf.extend_from_slice(&result.attempts.to_be_bytes());
            buf.extend_from_slice(&status.to_be_bytes());
            buf.extend_from_slice(body);
        }
        Outcome::Failed { error } => {
            buf.push(KIND_FAILED);
            buf.extend_from_slice(&result.attempts.to_be_bytes());
            buf.extend_from_slice(error.as_bytes());
        }
    }
}

/// Decodes a record; `None` if it is malformed.
pub fn decode(v: &[u8]) -> Option<Record> {
    let attempts = u32::from_be_bytes(v.get(1..5)?.try_into().ok()?);
    match *v.first()? {
        KIND_ANSWER => Some(Record::Answer {
            attempts,
            status: u16::from_be_bytes(v.get(5..7)?.try_into().ok()?),
            body: v.get(7..)?.to_vec(),
        }),
        kind @ (KIND_FAILED | KIND_QUARANTINED) => Some(Record::Failed {
            attempts,
            error: String::from_utf8_lossy(v.get(5..)?).into_owned(),
            quarantined: kind == KIND_QUARANTINED,
        }),
        _ => None,
    }
}

/// The writer thread's handle on the store.
pub struct Writer {
    db: sled::Db,
    items: sled::Tree,
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

/// Results are flushed once this many are waiting...
const FLUSH_ITEMS: usize = 16_384;
/// ...or their records pass this many bytes...
const FLUSH_BYTES: usize = 16 << 20;
/// ...or the oldest has waited this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The writer thread's body: it batches results, applies each batch, flushes, and acks.
pub fn write_loop(writer: Writer, cmds: Receiver<WriteCmd>, acks: Sender<WriteAck>) {
    let mut batch = sled::Batch::default();
    let mut pending = Durable::default();
    let (mut items, mut bytes) = (0usize, 0usize);
    let mut oldest: Option<Instant> = None;
    let mut buf = Vec::new();
    loop {
        let timeout = oldest.map_or(Duration::from_secs(3600), |t| FLUSH_EVERY.saturating_sub(t.elapsed()));
        let cmd = cmds.recv_timeout(timeout);
        let finish =
            matches!(cmd, Ok(WriteCmd::Finish) | Err(crossbeam_channel::RecvTimeoutError::Disconnected));
        match cmd {
            Ok(WriteCmd::Put(results)) => {
                for r in results {
                    encode(&r, &mut buf);
                    bytes += buf.len();
                    items += 1;
                    pending.retries += u64::from(r.attempts.saturating_sub(1));
                    match r.outcome {
                        Outcome::Response { .. } => pending.answered += 1,
                        Outcome::Failed { .. } => pending.failed += 1,
                    }
                    batch.insert(&key(r.id), buf.as_slice());
                }
                oldest.get_or_insert_with(Instant::now);
            }
            Ok(WriteCmd::Quarantine { id, deaths, reason }) => {
                encode_quarantined(deaths, &reason, &mut buf);
                batch.insert(&key(id), buf.as_slice());
                (items, bytes) = (items + 1, bytes + buf.len());
                pending.failed += 1;
                pending.quarantined += 1;
                oldest.get_or_insert_with(Instant::now);
            }
            Ok(WriteCmd::Finish) | Err(_) => {}
        }
        let due = oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        if items > 0 && (finish || due || items >= FLUSH_ITEMS || bytes >= FLUSH_BYTES) {
            let flushed = writer
                .items
                .apply_batch(std::mem::take(&mut batch))
                .and_then(|()| writer.db.flush().map(drop));
            if let Err(e) = flushed {
                let _ = acks.send(WriteAck::Failed(e.into()));
                return;
            }
            let _ = acks.send(WriteAck::Durable(std::mem::take(&mut pending)));
            (items, bytes, oldest) = (0, 0, None);
        }
        if finish {
            if let Err(e) = writer.db.flush() {
                let _ = acks.send(WriteAck::Failed(e.into()));
                return;
            }
            let _ = acks.send(WriteAck::Finished);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u64, status: u16, body: &str) -> ItemResult {
        ItemResult { id, attempts: 2, outcome: Outcome::Response { status, body: body.as_bytes().to_vec() } }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode(&answer(1, 404, "nope"), &mut buf);
        assert_eq!(decode(&buf), Some(Record::Answer { attempts: 2, status: 404, body: b"nope".to_vec() }));
        let failed = ItemResult { id: 2, attempts: 8, outcome: Outcome::Failed { error: "HTTP 503".into() } };
        encode(&failed, &mut buf);
        assert_eq!(
            decode(&buf),
            Some(Record::Failed { attempts: 8, error: "HTTP 503".into(), quarantined: false })
        );
        encode_quarantined(2, "quarantined: boom", &mut buf);
        assert_eq!(
            decode(&buf),
            Some(Record::Failed { attempts: 2, error: "quarantined: boom".into(), quarantined: true })
        );
        assert_eq!(decode(&[9, 0, 0, 0, 1]), None);
        assert_eq!(decode(&[1, 0]), None);
    }

    #[test]
    fn writer_makes_results_durable_and_the_store_finds_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sled");
        let store = Store::open_for_job(&path, "http://127.0.0.1:1/{id}").expect("opens");
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let writer = store.writer();
        let t = std::thread::spawn(move || write_loop(writer, cmd_rx, ack_tx));
        let failed = ItemResult { id: 5, attempts: 8, outcome: Outcome::Failed { error: "x".into() } };
        cmd_tx.send(WriteCmd::Put(vec![answer(3, 200, "a"), answer(9, 404, "b"), failed])).expect("sends");
        cmd_tx
            .send(WriteCmd::Quarantine { id: 4, deaths: 2, reason: "quarantined: x".into() })
            .expect("sends");
        cmd_tx.send(WriteCmd::Finish).expect("sends");
        t.join().expect("joins");
        let acks: Vec<_> = ack_rx.iter().collect();
        let durable = Durable { answered: 2, failed: 2, quarantined: 1, retries: 9 };
        assert!(matches!(acks[0], WriteAck::Durable(d) if d == durable), "{acks:?}");
        assert!(matches!(acks.last(), Some(WriteAck::Finished)));
        let mut out = Vec::new();
        store.reader().settled_in(IdRange { start: 0, end: 9 }, false, &mut out).expect("scans");
        assert_eq!(out, vec![3, 4], "9 is outside the window, 5 failed, 4 is quarantined");
        out.clear();
        store.reader().settled_in(IdRange { start: 0, end: 9 }, true, &mut out).expect("scans");
        assert_eq!(out, vec![3], "quarantined ids are fetched again when asked");
        assert_eq!(
            store.counts().expect("counts"),
            Counts { answered: 2, success: 1, failed: 2, quarantined: 1 }
        );
        let ids: Vec<u64> = store.records().map(|r| r.expect("decodes").0).collect();
        assert_eq!(ids, vec![3, 4, 5, 9]);
    }

    #[test]
    fn a_store_refuses_another_job_and_a_second_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sled");
        let store = Store::open_for_job(&path, "http://a/{id}").expect("opens");
        match Store::open_for_job(&path, "http://b/{id}") {
            Err(StoreError::Locked { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        drop(store);
        match Store::open_for_job(&path, "http://b/{id}") {
            Err(StoreError::JobMismatch { stored, given, .. }) => {
                assert_eq!((stored.as_str(), given.as_str()), ("http://a/{id}", "http://b/{id}"));
            }
            other => panic!("expected JobMismatch, got {:?}", other.err()),
        }
        assert!(matches!(Store::open_existing(&dir.path().join("nope")), Err(StoreError::Missing(_))));
        assert!(!dir.path().join("nope").exists(), "a missing store is not created");
    }
}
