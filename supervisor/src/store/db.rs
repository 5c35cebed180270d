//! An open store: the sled database, opened and checked (its lock, its format, its job, its
//! manifest), and what is read and written on it directly.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use super::access::{
    block_of, corrupt, guard, key, read_meta, Meta, CACHE_BYTES, FORMAT, META_FILE, REFS_TREE,
};
use super::block;
use super::blockref::BlockRef;
use super::error::StoreError;
use super::lock::lock;
use super::put::Sink;
use super::reader::Reader;
use super::record::{Counts, Record};
use super::segments::{Appender, SegmentReader};
use crate::job::Refetch;
use crate::util::panics;

/// The writer thread's handle on the store.
pub struct Writer {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    pub(super) refs: sled::Tree,
}

/// An open store.
pub struct Store {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    /// Block number → [`BlockRef`]; the blocks themselves are in the segments.
    pub(super) refs: sled::Tree,
    _lock: Flock<File>,
}

impl Store {
    pub(super) fn fresh_meta(&self) -> Meta {
        let job_url = self.job().ok().flatten().unwrap_or_default();
        Meta { format: FORMAT.to_owned(), job_url, records: 0, scope: None }
    }

    pub(super) fn initialise(&self, url_template: &str) -> Result<(), StoreError> {
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

    pub(super) fn write_meta(&self, meta: &Meta) -> Result<(), StoreError> {
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
    pub(super) fn check_manifest(&self) -> Result<(), StoreError> {
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

    /// Opens sled at `path` under the store's lock; checks nothing else.
    pub(super) fn open(path: &Path) -> Result<Store, StoreError> {
        let lock = lock(path)?;
        let opened = panics::catching(|| {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
                .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
            let refs = db.open_tree(REFS_TREE)?;
            Ok::<_, StoreError>((db, refs))
        });
        let (db, refs) = match opened {
            Ok(result) => result?,
            Err(panic) => {
                return Err(StoreError::Damaged { path: path.to_owned(), detail: format!("sled: {panic}") })
            }
        };
        Ok(Store { path: path.to_owned(), db, refs, _lock: lock })
    }

    /// Runs `f`, which uses sled: a panic inside sled (as some damage makes it) comes back as
    /// [`StoreError::Damaged`].
    pub(super) fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        guard(&self.path, f)
    }

    pub(super) fn damaged(&self, detail: &str) -> StoreError {
        StoreError::Damaged { path: self.path.clone(), detail: detail.to_owned() }
    }

    /// The store's format, if this build reads it: [`FORMAT`], or `"2"` or `"3"` (to be
    /// upgraded).
    pub(super) fn format(&self) -> Result<&'static str, StoreError> {
        match self.guard(|| Ok(self.db.get("format")?))? {
            Some(f) if f == FORMAT.as_bytes() => Ok(FORMAT),
            Some(f) if f == b"2" => Ok("2"),
            Some(f) if f == b"3" => Ok("3"),
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
        Reader {
            path: self.path.clone(),
            refs: self.refs.clone(),
            cached: None,
            refetch: Refetch::default(),
            segments: SegmentReader::new(&self.path),
        }
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
        let mut refs = self.refs.range(key(first)..=key(last));
        let mut segments = SegmentReader::new(&self.path);
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
                let Some(kv) = refs.next() else { return Ok(None) };
                let (k, v) = kv?;
                let n = block_of(&k)?;
                let first = block::first_id(n);
                let bytes = BlockRef::read(&self.path, n, &v)?.load(&mut segments, &self.path, n)?;
                let records = block::decode(&bytes, n).map_err(|why| corrupt(&self.path, n, why))?;
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

    /// Counts of answered and failed ids, from the blocks' entries alone.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.guard(|| {
            let mut c = Counts::default();
            for kv in self.refs.iter() {
                let (k, v) = kv?;
                let n = block_of(&k)?;
                let r = BlockRef::read(&self.path, n, &v)?;
                let answered = crate::job::mask_len(&r.kinds.answered);
                c.answered += answered;
                c.success += u64::from(r.success);
                c.failed += r.records() - answered;
                c.quarantined += crate::job::mask_len(&r.kinds.quarantined);
            }
            Ok(c)
        })
    }

    /// When the stored answers were fetched: the oldest, the median and the newest fetch time,
    /// and how many were fetched before `before` (Unix seconds). A block whose answers share
    /// their second (most: a block is written in one flush) is counted from its entry; only
    /// the others are read. Answers of format 3 (fetch time unknown) are counted apart.
    pub fn ages(&self, before: Option<u32>) -> Result<Ages, StoreError> {
        let mut times: Vec<(u32, u64)> = Vec::new();
        let mut segments = SegmentReader::new(&self.path);
        let mut ages = Ages::default();
        self.guard(|| {
            for kv in self.refs.iter() {
                let (k, v) = kv?;
                let n = block_of(&k)?;
                let r = BlockRef::read(&self.path, n, &v)?;
                let answered = crate::job::mask_len(&r.kinds.answered);
                if answered == 0 {
                    continue;
                }
                if r.oldest == r.newest {
                    times.push((r.oldest, answered));
                    continue;
                }
                let bytes = r.load(&mut segments, &self.path, n)?;
                for (_, record) in block::decode(&bytes, n).map_err(|why| corrupt(&self.path, n, why))? {
                    if let Record::Answer { fetched, .. } = record {
                        times.push((fetched.at, 1));
                    }
                }
            }
            Ok(())
        })?;
        times.sort_unstable();
        ages.unknown = times.iter().filter(|(t, _)| *t == 0).map(|(_, c)| c).sum();
        let known: Vec<(u32, u64)> = times.into_iter().filter(|(t, _)| *t > 0).collect();
        let total: u64 = known.iter().map(|(_, c)| c).sum();
        ages.oldest = known.first().map(|(t, _)| *t);
        ages.newest = known.last().map(|(t, _)| *t);
        let mut seen = 0;
        for &(t, c) in &known {
            seen += c;
            if ages.median.is_none() && 2 * seen >= total {
                ages.median = Some(t);
            }
            if before.is_some_and(|b| t < b) {
                ages.older += c;
            }
        }
        if before.is_some() {
            ages.older += ages.unknown;
        }
        Ok(ages)
    }

    /// Writes whole blocks (block number → records), durably: for `salvage`, into a new store.
    pub fn put_blocks(&self, blocks: BTreeMap<u64, BTreeMap<u16, Record>>) -> Result<(), StoreError> {
        let mut appender = Appender::open(&self.path)?;
        let mut sink = self.sink(&mut appender);
        for (n, records) in blocks {
            sink.stage(n, &block::encode(n, &records))?;
        }
        sink.commit()
    }

    /// Where this store's blocks are written, through `appender`.
    pub(super) fn sink<'a>(&'a self, appender: &'a mut Appender) -> Sink<'a> {
        Sink::new(&self.path, &self.db, &self.refs, appender)
    }

    /// A handle for the writer thread.
    pub fn writer(&self) -> Writer {
        Writer { path: self.path.clone(), db: self.db.clone(), refs: self.refs.clone() }
    }
}

/// When a store's answers were fetched ([`Store::ages`]), in Unix seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ages {
    /// The oldest known fetch time.
    pub oldest: Option<u32>,
    /// The median.
    pub median: Option<u32>,
    /// The newest.
    pub newest: Option<u32>,
    /// Answers whose fetch time is not known (stored by format 3).
    pub unknown: u64,
    /// Answers fetched before the time asked about (those of unknown time included).
    pub older: u64,
}
