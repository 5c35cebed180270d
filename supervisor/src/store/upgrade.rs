//! Older formats to format 4, in place, when a store is first opened by a build that writes
//! format 4 (any command that opens it, or `supervisor upgrade --store S` to do it alone).
//!
//! Format 3 to 4 moves nothing: format 4 reads format 3's blocks and entries as they are (their
//! fetch times unknown) and writes each block in format 4 when its ids are next written, and
//! the key table is made when a keyed job first runs. The switch is one sled insert, flushed:
//! a kill leaves a store that opens as format 3 or as format 4.
//!
//! Format 2 kept whole blocks in sled's `blocks` tree; format 3 keeps them in segments and their
//! entries in `refs`. The upgrade copies every block's bytes as they are (no decompression) into
//! segments and writes their entries, durably, while the store still says format 2; only then
//! does it switch the format to 3 (one sled insert, flushed), and after that drop the old tree.
//! So a kill at any moment leaves a store that opens as format 2 (the next open starts the
//! upgrade again, from nothing: it first removes what a killed one left) or as format 3 (the
//! next open drops a `blocks` tree still there). Never neither.

use super::access::{block_of, read_meta, BLOCKS_TREE, FORMAT};
use super::db::Store;
use super::error::StoreError;
use super::segments::{self, Appender};

/// Set to a number of blocks in the environment, the upgrade aborts the process once it has
/// copied at least that many, before switching the format; set to `switched`, right after the
/// switch, before the old tree is dropped. For the tests that kill an upgrade midway.
const ABORT_ENV: &str = "FLOTA_CHAOS_UPGRADE_ABORT";

impl Store {
    /// Upgrades this format-3 store to format 4.
    pub(super) fn upgrade_from_3(&self) -> Result<(), StoreError> {
        log::info!("store {}: upgrading from format 3 to {FORMAT} (keys, fetch times)", self.path.display());
        self.switch_format()
    }

    /// Says the store is [`FORMAT`] from now on: in sled (the switch), then in the metadata file.
    fn switch_format(&self) -> Result<(), StoreError> {
        self.guard(|| {
            self.db.insert("format", FORMAT.as_bytes())?;
            self.db.flush()?;
            Ok(())
        })?;
        if let Some(mut meta) = read_meta(&self.path) {
            meta.format = FORMAT.to_owned();
            self.write_meta(&meta)?;
        }
        Ok(())
    }

    /// Upgrades this format-2 store to the current format. Returns how many blocks it moved.
    pub(super) fn upgrade(&self) -> Result<u64, StoreError> {
        log::info!("store {}: upgrading from format 2 to {FORMAT} (bodies out of sled)", self.path.display());
        self.clear_half_upgrade()?;
        let abort_after = std::env::var(ABORT_ENV).ok();
        let abort_at: Option<u64> = abort_after.as_deref().and_then(|v| v.parse().ok());
        let mut appender = Appender::open(&self.path)?;
        let blocks = self.guard(|| Ok(self.db.open_tree(BLOCKS_TREE)?))?;
        let mut sink = self.sink(&mut appender);
        for kv in blocks.iter() {
            let (k, v) = self.guard(|| Ok(kv?))?;
            if sink.stage(block_of(&k)?, &v)? && abort_at.is_some_and(|at| sink.written >= at) {
                std::process::abort();
            }
        }
        sink.commit()?;
        let moved = sink.written;
        if abort_at.is_some_and(|at| moved >= at) {
            std::process::abort();
        }
        // The switch: from here on the store is the current format.
        self.switch_format()?;
        if abort_after.as_deref() == Some("switched") {
            std::process::abort();
        }
        self.drop_format2_tree()?;
        log::info!("store {}: upgraded, {moved} blocks moved", self.path.display());
        Ok(moved)
    }

    /// What a killed upgrade left: entries in `refs` and segment files, none of them in use
    /// while the store is still format 2.
    fn clear_half_upgrade(&self) -> Result<(), StoreError> {
        self.guard(|| {
            self.refs.clear()?;
            self.db.flush()?;
            Ok(())
        })?;
        for (segment, _) in segments::list(&self.path)? {
            std::fs::remove_file(segments::segment_path(&self.path, segment))
                .map_err(|source| StoreError::Io { path: self.path.clone(), source })?;
        }
        Ok(())
    }

    /// Drops format 2's tree of whole blocks, if it is still there.
    pub(super) fn drop_format2_tree(&self) -> Result<(), StoreError> {
        self.guard(|| {
            if self.db.tree_names().iter().any(|t| t == BLOCKS_TREE.as_bytes()) {
                self.db.drop_tree(BLOCKS_TREE)?;
                self.db.flush()?;
            }
            Ok(())
        })
    }
}
