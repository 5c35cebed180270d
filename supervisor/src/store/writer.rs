//! The store writer: the one thread that writes blocks.
//!
//! Results arrive id by id, a few thousand per second per worker, and sled rewrites a value
//! whole: a block written at every flush while its ids trickle in would be written many
//! times, and sled keeps the older copies on disk until it gets round to collecting them
//! (docs/design.md has the figures). So the writer holds a block's results until the block is
//! complete (as many of its ids have a record, stored before or pending now, as the job covers
//! in it), and writes it once. A block is written incomplete only when its first pending result
//! has waited [`Timing::hold`], when pending bodies pass [`HOLD_BYTES`], or at the end of the
//! run; merging it with what is stored keeps every record either way. Complete blocks are
//! written at each tick, or at once when they hold [`READY_BYTES`]: with bodies of kilobytes,
//! a tick's worth of results would otherwise be most of what the supervisor holds.
//!
//! The results it holds count against the run's [`Budget`]: it gives their bytes back once
//! they are durable, and opens the budget when it ends, so no reader waits on a writer that is
//! gone.
//!
//! Each write appends the due blocks to the current segment and fdatasyncs it, then applies one
//! sled batch of their entries and flushes (`put`); only then are its results acked as durable:
//! the dispatcher counts a result as done only after that. At the end it reclaims segments that
//! rewritten blocks left mostly dead (`gc`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shared::Outcome;

use super::access::{corrupt, guard, key};
use super::block;
use super::blockref::BlockRef;
use super::covered::Covered;
use super::db::Writer;
use super::error::StoreError;
use super::gc;
use super::messages::{WriteAck, WriteCmd};
use super::put::Sink;
use super::reader::Reader;
use super::record::{Incoming, Record, Settled};
use super::segments::{Appender, SegmentReader};
use crate::job::{mask_ids, mask_len, Durable, Tally};
use crate::util::Budget;

/// When the writer writes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often it looks for blocks to write (and so the longest a complete block waits).
    pub every: Duration,
    /// The longest a result waits for the rest of its block.
    pub hold: Duration,
}

impl Timing {
    /// A write every 200ms; a result held at most a second.
    pub const DEFAULT: Timing = Timing { every: Duration::from_millis(200), hold: Duration::from_secs(1) };
}

/// Pending results holding this many bytes ([`shared::ItemResult::held_bytes`]) are written
/// whatever their blocks' state. A run's [`Budget`] must be larger, or results would wait for
/// the hold timer.
pub const HOLD_BYTES: usize = 16 << 20;
/// Complete blocks holding this many bytes are written without waiting for the tick.
const READY_BYTES: usize = 4 << 20;

/// The writer thread's body: gathers results by block, writes complete blocks (and any held
/// too long), flushes, acks, and gives the results' bytes back to `held`. `covered` is the
/// job's: a block is complete when as many of its ids have a record as the job covers in it.
/// `settled`, when given, is how the planner reads the store: then only the ids it settles
/// count as having a record, so a block whose failures or stale answers are fetched again is
/// written once they all have come, not at its first result and again at each later one.
pub fn write_loop(
    writer: Writer,
    covered: Covered,
    settled: Option<(Reader, bool)>,
    timing: Timing,
    cmds: Receiver<WriteCmd>,
    acks: Sender<WriteAck>,
    held: Arc<Budget>,
) {
    let _open = OpenOnExit(&held);
    let mut appender = match Appender::open(&writer.path) {
        Ok(a) => a,
        Err(e) => {
            let _ = acks.send(WriteAck::Failed(e));
            return;
        }
    };
    let mut segments = SegmentReader::new(&writer.path);
    let mut pending = Pending {
        covered,
        settled,
        hold: timing.hold,
        blocks: BTreeMap::new(),
        held: 0,
        ready: 0,
        encoder: block::Encoder::new(),
    };
    let mut next_write = Instant::now() + timing.every;
    loop {
        let cmd = cmds.recv_deadline(next_write);
        // One reading of the clock per command: what is added and what is written go by it.
        let now = Instant::now();
        let finish = matches!(cmd, Ok(WriteCmd::Finish) | Err(RecvTimeoutError::Disconnected));
        let added = match cmd {
            Ok(WriteCmd::Put(results)) => results.into_iter().try_for_each(|r| {
                let bytes = r.held_bytes();
                let mut d = Durable::default();
                d.tally.retries = u64::from(r.attempts.saturating_sub(1));
                match &r.outcome {
                    Outcome::Response { status, .. } => {
                        d.tally.answered = 1;
                        d.success = u64::from((200..300).contains(status));
                    }
                    // Its status is the stored answer's: counted when the block is written.
                    Outcome::Unchanged { .. } => d.tally.answered = 1,
                    Outcome::Failed { .. } | Outcome::Unreachable { .. } => d.tally.failed = 1,
                }
                pending.add(&writer, r.id, Incoming::of(r, unix_now()), d, bytes, now)
            }),
            Ok(WriteCmd::Quarantine { id, deaths, reason }) => {
                let tally = Tally { failed: 1, quarantined: 1, ..Tally::default() };
                let d = Durable { tally, ..Durable::default() };
                let record = Record::Failed { attempts: deaths, error: reason, quarantined: true };
                pending.add(&writer, id, Incoming::Record(record), d, 0, now)
            }
            Ok(WriteCmd::Finish) | Err(_) => Ok(()),
        };
        let written = added.and_then(|()| {
            if finish || now >= next_write || pending.held >= HOLD_BYTES || pending.ready >= READY_BYTES {
                next_write = now + timing.every;
                pending.write(&writer, &mut appender, &mut segments, now, finish)
            } else {
                Ok(None)
            }
        });
        match written {
            Ok(Some((durable, bytes))) => {
                held.give(bytes);
                let _ = acks.send(WriteAck::Durable(durable));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = acks.send(WriteAck::Failed(e));
                return;
            }
        }
        if finish {
            // Every result is acked by now: a failed reclaim costs disk, never a result.
            let mut sink = Sink::new(&writer.path, &writer.db, &writer.refs, &mut appender);
            match gc::reclaim(&mut sink, &mut segments) {
                Ok(r) if r.segments > 0 => log::info!(
                    "store: reclaimed {} MiB of rewritten blocks from {} segments",
                    r.bytes >> 20,
                    r.segments
                ),
                Ok(_) => {}
                Err(e) => log::warn!("store: dead bytes not reclaimed: {}", shared::error_chain(&e)),
            }
            let _ = acks.send(match writer.db.flush() {
                Ok(_) => WriteAck::Finished,
                Err(e) => WriteAck::Failed(e.into()),
            });
            return;
        }
    }
}

/// Results received and not yet written, by block.
struct Pending {
    covered: Covered,
    /// How the planner reads the store, and whether it retries quarantined ids.
    settled: Option<(Reader, bool)>,
    hold: Duration,
    blocks: BTreeMap<u64, PendingBlock>,
    /// What the pending results hold of the budget.
    held: usize,
    /// What the complete blocks among them hold.
    ready: usize,
    encoder: block::Encoder,
}

struct PendingBlock {
    records: BTreeMap<u16, Incoming>,
    /// The block's entry as stored when its first pending result arrived (the writer is its
    /// only writer, so it is still so when the block is written).
    old: Option<BlockRef>,
    /// Offsets that already have a record in the store.
    stored: Vec<u16>,
    /// Of those, the ones this run does not fetch again.
    settled: Vec<u16>,
    /// Distinct offsets settled or pending.
    filled: usize,
    /// How many ids of the block the job covers.
    wanted: usize,
    since: Instant,
    durable: Durable,
    /// What its results count against the budget.
    held: usize,
}

/// Opens the budget when the writer ends, however it ends.
struct OpenOnExit<'a>(&'a Budget);

impl Drop for OpenOnExit<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl Pending {
    /// Takes `id`'s result, received at `now` (a block's hold is counted from its first).
    fn add(
        &mut self,
        writer: &Writer,
        id: u64,
        record: Incoming,
        d: Durable,
        held: usize,
        now: Instant,
    ) -> Result<(), StoreError> {
        let (n, offset) = block::locate(id);
        let p = match self.blocks.entry(n) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let old = match guard(&writer.path, || Ok(writer.refs.get(key(n))?))? {
                    Some(v) => Some(BlockRef::read(&writer.path, n, &v)?),
                    None => None,
                };
                let first = block::first_id(n);
                let stored: Vec<u16> = match &old {
                    Some(r) => mask_ids(n, r.kinds.recorded).map(|id| (id - first) as u16).collect(),
                    None => Vec::new(),
                };
                let settled: Vec<u16> = match (&old, self.settled.as_mut()) {
                    // From the entry just read: the reader's own cache may hold the one this
                    // writer has since replaced.
                    (Some(r), Some((reader, retry_q))) => {
                        let (mask, _) = reader.settled_of(n, r, *retry_q)?;
                        mask_ids(n, mask).map(|id| (id - first) as u16).collect()
                    }
                    _ => stored.clone(),
                };
                let filled = settled.len();
                let wanted = mask_len(&self.covered.in_block(n)?) as usize;
                e.insert(PendingBlock {
                    records: BTreeMap::new(),
                    old,
                    stored,
                    settled,
                    filled,
                    wanted,
                    since: now,
                    durable: Durable::default(),
                    held: 0,
                })
            }
        };
        let was_complete = p.filled >= p.wanted;
        // A record replaced here still counts until the block is written: the budget has it.
        if p.records.insert(offset, record).is_none() && p.settled.binary_search(&offset).is_err() {
            p.filled += 1;
        }
        p.durable.add(d);
        p.held += held;
        self.held += held;
        if p.filled >= p.wanted {
            self.ready += if was_complete { held } else { p.held };
        }
        Ok(())
    }

    /// Writes the blocks that are due (all of them when `all`), in one batch, and flushes.
    /// Returns what became durable and the budget its results held, or `None` if nothing was
    /// due.
    fn write(
        &mut self,
        writer: &Writer,
        appender: &mut Appender,
        segments: &mut SegmentReader,
        now: Instant,
        all: bool,
    ) -> Result<Option<(Durable, usize)>, StoreError> {
        let everything = all || self.held >= HOLD_BYTES;
        let due: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, p)| everything || p.filled >= p.wanted || now.duration_since(p.since) >= self.hold)
            .map(|(&n, _)| n)
            .collect();
        if due.is_empty() {
            return Ok(None);
        }
        let mut sink = Sink::new(&writer.path, &writer.db, &writer.refs, appender);
        let (mut durable, mut held) = (Durable::default(), 0);
        // Every complete block is due.
        self.ready = 0;
        for n in due {
            let mut p = self.blocks.remove(&n).expect("listed above");
            self.held -= p.held;
            let new_records = p.records.keys().filter(|o| p.stored.binary_search(o).is_err()).count() as u64;
            let mut records: BTreeMap<u16, Record> = match &p.old {
                Some(old) => {
                    let bytes = old.load(segments, &writer.path, n)?;
                    block::decode(&bytes, n)
                        .map_err(|why| corrupt(&writer.path, n, why))?
                        .into_iter()
                        .collect()
                }
                None => BTreeMap::new(),
            };
            for (offset, incoming) in std::mem::take(&mut p.records) {
                let quarantine =
                    matches!(incoming, Incoming::Record(Record::Failed { quarantined: true, .. }));
                let renewal = matches!(incoming, Incoming::Unchanged { .. });
                let (record, settled) = incoming.settle(records.remove(&offset));
                count(&mut p.durable, settled, &record, quarantine, renewal);
                records.insert(offset, record);
            }
            sink.append(n, &self.encoder.encode(n, &records))?;
            durable.add(Durable { new_records, ..p.durable });
            held += p.held;
        }
        let started = Instant::now();
        sink.commit()?;
        durable.flush = Some(started.elapsed());
        Ok(Some((durable, held)))
    }
}

/// Corrects a block's counts, made as its results came, for what settling one against the
/// stored record came to (`quarantine`: the result was a quarantine; `renewal`: a 304).
fn count(d: &mut Durable, settled: Settled, record: &Record, quarantine: bool, renewal: bool) {
    let t = &mut d.tally;
    match settled {
        Settled::New => {}
        Settled::Changed => t.changed += 1,
        Settled::Unchanged => {
            t.unchanged += 1;
            // A 304's status is the stored answer's; an answer's own was counted as it came.
            if let (true, Record::Answer { status, .. }) = (renewal, record) {
                d.success += u64::from((200..300).contains(status));
            }
        }
        Settled::Kept => {
            t.failed = t.failed.saturating_sub(1);
            if quarantine {
                t.quarantined = t.quarantined.saturating_sub(1);
            }
            t.kept += 1;
        }
        Settled::Orphan => {
            t.answered = t.answered.saturating_sub(1);
            t.failed += 1;
        }
    }
}

/// The wall clock in Unix seconds, as a record's fetch time.
fn unix_now() -> u32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}
