//! What a store lacks of its scope (beside `covered`, which walks the ids the scope covers): how many ids have no record, how many failed, and where the
//! first gaps are. Read from the blocks' indexes alone.

use super::access::key;
use super::blockref::{BlockRef, Kinds};
use super::covered::Covered;
use super::db::Store;
use super::error::StoreError;
use crate::job::{mask_and, mask_ids, mask_len, mask_minus, IdRange};

/// How much of its scope a store holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    /// Ids the scope covers.
    pub total: u64,
    /// Of those, ids with no record at all.
    pub missing: u64,
    /// Ids with a record but no HTTP answer (failed or quarantined): a rerun asks for them again.
    pub failed: u64,
    /// The first few runs of missing ids.
    pub first_gaps: Vec<IdRange>,
}

impl Coverage {
    /// Whether every id of the scope has a record.
    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

/// How many gaps [`Coverage`] lists.
const GAPS_LISTED: usize = 5;

impl Store {
    /// How much of `covered` this store holds: reads the blocks' indexes only.
    pub fn coverage(&self, covered: &Covered) -> Result<Coverage, StoreError> {
        let mut c = Coverage::default();
        let mut gap: Option<IdRange> = None;
        for b in covered.blocks() {
            let (n, mask) = b?;
            c.total += mask_len(&mask);
            let kinds = match self.guard(|| Ok(self.refs.get(key(n))?))? {
                Some(v) => BlockRef::read(&self.path, n, &v)?.kinds,
                None => Kinds::default(),
            };
            let unanswered = mask_minus(&kinds.recorded, &kinds.answered);
            c.failed += mask_len(&mask_and(&mask, &unanswered));
            let missing = mask_minus(&mask, &kinds.recorded);
            c.missing += mask_len(&missing);
            if c.first_gaps.len() < GAPS_LISTED {
                for id in mask_ids(n, missing) {
                    match &mut gap {
                        Some(g) if g.end == id => g.end += 1,
                        _ => {
                            if let Some(done) = gap.take() {
                                c.first_gaps.push(done);
                            }
                            if c.first_gaps.len() == GAPS_LISTED {
                                break;
                            }
                            gap = Some(IdRange { start: id, end: id + 1 });
                        }
                    }
                }
            }
        }
        if let Some(done) = gap.filter(|_| c.first_gaps.len() < GAPS_LISTED) {
            c.first_gaps.push(done);
        }
        Ok(c)
    }
}
