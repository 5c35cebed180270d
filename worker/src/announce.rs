//! Rate limits as servers announce them in response headers.
//!
//! Read, in this order, each field taken from the first place that gives it:
//! - the IETF draft's structured fields (draft 7 on): `RateLimit-Policy: "default";q=100;w=60`
//!   (quota and window) and `RateLimit: "default";r=50;t=30` (remaining and seconds to reset);
//! - its earlier forms: `RateLimit-Policy: 100;w=60`, `RateLimit: limit=100, remaining=50,
//!   reset=30`, and the separate `RateLimit-Limit` (possibly `100, 100;w=60`),
//!   `RateLimit-Remaining` and `RateLimit-Reset`;
//! - the common `X-RateLimit-Limit`, `-Remaining`, `-Reset` (also spelt `X-Rate-Limit-*`),
//!   whose reset is seconds from now or, as some APIs send it, a Unix time; and
//!   `X-RateLimit-Reset-After` (seconds, possibly fractional).
//!
//! Where a header lists several policies, the most restrictive one (the lowest quota per second,
//! the fewest remaining) is the one the fleet must keep to. Structured fields are parsed by
//! `sfv`; a value that does not parse is ignored, never an error: the headers only advise.

use std::time::{SystemTime, UNIX_EPOCH};

use sfv::{BareItem, Dictionary, List, ListEntry, Parameters, Parser};
use shared::Announced;
use ureq::http::HeaderMap;

/// The rate limit the headers announce, if they announce any part of one.
pub fn announced(headers: &HeaderMap) -> Option<Announced> {
    if !headers.keys().any(|k| k.as_str().contains("ratelimit") || k.as_str().contains("rate-limit")) {
        return None;
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut a = Announced::default();
    if let Some((limit, window_ms)) = get("ratelimit-policy").and_then(policy) {
        a.limit = Some(limit);
        a.window_ms = window_ms;
    }
    if let Some(v) = get("ratelimit") {
        let (limit, remaining, reset) = combined(v);
        fill(&mut a.limit, limit);
        fill(&mut a.remaining, remaining);
        fill(&mut a.reset_ms, reset.map(|s| s * 1000));
    }
    if let Some((limit, window_ms)) = get("ratelimit-limit").and_then(policy) {
        fill(&mut a.limit, Some(limit));
        fill(&mut a.window_ms, window_ms);
    }
    fill(&mut a.remaining, get("ratelimit-remaining").and_then(integer));
    fill(&mut a.reset_ms, get("ratelimit-reset").and_then(integer).map(|s| s * 1000));
    // Named in full: this runs on every answer of a server that sends such headers.
    for [limit, remaining, reset_after, reset] in [
        ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset-after", "x-ratelimit-reset"],
        ["x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset-after", "x-rate-limit-reset"],
    ] {
        fill(&mut a.limit, get(limit).and_then(integer));
        fill(&mut a.remaining, get(remaining).and_then(integer));
        fill(&mut a.reset_ms, get(reset_after).and_then(seconds_ms));
        fill(&mut a.reset_ms, get(reset).and_then(integer).map(reset_ms));
    }
    (a != Announced::default()).then_some(a)
}

fn fill(slot: &mut Option<u64>, value: Option<u64>) {
    if slot.is_none() {
        *slot = value;
    }
}

fn integer(v: &str) -> Option<u64> {
    v.trim().parse().ok()
}

/// Seconds, possibly fractional, as milliseconds.
fn seconds_ms(v: &str) -> Option<u64> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

/// A reset in seconds from now, or (a value no window is that long: past 2001) a Unix time.
fn reset_ms(v: u64) -> u64 {
    const UNIX_TIME_AFTER: u64 = 1_000_000_000;
    if v < UNIX_TIME_AFTER {
        return v * 1000;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    v.saturating_sub(now) * 1000
}

fn param(params: &Parameters, key: &str) -> Option<u64> {
    params.iter().find(|(k, _)| k.as_str() == key).and_then(|(_, v)| non_negative(v))
}

fn non_negative(v: &BareItem) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i64::from(i)).ok())
}

/// The most restrictive of a list of policies: `"name";q=100;w=60` or `100;w=60`. Returns the
/// quota and the window in milliseconds, if one was given.
fn policy(v: &str) -> Option<(u64, Option<u64>)> {
    let list: List = Parser::new(v).parse().ok()?;
    list.iter()
        .filter_map(|entry| {
            let ListEntry::Item(item) = entry else { return None };
            let quota = non_negative(&item.bare_item).or_else(|| param(&item.params, "q"))?;
            Some((quota, param(&item.params, "w").map(|w| w * 1000)))
        })
        .min_by(|(q1, w1), (q2, w2)| {
            let per_ms = |q: u64, w: Option<u64>| q as f64 / w.unwrap_or(1000).max(1) as f64;
            per_ms(*q1, *w1).total_cmp(&per_ms(*q2, *w2))
        })
}

/// The `RateLimit` field: a list of `"name";r=50;t=30` (draft 7 on; the fewest remaining
/// wins), or a dictionary `limit=100, remaining=50, reset=30` (earlier drafts). Returns the
/// limit, the remaining requests and the seconds to reset.
fn combined(v: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    if let Ok(list) = Parser::new(v).parse::<List>() {
        let tightest = list
            .iter()
            .filter_map(|entry| match entry {
                ListEntry::Item(item) if param(&item.params, "r").is_some() => {
                    Some((param(&item.params, "r"), param(&item.params, "t")))
                }
                _ => None,
            })
            .min_by_key(|(r, _)| *r);
        if let Some((remaining, reset)) = tightest {
            return (None, remaining, reset);
        }
    }
    if let Ok(dict) = Parser::new(v).parse::<Dictionary>() {
        let get = |key: &str| match dict.iter().find(|(k, _)| k.as_str() == key) {
            Some((_, ListEntry::Item(item))) => non_negative(&item.bare_item),
            _ => None,
        };
        return (get("limit"), get("remaining"), get("reset"));
    }
    (None, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(
                ureq::http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                value.parse().expect("a header value"),
            );
        }
        h
    }

    fn a(
        limit: Option<u64>,
        window_ms: Option<u64>,
        remaining: Option<u64>,
        reset_ms: Option<u64>,
    ) -> Announced {
        Announced { limit, window_ms, remaining, reset_ms }
    }

    #[test]
    fn structured_fields_of_the_current_draft() {
        let h = headers(&[
            ("RateLimit-Policy", r#""burst";q=100;w=60, "daily";q=1000;w=86400"#),
            ("RateLimit", r#""burst";r=50;t=30, "daily";r=999;t=80000"#),
        ]);
        assert_eq!(announced(&h), Some(a(Some(1000), Some(86_400_000), Some(50), Some(30_000))));
        let h = headers(&[
            ("RateLimit-Policy", r#""default";q=2000;w=1"#),
            ("RateLimit", r#""default";r=0;t=1"#),
        ]);
        assert_eq!(announced(&h), Some(a(Some(2000), Some(1000), Some(0), Some(1000))));
    }

    #[test]
    fn earlier_drafts() {
        let h =
            headers(&[("RateLimit", "limit=100, remaining=50, reset=5"), ("RateLimit-Policy", "100;w=60")]);
        assert_eq!(announced(&h), Some(a(Some(100), Some(60_000), Some(50), Some(5000))));
        let h = headers(&[
            ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
            ("RateLimit-Remaining", "7"),
            ("RateLimit-Reset", "1"),
        ]);
        // 50 a minute is tighter than 10 a second: the quota the fleet must keep to.
        assert_eq!(announced(&h), Some(a(Some(50), Some(60_000), Some(7), Some(1000))));
    }

    #[test]
    fn the_common_x_headers() {
        let h = headers(&[
            ("X-RateLimit-Limit", "5000"),
            ("X-RateLimit-Remaining", "4999"),
            ("X-RateLimit-Reset", "60"),
        ]);
        assert_eq!(announced(&h), Some(a(Some(5000), None, Some(4999), Some(60_000))));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        let h = headers(&[("X-Rate-Limit-Remaining", "0"), ("X-Rate-Limit-Reset", &(now + 120).to_string())]);
        let got = announced(&h).expect("announced");
        assert_eq!(got.remaining, Some(0));
        let reset = got.reset_ms.expect("a reset");
        assert!((118_000..=120_000).contains(&reset), "a Unix time reset read as {reset}ms from now");
        let h = headers(&[("X-RateLimit-Reset-After", "1.5"), ("X-RateLimit-Remaining", "0")]);
        assert_eq!(announced(&h), Some(a(None, None, Some(0), Some(1500))));
    }

    #[test]
    fn nothing_or_nonsense_announces_nothing() {
        assert_eq!(announced(&headers(&[("Content-Type", "text/plain")])), None);
        let h = headers(&[("RateLimit", "@@@"), ("RateLimit-Policy", "soon"), ("X-RateLimit-Limit", "-3")]);
        assert_eq!(announced(&h), None);
    }
}
