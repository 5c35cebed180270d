//! Reading which ids of a store are settled, from the blocks' entries alone (never a body):
//! what the planner and the counter need.

use std::path::PathBuf;

use super::access::{guard, key};
use super::blockref::BlockRef;
use super::covered::Covered;
use super::error::StoreError;
use crate::job::{mask_and, mask_len, Mask};

/// A read handle on the blocks, for the planner thread. It keeps the last block it read, as
/// consecutive windows usually fall in the same block.
pub struct Reader {
    pub(super) path: PathBuf,
    pub(super) refs: sled::Tree,
    pub(super) cached: Option<(u64, BlockRef)>,
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
    /// the quarantined ones. Reads the block's index only.
    pub fn settled_mask(&mut self, n: u64, retry_quarantined: bool) -> Result<(Mask, Mask), StoreError> {
        let Some(r) = self.entry(n)? else { return Ok(([0; 4], [0; 4])) };
        let kinds = r.kinds;
        if retry_quarantined {
            return Ok((kinds.answered, [0; 4]));
        }
        let settled = [0, 1, 2, 3].map(|w| kinds.answered[w] | kinds.quarantined[w]);
        Ok((settled, kinds.quarantined))
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
