//! The store: writing over many flushes, holding blocks, damage, formats, locks.

use std::sync::Arc;
use std::time::Duration;

use shared::{ItemResult, Outcome};

use super::access::key;
use super::*;
use crate::job::{Durable, IdRange, Tally};
use crate::util::Budget;

/// The writer's budget in these tests: what the runs use.
const HELD: usize = 2 * HOLD_BYTES;

fn answer(id: u64, status: u16, body: &str) -> ItemResult {
    ItemResult {
        id,
        attempts: 2,
        outcome: Outcome::Response { status, body: body.as_bytes().to_vec(), validators: Default::default() },
    }
}

/// A writer thread over `store` for a job of `range`: its commands, its acks, and the budget it
/// gives back to.
struct WriterThread {
    cmds: crossbeam_channel::Sender<WriteCmd>,
    acks: crossbeam_channel::Receiver<WriteAck>,
    held: Arc<Budget>,
    thread: std::thread::JoinHandle<()>,
}

impl WriterThread {
    fn start(store: &Store, range: IdRange, timing: Timing) -> WriterThread {
        let (cmds, cmd_rx) = crossbeam_channel::unbounded();
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        let (writer, held) = (store.writer(), Arc::new(Budget::new(HELD)));
        let given = held.clone();
        let thread = std::thread::spawn(move || {
            write_loop(writer, Covered::of_range(range), None, timing, cmd_rx, ack_tx, given)
        });
        WriterThread { cmds, acks, held, thread }
    }

    /// Takes the results' bytes from the budget, as a worker's reader does, and sends them.
    fn put(&self, results: Vec<ItemResult>) {
        self.held.take(ItemResult::held_by(&results));
        self.cmds.send(WriteCmd::Put(results)).expect("sends");
    }

    /// Asks the writer to finish and waits for it; returns its acks and the budget.
    fn finish(self) -> (crossbeam_channel::Receiver<WriteAck>, Arc<Budget>) {
        self.cmds.send(WriteCmd::Finish).expect("sends");
        self.thread.join().expect("joins");
        (self.acks, self.held)
    }
}

/// Runs the writer over `batches`, each flushed before the next is sent; returns each
/// batch's ack.
fn write_in_flushes(store: &Store, batches: Vec<Vec<ItemResult>>) -> Vec<Durable> {
    let timing = Timing { every: Duration::from_millis(1), hold: Duration::ZERO };
    let w = WriterThread::start(store, IdRange { start: 0, end: u64::MAX }, timing);
    let mut acks = Vec::new();
    for batch in batches {
        let n = batch.len() as u64;
        w.put(batch);
        match w.acks.recv_timeout(Duration::from_secs(5)) {
            Ok(WriteAck::Durable(d)) => {
                assert_eq!(d.tally.answered + d.tally.failed, n);
                acks.push(d);
            }
            other => panic!("expected a durable ack, got {other:?}"),
        }
    }
    w.finish();
    acks
}

#[test]
fn results_arriving_over_many_flushes_merge_into_their_blocks_and_a_newer_record_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_job(&dir.path().join("s.sled"), "http://127.0.0.1:1/{id}").expect("opens");
    let failed = |id| ItemResult { id, attempts: 8, outcome: Outcome::Failed { error: "HTTP 503".into() } };
    // Ids 1000..1100 straddle blocks 0 and 1; odd ones first, then even ones, then a rerun
    // answers the two that failed.
    let odd: Vec<ItemResult> =
        (1000..1100).filter(|i| i % 2 == 1).map(|i| answer(i, 200, &i.to_string())).collect();
    let mut even: Vec<ItemResult> =
        (1000..1100).filter(|i| i % 2 == 0).map(|i| answer(i, 200, &i.to_string())).collect();
    even[3] = failed(1006);
    even[40] = failed(1080);
    let acks =
        write_in_flushes(&store, vec![odd, even, vec![answer(1006, 200, "1006"), answer(1080, 201, "1080")]]);
    let new: Vec<u64> = acks.iter().map(|d| d.new_records).collect();
    assert_eq!(new, vec![50, 50, 0], "the last two replaced failures: no new records");
    let records: Vec<(u64, Record)> = store.records().map(|r| r.expect("decodes")).collect();
    assert_eq!(records.len(), 100, "every id once");
    for (n, (id, record)) in records.iter().enumerate() {
        assert_eq!(*id, 1000 + n as u64, "in id order");
        let status = if *id == 1080 { 201 } else { 200 };
        let Record::Answer { attempts, status: stored, body, fetched } = record else {
            panic!("{id}: {record:?}")
        };
        assert_eq!((*attempts, *stored, body.as_slice()), (2, status, id.to_string().as_bytes()));
        assert!(fetched.at > 1_700_000_000, "{id}: fetched at {}", fetched.at);
    }
    assert_eq!(store.refs.len(), 2);
    let mut settled = Vec::new();
    store.reader().settled_in(IdRange { start: 1020, end: 1030 }, false, &mut settled).expect("scans");
    assert_eq!(settled, (1020..1030).collect::<Vec<_>>());
}

#[test]
fn a_block_is_held_until_complete_then_written_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_job(&dir.path().join("s.sled"), "http://127.0.0.1:1/{id}").expect("opens");
    let timing = Timing { every: Duration::from_millis(1), hold: Duration::from_secs(60) };
    let w = WriterThread::start(&store, IdRange { start: 100, end: 256 }, timing);
    let half: Vec<ItemResult> = (100..200).map(|i| answer(i, 200, "x")).collect();
    let half_bytes = ItemResult::held_by(&half);
    w.put(half);
    assert!(w.acks.recv_timeout(Duration::from_millis(50)).is_err(), "an incomplete block waits");
    assert!(store.refs.is_empty());
    assert_eq!(w.held.held(), half_bytes, "results held count against the budget");
    w.put((200..256).map(|i| answer(i, 200, "x")).collect());
    match w.acks.recv_timeout(Duration::from_secs(5)) {
        Ok(WriteAck::Durable(d)) => {
            assert_eq!(d.tally.answered, 156, "the ids of the range complete the block")
        }
        other => panic!("expected a durable ack, got {other:?}"),
    }
    assert_eq!(store.records().count(), 156);
    assert_eq!(w.held.held(), 0, "durable results give their bytes back");
    let (acks, _) = w.finish();
    assert!(matches!(acks.try_recv(), Ok(WriteAck::Finished)), "nothing else was pending");
}

#[test]
fn pending_bodies_past_the_hold_are_written_at_once_and_the_writer_opens_the_budget_when_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_job(&dir.path().join("s.sled"), "http://127.0.0.1:1/{id}").expect("opens");
    // Neither the tick nor the hold timer would write within the test's bounds.
    let timing = Timing { every: Duration::from_secs(600), hold: Duration::from_secs(600) };
    let w = WriterThread::start(&store, IdRange { start: 0, end: 1 << 20 }, timing);
    // One 1 MiB body in each of 17 blocks: none complete, together past the hold.
    let big = vec![b'x'; 1 << 20];
    let results: Vec<ItemResult> = (0..17u64)
        .map(|n| ItemResult {
            id: n * block::BLOCK_IDS,
            attempts: 1,
            outcome: Outcome::Response { status: 200, body: big.clone(), validators: Default::default() },
        })
        .collect();
    assert!(ItemResult::held_by(&results) > HOLD_BYTES);
    w.put(results);
    match w.acks.recv_timeout(Duration::from_secs(10)) {
        Ok(WriteAck::Durable(d)) => assert_eq!(d.tally.answered, 17),
        other => panic!("expected a durable ack at once, got {other:?}"),
    }
    assert_eq!(w.held.held(), 0);
    // Spent past the limit, the budget would block a reader; once the writer ends it does not.
    w.held.take(HELD);
    let (_, held) = w.finish();
    held.take(HELD);
    assert_eq!(held.held(), 2 * HELD);
}

#[test]
fn a_damaged_block_is_named_with_its_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_job(&dir.path().join("s.sled"), "http://127.0.0.1:1/{id}").expect("opens");
    write_in_flushes(&store, vec![(2048..2100).map(|i| answer(i, 200, "x")).collect()]);
    let (n, _) = block::locate(2048);
    // The block's bytes in its segment.
    let entry = store.refs.get(key(n)).expect("reads").expect("the entry");
    let r = super::blockref::BlockRef::decode(&entry).expect("an entry");
    let segment = super::segments::segment_path(&store.path, r.segment);
    let mut bytes = std::fs::read(&segment).expect("reads");
    bytes[(r.offset + u64::from(r.len) - 1) as usize] ^= 1;
    std::fs::write(&segment, bytes).expect("writes");
    let err = store.records().find_map(Result::err).expect("an error");
    assert!(err.to_string().contains("the block of ids 2048..2304 is damaged (checksum mismatch)"), "{err}");
    assert!(err.is_usage(), "a damaged store is exit 2");
    // Its entry in sled.
    let mut value = entry.to_vec();
    value[10] ^= 1;
    store.refs.insert(key(n), value).expect("writes");
    let err = store.counts().expect_err("a damaged entry");
    assert!(err.to_string().contains("the block of ids 2048..2304 is damaged (checksum mismatch)"), "{err}");
}

#[test]
fn a_store_of_the_old_format_is_refused_naming_both_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sled");
    drop(Store::open_for_job(&path, "http://a/{id}").expect("opens"));
    {
        let db = sled::open(&path).expect("sled opens");
        db.insert("format", "1").expect("writes");
        db.flush().expect("flushes");
    }
    let err = Store::open_for_job(&path, "http://a/{id}").err().expect("refused");
    assert!(
        err.to_string()
            .contains("has format 1, this build reads formats 2 and 3 (upgrading them in place) and 4"),
        "{err}"
    );
    assert!(err.is_usage(), "exit 2");
}

#[test]
fn writer_makes_results_durable_and_the_store_finds_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sled");
    let store = Store::open_for_job(&path, "http://127.0.0.1:1/{id}").expect("opens");
    let w = WriterThread::start(&store, IdRange { start: 0, end: 10 }, Timing::DEFAULT);
    let failed = ItemResult { id: 5, attempts: 8, outcome: Outcome::Failed { error: "x".into() } };
    w.put(vec![answer(3, 200, "a"), answer(9, 404, "b"), failed]);
    w.cmds.send(WriteCmd::Quarantine { id: 4, deaths: 2, reason: "quarantined: x".into() }).expect("sends");
    let (acks, _) = w.finish();
    let acks: Vec<_> = acks.iter().collect();
    let durable = Durable {
        tally: Tally { answered: 2, failed: 2, quarantined: 1, retries: 9, ..Tally::default() },
        success: 1,
        new_records: 4,
        flush: None,
    };
    assert!(
        matches!(acks[0], WriteAck::Durable(d) if Durable { flush: None, ..d } == durable && d.flush.is_some()),
        "{acks:?}"
    );
    assert!(matches!(acks.last(), Some(WriteAck::Finished)));
    let mut out = Vec::new();
    store.reader().settled_in(IdRange { start: 0, end: 9 }, false, &mut out).expect("scans");
    assert_eq!(out, vec![3, 4], "9 is outside the window, 5 failed, 4 is quarantined");
    out.clear();
    store.reader().settled_in(IdRange { start: 0, end: 9 }, true, &mut out).expect("scans");
    assert_eq!(out, vec![3], "quarantined ids are fetched again when asked");
    assert_eq!(
        store.counts().expect("counts"),
        Counts { answered: 2, success: 1, failed: 2, quarantined: 1 }
    );
    let ids: Vec<u64> = store.records().map(|r| r.expect("decodes").0).collect();
    assert_eq!(ids, vec![3, 4, 5, 9]);
}

#[test]
fn a_store_refuses_another_job_and_a_second_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sled");
    let store = Store::open_for_job(&path, "http://a/{id}").expect("opens");
    match Store::open_for_job(&path, "http://b/{id}") {
        Err(StoreError::Locked { holder, .. }) => {
            assert_eq!(holder, format!("pid {}", std::process::id()))
        }
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    drop(store);
    match Store::open_for_job(&path, "http://b/{id}") {
        Err(StoreError::JobMismatch { stored, given, .. }) => {
            assert_eq!((stored.as_str(), given.as_str()), ("http://a/{id}", "http://b/{id}"));
        }
        other => panic!("expected JobMismatch, got {:?}", other.err()),
    }
    assert!(matches!(Store::open_existing(&dir.path().join("nope")), Err(StoreError::Missing(_))));
    assert!(!dir.path().join("nope").exists(), "a missing store is not created");
}

#[test]
fn a_stored_list_is_brought_to_a_new_list_in_place_appended_shrunk_or_changed() {
    use crate::job::{mask_ids, Ids, Listed, Scope};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_job(&dir.path().join("s.sled"), "http://a/{id}").expect("opens");
    let lists: Vec<Vec<u64>> = vec![
        (0..10_000).map(|i| i * 3).collect(),
        (0..10_000).map(|i| i * 3).chain(40_000..40_100).collect(),
        (5..50).collect(),
        (0..20_000).map(|i| i * 2 + 1).collect(),
    ];
    for ids in lists {
        let scope = Scope { ids: Ids::Listed(Listed::of(&ids, "x".into())), shard: None };
        let mut it = ids.iter().map(|&i| Ok(i));
        store.adopt_scope(&scope, Some(&mut it)).expect("adopts");
        let covered = store.covered().expect("covered");
        let back: Vec<u64> = covered
            .blocks()
            .flat_map(|b| {
                let (n, m) = b.expect("reads");
                mask_ids(n, m)
            })
            .collect();
        assert_eq!(back, ids);
    }
}

#[test]
fn a_store_killed_as_it_was_created_starts_afresh_and_one_that_lost_its_metadata_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // sled's files, made before the first metadata was flushed: nothing in them.
    let path = dir.path().join("new.sled");
    drop(sled::open(&path).expect("sled opens"));
    let store = Store::open_for_job(&path, "http://a/{id}").expect("an empty store starts afresh");
    assert_eq!(store.job().expect("reads").as_deref(), Some("http://a/{id}"));
    drop(store);
    // Records, and no metadata: damaged, never started afresh.
    let path = dir.path().join("lost.sled");
    let store = Store::open_for_job(&path, "http://a/{id}").expect("opens");
    write_in_flushes(&store, vec![vec![answer(5, 200, "5")]]);
    store.db.remove("job.url").expect("removes");
    store.db.flush().expect("flushes");
    drop(store);
    let err = Store::open_for_job(&path, "http://a/{id}").err().expect("refused");
    assert!(err.to_string().contains("its metadata (the job, the format) is gone"), "{err}");
}
