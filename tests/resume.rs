//! Resume: the store is the cache.

use crate::util::*;

#[test]
fn extending_a_range_fetches_only_the_new_ids_and_a_complete_rerun_sends_nothing() {
    let (api, _dir, store) = setup(&[]);
    Job::new(&api.url(), "0..3000", &store).run().assert_code(0);
    assert_eq!(api.requests(), 3000);

    let out = Job::new(&api.url(), "0..5000", &store).run();
    out.assert_code(0);
    assert_eq!(api.requests(), 5000, "only the 2000 new ids were asked for");
    assert_eq!(figure(&out, "skipped"), 3000, "{}", out.stdout);
    assert_complete(&store, 0..5000);

    let out = Job::new(&api.url(), "0..5000", &store).run();
    out.assert_code(0);
    assert_eq!(api.requests(), 5000, "a rerun over a complete store sends no request");
    assert_eq!(figure(&out, "fetched"), 0, "{}", out.stdout);
}

#[test]
fn failed_ids_are_stored_with_their_error_and_fetched_again_by_the_next_run() {
    let broken = MockApi::start(&["--error-rate", "1.0"]);
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    let out = Job::new(&broken.url(), "0..200", &store).flag("--max-attempts", "2").run();
    out.assert_code(3);
    assert_eq!(broken.requests(), 400, "two attempts per id");
    let records = export(&store);
    assert_eq!(records.len(), 200);
    for rec in &records {
        assert!(rec["status"].is_null(), "{rec}");
        assert_eq!(rec["attempts"].as_u64(), Some(2));
        assert_eq!(rec["error"].as_str(), Some("gave up after 2 attempts: HTTP 500"));
    }

    // The same job (same address), now healthy: only the failed ids are fetched, and all settle.
    let addr = broken.addr.clone();
    drop(broken);
    let healthy = MockApi::start_on(&addr, &[]);
    Job::new(&healthy.url(), "0..200", &store).run().assert_code(0);
    assert_eq!(healthy.requests(), 200);
    assert_complete(&store, 0..200);
}
