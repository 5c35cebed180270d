//! The hyper server behind mockapi, and the fault decisions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::{body_for, mix, sized_body};

/// The faults a server injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Delay before each answer.
    pub latency: Duration,
    /// Fraction of item requests answered 500.
    pub error_rate: f64,
    /// Item requests per second before answering 429.
    pub rate_limit: Option<u32>,
    /// Fraction of item requests dropped without an answer.
    pub drop_rate: f64,
    /// Seed of the fault decisions.
    pub seed: u64,
    /// Not a fault: the size of item bodies ([`sized_body`]), or the small [`body_for`].
    pub body_bytes: Option<usize>,
    /// With a rate limit: announce it on every item answer, in these headers.
    pub announce_limit: Option<Announce>,
    /// Ids that are multiples of this answer 404 (an API with gaps in its ids): a final
    /// answer that is not a success.
    pub missing_every: Option<u64>,
    /// Answer every n-th item request (by arrival) 503 with `Retry-After: 1`: a server that
    /// now and then asks its clients to wait.
    pub unavailable_every: Option<u64>,
    /// Keep a log of item requests (when each arrived, its id, its answer), served as
    /// `GET /log`: for tests that check when requests were sent.
    pub record: bool,
    /// Not a fault: compress item bodies with this coding when the request's
    /// `Accept-Encoding` offers it, as most real servers do.
    pub compress: Option<Coding>,
    /// Fraction of item requests answered 429 with `Retry-After: 1`, at random.
    pub throttle_rate: f64,
    /// Fraction of item requests answered 503 without `Retry-After`, at random.
    pub unavailable_rate: f64,
    /// After this many item requests, every one is answered 503 for this long: an outage.
    pub outage: Option<(u64, Duration)>,
    /// A quota of this many item requests per window of this many seconds, announced in
    /// `X-RateLimit-*` headers; beyond it, 429 with a `Retry-After` to the window's end.
    pub quota: Option<(u32, u64)>,
    /// Not a fault: item routes need a bearer token ([`crate::auth`]).
    pub auth: Option<crate::auth::AuthConfig>,
}

/// How a rate limit is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Announce {
    /// The IETF draft's structured `RateLimit-Policy: "default";q=N;w=1` and
    /// `RateLimit: "default";r=R;t=T`.
    Draft,
    /// The `limits` library's (slowapi, Flask-Limiter): `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining`, `X-RateLimit-Reset` as a Unix time with a fraction, and a
    /// `Retry-After` in whole seconds, rounded down (0 in the window's last second).
    Slowapi,
}

/// A content coding mockapi can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Coding {
    /// gzip (RFC 1952).
    Gzip,
    /// Brotli (RFC 7932).
    Br,
}

/// One item request, as `GET /log` lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    /// When it arrived, in milliseconds since the server started.
    pub ms: u64,
    /// The id asked for.
    pub id: u64,
    /// The status answered; 0 for a dropped connection.
    pub status: u16,
    /// The request's `User-Agent`, if it had one.
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// Counters of what the server did, as `GET /stats` reports them: serialized as JSON by the
/// server and read back with the same struct by tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Requests for `/items/{id}`, whatever their answer.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Answered 500.
    pub errors: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Dropped without an answer.
    pub dropped: u64,
    /// Answered 503 (`--unavailable-every`, `--unavailable-rate`, `--outage-after`).
    #[serde(default)]
    pub unavailable: u64,
    /// Item answers sent compressed (`--compress`).
    #[serde(default)]
    pub compressed: u64,
    /// Access tokens `POST /oauth/token` issued.
    #[serde(default)]
    pub tokens_issued: u64,
    /// Item and key requests answered 401 (no valid token).
    #[serde(default)]
    pub unauthorized: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    unavailable: AtomicU64,
    compressed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            compressed: self.compressed.load(Ordering::Relaxed),
            tokens_issued: 0,
            unauthorized: 0,
        }
    }
}

const SHARDS: usize = 64;

struct State {
    faults: Faults,
    counters: Counters,
    /// How many times each id was asked for, only kept when a per-request fault is on.
    seen: Vec<Mutex<HashMap<u64, u32>>>,
    started: Instant,
    /// Rate limit window: high 32 bits the second since start, low 32 bits the count in it.
    window: AtomicU64,
    /// The quota's window, the same way (by window since start).
    quota_window: AtomicU64,
    /// When the outage began, in milliseconds since start, plus one; 0 before it.
    outage_began: AtomicU64,
    log: Mutex<Vec<Logged>>,
    guard: Option<crate::auth::Guard>,
}

enum Verdict {
    Serve,
    Error,
    Drop,
    Limited,
    Unavailable,
}

/// Where a request stands in the rate limit's window.
#[derive(Clone, Copy)]
struct Window {
    limit: u32,
    remaining: u64,
    /// Seconds until the window resets, rounded up.
    reset: u64,
}

/// Counts a request in `window` (high 32 bits the window's number, low 32 bits its count), a
/// new window starting the count again. Returns the count with this request.
fn count_in(window: &AtomicU64, now: u64) -> u64 {
    let mut cur = window.load(Ordering::Relaxed);
    loop {
        let (w, count) = (cur >> 32, cur & 0xffff_ffff);
        let next = if w == now { (w << 32) | (count + 1) } else { (now << 32) | 1 };
        match window.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next & 0xffff_ffff,
            Err(actual) => cur = actual,
        }
    }
}

impl State {
    fn verdict(&self, id: u64, window: Option<Window>) -> Verdict {
        let f = &self.faults;
        if window.is_some_and(|w| w.remaining == u64::MAX) {
            return Verdict::Limited;
        }
        if f.error_rate <= 0.0 && f.drop_rate <= 0.0 && f.throttle_rate <= 0.0 && f.unavailable_rate <= 0.0 {
            return Verdict::Serve;
        }
        let nth = {
            let shard = &self.seen[(mix(id, 1) as usize) % SHARDS];
            let mut seen = shard.lock().unwrap_or_else(|p| p.into_inner());
            let n = seen.entry(id).or_insert(0);
            *n += 1;
            *n
        };
        let roll = |salt: u64| {
            let h = mix(mix(f.seed ^ salt, id), u64::from(nth));
            (h >> 11) as f64 / (1u64 << 53) as f64
        };
        if roll(0xd409) < f.drop_rate {
            Verdict::Drop
        } else if roll(0xe770) < f.error_rate {
            Verdict::Error
        } else if roll(0x7a11) < f.throttle_rate {
            Verdict::Limited
        } else if roll(0x5e03) < f.unavailable_rate {
            Verdict::Unavailable
        } else {
            Verdict::Serve
        }
    }

    /// Whether the outage is on for the `nth` item request.
    fn down(&self, nth: u64) -> bool {
        let Some((after, length)) = self.faults.outage else { return false };
        if nth == after + 1 {
            let _ = self.outage_began.compare_exchange(
                0,
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        match self.outage_began.load(Ordering::Relaxed) {
            0 => false,
            began => self.started.elapsed() < Duration::from_millis(began - 1) + length,
        }
    }

    /// The quota's window as this request leaves it: `remaining` is `u64::MAX` for a refused
    /// request.
    fn quota(&self, limit: u32, secs: u64) -> Window {
        let elapsed = self.started.elapsed();
        let now = elapsed.as_secs() / secs;
        let count = count_in(&self.quota_window, now);
        let reset = (now + 1) * secs - elapsed.as_secs();
        let remaining = if count <= u64::from(limit) { u64::from(limit) - count } else { u64::MAX };
        Window { limit, remaining, reset }
    }

    /// A fixed one-second window: admits the first `limit` requests of each second. Returns
    /// the window as this request leaves it; `remaining` is `u64::MAX` for a refused request.
    fn admit(&self, limit: u32) -> Window {
        let now = self.started.elapsed().as_secs();
        let count = count_in(&self.window, now);
        let remaining = if count <= u64::from(limit) { u64::from(limit) - count } else { u64::MAX };
        Window { limit, remaining, reset: 1 }
    }

    fn record(&self, id: u64, status: u16, user_agent: Option<&str>) {
        if self.faults.record {
            let ms = self.started.elapsed().as_millis() as u64;
            let user_agent = user_agent.map(str::to_owned);
            self.log.lock().unwrap_or_else(|p| p.into_inner()).push(Logged { ms, id, status, user_agent });
        }
    }
}

/// The error a handler returns to make hyper close the connection without answering.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// A response body: whole, a large one made of repeated chunks, or one that trickles.
pub enum Body {
    /// All at once.
    Full(Option<Bytes>),
    /// `left` bytes in chunks of `chunk`.
    Repeat {
        /// Bytes still to send.
        left: u64,
        /// What to send them as.
        chunk: Bytes,
    },
    /// `left` bytes, one every `every`.
    Trickle {
        /// Bytes still to send.
        left: u64,
        /// Time between bytes.
        every: Duration,
        /// Until the next byte.
        sleep: Pin<Box<tokio::time::Sleep>>,
    },
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Repeat { left, chunk } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(chunk.len() as u64);
                *left -= n;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n as usize)))))
            }
            Body::Trickle { left, every, sleep } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        *left -= 1;
                        sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Repeat { left, .. } | Body::Trickle { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    r
}

/// The routes that misbehave on purpose, for tests of a client's defences.
fn hostile(path: &str) -> Option<Response<Body>> {
    let (route, id) = path.trim_start_matches('/').split_once('/')?;
    let id: u64 = id.parse().ok()?;
    Some(match route {
        // 64 MiB, more than any sane body limit.
        "huge" => Response::new(Body::Repeat { left: 64 << 20, chunk: Bytes::from(vec![b'x'; 1 << 20]) }),
        // 1000 bytes, one every 200ms.
        "trickle" => Response::new(Body::Trickle {
            left: 1000,
            every: Duration::from_millis(200),
            sleep: Box::pin(tokio::time::sleep(Duration::from_millis(200))),
        }),
        // A redirect with nowhere to go: a final answer, with its body.
        "nolocation" => {
            text(StatusCode::MULTIPLE_CHOICES, format!("item {id}: pick one, we did not say where\n"))
        }
        // A redirect to itself, forever.
        "loop" => {
            let mut r = text(StatusCode::FOUND, "");
            r.headers_mut().insert("location", format!("/loop/{id}").parse().expect("valid header"));
            r
        }
        // Bytes that are not UTF-8, ending in the id.
        "binary" => {
            let mut body = vec![0xff, 0xfe, 0x00, 0x80];
            body.extend_from_slice(&id.to_le_bytes());
            text(StatusCode::OK, body)
        }
        _ => return None,
    })
}

/// Whether an `Accept-Encoding` value offers `coding` (and not with `q=0`).
fn offers(accept_encoding: &str, coding: Coding) -> bool {
    let name = match coding {
        Coding::Gzip => "gzip",
        Coding::Br => "br",
    };
    accept_encoding.split(',').any(|c| {
        let mut parts = c.split(';').map(str::trim);
        let named = parts.next().is_some_and(|n| n.eq_ignore_ascii_case(name));
        named && !parts.any(|p| p.replace(' ', "") == "q=0")
    })
}

/// `body` encoded with `coding`, and the coding's name for `Content-Encoding`.
fn compress(coding: Coding, body: &str) -> Option<(&'static str, Vec<u8>)> {
    use std::io::Write;
    match coding {
        Coding::Br => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(body.as_bytes()).ok()?;
            drop(w);
            Some(("br", out))
        }
        Coding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            w.write_all(body.as_bytes()).ok()?;
            Some(("gzip", w.finish().ok()?))
        }
    }
}

/// The key a key-echo route was asked for, decoded as a server decodes it: `/keys/{key}` (one
/// path segment, percent-decoded) or `/search?q={key}` (a form-encoded query parameter).
fn echoed_key(path: &str, query: Option<&str>) -> Option<String> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|k| k.into_owned());
    if let Some(segment) = path.strip_prefix("/keys/") {
        return decode(segment);
    }
    if path == "/search" {
        let q = query?.split('&').find_map(|pair| pair.strip_prefix("q="))?;
        return decode(&q.replace('+', " "));
    }
    None
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Dropped> {
    let path = req.uri().path();
    if let Some(r) = hostile(path) {
        return Ok(r);
    }
    if path == "/stats" || path == "/log" {
        let body = if path == "/stats" {
            let mut stats = state.counters.snapshot();
            if let Some(g) = &state.guard {
                stats.tokens_issued = g.issued.load(Ordering::Relaxed);
                stats.unauthorized = g.refused.load(Ordering::Relaxed);
            }
            serde_json::to_string(&stats)
        } else {
            serde_json::to_string(&*state.log.lock().unwrap_or_else(|p| p.into_inner()))
        };
        let mut r = text(StatusCode::OK, body.expect("plain numbers always serialize"));
        r.headers_mut().insert("content-type", "application/json".parse().expect("valid header"));
        return Ok(r);
    }
    if path == "/oauth/token" {
        if let Some(g) = &state.guard {
            let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let form = http_body_util::BodyExt::collect(req.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let (status, body) = g.token(header.as_deref(), &String::from_utf8_lossy(&form));
            let mut r = text(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), body);
            r.headers_mut().insert("content-type", "application/json".parse().expect("valid header"));
            r.headers_mut().insert("cache-control", "no-store".parse().expect("valid header"));
            return Ok(r);
        }
    }
    let guarded =
        path.starts_with("/items/") || path.starts_with("/keys/") || path == "/search" || path == "/echo";
    if let Some(g) = state.guard.as_ref().filter(|_| guarded) {
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        // Counted as the item routes count their requests, so --revoke-after N is the N-th.
        let nth = state.counters.requests.load(Ordering::Relaxed) + 1;
        if !g.admits(header, nth) {
            state.counters.requests.fetch_add(1, Ordering::Relaxed);
            let mut r = text(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_token"}"#);
            let challenge = "Bearer error=\"invalid_token\"".parse().expect("valid header");
            r.headers_mut().insert("www-authenticate", challenge);
            return Ok(r);
        }
    }
    if path == "/echo" {
        // What a POST (or any request) sent: its method, content type, a header, and its body.
        state.counters.requests.fetch_add(1, Ordering::Relaxed);
        let method = req.method().to_string();
        // As bytes: a header may carry UTF-8 (obs-text), which `to_str` refuses.
        let header =
            |name: &str| req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let (content_type, item) = (header("content-type"), header("x-item"));
        let body =
            http_body_util::BodyExt::collect(req.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
        let echo = serde_json::json!({
            "method": method,
            "content_type": content_type,
            "x_item": item,
            "body": String::from_utf8_lossy(&body),
        });
        return Ok(text(StatusCode::OK, echo.to_string()));
    }
    if let Some(key) = echoed_key(path, req.uri().query()) {
        state.counters.requests.fetch_add(1, Ordering::Relaxed);
        if !state.faults.latency.is_zero() {
            tokio::time::sleep(state.faults.latency).await;
        }
        let body = serde_json::json!({ "key": key }).to_string();
        return Ok(text(StatusCode::OK, body));
    }
    let Some(id) = path.strip_prefix("/items/").and_then(|s| s.parse::<u64>().ok()) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let c = &state.counters;
    let nth = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let ua = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let ua = ua.as_deref();
    if state.faults.missing_every.is_some_and(|n| id.is_multiple_of(n.max(1))) {
        state.record(id, 404, ua);
        return Ok(text(StatusCode::NOT_FOUND, format!("no item {id}\n")));
    }
    if state.faults.unavailable_every.is_some_and(|n| nth.is_multiple_of(n.max(1))) {
        c.unavailable.fetch_add(1, Ordering::Relaxed);
        state.record(id, 503, ua);
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "busy: come back in a second\n");
        r.headers_mut().insert("retry-after", "1".parse().expect("valid header"));
        return Ok(r);
    }
    if state.down(nth) {
        c.unavailable.fetch_add(1, Ordering::Relaxed);
        state.record(id, 503, ua);
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "down for maintenance\n"));
    }
    if !state.faults.latency.is_zero() {
        tokio::time::sleep(state.faults.latency).await;
    }
    let quota = state.faults.quota.map(|(limit, secs)| state.quota(limit, secs));
    if let Some(q) = quota.filter(|q| q.remaining == u64::MAX) {
        c.rate_limited.fetch_add(1, Ordering::Relaxed);
        state.record(id, 429, ua);
        let mut r = text(StatusCode::TOO_MANY_REQUESTS, "quota used up\n");
        let h = r.headers_mut();
        h.insert("retry-after", q.reset.to_string().parse().expect("valid header"));
        h.insert("x-ratelimit-limit", q.limit.to_string().parse().expect("valid header"));
        h.insert("x-ratelimit-remaining", "0".parse().expect("valid header"));
        h.insert("x-ratelimit-reset", q.reset.to_string().parse().expect("valid header"));
        return Ok(r);
    }
    let window = state.faults.rate_limit.map(|limit| state.admit(limit));
    let mut r = match state.verdict(id, window) {
        Verdict::Serve => {
            c.ok.fetch_add(1, Ordering::Relaxed);
            let body = match state.faults.body_bytes {
                Some(bytes) => sized_body(id, bytes),
                None => body_for(id),
            };
            let accepted = req.headers().get("accept-encoding").and_then(|v| v.to_str().ok());
            let coding = state.faults.compress.filter(|&c| accepted.is_some_and(|a| offers(a, c)));
            let mut r = match coding.and_then(|c| compress(c, &body)) {
                Some((encoding, packed)) => {
                    c.compressed.fetch_add(1, Ordering::Relaxed);
                    let mut r = text(StatusCode::OK, packed);
                    r.headers_mut().insert("content-encoding", encoding.parse().expect("valid header"));
                    r
                }
                None => text(StatusCode::OK, body),
            };
            let h = r.headers_mut();
            h.insert("content-type", "application/json".parse().expect("valid header"));
            if state.faults.compress.is_some() {
                h.insert("vary", "accept-encoding".parse().expect("valid header"));
            }
            r
        }
        Verdict::Error => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            text(StatusCode::INTERNAL_SERVER_ERROR, "injected error\n")
        }
        Verdict::Limited => {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
            r.headers_mut().insert("retry-after", "1".parse().expect("valid header"));
            r
        }
        Verdict::Unavailable => {
            c.unavailable.fetch_add(1, Ordering::Relaxed);
            text(StatusCode::SERVICE_UNAVAILABLE, "overloaded\n")
        }
        Verdict::Drop => {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            state.record(id, 0, ua);
            return Err(Dropped);
        }
    };
    state.record(id, r.status().as_u16(), ua);
    if let Some(q) = quota {
        let h = r.headers_mut();
        h.insert("x-ratelimit-limit", q.limit.to_string().parse().expect("valid header"));
        h.insert("x-ratelimit-remaining", q.remaining.to_string().parse().expect("valid header"));
        h.insert("x-ratelimit-reset", q.reset.to_string().parse().expect("valid header"));
    }
    if let (Some(w), Some(form)) = (window, state.faults.announce_limit) {
        let refused = r.status() == StatusCode::TOO_MANY_REQUESTS;
        let h = r.headers_mut();
        let remaining = if w.remaining == u64::MAX { 0 } else { w.remaining };
        match form {
            Announce::Draft => {
                let policy = format!("\"default\";q={};w=1", w.limit);
                let now = format!("\"default\";r={remaining};t={}", w.reset);
                h.insert("ratelimit-policy", policy.parse().expect("valid header"));
                h.insert("ratelimit", now.parse().expect("valid header"));
            }
            Announce::Slowapi => {
                let elapsed = state.started.elapsed();
                let left = Duration::from_secs(elapsed.as_secs() + 1).saturating_sub(elapsed);
                let reset = std::time::SystemTime::now() + left;
                let unix = reset.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                h.insert("x-ratelimit-limit", w.limit.to_string().parse().expect("valid header"));
                h.insert("x-ratelimit-remaining", remaining.to_string().parse().expect("valid header"));
                h.insert("x-ratelimit-reset", format!("{unix:.7}").parse().expect("valid header"));
                if refused {
                    h.insert("retry-after", left.as_secs().to_string().parse().expect("valid header"));
                }
            }
        }
    }
    Ok(r)
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Binds `listen` and starts serving plain HTTP on a runtime of `threads` threads.
    pub fn start(listen: SocketAddr, faults: Faults, threads: usize) -> std::io::Result<Self> {
        Self::start_with(listen, faults, threads, None)
    }

    /// Binds `listen` and starts serving on a runtime of `threads` threads: HTTPS with `tls`
    /// when given ([`tls_config`]), else plain HTTP.
    pub fn start_with(
        listen: SocketAddr,
        faults: Faults,
        threads: usize,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mockapi")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            counters: Counters::default(),
            seen: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            started: Instant::now(),
            window: AtomicU64::new(0),
            quota_window: AtomicU64::new(0),
            outage_began: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            guard: faults.auth.clone().map(crate::auth::Guard::new),
            faults,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(serve(listener, state, tls.map(tokio_rustls::TlsAcceptor::from), rx));
        Ok(Self { addr, runtime, shutdown: Some(tx) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks for as long as the server runs (until the process is killed).
    pub fn wait(mut self) {
        let rx = self.shutdown.take();
        self.runtime.block_on(async move {
            let _keep = rx;
            std::future::pending::<()>().await
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Accepts connections until `stop` fires, serving each on a task of its own.
async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
                None => serve_connection(stream, state).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(state.clone(), req));
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

/// A TLS server configuration from a PEM certificate chain and its PEM private key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Arc::new(config))
}
