//! `verify` and `salvage`: what is left of a damaged store, and a new store made of it.
//!
//! Neither changes the store it reads. sled repairs a database as it opens it (it may cut its
//! log short at the first damage), so sled only ever opens a copy, made in a temporary
//! directory. Salvage does not need sled at all: every block names and checks itself, so the
//! store's files are read raw and every intact block found ([`block::scan`]). Copies of a block
//! that sled had not yet reclaimed are merged, record by record: flota never replaces an
//! answer, so an answer wins over a failure, and a quarantine over a plain failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::access::{block_of, guard, read_meta, BLOCKS_TREE, CACHE_BYTES, REFS_TREE};
use super::block;
use super::blockref::BlockRef;
use super::db::Store;
use super::error::StoreError;
use super::history::LastRun;
use super::lock::lock_shared;
use super::record::Record;
use super::segments::{self, SegmentReader, SEGMENTS_DIR};
use crate::job::{IdRange, Shard};

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// The job, from sled's metadata or the store's `flota.meta`.
    pub job: Option<String>,
    /// Why sled could not open (a copy of) the store, if it could not.
    pub unopenable: Option<String>,
    /// Records sled reads back intact.
    pub readable: u64,
    /// Blocks sled returns that are damaged, as id ranges, with why.
    pub damaged: Vec<(IdRange, String)>,
    /// Where sled itself failed while reading, if it did.
    pub sled_failed: Option<String>,
    /// Whether sled lost the metadata (job, format).
    pub metadata_lost: bool,
    /// Records the last run left, as the store's `flota.meta` says.
    pub left_by_last_run: Option<u64>,
    /// Records a salvage would recover.
    pub recoverable: u64,
    /// Of the last run's range (if known), ids with no recoverable record.
    pub last_range: Option<(IdRange, u64)>,
}

impl Report {
    /// Whether the store is sound.
    pub fn sound(&self) -> bool {
        self.unopenable.is_none()
            && self.damaged.is_empty()
            && self.sled_failed.is_none()
            && !self.metadata_lost
            && self.left_by_last_run.is_none_or(|left| self.readable >= left)
    }
}

/// A copy of a store's sled files in a temporary directory, for sled to open (and repair)
/// instead of the original. The segments are not copied: they are only read, in place.
fn copy_of(path: &Path) -> Result<tempfile::TempDir, StoreError> {
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    let tmp = tempfile::Builder::new().prefix("flota-verify-").tempdir().map_err(io)?;
    copy_dir(path, tmp.path(), true).map_err(io)?;
    Ok(tmp)
}

fn copy_dir(from: &Path, to: &Path, top: bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if top && entry.file_name() == SEGMENTS_DIR {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_dir(&entry.path(), &target, false)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The files a store's blocks may be found in, raw: its segments (format 3), and the files sled
/// keeps it in, `db` then every blob (where format 2 kept them).
fn store_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = segments::list(path)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _)| segments::segment_path(path, id))
        .collect();
    files.push(path.join("db"));
    if let Ok(blobs) = std::fs::read_dir(path.join("blobs")) {
        let mut more: Vec<PathBuf> = blobs.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
}

/// Every record found intact in the store's files, by id, copies merged.
fn recover(path: &Path) -> BTreeMap<u64, Record> {
    let mut records = BTreeMap::new();
    for file in store_files(path) {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        for (n, found) in block::scan(&bytes) {
            for (offset, record) in found {
                let id = block::first_id(n) + u64::from(offset);
                match records.get(&id) {
                    Some(kept) if rank(kept) >= rank(&record) => {}
                    _ => {
                        records.insert(id, record);
                    }
                }
            }
        }
    }
    records
}

/// Which of two records of one id to keep: flota never replaces an answer.
fn rank(r: &Record) -> u8 {
    match r {
        Record::Answer { .. } => 2,
        Record::Failed { quarantined: true, .. } => 1,
        Record::Failed { .. } => 0,
    }
}

/// What sled makes of a copy of the store: the job, the last run's range, and its reading.
fn read_with_sled(path: &Path, report: &mut Report) -> Result<Option<(IdRange, Option<Shard>)>, StoreError> {
    let copy = copy_of(path)?;
    let at = copy.path();
    let opened = guard(at, || {
        let db = sled::Config::new().path(at).cache_capacity(CACHE_BYTES).open()?;
        // Format 3 points into segments; format 2 (not yet upgraded) holds whole blocks.
        let format3 = db.get("format")?.is_some_and(|f| f != b"2");
        let blocks = db.open_tree(if format3 { REFS_TREE } else { BLOCKS_TREE })?;
        Ok((db, blocks, format3))
    });
    let (db, blocks, format3) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            report.unopenable = Some(without_hint(e));
            return Ok(None);
        }
    };
    let meta = guard(at, || Ok((db.get("job.url")?, db.get("run.last")?)));
    let mut range = None;
    match meta {
        Ok((Some(job), last)) => {
            report.job = Some(String::from_utf8_lossy(&job).into_owned());
            range = last
                .and_then(|v| serde_json::from_slice::<LastRun>(&v).ok())
                .and_then(|run| Some((run.ids.parse::<IdRange>().ok()?, run.shard)));
        }
        Ok((None, _)) => report.metadata_lost = true,
        Err(e) => report.sled_failed = Some(without_hint(e)),
    }
    let mut segments = SegmentReader::new(path);
    let mut iter = blocks.iter();
    loop {
        let next = guard(at, || Ok(iter.next().transpose()?));
        match next {
            Ok(None) => break,
            Ok(Some((k, v))) => {
                let Ok(n) = block_of(&k) else {
                    report
                        .damaged
                        .push((IdRange { start: 0, end: 0 }, "a key that is not a block number".into()));
                    continue;
                };
                let first = block::first_id(n);
                let whole = if format3 {
                    BlockRef::read(path, n, &v)
                        .and_then(|r| r.load(&mut segments, path, n))
                        .map_err(without_hint)
                } else {
                    Ok(v.to_vec())
                };
                match whole.and_then(|b| {
                    block::Index::parse(&b, n).map(|i| i.entries().count()).map_err(|e| e.to_string())
                }) {
                    Ok(records) => report.readable += records as u64,
                    Err(why) => {
                        report.damaged.push((IdRange { start: first, end: first + block::BLOCK_IDS }, why))
                    }
                }
            }
            Err(e) => {
                report.sled_failed = Some(without_hint(e));
                break;
            }
        }
    }
    Ok(range)
}

/// A store error's own words, without the advice to run verify (this is verify).
fn without_hint(e: StoreError) -> String {
    match e {
        StoreError::Damaged { detail, .. } => detail,
        other => shared::error_chain(&other),
    }
}

/// Reads everything readable of the store at `path` and says whether it is sound. Changes
/// nothing.
pub fn verify(path: &Path) -> Result<Report, StoreError> {
    check_is_store(path)?;
    let _lock = lock_shared(path)?;
    inspect(path).map(|(report, _)| report)
}

/// What [`verify`] reports, and the records a salvage would copy (read once for both).
fn inspect(path: &Path) -> Result<(Report, BTreeMap<u64, Record>), StoreError> {
    let mut report = Report::default();
    let range = read_with_sled(path, &mut report)?;
    let meta = read_meta(path);
    report.left_by_last_run = meta.as_ref().map(|m| m.records);
    if report.job.is_none() {
        report.job = meta.map(|m| m.job_url);
    }
    let recovered = recover(path);
    report.recoverable = recovered.len() as u64;
    if let Some((range, shard)) = range {
        let owned = |id: &u64| shard.is_none_or(|s| s.owns_block(block::locate(*id).0));
        let expected = shard.map_or(range.len(), |s| s.ids_in(range));
        let missing =
            expected - recovered.range(range.start..range.end).filter(|(id, _)| owned(id)).count() as u64;
        report.last_range = Some((range, missing));
    }
    Ok((report, recovered))
}

fn check_is_store(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Err(_) => Err(StoreError::Missing(path.to_owned())),
        Ok(m) if !m.is_dir() => Err(StoreError::NotAStore { path: path.to_owned(), why: "not a directory" }),
        Ok(_) if !path.join("db").is_file() => {
            Err(StoreError::NotAStore { path: path.to_owned(), why: "no sled database in it" })
        }
        Ok(_) => Ok(()),
    }
}

/// What [`salvage`] did.
#[derive(Debug)]
pub struct Salvaged {
    /// The job of both stores.
    pub job: String,
    /// Records copied.
    pub records: u64,
    /// Of the last run's range (if known), ids with no record in the new store.
    pub missing: Option<(IdRange, u64)>,
}

/// Copies every intact record of the store at `path` into a new store at `into`, of the same
/// job. `into` must not exist. Changes nothing at `path`.
pub fn salvage(path: &Path, into: &Path) -> Result<Salvaged, StoreError> {
    if into.exists() {
        return Err(StoreError::NotAStore {
            path: into.to_owned(),
            why: "it exists already; salvage makes a new store",
        });
    }
    check_is_store(path)?;
    let _lock = lock_shared(path)?;
    let (report, recovered) = inspect(path)?;
    let Some(job) = report.job.clone() else {
        return Err(StoreError::Damaged {
            path: path.to_owned(),
            detail: "its job (URL template) is unreadable, both in sled and in flota.meta".into(),
        });
    };
    let store = Store::open_for_job(into, &job)?;
    // A keyed store's key table, as its files are: its records are nothing without it.
    store.salvage_keys_from(path)?;
    // The scope, so the new store stays its shard's; a list's ids are not recovered (a rerun
    // with the same --ids-file or --keys records them again).
    if let Some(scope) = read_meta(path).and_then(|m| m.scope) {
        store.adopt_scope(&scope, None)?;
    }
    let mut blocks: BTreeMap<u64, BTreeMap<u16, Record>> = BTreeMap::new();
    for (id, record) in recovered {
        let (n, offset) = block::locate(id);
        blocks.entry(n).or_default().insert(offset, record);
    }
    let records = blocks.values().map(|b| b.len() as u64).sum();
    store.put_blocks(blocks)?;
    Ok(Salvaged { job, records, missing: report.last_range })
}
