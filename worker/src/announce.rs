//! Rate limits as servers announce them in response headers.
//!
//! Read, in this order, each field taken from the first place that gives it:
//! - the IETF draft's structured fields (draft 7 on, express-rate-limit's `draft-8`):
//!   `RateLimit-Policy: "default";q=100;w=60` (quota and window) and
//!   `RateLimit: "default";r=50;t=30` (remaining and seconds to reset);
//! - its earlier forms (express-rate-limit's `draft-6` and `draft-7`, Kong):
//!   `RateLimit-Policy: 100;w=60`, `RateLimit: limit=100, remaining=50, reset=30`, and the
//!   separate `RateLimit-Limit` (possibly `100, 100;w=60`), `RateLimit-Remaining` and
//!   `RateLimit-Reset`;
//! - Kong's per-window `X-RateLimit-Limit-Minute` and `X-RateLimit-Remaining-Minute` (also
//!   `-Second`, `-Hour`, `-Day`, `-Month`, `-Year`): the window is in the name;
//! - the common `X-RateLimit-Limit` (Envoy's may be a list, `10, 10;w=60`), `-Remaining`
//!   (Reddit's is fractional), `-Used` (GitHub, Reddit: the remaining is the limit less it),
//!   `-Reset-After` (Discord: seconds, fractional) and `-Reset` (also spelt `X-Rate-Limit-*`);
//! - Shopify's leaky bucket, `X-Shopify-Shop-Api-Call-Limit: 32/40` (32 used of 40).
//!
//! A reset is read as seconds from now (possibly fractional), or, when no window is that long,
//! as a Unix time in seconds (GitHub; the `limits` library behind slowapi and Flask-Limiter
//! writes it with a fraction, Discord too) or in milliseconds, or as an HTTP date. Where a
//! header lists several policies, the most restrictive one (the lowest quota per second, the
//! fewest remaining) is the one the fleet must keep to. Structured fields are parsed by `sfv`;
//! a value that does not parse is ignored, never an error: the headers only advise.

use std::time::{SystemTime, UNIX_EPOCH};

use sfv::{BareItem, Dictionary, List, ListEntry, Parameters, Parser};
use shared::Announced;
use ureq::http::HeaderMap;

/// Kong's headers of each window (limit, remaining) and its length in seconds. Named in full:
/// this is read on every answer of a server that sends rate-limit headers.
const KONG_WINDOWS: [(&str, &str, u64); 6] = [
    ("x-ratelimit-limit-second", "x-ratelimit-remaining-second", 1),
    ("x-ratelimit-limit-minute", "x-ratelimit-remaining-minute", 60),
    ("x-ratelimit-limit-hour", "x-ratelimit-remaining-hour", 3_600),
    ("x-ratelimit-limit-day", "x-ratelimit-remaining-day", 86_400),
    ("x-ratelimit-limit-month", "x-ratelimit-remaining-month", 30 * 86_400),
    ("x-ratelimit-limit-year", "x-ratelimit-remaining-year", 365 * 86_400),
];

/// The rate limit the headers announce, if they announce any part of one.
pub fn announced(headers: &HeaderMap) -> Option<Announced> {
    if !headers.keys().any(|k| {
        let k = k.as_str();
        k.contains("ratelimit") || k.contains("rate-limit") || k == "x-shopify-shop-api-call-limit"
    }) {
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
    fill(&mut a.remaining, get("ratelimit-remaining").and_then(count));
    fill(&mut a.reset_ms, get("ratelimit-reset").and_then(reset_ms));
    // Kong's windows are named: its tightest is the policy, over a RateLimit-Limit that names
    // none (Kong sends both).
    if let Some((limit, remaining, window_ms)) = kong(&get).filter(|_| a.window_ms.is_none()) {
        (a.limit, a.window_ms) = (Some(limit), Some(window_ms));
        a.remaining = remaining.or(a.remaining);
    }
    // Named in full: this runs on every answer of a server that sends such headers.
    for [limit, remaining, used, reset_after, reset] in [
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-used",
            "x-ratelimit-reset-after",
            "x-ratelimit-reset",
        ],
        [
            "x-rate-limit-limit",
            "x-rate-limit-remaining",
            "x-rate-limit-used",
            "x-rate-limit-reset-after",
            "x-rate-limit-reset",
        ],
    ] {
        if let Some((quota, window_ms)) = get(limit).and_then(policy) {
            fill(&mut a.limit, Some(quota));
            fill(&mut a.window_ms, window_ms);
        }
        fill(&mut a.remaining, get(remaining).and_then(count));
        if let (None, Some(quota), Some(used)) = (a.remaining, a.limit, get(used).and_then(count)) {
            a.remaining = Some(quota.saturating_sub(used));
        }
        fill(&mut a.reset_ms, get(reset_after).and_then(seconds_ms));
        fill(&mut a.reset_ms, get(reset).and_then(reset_ms));
    }
    if let Some((used, size)) = get("x-shopify-shop-api-call-limit").and_then(shopify) {
        fill(&mut a.limit, Some(size));
        fill(&mut a.remaining, Some(size.saturating_sub(used)));
    }
    (a != Announced::default()).then_some(a)
}

fn fill(slot: &mut Option<u64>, value: Option<u64>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// A number, possibly fractional (`599.0`), not negative: its whole part.
fn count(v: &str) -> Option<u64> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && x >= 0.0).then(|| x.floor() as u64)
}

/// Seconds, possibly fractional, as milliseconds.
fn seconds_ms(v: &str) -> Option<u64> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

/// A reset, as milliseconds from now: seconds from now (possibly fractional); or, past any
/// window's length, a Unix time in seconds (possibly fractional) or in milliseconds; or an
/// HTTP date.
fn reset_ms(v: &str) -> Option<u64> {
    /// A value this large is no window's length but a Unix time (past 2001)...
    const UNIX_SECONDS_AFTER: f64 = 1e9;
    /// ...and this large, one in milliseconds (past 2001 too).
    const UNIX_MILLIS_AFTER: f64 = 1e12;
    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let v = v.trim();
    let Ok(x) = v.parse::<f64>() else {
        let when = httpdate::parse_http_date(v).ok()?;
        return Some(when.duration_since(SystemTime::now()).map_or(0, |d| d.as_millis() as u64));
    };
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let ms = if x < UNIX_SECONDS_AFTER {
        x * 1000.0
    } else if x < UNIX_MILLIS_AFTER {
        x * 1000.0 - now_ms()
    } else {
        x - now_ms()
    };
    Some(ms.max(0.0).round() as u64)
}

fn param(params: &Parameters, key: &str) -> Option<u64> {
    params.iter().find(|(k, _)| k.as_str() == key).and_then(|(_, v)| non_negative(v))
}

fn non_negative(v: &BareItem) -> Option<u64> {
    match v {
        BareItem::Integer(i) => u64::try_from(i64::from(*i)).ok(),
        BareItem::Decimal(d) => {
            let x = f64::from(*d);
            (x >= 0.0).then(|| x.floor() as u64)
        }
        _ => None,
    }
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

/// Kong's `X-RateLimit-Limit-<Window>` and `X-RateLimit-Remaining-<Window>`: the tightest
/// window (the lowest quota per second), as limit, remaining and window in milliseconds.
fn kong<'h>(get: &impl Fn(&str) -> Option<&'h str>) -> Option<(u64, Option<u64>, u64)> {
    KONG_WINDOWS
        .iter()
        .filter_map(|&(limit, remaining, secs)| {
            let limit = get(limit).and_then(count)?;
            let remaining = get(remaining).and_then(count);
            Some((limit, remaining, secs * 1000))
        })
        .min_by(|a, b| (a.0 as f64 / a.2 as f64).total_cmp(&(b.0 as f64 / b.2 as f64)))
}

/// Shopify's `used/size` of its leaky bucket.
fn shopify(v: &str) -> Option<(u64, u64)> {
    let (used, size) = v.split_once('/')?;
    Some((count(used)?, count(size)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(
                ureq::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .expect("a header name"),
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

    fn unix_now() -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
    }

    /// A reset read `ms` from now, give or take the time the test takes.
    #[track_caller]
    fn about(got: Option<u64>, ms: u64) {
        let got = got.expect("a reset");
        assert!(got <= ms && got + 2_000 >= ms, "a reset read as {got}ms from now, not about {ms}");
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
    fn express_rate_limit_in_each_of_its_forms() {
        // Captured from express-rate-limit 8 (limit 100 a minute), standardHeaders 'draft-8'.
        let h = headers(&[
            ("RateLimit-Policy", r#""100-in-1min"; q=100; w=60; pk=:ZGVhZGJlZWY=:"#),
            ("RateLimit", r#""100-in-1min"; r=99; t=60"#),
        ]);
        assert_eq!(announced(&h), Some(a(Some(100), Some(60_000), Some(99), Some(60_000))));
        // 'draft-7'.
        let h =
            headers(&[("RateLimit-Policy", "100;w=60"), ("RateLimit", "limit=100, remaining=99, reset=60")]);
        assert_eq!(announced(&h), Some(a(Some(100), Some(60_000), Some(99), Some(60_000))));
        // 'draft-6'.
        let h = headers(&[
            ("RateLimit-Policy", "100;w=60"),
            ("RateLimit-Limit", "100"),
            ("RateLimit-Remaining", "99"),
            ("RateLimit-Reset", "60"),
        ]);
        assert_eq!(announced(&h), Some(a(Some(100), Some(60_000), Some(99), Some(60_000))));
        // legacyHeaders: X-RateLimit-Reset as a Unix time in whole seconds.
        let reset = (unix_now() as u64 + 42).to_string();
        let h = headers(&[
            ("X-RateLimit-Limit", "100"),
            ("X-RateLimit-Remaining", "99"),
            ("X-RateLimit-Reset", &reset),
        ]);
        let got = announced(&h).expect("announced");
        assert_eq!((got.limit, got.remaining, got.window_ms), (Some(100), Some(99), None));
        about(got.reset_ms, 42_000);
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
    fn slowapi_and_flask_limiter_write_the_reset_as_a_fractional_unix_time() {
        // Captured from FastAPI + slowapi (limits' fixed window, Redis), "500/second".
        let reset = format!("{:.7}", unix_now() + 0.75);
        let h = headers(&[
            ("x-ratelimit-limit", "500"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
            ("retry-after", "0"),
        ]);
        let got = announced(&h).expect("announced");
        assert_eq!((got.limit, got.remaining, got.window_ms), (Some(500), Some(0), None));
        about(got.reset_ms, 750);
        // In milliseconds since the epoch, and as an HTTP date.
        let ms = ((unix_now() + 30.0) * 1000.0) as u64;
        let h = headers(&[("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", &ms.to_string())]);
        about(announced(&h).and_then(|a| a.reset_ms), 30_000);
        let date = httpdate::fmt_http_date(SystemTime::now() + std::time::Duration::from_secs(90));
        let h = headers(&[("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", &date)]);
        about(announced(&h).and_then(|a| a.reset_ms), 90_000);
    }

    #[test]
    fn kong_names_the_window_in_the_header() {
        // Captured from Kong's rate-limiting plugin, minute: 5, hour: 100.
        let h = headers(&[
            ("X-RateLimit-Limit-Minute", "5"),
            ("X-RateLimit-Remaining-Minute", "4"),
            ("X-RateLimit-Limit-Hour", "100"),
            ("X-RateLimit-Remaining-Hour", "99"),
            ("RateLimit-Limit", "5"),
            ("RateLimit-Remaining", "4"),
            ("RateLimit-Reset", "47"),
        ]);
        // 100 an hour is tighter than 5 a minute: that window, its limit and what remains of it.
        assert_eq!(announced(&h), Some(a(Some(100), Some(3_600_000), Some(99), Some(47_000))));
        let h = headers(&[("X-RateLimit-Limit-Hour", "100"), ("X-RateLimit-Remaining-Hour", "0")]);
        assert_eq!(announced(&h), Some(a(Some(100), Some(3_600_000), Some(0), None)));
    }

    #[test]
    fn github_reddit_discord_envoy_and_shopify() {
        // GitHub: a used count and an epoch reset.
        let reset = (unix_now() as u64 + 3000).to_string();
        let h = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-used", "1"),
            ("x-ratelimit-reset", &reset),
            ("x-ratelimit-resource", "core"),
        ]);
        let got = announced(&h).expect("announced");
        assert_eq!((got.limit, got.remaining), (Some(5000), Some(4999)));
        about(got.reset_ms, 3_000_000);
        // Reddit: a fractional remaining, a reset in seconds, no limit.
        let h = headers(&[
            ("X-Ratelimit-Used", "1"),
            ("X-Ratelimit-Remaining", "599.0"),
            ("X-Ratelimit-Reset", "540"),
        ]);
        assert_eq!(announced(&h), Some(a(None, None, Some(599), Some(540_000))));
        // Discord: a reset after, fractional, beside a fractional epoch reset.
        let reset = format!("{:.3}", unix_now() + 1.2);
        let h = headers(&[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", &reset),
            ("X-RateLimit-Reset-After", "1.234"),
            ("X-RateLimit-Bucket", "abcd1234"),
        ]);
        assert_eq!(announced(&h), Some(a(Some(5), None, Some(0), Some(1234))));
        // Envoy's rate limit filter, draft 03 of the headers.
        let h = headers(&[
            ("x-ratelimit-limit", r#"10, 10;w=60;name="per-minute""#),
            ("x-ratelimit-remaining", "9"),
            ("x-ratelimit-reset", "52"),
        ]);
        assert_eq!(announced(&h), Some(a(Some(10), Some(60_000), Some(9), Some(52_000))));
        // Shopify's leaky bucket.
        let h = headers(&[("X-Shopify-Shop-Api-Call-Limit", "32/40")]);
        assert_eq!(announced(&h), Some(a(Some(40), None, Some(8), None)));
    }

    #[test]
    fn nothing_or_nonsense_announces_nothing() {
        assert_eq!(announced(&headers(&[("Content-Type", "text/plain")])), None);
        let h = headers(&[
            ("RateLimit", "@@@"),
            ("RateLimit-Policy", "soon"),
            ("X-RateLimit-Limit", "-3"),
            ("X-RateLimit-Reset", "NaN"),
            ("X-Shopify-Shop-Api-Call-Limit", "lots"),
        ]);
        assert_eq!(announced(&h), None);
    }
}
