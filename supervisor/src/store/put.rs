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
    /// Entries of blocks appended since the last commit, and those blocks' bytes.
    batch: sled::Batch,
    appended: usize,
    appended_bytes: usize,
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
        Sink {
            path,
            db,
            refs,
            appender,
            batch: sled::Batch::default(),
            appended: 0,
            appended_bytes: 0,
            written: 0,
        }
    }

    /// Appends a block, and commits when what was appended since the last commit is a full
    /// batch. Returns whether it committed.
    pub fn stage(&mut self, n: u64, bytes: &[u8]) -> Result<bool, StoreError> {
        self.append(n, bytes)?;
        if self.appended_bytes < STAGE_BYTES && self.appended < STAGE_BLOCKS {
            return Ok(false);
        }
        self.commit()?;
        Ok(true)
    }

    /// Writes `blocks` (block number, encoded block), durably. The bytes of the entries they
    /// replace are dead from then on (the reclaim finds them by what no entry points at).
    pub fn put(&mut self, blocks: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        for (n, bytes) in blocks {
            self.append(*n, bytes)?;
        }
        self.commit()
    }

    /// Appends block `n` to the segments, for the next [`Sink::commit`] to point sled at: a
    /// writer can drop each block's bytes as soon as they are appended.
    pub fn append(&mut self, n: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let (segment, offset) = self.appender.append(bytes)?;
        let r = BlockRef::of_block(n, bytes, segment, offset).map_err(|why| corrupt(self.path, n, why))?;
        self.batch.insert(&key(n), &r.encode()[..]);
        self.appended += 1;
        self.appended_bytes += bytes.len();
        Ok(())
    }

    /// Makes what was appended durable: syncs the segments, then applies the entries in one
    /// batch and flushes.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.appended == 0 {
            return Ok(());
        }
        self.appender.sync()?;
        let batch = std::mem::take(&mut self.batch);
        guard(self.path, || {
            self.refs.apply_batch(batch)?;
            self.db.flush()?;
            Ok(())
        })?;
        self.written += std::mem::take(&mut self.appended) as u64;
        self.appended_bytes = 0;
        Ok(())
    }
}
