//! Reclaiming dead bytes: a block written again (an incomplete block completed later, a failed
//! id answered on a rerun) leaves its older copy in a segment, pointed at by nothing.
//!
//! What is live is what the entries point at: one pass over the entries (126 bytes a block)
//! sums the live bytes of each segment. A closed segment less than half live is rewritten: its
//! live blocks are copied, as they are, to the current segment (through the one durable write,
//! so their new entries are flushed only after the copies are synced), then its file is
//! removed. A segment nothing points at is removed at once. One segment's live blocks are
//! copied at a time, in batches of a few MiB, so memory stays flat. A kill midway leaves either
//! the old copies in use (the new ones dead) or the new ones (the old file dead, and removed by
//! the next reclaim).

use std::collections::HashMap;

use super::access::{block_of, guard};
use super::blockref::BlockRef;
use super::error::StoreError;
use super::put::Sink;
use super::segments::{self, SegmentReader};

/// A closed segment whose live bytes are fewer than this share of its size is rewritten.
const LIVE_SHARE_KEPT: f64 = 0.5;

/// What a reclaim did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Segments removed.
    pub segments: u64,
    /// Bytes freed on disk (the removed segments' size less the live bytes copied out).
    pub bytes: u64,
}

/// Rewrites or removes the closed segments of `sink`'s store that are mostly dead.
pub fn reclaim(sink: &mut Sink<'_>, segments: &mut SegmentReader) -> Result<Reclaimed, StoreError> {
    let path = sink.path;
    let live = live_bytes(sink.refs, path)?;
    let current = sink.appender.current();
    let mut done = Reclaimed::default();
    for (segment, size) in segments::list(path)? {
        if Some(segment) == current {
            continue;
        }
        let alive = live.get(&segment).copied().unwrap_or(0);
        if size > 0 && alive as f64 >= LIVE_SHARE_KEPT * size as f64 {
            continue;
        }
        if alive > 0 {
            copy_out(sink, segments, segment)?;
        }
        segments.close(segment);
        std::fs::remove_file(segments::segment_path(path, segment))
            .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
        done.segments += 1;
        done.bytes += size - alive;
    }
    Ok(done)
}

/// The bytes each segment holds that an entry points at.
fn live_bytes(refs: &sled::Tree, path: &std::path::Path) -> Result<HashMap<u32, u64>, StoreError> {
    guard(path, || {
        let mut live: HashMap<u32, u64> = HashMap::new();
        for kv in refs.iter() {
            let (k, v) = kv?;
            let r = BlockRef::read(path, block_of(&k)?, &v)?;
            *live.entry(r.segment).or_default() += u64::from(r.len);
        }
        Ok(live)
    })
}

/// Copies the live blocks of `segment` to the current segment.
fn copy_out(sink: &mut Sink<'_>, segments: &mut SegmentReader, segment: u32) -> Result<(), StoreError> {
    let path = sink.path;
    let mut in_it = Vec::new();
    guard(path, || {
        for kv in sink.refs.iter() {
            let (k, v) = kv?;
            let n = block_of(&k)?;
            let r = BlockRef::read(path, n, &v)?;
            if r.segment == segment {
                in_it.push((n, r));
            }
        }
        Ok(())
    })?;
    for (n, r) in in_it {
        let block = r.load(segments, path, n)?;
        sink.stage(n, &block)?;
    }
    sink.commit()
}
