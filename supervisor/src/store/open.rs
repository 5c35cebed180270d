//! Opening a store for a command: the checks every open makes (lock, format, job, manifest),
//! and the upgrade of a format-2 store on the way.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::db::Store;
use super::error::StoreError;

impl Store {
    /// Opens a store that must already exist (for `export`, `status`, `merge`); creates nothing
    /// (a format-2 store is upgraded in place).
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        Self::check_is_store(path)?;
        let store = Self::open(path)?;
        store.ready()?;
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
            Some(_) => store.ready()?,
            // A store that had files but no metadata lost it: never start it afresh, unless it
            // holds nothing (a run killed as it created the store, before its metadata was
            // flushed, left sled's files and no record).
            None if !fresh && !store.holds_nothing()? => {
                return Err(store.damaged("its metadata (the job, the format) is gone"))
            }
            None => store.initialise(url_template)?,
        }
        Ok(store)
    }

    /// `supervisor upgrade`: upgrades the store at `path` to the current format if it is older;
    /// returns the format it was and how many blocks moved (`None`: it was current).
    pub fn upgrade_in_place(path: &Path) -> Result<Option<(&'static str, u64)>, StoreError> {
        Self::check_is_store(path)?;
        let store = Self::open(path)?;
        let upgraded = match store.format()? {
            "2" => Some(("2", store.upgrade()?)),
            "3" => Some(("3", store.upgrade_from_3().map(|()| 0)?)),
            _ => None,
        };
        store.ready()?;
        Ok(upgraded)
    }

    /// The checks of an open store: its format (upgrading a format-2 store, finishing a killed
    /// upgrade), then that sled still reads what the last run left.
    fn ready(&self) -> Result<(), StoreError> {
        match self.format()? {
            "2" => {
                self.upgrade()?;
            }
            "3" => {
                self.drop_format2_tree()?;
                self.upgrade_from_3()?;
            }
            _ => self.drop_format2_tree()?,
        }
        self.check_manifest()
    }

    /// Whether the store holds no record, no segment byte and no key: nothing a fresh start
    /// would lose.
    fn holds_nothing(&self) -> Result<bool, StoreError> {
        let no_refs = self.guard(|| Ok(self.refs.is_empty()))?;
        let no_bytes = super::segments::list(&self.path)?.iter().all(|&(_, len)| len == 0);
        Ok(no_refs && no_bytes && !self.path.join("keys").exists())
    }

    fn check_is_store(path: &Path) -> Result<(), StoreError> {
        match std::fs::metadata(path) {
            Err(_) => Err(StoreError::Missing(path.to_owned())),
            Ok(m) if !m.is_dir() => {
                Err(StoreError::NotAStore { path: path.to_owned(), why: "not a directory" })
            }
            Ok(_) if !path.join("db").is_file() => {
                Err(StoreError::NotAStore { path: path.to_owned(), why: "no sled database in it" })
            }
            Ok(_) => Ok(()),
        }
    }
}
