//! Reading a store's blocks by their indexes alone: what the planner and the counter need, and
//! which ids of a block have a record of which kind.

use std::path::{Path, PathBuf};

use super::access::{corrupt, guard, key};
use super::block::{self, Index, KIND_ANSWER, KIND_QUARANTINED};
use super::covered::Covered;
use super::error::StoreError;
use crate::job::{mask_and, mask_len, mask_set, Mask};

/// A read handle on the blocks, for the planner thread. It keeps the last block it read, as
/// consecutive windows usually fall in the same block.
pub struct Reader {
    pub(super) path: PathBuf,
    pub(super) blocks: sled::Tree,
    pub(super) cached: Option<(u64, sled::IVec)>,
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
        let Some(value) = self.block(n)? else { return Ok(([0; 4], [0; 4])) };
        let kinds = Kinds::of(&self.path, n, &value)?;
        if retry_quarantined {
            return Ok((kinds.answered, [0; 4]));
        }
        let settled = [0, 1, 2, 3].map(|w| kinds.answered[w] | kinds.quarantined[w]);
        Ok((settled, kinds.quarantined))
    }

    /// Appends to `out` the ids of `window` that are settled, in order: those with an HTTP
    /// answer, and quarantined ones unless `retry_quarantined`. Returns how many of them are
    /// quarantined. Reads the blocks' indexes only.
    #[cfg(test)]
    pub fn settled_in(
        &mut self,
        window: crate::job::IdRange,
        retry_quarantined: bool,
        out: &mut Vec<u64>,
    ) -> Result<u64, StoreError> {
        let mut quarantined = 0;
        let (first, _) = block::locate(window.start);
        let (last, _) = block::locate(window.end - 1);
        for n in first..=last {
            let Some(value) = self.block(n)? else { continue };
            let index = Index::parse(&value, n).map_err(|why| corrupt(&self.path, n, why))?;
            let base = block::first_id(n);
            for e in index.entries() {
                let id = base + u64::from(e.offset);
                if id < window.start || id >= window.end {
                    continue;
                }
                match e.kind {
                    KIND_ANSWER => out.push(id),
                    KIND_QUARANTINED if !retry_quarantined => {
                        out.push(id);
                        quarantined += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(quarantined)
    }

    fn block(&mut self, n: u64) -> Result<Option<sled::IVec>, StoreError> {
        if let Some((cached, value)) = &self.cached {
            if *cached == n {
                return Ok(Some(value.clone()));
            }
        }
        let value = guard(&self.path, || Ok(self.blocks.get(key(n))?))?;
        self.cached = value.clone().map(|v| (n, v));
        Ok(value)
    }
}

/// Which ids of a block have a record, and of which kind, from its index alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kinds {
    /// With an HTTP answer.
    pub answered: Mask,
    /// With any record.
    pub recorded: Mask,
    /// Quarantined.
    pub quarantined: Mask,
}

impl Kinds {
    /// The kinds of the records of block `n`, stored as `value` in the store at `path`.
    pub fn of(path: &Path, n: u64, value: &[u8]) -> Result<Kinds, StoreError> {
        let index = Index::parse(value, n).map_err(|why| corrupt(path, n, why))?;
        let base = block::first_id(n);
        let mut k = Kinds::default();
        for e in index.entries() {
            let id = base + u64::from(e.offset);
            mask_set(&mut k.recorded, id);
            match e.kind {
                KIND_ANSWER => mask_set(&mut k.answered, id),
                KIND_QUARANTINED => mask_set(&mut k.quarantined, id),
                _ => {}
            }
        }
        Ok(k)
    }
}
