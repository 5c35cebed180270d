//! The planner: the thread that walks a job's ids block by block against the store and feeds
//! the run chunks of what is left to fetch, through a small bounded channel, so memory stays
//! flat whatever the range.

use crossbeam_channel::Sender;

use crate::job::{mask_and, mask_ids, mask_len, mask_minus};
use crate::store::{Covered, Reader, StoreError};

/// What the planner sends.
pub enum PlanMsg {
    /// The next chunk to fetch, with the settled ids skipped since the last one.
    Chunk {
        /// Ids to fetch, sorted.
        ids: Vec<u64>,
        /// Ids already settled in the store.
        skipped: u64,
        /// Of those, quarantined by an earlier run.
        quarantined: u64,
    },
    /// The store could not be read.
    Failed(StoreError),
    /// The whole range is planned. (A planner that ends without saying so has died.)
    End,
}

/// Walks the job's ids block by block, dropping what the store has settled, and feeds chunks
/// to the dispatcher through a small bounded channel: memory stays flat whatever the range.
pub fn plan(
    mut store: Reader,
    covered: &Covered,
    chunk_size: usize,
    retry_quarantined: bool,
    out: &Sender<PlanMsg>,
) {
    let (mut skipped, mut quarantined) = (0, 0);
    let mut ids = Vec::with_capacity(chunk_size);
    for b in covered.blocks() {
        let planned = b.and_then(|(n, mask)| {
            let (settled, held) = store.settled_mask(n, retry_quarantined)?;
            Ok((n, mask, settled, held))
        });
        let (n, mask, settled, held) = match planned {
            Ok(p) => p,
            Err(e) => {
                let _ = out.send(PlanMsg::Failed(e));
                return;
            }
        };
        skipped += mask_len(&mask_and(&mask, &settled));
        quarantined += mask_len(&mask_and(&mask, &held));
        for id in mask_ids(n, mask_minus(&mask, &settled)) {
            ids.push(id);
            if ids.len() == chunk_size {
                let chunk = std::mem::replace(&mut ids, Vec::with_capacity(chunk_size));
                if out.send(PlanMsg::Chunk { ids: chunk, skipped, quarantined }).is_err() {
                    return;
                }
                (skipped, quarantined) = (0, 0);
            }
        }
    }
    if !ids.is_empty() || skipped > 0 {
        let _ = out.send(PlanMsg::Chunk { ids, skipped, quarantined });
    }
    let _ = out.send(PlanMsg::End);
}
