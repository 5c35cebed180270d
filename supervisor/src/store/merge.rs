//! Joining stores.
//!
//! Shards own whole blocks ([`crate::job::Shard`]), so the stores of one job's shards
//! never hold the same block: merging them copies each block's bytes as they are (after
//! checking its checksum), without decompressing a body. Only a block found in two stores (the
//! same shard run twice, or a whole store beside shards) is decoded and merged record by
//! record.

use std::collections::BTreeMap;

use super::access::{block_of, corrupt, key};
use super::block::{self, Index};
use super::db::Store;
use super::error::StoreError;
use super::record::Record;

/// What one input brought to a merge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Records read from the input.
    pub records: u64,
    /// Of those, ids the output already had a record for.
    pub overlaps: u64,
    /// The first such id.
    pub first_overlap: Option<u64>,
}

impl Store {
    /// Copies every record of `input` into this store. Where both hold a record for an id, an
    /// HTTP answer is kept over a failure, and this store's answer over the input's.
    pub fn merge_from(&self, input: &Store) -> Result<Merged, StoreError> {
        let mut merged = Merged::default();
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for kv in input.blocks.iter() {
            let (k, v) = input.guard(|| Ok(kv?))?;
            let n = block_of(&k)?;
            let index = Index::parse(&v, n).map_err(|why| corrupt(&input.path, n, why))?;
            merged.records += index.entries().count() as u64;
            let value = match self.guard(|| Ok(self.blocks.get(key(n))?))? {
                None => v.to_vec(),
                Some(ours) => {
                    let mut records: BTreeMap<u16, Record> = block::decode(&ours, n)
                        .map_err(|why| corrupt(&self.path, n, why))?
                        .into_iter()
                        .collect();
                    for (offset, theirs) in
                        block::decode(&v, n).map_err(|why| corrupt(&input.path, n, why))?
                    {
                        match records.get(&offset) {
                            None => {
                                records.insert(offset, theirs);
                            }
                            Some(mine) => {
                                merged.overlaps += 1;
                                let id = block::first_id(n) + u64::from(offset);
                                merged.first_overlap = Some(merged.first_overlap.map_or(id, |f| f.min(id)));
                                if matches!(mine, Record::Failed { .. })
                                    && matches!(theirs, Record::Answer { .. })
                                {
                                    records.insert(offset, theirs);
                                }
                            }
                        }
                    }
                    // Written now: a later block of this input may not be merged against a stale copy.
                    let value = block::encode(n, &records);
                    self.guard(|| Ok(self.blocks.insert(key(n), value)?))?;
                    continue;
                }
            };
            pending += value.len();
            batch.insert(&key(n), value);
            if pending >= 8 << 20 {
                self.guard(|| Ok(self.blocks.apply_batch(std::mem::take(&mut batch))?))?;
                pending = 0;
            }
        }
        self.guard(|| {
            self.blocks.apply_batch(batch)?;
            self.db.flush()?;
            Ok(())
        })?;
        Ok(merged)
    }
}
