//! A mutation fuzzer for the frame decoder: valid frames of every message, then mangled
//! (bytes flipped, cut short, lengths rewritten, spliced) plus plain random bytes. Checked for
//! every input: the decoder does not panic; no single allocation made while decoding is larger
//! than [`MAX_ALLOC`] (measured by a counting allocator), however large a length the input
//! claims; and each frame read consumes at least its 4-byte header, so reading an input ends
//! within `len / 4 + 1` reads.
//!
//! `cargo test` runs 20,000 inputs; `scripts/fuzz-frames.sh` runs a million or more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use shared::frame::peek_hello_version;
use shared::{FrameReader, FrameWriter, FromWorker, ItemResult, JobSpec, Outcome, ToWorker, WorkerHello};

/// The frame limit the fuzzer's readers are given.
const FRAME_LIMIT: usize = 1 << 16;
/// The largest single allocation decoding a frame under [`FRAME_LIMIT`] may make: serde's
/// cautious pre-allocation for a claimed sequence length, which it caps at 1 MiB (bincode's
/// own, for a claimed string length, is held to the payload's size class by `decode`).
const MAX_ALLOC: usize = 1 << 20;

/// The system allocator, recording the largest single allocation since the last reset.
struct Measuring;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is passed straight to the system allocator with the caller's own layout
// and pointer; the only addition is an atomic maximum, which neither allocates nor panics.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

fn seeds(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let job = JobSpec {
        url_template: "http://127.0.0.1:8080/items/{id}".into(),
        threads: 8,
        max_in_flight: 512,
        max_attempts: 8,
        max_body: 1 << 20,
        connect_timeout_ms: 5000,
        io_timeout_ms: 30000,
        dns_ttl_ms: 30_000,
        backoff_base_ms: 100,
        backoff_max_ms: 30000,
        retry_after_max_ms: 300000,
        retry_budget_pct: Some(20),
        retry_floor_per_min: 150,
        headers: vec![("Authorization".into(), "Bearer x".into())],
        method: "POST".into(),
        body: Some("{\"k\":\"{key}\"}".into()),
        content_type: Some("application/json".into()),
        user_agent: "flota/0.1.0".into(),
        credential_source: false,
        tls: shared::TlsTrust { extra_roots: vec![vec![0x30, 0x82]], insecure: false },
        chaos: Default::default(),
    };
    let results = FromWorker::Results(
        (0..rng.usize(1..20))
            .map(|i| ItemResult {
                id: rng.u64(..),
                attempts: rng.u32(1..9),
                outcome: if i % 3 == 0 {
                    Outcome::Failed { error: "HTTP 503".into() }
                } else {
                    Outcome::Response {
                        status: 200,
                        body: vec![b'x'; rng.usize(0..64)],
                        validators: Default::default(),
                    }
                },
            })
            .collect(),
    );
    let mut out = Vec::new();
    let mut w = FrameWriter::new(Vec::new());
    w.write(&ToWorker::Hello { version: 1, job: Box::new(job) }).expect("encodes");
    out.push(std::mem::take(w.get_mut()));
    w.write(&ToWorker::Assign {
        ids: (0..rng.u64(1..50)).collect(),
        keys: Vec::new(),
        conditions: Vec::new(),
    })
    .expect("encodes");
    out.push(std::mem::take(w.get_mut()));
    w.write(&FromWorker::Hello(WorkerHello { version: 1, pid: 42 })).expect("encodes");
    out.push(std::mem::take(w.get_mut()));
    w.write(&results).expect("encodes");
    out.push(std::mem::take(w.get_mut()));
    w.write(&FromWorker::Heartbeat).expect("encodes");
    out.push(std::mem::take(w.get_mut()));
    out
}

fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = match rng.u8(..4) {
        0 => (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect(),
        1 => {
            seeds[rng.usize(..seeds.len())].iter().chain(&seeds[rng.usize(..seeds.len())]).copied().collect()
        }
        _ => seeds[rng.usize(..seeds.len())].clone(),
    };
    for _ in 0..rng.usize(0..6) {
        if input.is_empty() {
            break;
        }
        let at = rng.usize(..input.len());
        match rng.u8(..5) {
            0 => input[at] = rng.u8(..),
            1 => input.truncate(at),
            2 => input.insert(at, rng.u8(..)),
            3 if input.len() >= 4 => {
                let len = match rng.u8(..3) {
                    0 => u32::MAX,
                    1 => rng.u32(..),
                    _ => rng.u32(..(input.len() as u32 + 8)),
                };
                input[..4].copy_from_slice(&len.to_le_bytes());
            }
            _ => input[at] ^= 1 << rng.u8(..8),
        }
    }
    input
}

fn fuzz(inputs: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let (mut decoded, mut refused) = (0u64, 0u64);
    for n in 0..inputs {
        if n % 64 == 0 {
            rng = fastrand::Rng::with_seed(seed ^ n);
        }
        let pool = seeds(&mut rng);
        let input = mutate(&mut rng, &pool);
        LARGEST.store(0, Ordering::Relaxed);
        for as_worker in [false, true] {
            let mut reader = FrameReader::new(&input[..], FRAME_LIMIT);
            let mut ended = false;
            for _ in 0..input.len() / 4 + 1 {
                let step = if as_worker {
                    reader.read::<ToWorker>().map(|m| m.is_some())
                } else {
                    reader.read::<FromWorker>().map(|m| m.is_some())
                };
                match step {
                    Ok(true) => decoded += 1,
                    Ok(false) => {
                        ended = true;
                        break;
                    }
                    Err(_) => {
                        refused += 1;
                        ended = true;
                        break;
                    }
                }
            }
            assert!(ended, "input {n} was still being read after {} reads: {input:?}", input.len() / 4 + 1);
        }
        let _ = peek_hello_version(input.get(4..).unwrap_or_default());
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(largest <= MAX_ALLOC, "input {n} made a {largest}-byte allocation: {input:?}");
    }
    println!(
        "fuzz: {inputs} inputs in {:.1}s: {decoded} frames decoded, {refused} refused, no panic",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_decoder_survives_20k_mangled_inputs() {
    fuzz(20_000, 0xf1a7);
}

/// `FLOTA_FUZZ_INPUTS=N cargo test --release -p shared --test fuzz_frames -- --ignored`
#[test]
#[ignore = "long: run by scripts/fuzz-frames.sh"]
fn the_decoder_survives_many_mangled_inputs() {
    let n = std::env::var("FLOTA_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seed = std::env::var("FLOTA_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    fuzz(n, seed);
}
