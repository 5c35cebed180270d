//! The ids a store's scope covers, walked block by block ([`Covered`]), and how a stored list of
//! ids is kept: in a tree of its own, in chunks of about [`CHUNK_IDS`] ids, so that the planner
//! walks a list block by block as it walks a range, and a list of ten million ids costs the
//! supervisor no more memory than a range does once it is stored.

use super::access::{guard, key};
use super::block;
use super::error::StoreError;
#[cfg(test)]
use crate::job::IdRange;
use crate::job::{mask_len, mask_set, range_mask, Ids, Mask, Scope, Shard};

/// The tree of a list's ids.
pub const LISTED_TREE: &str = "ids.listed";

/// About how many ids one key of a stored list holds. sled's memory grows with the number of
/// keys written (one 32-byte mask per block of a 10M-id list took the supervisor to a VmHWM of
/// 321 MiB), so a list is kept in chunks of this many ids, as varint deltas: 2,442 keys for 10M.
const CHUNK_IDS: usize = 4096;

/// The masks of sorted, distinct ids, block by block.
pub fn listed_masks(ids: &[u64]) -> impl Iterator<Item = (u64, Mask)> + '_ {
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
pub fn listed_chunks(ids: &[u64]) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
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
pub fn chunk_masks(path: &std::path::Path, k: &[u8], v: &[u8]) -> Result<Vec<(u64, Mask)>, StoreError> {
    let first = u64::from_be_bytes(k.try_into().map_err(|_| StoreError::BadKey { len: k.len() })?);
    let ids = chunk_ids(first, v).ok_or_else(|| StoreError::Damaged {
        path: path.to_owned(),
        detail: format!("the list of its job's ids is unreadable from id {first}"),
    })?;
    Ok(listed_masks(&ids).collect())
}

/// The ids a store's scope covers, walked block by block. Cheap to clone: the planner, the
/// counter and the writer each hold one.
#[derive(Clone)]
pub struct Covered {
    pub(super) scope: Scope,
    pub(super) listed: Option<sled::Tree>,
    pub(super) path: std::path::PathBuf,
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
            (Ids::Listed(_) | Ids::Keys(_), Some(tree)) => Box::new(
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
            (Ids::Listed(_) | Ids::Keys(_), None) => Box::new(std::iter::empty()),
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
            (Ids::Listed(_) | Ids::Keys(_), Some(tree)) => guard(&self.path, || {
                let end = block::first_id(n).saturating_add(block::BLOCK_IDS - 1);
                let Some(kv) = tree.range(..=key(end)).next_back() else { return Ok([0; 4]) };
                let (k, v) = kv?;
                let masks = chunk_masks(&self.path, &k, &v)?;
                Ok(masks.into_iter().find(|&(b, _)| b == n).map_or([0; 4], |(_, m)| m))
            }),
            (Ids::Listed(_) | Ids::Keys(_), None) => Ok([0; 4]),
        }
    }

    /// How many ids the scope covers.
    pub fn total(&self) -> Result<u64, StoreError> {
        match (&self.scope.ids, self.scope.shard) {
            (Ids::Range(r), None) => Ok(r.len()),
            (Ids::Range(r), Some(s)) => Ok(s.ids_in(*r)),
            (Ids::Listed(l), None) => Ok(l.count),
            (Ids::Listed(_), Some(_)) => self.blocks().map(|b| b.map(|(_, m)| mask_len(&m))).sum(),
            // A shard's store holds only its own keys' ordinals.
            (Ids::Keys(k), _) => Ok(k.held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{mask_ids, IdRange, Ids, Listed};

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
