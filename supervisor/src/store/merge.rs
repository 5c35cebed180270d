//! Joining stores.
//!
//! Shards own whole blocks ([`crate::job::Shard`]), so the stores of one job's shards
//! never hold the same block: merging them copies each block's bytes as they are (after
//! checking its checksum), without decompressing a body. Only a block found in two stores (the
//! same shard run twice, or a whole store beside shards) is decoded and merged record by
//! record.

use std::collections::BTreeMap;

use super::access::{block_of, corrupt, key};
use super::block;
use super::blockref::BlockRef;
use super::db::Store;
use super::error::StoreError;
use super::record::Record;
use super::segments::{Appender, SegmentReader};

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
    /// HTTP answer is kept over a failure, and this store's answer over the input's. A block
    /// only the input has is copied as its bytes are, without decompressing it.
    pub fn merge_from(&self, input: &Store) -> Result<Merged, StoreError> {
        let mut merged = Merged::default();
        let mut theirs_segments = SegmentReader::new(&input.path);
        let mut ours_segments = SegmentReader::new(&self.path);
        let mut appender = Appender::open(&self.path)?;
        let mut sink = self.sink(&mut appender);
        for kv in input.refs.iter() {
            let (k, v) = input.guard(|| Ok(kv?))?;
            let n = block_of(&k)?;
            let theirs_ref = BlockRef::read(&input.path, n, &v)?;
            merged.records += theirs_ref.records();
            let theirs = theirs_ref.load(&mut theirs_segments, &input.path, n)?;
            let ours = match self.guard(|| Ok(self.refs.get(key(n))?))? {
                None => {
                    sink.stage(n, &theirs)?;
                    continue;
                }
                Some(ours) => {
                    BlockRef::read(&self.path, n, &ours)?.load(&mut ours_segments, &self.path, n)?
                }
            };
            let mut records: BTreeMap<u16, Record> =
                block::decode(&ours, n).map_err(|why| corrupt(&self.path, n, why))?.into_iter().collect();
            for (offset, theirs) in block::decode(&theirs, n).map_err(|why| corrupt(&input.path, n, why))? {
                match records.get(&offset) {
                    None => {
                        records.insert(offset, theirs);
                    }
                    Some(mine) => {
                        merged.overlaps += 1;
                        let id = block::first_id(n) + u64::from(offset);
                        merged.first_overlap = Some(merged.first_overlap.map_or(id, |f| f.min(id)));
                        if matches!(mine, Record::Failed { .. }) && matches!(theirs, Record::Answer { .. }) {
                            records.insert(offset, theirs);
                        }
                    }
                }
            }
            // Written now: a later block of this input may not be merged against a stale copy.
            sink.put(&[(n, block::encode(n, &records))])?;
        }
        sink.commit()?;
        Ok(merged)
    }
}
