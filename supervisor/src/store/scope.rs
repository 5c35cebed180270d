//! What a job covers, as its store records it: the [`Scope`] (a range or a list of ids, and the
//! shard of them), and the list itself (in [`super::covered`]).
//!
//! The record is the store's: `status` tells from it whether the job is complete, `merge` checks
//! that shard stores belong to one job, and a run of another shard is refused.

use super::access::{guard, key, read_meta};
use super::covered::{listed_chunks, Covered, LISTED_TREE};
use super::db::Store;
use super::error::StoreError;
use crate::job::{Ids, Scope, Shard, BLOCK_IDS};

/// Writes sorted, distinct ids into a list's tree as they come, in chunks that never split a
/// block (see [`super::covered`]): the list is never held whole. The tree is brought to the new
/// list in place: a chunk already stored as it is is not written again, and stored chunks the
/// new list lacks are removed. A list with keys appended rewrites only its last chunks (sled's
/// memory grows with what is written: rewriting all 2,442 chunks of a 10M-key list cost the
/// supervisor a VmHWM of 55.6 to 61.9 MiB, against 40 to 52 MiB for the rerun that writes none).
fn write_listed(
    path: &std::path::Path,
    tree: &sled::Tree,
    ids: &mut dyn Iterator<Item = Result<u64, StoreError>>,
) -> Result<(), StoreError> {
    const CHUNK: usize = 4096;
    let mut pending: Vec<u64> = Vec::with_capacity(CHUNK + BLOCK_IDS as usize);
    let mut batch = sled::Batch::default();
    let mut batched = 0;
    // The key after the last chunk written: stored keys before it are settled.
    let mut from: Vec<u8> = Vec::new();
    let mut emit = |pending: &mut Vec<u64>, last: bool| -> Result<(), StoreError> {
        for (first, value) in listed_chunks(pending) {
            let k = key(first);
            guard(path, || {
                for stale in tree.range(from.as_slice()..k.as_slice()).keys() {
                    batch.remove(stale?);
                    batched += 1;
                }
                if tree.get(k)?.as_deref() != Some(value.as_slice()) {
                    batch.insert(&k, value);
                    batched += 1;
                }
                Ok(())
            })?;
            from = (first + 1).to_be_bytes().to_vec();
        }
        pending.clear();
        if last {
            guard(path, || {
                for stale in tree.range(from.as_slice()..).keys() {
                    batch.remove(stale?);
                    batched += 1;
                }
                Ok(())
            })?;
        }
        if batched >= 64 || last {
            let b = std::mem::take(&mut batch);
            batched = 0;
            guard(path, || Ok(tree.apply_batch(b)?))?;
        }
        Ok(())
    };
    for id in ids {
        let id = id?;
        if pending.len() >= CHUNK && pending.last().is_some_and(|&l| l / BLOCK_IDS != id / BLOCK_IDS) {
            emit(&mut pending, false)?;
        }
        pending.push(id);
    }
    emit(&mut pending, true)
}

/// The metadata key of the scope (JSON).
const SCOPE_KEY: &str = "job.scope";

impl Store {
    /// The scope the store records; `None` for a store made before flota recorded one.
    pub fn scope(&self) -> Result<Option<Scope>, StoreError> {
        let Some(json) = self.guard(|| Ok(self.db.get(SCOPE_KEY)?))? else { return Ok(None) };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| self.damaged(&format!("its scope is unreadable ({e})")))
    }

    /// Refuses a run of `shard` on a store of another (a whole store for a shard, a shard's
    /// store for a whole run), unless the store is new.
    pub(super) fn check_shard(&self, shard: Option<Shard>) -> Result<(), StoreError> {
        let stored = self.scope()?;
        let fresh = stored.is_none() && self.guard(|| Ok(self.refs.is_empty()))?;
        // A store from before scopes were recorded was never a shard's.
        let stored_shard = stored.as_ref().and_then(|s| s.shard);
        if !fresh && stored_shard != shard {
            return Err(StoreError::ShardMismatch {
                path: self.path.clone(),
                stored: stored_shard,
                given: shard,
            });
        }
        Ok(())
    }

    /// Takes on a run's scope. A store of another shard is refused ([`Store::check_shard`]);
    /// then the scope is recorded, and a list's ids (`listed`, sorted and distinct: ids, or
    /// keys' ordinals) are written when the list differs from the stored one.
    pub fn adopt_scope(
        &self,
        scope: &Scope,
        listed: Option<&mut dyn Iterator<Item = Result<u64, StoreError>>>,
    ) -> Result<(), StoreError> {
        self.check_shard(scope.shard)?;
        let stored = self.scope()?;
        let json = serde_json::to_vec(scope).expect("plain fields always serialize");
        let tree = self.guard(|| Ok(self.db.open_tree(LISTED_TREE)?))?;
        // The same list again is not written again (a salvaged store lost its list).
        let same_list =
            stored.as_ref().is_some_and(|s| s.ids.same(&scope.ids)) && !self.guard(|| Ok(tree.is_empty()))?;
        if let (Some(ids), false) = (listed, same_list) {
            write_listed(&self.path, &tree, ids)?;
        }
        self.guard(|| {
            self.db.insert(SCOPE_KEY, json)?;
            self.db.flush()?;
            Ok(())
        })?;
        let mut meta = read_meta(&self.path).unwrap_or_else(|| self.fresh_meta());
        meta.scope = Some(scope.clone());
        self.write_meta(&meta)
    }

    /// What the recorded scope covers, to walk it (a run records it first: [`Store::adopt_scope`]).
    pub fn covered(&self) -> Result<Covered, StoreError> {
        let scope =
            self.scope()?.ok_or_else(|| self.damaged("it records no scope (which ids the job covers)"))?;
        let listed = match scope.ids {
            Ids::Listed(_) | Ids::Keys(_) => Some(self.guard(|| Ok(self.db.open_tree(LISTED_TREE)?))?),
            Ids::Range(_) => None,
        };
        Ok(Covered { scope, listed, path: self.path.clone() })
    }

    /// Copies another store's list of ids into this one (for `merge`).
    pub fn copy_listed_from(&self, other: &Store) -> Result<(), StoreError> {
        let from = other.guard(|| Ok(other.db.open_tree(LISTED_TREE)?))?;
        self.guard(|| {
            let to = self.db.open_tree(LISTED_TREE)?;
            let mut batch = sled::Batch::default();
            for kv in from.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
            }
            to.apply_batch(batch)?;
            Ok(())
        })
    }
}
