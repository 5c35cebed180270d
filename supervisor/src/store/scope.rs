//! What a job covers, as its store records it: a range of ids or a list of them (`--ids-file`),
//! and the shard of them the store holds.
//!
//! The record is the store's: `status` tells from it whether the job is complete, `merge` checks
//! that shard stores belong to one job, and a run of another shard is refused. A list is kept
//! in a tree of its own, in chunks of about [`CHUNK_IDS`] ids, so that the planner walks it
//! block by block as it walks a range, and a list of ten million ids costs the supervisor no
//! more memory than a range does once it is stored.

use std::fmt;

use crate::partition::{mask_len, mask_set, range_mask, IdRange, Mask, Shard};
use crate::store::{block, guard, key, Store, StoreError};

/// The metadata key of the scope (JSON).
const SCOPE_KEY: &str = "job.scope";
/// The tree of a list's masks.
pub(crate) const LISTED_TREE: &str = "ids.listed";

/// The ids a job covers, and the shard of them one store holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// The job's ids.
    pub ids: Ids,
    /// The part of them this store holds; `None`: all of them.
    pub shard: Option<Shard>,
}

/// A job's ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ids {
    /// `--ids A..B`.
    Range(IdRange),
    /// `--ids-file`: a list, summarised (the ids are in [`LISTED_TREE`]).
    Listed(Listed),
}

/// A list of ids, summarised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// Distinct ids.
    pub count: u64,
    /// The smallest and the largest.
    pub first: u64,
    /// The largest.
    pub last: u64,
    /// A hash of the sorted ids: two lists are the same job when count and digest agree.
    pub digest: u64,
    /// Where they were read from (a path, or `stdin`).
    pub source: String,
}

impl Listed {
    /// The summary of `ids` (sorted, distinct, not empty) read from `source`.
    pub fn of(ids: &[u64], source: String) -> Listed {
        let digest = ids.iter().fold(0x0066_6c6f_7461_u64, |h, &id| splitmix(h ^ id));
        Listed {
            count: ids.len() as u64,
            first: ids.first().copied().unwrap_or(0),
            last: ids.last().copied().unwrap_or(0),
            digest,
            source,
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ids {
    /// Whether two jobs cover the same ids (a list's source may differ).
    pub fn same(&self, other: &Ids) -> bool {
        match (self, other) {
            (Ids::Range(a), Ids::Range(b)) => a == b,
            (Ids::Listed(a), Ids::Listed(b)) => (a.count, a.digest) == (b.count, b.digest),
            _ => false,
        }
    }
}

impl fmt::Display for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ids::Range(r) => write!(f, "{r}"),
            Ids::Listed(l) => write!(
                f,
                "{} ids listed in {} ({}..={})",
                crate::report::thousands(l.count),
                l.source,
                l.first,
                l.last
            ),
        }
    }
}

/// "ids 0..1000, shard 1/3", "the 5 ids listed in ids.txt (3..=99)".
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ids {
            Ids::Range(r) => write!(f, "ids {r}")?,
            Ids::Listed(_) => write!(f, "the {}", self.ids)?,
        }
        match self.shard {
            Some(s) => write!(f, ", shard {s}"),
            None => Ok(()),
        }
    }
}

/// About how many ids one key of a stored list holds. sled's memory grows with the number of
/// keys written (one 32-byte mask per block of a 10M-id list took the supervisor to a VmHWM of
/// 321 MiB), so a list is kept in chunks of this many ids, as varint deltas: 2,442 keys for 10M.
const CHUNK_IDS: usize = 4096;

/// The masks of sorted, distinct ids, block by block.
fn listed_masks(ids: &[u64]) -> impl Iterator<Item = (u64, Mask)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let &first = ids.get(at)?;
        let (n, _) = block::locate(first);
        let mut mask = [0; 4];
        while let Some(&id) = ids.get(at).filter(|&&id| block::locate(id).0 == n) {
            mask_set(&mut mask, id);
            at += 1;
        }
        Some((n, mask))
    })
}

/// Sorted, distinct ids cut into chunks of about [`CHUNK_IDS`] that never split a block: each
/// its first id (the key) and the varint deltas of the others.
fn listed_chunks(ids: &[u64]) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let &first = ids.get(start)?;
        let mut end = (start + CHUNK_IDS).min(ids.len());
        let (last_block, _) = block::locate(ids[end - 1]);
        while ids.get(end).is_some_and(|&id| block::locate(id).0 == last_block) {
            end += 1;
        }
        at = end;
        let mut value = Vec::with_capacity(2 * (end - start));
        for pair in ids[start..end].windows(2) {
            let mut delta = pair[1] - pair[0];
            while delta >= 0x80 {
                value.push((delta as u8) | 0x80);
                delta >>= 7;
            }
            value.push(delta as u8);
        }
        Some((first, value))
    })
}

/// The ids of a stored chunk; `None` if its bytes are not varints.
fn chunk_ids(first: u64, value: &[u8]) -> Option<Vec<u64>> {
    let mut ids = vec![first];
    let (mut delta, mut shift) = (0u64, 0u32);
    for &byte in value {
        delta |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            let next = ids.last()?.checked_add(delta)?;
            ids.push(next);
            (delta, shift) = (0, 0);
        } else {
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }
    (shift == 0).then_some(ids)
}

/// A stored chunk's blocks and masks.
fn chunk_masks(path: &std::path::Path, k: &[u8], v: &[u8]) -> Result<Vec<(u64, Mask)>, StoreError> {
    let first = u64::from_be_bytes(k.try_into().map_err(|_| StoreError::BadKey { len: k.len() })?);
    let ids = chunk_ids(first, v).ok_or_else(|| StoreError::Damaged {
        path: path.to_owned(),
        detail: format!("the list of its job's ids is unreadable from id {first}"),
    })?;
    Ok(listed_masks(&ids).collect())
}

impl Store {
    /// The scope the store records; `None` for a store made before flota recorded one.
    pub fn scope(&self) -> Result<Option<Scope>, StoreError> {
        let Some(json) = self.guard(|| Ok(self.db.get(SCOPE_KEY)?))? else { return Ok(None) };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| self.damaged(&format!("its scope is unreadable ({e})")))
    }

    /// Takes on a run's scope. A store of another shard is refused, as is a whole store for a
    /// shard and a shard's store for a whole run; then the scope is recorded, and a list's ids
    /// (`listed`, sorted and distinct) are written when they differ from the stored ones.
    pub fn adopt_scope(&self, scope: &Scope, listed: Option<Vec<u64>>) -> Result<(), StoreError> {
        let stored = self.scope()?;
        let fresh = stored.is_none() && self.guard(|| Ok(self.blocks.is_empty()))?;
        // A store from before scopes were recorded was never a shard's.
        let stored_shard = stored.as_ref().and_then(|s| s.shard);
        if !fresh && stored_shard != scope.shard {
            return Err(StoreError::ShardMismatch {
                path: self.path.clone(),
                stored: stored_shard,
                given: scope.shard,
            });
        }
        let json = serde_json::to_vec(scope).expect("plain fields always serialize");
        self.guard(|| {
            let tree = self.db.open_tree(LISTED_TREE)?;
            // The same list again is not written again (a salvaged store lost its list).
            let same_list = stored.as_ref().is_some_and(|s| s.ids.same(&scope.ids)) && !tree.is_empty();
            if let (Some(ids), false) = (listed, same_list) {
                tree.clear()?;
                let mut batch = sled::Batch::default();
                for (written, (first, value)) in listed_chunks(&ids).enumerate() {
                    batch.insert(&key(first), value);
                    if written % 64 == 63 {
                        tree.apply_batch(std::mem::take(&mut batch))?;
                    }
                }
                tree.apply_batch(batch)?;
            }
            self.db.insert(SCOPE_KEY, json)?;
            self.db.flush()?;
            Ok(())
        })?;
        let mut meta = super::read_meta(&self.path).unwrap_or_else(|| self.fresh_meta());
        meta.scope = Some(scope.clone());
        self.write_meta(&meta)
    }

    /// What the recorded scope covers, to walk it (a run records it first: [`Store::adopt_scope`]).
    pub fn covered(&self) -> Result<Covered, StoreError> {
        let scope =
            self.scope()?.ok_or_else(|| self.damaged("it records no scope (which ids the job covers)"))?;
        let listed = match scope.ids {
            Ids::Listed(_) => Some(self.guard(|| Ok(self.db.open_tree(LISTED_TREE)?))?),
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

/// The ids a store's scope covers, walked block by block. Cheap to clone: the planner, the
/// counter and the writer each hold one.
#[derive(Clone)]
pub struct Covered {
    scope: Scope,
    listed: Option<sled::Tree>,
    path: std::path::PathBuf,
}

impl Covered {
    /// A range's coverage, with no store behind it (for tests).
    #[cfg(test)]
    pub fn of_range(range: IdRange) -> Covered {
        Covered { scope: Scope { ids: Ids::Range(range), shard: None }, listed: None, path: "test".into() }
    }

    fn owns(&self, n: u64) -> bool {
        self.scope.shard.is_none_or(|s| s.owns_block(n))
    }

    /// The covered blocks in order, each with the ids of it the scope covers (never empty).
    pub fn blocks(&self) -> Box<dyn Iterator<Item = Result<(u64, Mask), StoreError>> + '_> {
        match (&self.scope.ids, &self.listed) {
            (Ids::Range(r), _) => {
                let (first, last) = (r.start / block::BLOCK_IDS, (r.end - 1) / block::BLOCK_IDS);
                let shard = self.scope.shard.unwrap_or(Shard { index: 0, count: 1 });
                Box::new(shard.blocks(first, last).map(move |n| Ok((n, range_mask(n, *r)))))
            }
            (Ids::Listed(_), Some(tree)) => Box::new(
                tree.iter()
                    .flat_map(|kv| {
                        let masks = guard(&self.path, || {
                            let (k, v) = kv?;
                            chunk_masks(&self.path, &k, &v)
                        });
                        match masks {
                            Ok(masks) => masks.into_iter().map(Ok).collect::<Vec<_>>(),
                            Err(e) => vec![Err(e)],
                        }
                    })
                    .filter(|r| r.as_ref().map_or(true, |(n, _)| self.owns(*n))),
            ),
            (Ids::Listed(_), None) => Box::new(std::iter::empty()),
        }
    }

    /// The ids of block `n` the scope covers.
    pub fn in_block(&self, n: u64) -> Result<Mask, StoreError> {
        if !self.owns(n) {
            return Ok([0; 4]);
        }
        match (&self.scope.ids, &self.listed) {
            (Ids::Range(r), _) => Ok(range_mask(n, *r)),
            // A chunk never splits a block: the block is in the last chunk that starts before
            // its end, or in none.
            (Ids::Listed(_), Some(tree)) => guard(&self.path, || {
                let end = block::first_id(n).saturating_add(block::BLOCK_IDS - 1);
                let Some(kv) = tree.range(..=key(end)).next_back() else { return Ok([0; 4]) };
                let (k, v) = kv?;
                let masks = chunk_masks(&self.path, &k, &v)?;
                Ok(masks.into_iter().find(|&(b, _)| b == n).map_or([0; 4], |(_, m)| m))
            }),
            (Ids::Listed(_), None) => Ok([0; 4]),
        }
    }

    /// How many ids the scope covers.
    pub fn total(&self) -> Result<u64, StoreError> {
        match (&self.scope.ids, self.scope.shard) {
            (Ids::Range(r), None) => Ok(r.len()),
            (Ids::Range(r), Some(s)) => Ok(s.ids_in(*r)),
            (Ids::Listed(l), None) => Ok(l.count),
            (Ids::Listed(_), Some(_)) => self.blocks().map(|b| b.map(|(_, m)| mask_len(&m))).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::mask_ids;

    #[test]
    fn a_list_is_masked_block_by_block() {
        let ids = [3, 255, 256, 1000, 1023, 1024];
        let masks: Vec<_> = listed_masks(&ids).collect();
        assert_eq!(masks.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        let back: Vec<u64> = masks.iter().flat_map(|&(n, m)| mask_ids(n, m)).collect();
        assert_eq!(back, ids);
    }

    #[test]
    fn a_list_is_stored_in_chunks_that_never_split_a_block_and_read_back_whole() {
        // Dense runs, gaps, and ids at the top of the id space.
        let mut ids: Vec<u64> = (0..10_000).map(|i| i * 3).collect();
        ids.extend((0..5_000u64).map(|i| (1 << 40) + i * 1_000_003));
        ids.extend([u64::MAX - 300, u64::MAX - 1, u64::MAX]);
        let chunks: Vec<(u64, Vec<u8>)> = listed_chunks(&ids).collect();
        assert!(chunks.len() > 2 && chunks.len() < ids.len() / 1000);
        let mut back = Vec::new();
        let mut blocks_seen = Vec::new();
        for (first, value) in &chunks {
            let part = chunk_ids(*first, value).expect("decodes");
            let mut blocks: Vec<u64> = part.iter().map(|&id| block::locate(id).0).collect();
            blocks.dedup();
            for b in &blocks {
                assert!(!blocks_seen.contains(b), "block {b} split between chunks");
            }
            blocks_seen.extend(blocks);
            back.extend(part);
        }
        assert_eq!(back, ids);
        assert_eq!(chunk_ids(5, &[0x80]), None, "a truncated varint");
    }

    #[test]
    fn lists_are_the_same_job_when_their_ids_are() {
        let a = Ids::Listed(Listed::of(&[1, 2, 3], "a.txt".into()));
        assert!(a.same(&Ids::Listed(Listed::of(&[1, 2, 3], "b.txt".into()))));
        assert!(!a.same(&Ids::Listed(Listed::of(&[1, 2, 4], "a.txt".into()))));
        assert!(!a.same(&Ids::Range(IdRange { start: 1, end: 4 })));
    }
}
