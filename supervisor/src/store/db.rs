//! An open store: the sled database, opened and checked (its lock, its format, its job, its
//! manifest), and what is read and written on it directly.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use super::access::{
    block_of, corrupt, guard, key, read_meta, Meta, BLOCKS_TREE, CACHE_BYTES, FORMAT, META_FILE,
};
use super::block::{self, Index, KIND_ANSWER, KIND_QUARANTINED};
use super::error::StoreError;
use super::lock::lock;
use super::reader::Reader;
use super::record::{Counts, Record};
use crate::util::panics;

/// The writer thread's handle on the store.
pub struct Writer {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    pub(super) blocks: sled::Tree,
}

/// An open store.
pub struct Store {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    pub(super) blocks: sled::Tree,
    _lock: Flock<File>,
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

    pub(super) fn fresh_meta(&self) -> Meta {
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
    pub(super) fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        guard(&self.path, f)
    }

    pub(super) fn damaged(&self, detail: &str) -> StoreError {
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
