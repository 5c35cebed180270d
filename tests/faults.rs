//! A flaky API: 5xx, 429 with Retry-After, and dropped connections all settle.

use crate::util::*;

#[test]
fn a_flaky_api_settles_every_id() {
    let (api, _dir, store) =
        setup(&["--error-rate", "0.2", "--drop-rate", "0.05", "--rate-limit", "2500", "--seed", "7"]);
    let out = Job::new(&api.url(), "0..6000", &store).flag("--max-attempts", "15").run();
    out.assert_code(0);
    assert_complete(&store, 0..6000);
    let stats = api.stats();
    for (fault, count) in
        [("errors", stats.errors), ("dropped", stats.dropped), ("rate_limited", stats.rate_limited)]
    {
        assert!(count > 0, "mockapi injected no {fault}: {stats:?}");
    }
    let retried = export(&store).iter().filter(|r| r["attempts"].as_u64() > Some(1)).count();
    assert!(retried > 1000, "about a quarter of the ids needed a retry, saw {retried}");
    assert_eq!(stats.ok, 6000, "every id answered 200 exactly once: {stats:?}");
}
