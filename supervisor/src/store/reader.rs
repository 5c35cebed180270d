//! Reading which ids of a store are settled: what the planner, the counter and the writer
//! need. From the blocks' entries alone, unless a refresh asks for answers the entries cannot
//! settle (then a block's index, for statuses, or its records, for fetch times and freshness).
//! Also what a refresh's requests are conditional on, read from the records.

use std::path::PathBuf;

use super::access::{corrupt, guard, key};
use super::block;
use super::blockref::BlockRef;
use super::covered::Covered;
use super::error::StoreError;
use super::record::Record;
use super::segments::SegmentReader;
use crate::job::{mask_and, mask_len, mask_minus, mask_set, Mask, Refetch};

/// A read handle on the blocks, for the planner thread. It keeps the last block it read, as
/// consecutive windows usually fall in the same block.
pub struct Reader {
    pub(super) path: PathBuf,
    pub(super) refs: sled::Tree,
    pub(super) cached: Option<(u64, BlockRef)>,
    /// Stored answers to fetch again: they do not count as settled.
    pub(super) refetch: Refetch,
    pub(super) segments: SegmentReader,
}

impl Reader {
    /// How many ids of `covered` are settled: they have an HTTP answer, or were quarantined and
    /// `retry_quarantined` is off. Reads the blocks' indexes only.
    pub fn count_settled(&mut self, covered: &Covered, retry_quarantined: bool) -> Result<u64, StoreError> {
        let mut n = 0;
        for b in covered.blocks() {
            let (block, mask) = b?;
            let (settled, _) = self.settled_mask(block, retry_quarantined)?;
            n += mask_len(&mask_and(&mask, &settled));
        }
        Ok(n)
    }

    /// The ids of block `n` that are settled (as [`Reader::count_settled`] says), and of those,
    /// the quarantined ones.
    pub fn settled_mask(&mut self, n: u64, retry_quarantined: bool) -> Result<(Mask, Mask), StoreError> {
        let Some(r) = self.entry(n)? else { return Ok(([0; 4], [0; 4])) };
        self.settled_of(n, &r, retry_quarantined)
    }

    /// [`Reader::settled_mask`] of block `n` whose entry the caller has read (the writer has).
    pub fn settled_of(
        &mut self,
        n: u64,
        r: &BlockRef,
        retry_quarantined: bool,
    ) -> Result<(Mask, Mask), StoreError> {
        let kinds = r.kinds;
        let again = self.refetched(n, r)?;
        let answered = mask_minus(&kinds.answered, &again);
        if retry_quarantined {
            return Ok((answered, [0; 4]));
        }
        let settled = [0, 1, 2, 3].map(|w| answered[w] | kinds.quarantined[w]);
        Ok((settled, kinds.quarantined))
    }

    /// What the stored answers of `ids` are validated by (empty where there is none), for the
    /// conditional requests of a refresh. Reads each of their blocks once in a row.
    pub fn conditions(&mut self, ids: &[u64]) -> Result<Vec<shared::Condition>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut block: Option<(u64, std::collections::HashMap<u16, shared::Condition>)> = None;
        for &id in ids {
            let (n, offset) = block::locate(id);
            if block.as_ref().is_none_or(|(b, _)| *b != n) {
                let mut found = std::collections::HashMap::new();
                if let Some(r) = self.entry(n)? {
                    let bytes = r.load(&mut self.segments, &self.path, n)?;
                    for (offset, record) in
                        block::decode(&bytes, n).map_err(|why| corrupt(&self.path, n, why))?
                    {
                        if let Record::Answer { fetched, .. } = record {
                            let c = shared::Condition {
                                etag: fetched.etag,
                                last_modified: fetched.last_modified,
                            };
                            if !c.is_empty() {
                                found.insert(offset, c);
                            }
                        }
                    }
                }
                block = Some((n, found));
            }
            let found = block.as_mut().map(|(_, f)| f.remove(&offset).unwrap_or_default());
            out.push(found.unwrap_or_default());
        }
        Ok(out)
    }

    /// Fetches stored answers again as `refetch` says, from now on.
    pub fn refetching(mut self, refetch: Refetch) -> Reader {
        self.refetch = refetch;
        self
    }

    /// The answered ids of block `n` (entry `r`) to fetch again. By the entry alone when its
    /// fetch times settle it (every answer older than `--refresh`'s age, or none), else by its
    /// index (statuses) or its records (fetch times, freshness).
    fn refetched(&mut self, n: u64, r: &BlockRef) -> Result<Mask, StoreError> {
        let rf = &self.refetch;
        if rf.is_empty() || r.kinds.answered == [0; 4] {
            return Ok([0; 4]);
        }
        if rf.stale_at.is_none() && rf.statuses.is_empty() {
            let before = rf.fetched_before.unwrap_or(0);
            if r.newest != 0 && r.newest < before || r.oldest == 0 && r.newest == 0 && before > 0 {
                return Ok(r.kinds.answered);
            }
            if r.oldest >= before {
                return Ok([0; 4]);
            }
        }
        let bytes = r.load(&mut self.segments, &self.path, n)?;
        let first = block::first_id(n);
        let mut again = [0; 4];
        if rf.fetched_before.is_none() && rf.stale_at.is_none() {
            // Statuses alone: the index has them, no record is decompressed.
            let index = block::Index::parse(&bytes, n).map_err(|why| corrupt(&self.path, n, why))?;
            for e in index.entries().filter(|e| e.kind == block::KIND_ANSWER && rf.wants_status(e.status)) {
                mask_set(&mut again, first + u64::from(e.offset));
            }
            return Ok(again);
        }
        for (offset, record) in block::decode(&bytes, n).map_err(|why| corrupt(&self.path, n, why))? {
            if let Record::Answer { status, fetched, .. } = record {
                if rf.wants(status, fetched.at, fetched.fresh_until, &fetched.last_modified) {
                    mask_set(&mut again, first + u64::from(offset));
                }
            }
        }
        Ok(again)
    }

    /// Appends to `out` the ids of `window` that are settled, in order: those with an HTTP
    /// answer, and quarantined ones unless `retry_quarantined`. Returns how many of them are
    /// quarantined.
    #[cfg(test)]
    pub fn settled_in(
        &mut self,
        window: crate::job::IdRange,
        retry_quarantined: bool,
        out: &mut Vec<u64>,
    ) -> Result<u64, StoreError> {
        let mut quarantined = 0;
        let (first, _) = crate::job::locate(window.start);
        let (last, _) = crate::job::locate(window.end - 1);
        for n in first..=last {
            let (settled, held) = self.settled_mask(n, retry_quarantined)?;
            for id in crate::job::mask_ids(n, settled).filter(|id| (window.start..window.end).contains(id)) {
                out.push(id);
                quarantined += u64::from(crate::job::mask_ids(n, held).any(|q| q == id));
            }
        }
        Ok(quarantined)
    }

    fn entry(&mut self, n: u64) -> Result<Option<BlockRef>, StoreError> {
        if let Some((cached, r)) = &self.cached {
            if *cached == n {
                return Ok(Some(*r));
            }
        }
        let Some(value) = guard(&self.path, || Ok(self.refs.get(key(n))?))? else { return Ok(None) };
        let r = BlockRef::read(&self.path, n, &value)?;
        self.cached = Some((n, r));
        Ok(Some(r))
    }
}
