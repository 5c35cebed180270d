//! A hostile network between the fleet and the API: `supervisor fault-proxy` (Toxiproxy's
//! toxics) in front of mockapi. Latency and jitter, stalls, resets, cut and sliced answers, a
//! slow link, a trickled body, the proxy gone and back. Every id ends exactly once with its own
//! whole body, and a cut body is never an answer.
//!
//! The tests' fleets keep about 24 connections, so a toxic meant for "2% of connections" acts
//! here on 10% (2% of 24 would often be none); `scripts/bench-faults` runs the same faults at
//! 2% with the default fleet, for docs/faults.md.

use std::time::{Duration, Instant};

use crate::util::*;

const BODY: usize = 1024;

/// mockapi with 1 KiB bodies, the proxy in front with `toxics`, and a job through it.
fn through(toxics: &[&str], ids: &str) -> (MockApi, FaultProxy, tempfile::TempDir, Vec<String>) {
    let (api, dir, store) = setup(&["--body-bytes", "1024"]);
    let proxy = FaultProxy::start(&api.addr, toxics);
    let args = job_args(&proxy.url(), ids, &store);
    (api, proxy, dir, args)
}

fn store_of(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("items.sled")
}

#[test]
fn latency_with_jitter_on_every_connection_costs_time_not_requests() {
    let (api, proxy, dir, args) = through(&["latency:latency=50,jitter=40"], "0..1000");
    let out = run(&strs(&args));
    out.assert_code(0);
    assert_complete_sized(&store_of(&dir), 0..1000, BODY);
    assert!(proxy.met("latency") >= 1, "the proxy added no latency");
    assert_eq!(figure(&out, "retries"), 0, "{}", out.stdout);
    assert_eq!(api.requests(), 1000, "one request per id");
}

#[test]
fn a_connection_that_stalls_after_the_request_costs_its_id_one_io_timeout() {
    // Data stops once the request is sent; the socket stays open.
    let (api, proxy, dir, mut args) = through(&["timeout:timeout=0,toxicity=0.1"], "0..2000");
    set(&mut args, "--io-timeout", "1s");
    let started = Instant::now();
    let out = spawn(&strs(&args)).wait(Duration::from_secs(60));
    let took = started.elapsed();
    out.assert_code(0);
    assert_complete_sized(&store_of(&dir), 0..2000, BODY);
    let stalled = proxy.met("timeout") as u64;
    assert!(stalled >= 1, "no connection stalled");
    // Each stalled connection held one request (its first) until --io-timeout: one retry each.
    let retries = figure(&out, "retries");
    assert_eq!(retries, stalled, "{}", out.stdout);
    assert_eq!(api.requests(), 2000 + stalled);
    // Bounded by the timeouts (a second each, in parallel), not by the stalls (for ever).
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn answers_reset_or_cut_mid_body_are_never_stored_and_their_ids_complete() {
    // 600 bytes into the first answer of a connection: its head and about half its body.
    let (api, proxy, dir, args) =
        through(&["reset_peer:after=600,toxicity=0.1", "limit_data:bytes=600,toxicity=0.1"], "0..2000");
    let out = spawn(&strs(&args)).wait(Duration::from_secs(60));
    out.assert_code(0);
    assert_complete_sized(&store_of(&dir), 0..2000, BODY);
    let (reset, cut) = (proxy.met("reset_peer") as u64, proxy.met("limit_data") as u64);
    assert!(reset >= 1 && cut >= 1, "{reset} connections reset, {cut} cut");
    let retries = figure(&out, "retries");
    assert!((1..=reset + cut).contains(&retries), "{retries} retries for {reset} + {cut}: {}", out.stdout);
    assert_eq!(api.requests(), 2000 + retries);
}

#[test]
fn a_cut_body_fails_its_id_saying_it_was_cut_and_how_much_came() {
    // ureq reports a reset mid-body as the end of the stream, as it does a close.
    for (toxic, why) in
        [("limit_data:bytes=600", "Peer disconnected"), ("reset_peer:after=600", "Peer disconnected")]
    {
        let (_api, _proxy, dir, mut args) = through(&[toxic], "0..3");
        set(&mut args, "--max-attempts", "2");
        let out = spawn(&strs(&args)).wait(Duration::from_secs(30));
        out.assert_code(3);
        let records = export(&store_of(&dir));
        assert_eq!(records.len(), 3, "{toxic}: one record per id");
        for rec in &records {
            assert!(
                rec["status"].is_null() && rec.get("body").is_none(),
                "{toxic}: a cut body stored: {rec}"
            );
            let id = rec["id"].as_u64().expect("an id");
            let length = mockapi::sized_body(id, BODY).len();
            let err = rec["error"].as_str().unwrap_or_default();
            let (came, rest) = err
                .strip_prefix("gave up after 2 attempts: body cut off after ")
                .and_then(|e| e.split_once(' '))
                .unwrap_or_else(|| panic!("{toxic}: {err}"));
            let came: usize = came.parse().unwrap_or_else(|_| panic!("{toxic}: {err}"));
            assert!(came > 0 && came < length, "{toxic}: {came} of {length}: {err}");
            assert!(
                rest.starts_with(&format!("of {length} bytes (")) && rest.contains(why),
                "{toxic}: {err}"
            );
        }
    }
}

#[test]
fn answers_in_one_byte_segments_arrive_whole() {
    let (api, proxy, dir, args) = through(&["slicer:average_size=1,delay=100"], "0..300");
    let out = spawn(&strs(&args)).wait(Duration::from_secs(60));
    out.assert_code(0);
    assert_complete_sized(&store_of(&dir), 0..300, BODY);
    assert!(proxy.met("slicer") >= 1);
    assert_eq!(figure(&out, "retries"), 0, "{}", out.stdout);
    assert_eq!(api.requests(), 300);
}

#[test]
fn on_a_slow_shared_link_the_adaptive_limit_keeps_the_queue_short_of_the_timeouts() {
    // 256 KB/s for every connection together: about 220 answers of 1 KiB a second, each 4.5 ms
    // on the link. With the default 4 x 256 threads all in flight, an answer would queue for
    // 4.6 s behind the others.
    let (api, _proxy, dir, mut args) = through(&["bandwidth:rate=256,shared=1"], "0..1500");
    set(&mut args, "--threads", "256");
    set(&mut args, "--workers", "4");
    let out = spawn(&strs(&args)).wait(Duration::from_secs(90));
    out.assert_code(0);
    assert_complete_sized(&store_of(&dir), 0..1500, BODY);
    assert_eq!(figure(&out, "retries"), 0, "no timeouts: {}", out.stdout);
    assert_eq!(api.requests(), 1500);
    // The adaptive limit's highest: it never grew to fill the link's queue.
    let high = summary(&out)["pacing"]["concurrency_range"][1].as_u64().expect("a range");
    assert!(high <= 256, "the limit grew to {high} on a link that takes 220 answers a second");
}

#[test]
fn a_body_trickled_slower_than_the_io_timeout_fails_each_attempt_at_the_timeout() {
    // The head and the body's first bytes at once, then a byte every 100 ms: no read waits
    // near --io-timeout, but the whole body would take about 80 s.
    let (_api, proxy, dir, mut args) = through(&["slicer:after=200,average_size=1,delay=100000"], "0..3");
    set(&mut args, "--io-timeout", "2s");
    set(&mut args, "--max-attempts", "2");
    let started = Instant::now();
    let out = spawn(&strs(&args)).wait(Duration::from_secs(60));
    let took = started.elapsed();
    out.assert_code(3);
    assert!(proxy.met("slicer") >= 1);
    for rec in export(&store_of(&dir)) {
        let err = rec["error"].as_str().unwrap_or_default();
        assert!(rec["status"].is_null(), "{rec}");
        assert!(
            err.starts_with("gave up after 2 attempts: timeout") && err.contains("bytes of the body"),
            "{rec}"
        );
    }
    // Two attempts of 2 s each, and their backoff: the deadline held for the whole body.
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn the_api_gone_for_30_s_and_back_on_its_port_fails_no_id() {
    let api = MockApi::start(&["--body-bytes", "1024"]);
    let proxy = FaultProxy::start(&api.addr, &[]);
    let addr = proxy.addr.clone();
    let dir = tempdir();
    let store = store_of(&dir);
    let running = Job::new(&proxy.url(), "0..3000", &store).flag("--rate", "300").spawn();
    wait_for("1,000 requests", Duration::from_secs(30), || api.requests() >= 1000);
    drop(proxy); // connections refused from here
                 // The port is held, not listened on, while the API is gone: another test's server once took
                 // it in those 30 s, and its answers were stored as this API's.
    let held = hold_port(&addr);
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    let _back = FaultProxy::start_on(&addr, &api.addr, &[]);
    let out = running.wait(Duration::from_secs(90));
    out.assert_code(0);
    assert_complete_sized(&store, 0..3000, BODY);
    assert!(figure(&out, "pacing.outages") >= 1, "{}", out.stdout);
    // The server saw each id once, and the requests in flight when the proxy went (24 threads).
    let served = api.requests();
    assert!(served <= 3000 + 24, "{served} requests reached the API for 3,000 ids");
    // The fleet sent, beyond those: what met the outage before the circuit opened, and about a
    // probe a second for 30 s.
    let sent = figure(&out, "pacing.requests");
    assert!(sent <= 3000 + 300, "{sent} requests for 3,000 ids through a 30 s outage");
}

/// Holds a loopback port without listening on it: connections to it are refused, and no other
/// process can take it until the descriptor is dropped.
fn hold_port(addr: &str) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).expect("a socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    let at: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address");
    bind(fd.as_raw_fd(), &SockaddrIn::from(at)).expect("binds the port");
    fd
}
