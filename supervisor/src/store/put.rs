//! Writing blocks durably, the one way every writer does it (the run's writer thread, `merge`,
//! `salvage`, the upgrade from format 2, the reclaim of dead bytes): append each block to the
//! segments, sync them, then point sled at them in one batch and flush. A kill at any moment
//! leaves every flushed entry pointing at bytes that are on disk.

use std::path::Path;

use super::access::{corrupt, guard, key};
use super::blockref::BlockRef;
use super::error::StoreError;
use super::segments::Appender;

/// When many blocks are copied at once, they are written in batches of about this many bytes...
const STAGE_BYTES: usize = 8 << 20;
/// ...or this many blocks, whichever comes first.
const STAGE_BLOCKS: usize = 64;

/// Where a store's blocks are written: its database, its tree of entries, and its segments.
pub struct Sink<'a> {
    /// The store, for errors.
    pub path: &'a Path,
    /// The database, flushed at the end.
    pub db: &'a sled::Db,
    /// Block number → [`BlockRef`].
    pub refs: &'a sled::Tree,
    /// The segments the blocks are appended to.
    pub appender: &'a mut Appender,
    staged: Vec<(u64, Vec<u8>)>,
    staged_bytes: usize,
    /// Blocks made durable through this sink so far.
    pub written: u64,
}

impl<'a> Sink<'a> {
    /// A sink into the store at `path`.
    pub fn new(
        path: &'a Path,
        db: &'a sled::Db,
        refs: &'a sled::Tree,
        appender: &'a mut Appender,
    ) -> Sink<'a> {
        Sink { path, db, refs, appender, staged: Vec::new(), staged_bytes: 0, written: 0 }
    }

    /// Adds a block to the next batch, and writes the batch when it is full. Returns whether
    /// it wrote.
    pub fn stage(&mut self, n: u64, bytes: Vec<u8>) -> Result<bool, StoreError> {
        self.staged_bytes += bytes.len();
        self.staged.push((n, bytes));
        if self.staged_bytes < STAGE_BYTES && self.staged.len() < STAGE_BLOCKS {
            return Ok(false);
        }
        self.finish()?;
        Ok(true)
    }

    /// Writes what is staged.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        let staged = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        self.put(&staged)
    }

    /// Writes `blocks` (block number, encoded block), durably. The bytes of the entries they
    /// replace are dead from then on (the reclaim finds them by what no entry points at).
    pub fn put(&mut self, blocks: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (n, bytes) in blocks {
            let (segment, offset) = self.appender.append(bytes)?;
            let r =
                BlockRef::of_block(*n, bytes, segment, offset).map_err(|why| corrupt(self.path, *n, why))?;
            batch.insert(&key(*n), &r.encode()[..]);
        }
        self.appender.sync()?;
        guard(self.path, || {
            self.refs.apply_batch(batch)?;
            self.db.flush()?;
            Ok(())
        })?;
        self.written += blocks.len() as u64;
        Ok(())
    }
}
