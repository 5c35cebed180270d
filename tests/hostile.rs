//! Hostile responses: each is a failure for its id, never a crash; odd bodies are kept as bytes.

use std::time::{Duration, Instant};

use base64::Engine;

use crate::util::*;

fn run_route(route: &str, extra: &[(&str, &str)]) -> (Vec<serde_json::Value>, Outcome, Duration) {
    let (api, _dir, store) = setup(&[]);
    let mut args = job_args(&format!("http://{}/{route}/{{id}}", api.addr), "0..3", &store);
    for (flag, value) in extra {
        set(&mut args, flag, value);
    }
    let started = Instant::now();
    let out = run(&strs(&args));
    let took = started.elapsed();
    (export(&store), out, took)
}

#[test]
fn a_body_over_the_limit_fails_its_id_without_exhausting_memory() {
    let (records, out, _) = run_route("huge", &[("--max-body", "1M")]);
    out.assert_code(3);
    assert_eq!(records.len(), 3);
    for rec in &records {
        assert!(rec["status"].is_null(), "{rec}");
        assert_eq!(rec["error"].as_str(), Some("body exceeds the limit of 1048576 bytes"));
        assert_eq!(rec["attempts"].as_u64(), Some(1), "not retried: {rec}");
    }
}

#[test]
fn a_trickling_server_is_cut_off_by_the_receive_timeout() {
    let (records, out, took) = run_route("trickle", &[("--io-timeout", "1s"), ("--max-attempts", "2")]);
    out.assert_code(3);
    for rec in &records {
        assert!(rec["status"].is_null(), "{rec}");
        let err = rec["error"].as_str().unwrap_or_default();
        assert!(err.starts_with("gave up after 2 attempts") && err.contains("timeout"), "{rec}");
    }
    // 1000 bytes at 5 per second would take 200 s per attempt.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_redirect_loop_fails_its_id() {
    let (records, out, _) = run_route("loop", &[]);
    out.assert_code(3);
    for rec in &records {
        assert!(rec["status"].is_null(), "{rec}");
        assert!(rec["error"].as_str().unwrap_or_default().contains("redirect"), "{rec}");
        assert_eq!(rec["attempts"].as_u64(), Some(1), "a redirect loop is not retried: {rec}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_exported_as_base64_byte_for_byte() {
    let (records, out, _) = run_route("binary", &[]);
    out.assert_code(0);
    for (id, rec) in records.iter().enumerate() {
        let mut want = vec![0xff, 0xfe, 0x00, 0x80];
        want.extend_from_slice(&(id as u64).to_le_bytes());
        assert!(rec.get("body").is_none(), "no mangled text body: {rec}");
        let got = base64::engine::general_purpose::STANDARD
            .decode(rec["body_base64"].as_str().expect("body_base64"))
            .expect("valid base64");
        assert_eq!(got, want);
    }
}

#[test]
fn a_redirect_without_a_location_is_a_final_answer_with_its_body() {
    let (records, out, _) = run_route("nolocation", &[]);
    out.assert_code(0);
    assert_eq!(records.len(), 3);
    for (id, rec) in records.iter().enumerate() {
        assert_eq!(rec["status"].as_u64(), Some(300), "{rec}");
        assert_eq!(
            rec["body"].as_str(),
            Some(format!("item {id}: pick one, we did not say where\n").as_str()),
            "{rec}"
        );
        assert_eq!(rec["attempts"].as_u64(), Some(1), "not retried: {rec}");
    }
}
