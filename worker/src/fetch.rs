//! Fetching one id: one attempt after another as the retry policy ([`crate::policy`]) spaces
//! them, each on the fetch thread's own ureq Agent.
//!
//! Every fetch thread of a worker shares one [`Fetcher`] (the job, the resolver's cache, the
//! TLS configuration) and has a [`Session`] of its own: an agent whose pool keeps the thread's
//! connection. ureq's pool walks its whole idle list under one lock at every checkout and
//! return; shared by 256 threads, most of them idle at the gate, it was a walk of hundreds and
//! a contended lock per request. A request that fails on a kept connection before any byte of
//! its answer came (the server closed it while it was idle) is sent again at once on a new one,
//! not counted as an attempt ([`crate::connect`]). A 401 is no answer either: the request waits
//! for a newer credential and is sent again, not counted as an attempt ([`crate::auth`]). What is retried: connection errors, timeouts, 408, 429 and 5xx. What is final: any other
//! HTTP answer (stored with its status and body; a 3xx without a `Location` is such an answer),
//! and errors no retry can fix (a body over the limit, a redirect loop, a malformed URL).
//!
//! ureq's phase timeouts are set (connect, send request, receive response, receive body: each
//! `--io-timeout` in all, however the bytes trickle), and as many per read and per write, so
//! that the transport keeps one socket timeout from request to request ([`crate::connect`]).

use std::sync::Arc;
use std::time::Duration;

use shared::template::{body_encoding, MAX_KEY_BYTES};
use shared::{
    Condition, Encoding, ItemResult, JobSpec, Outcome, Template, TlsTrust, Unreachable, UrlTemplate,
    Validators,
};
use ureq::config::Config;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::transport::{ConnectProxyConnector, Connector};
use ureq::Agent;

use crate::auth::{Credentials, Held};
use crate::connect::{SharedTls, Stale, TcpConnector};
use crate::gate::{Gate, Met, Place};
use crate::policy::{parse_retry_after, retryable_status, RetryPolicy};
use crate::resolve::CachingResolver;

/// How https servers are trusted: the system's roots (as `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// point, else the distribution's bundle) plus `--ca-cert`'s; Mozilla's roots, built in, when
/// the system has none (a bare container). Roots are loaded only for an https job.
pub fn tls_config(trust: &TlsTrust, url_template: &str) -> TlsConfig {
    let builder = TlsConfig::builder();
    if trust.insecure {
        return builder.disable_verification(true).build();
    }
    if !url_template.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
        return builder.build();
    }
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        log::debug!("system roots: {e}");
    }
    let mut roots: Vec<Certificate<'static>> =
        loaded.certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
    if roots.is_empty() && trust.extra_roots.is_empty() {
        log::debug!("no system roots: trusting Mozilla's, built in");
        return builder.root_certs(RootCerts::WebPki).build();
    }
    roots.extend(trust.extra_roots.iter().map(|der| Certificate::from_der(der).to_owned()));
    builder.root_certs(RootCerts::new_with_certs(&roots)).build()
}

/// The certificates (DER) of a PEM file, for `--ca-cert`: at least one, and nothing that is
/// not PEM. Other PEM sections (a key that came along) are skipped.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| format!("not PEM ({e})"))? {
            certs.push(c.der().to_vec());
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// One attempt's result: final, or worth another try.
enum Attempt {
    Final(Outcome),
    Retry {
        error: String,
    },
    /// Answered 401: the credential it was sent with is refused.
    Refused,
}

/// Room for a response head and what comes with it, per connection (ureq's default: 128 KiB).
const INPUT_BUFFER: usize = 16 << 10;

/// The longest response head taken, within [`INPUT_BUFFER`]: a longer one is a clear error of
/// its own, not a connection that made no progress. (nginx's proxy buffers, in front of many
/// APIs, refuse more than 4 or 8 KiB.)
const MAX_RESPONSE_HEAD: usize = INPUT_BUFFER - 1;

/// How long an id whose last attempt failed waits to see whether the fleet's circuit opens (the
/// API went down) before it is given up: the supervisor tells an outage from a short window of
/// every worker's failures, a few hundred milliseconds at most at a useful rate.
const OUTAGE_GRACE: Duration = Duration::from_secs(1);

/// Kept requests a fetch thread sends again at once when they fail stale, per attempt.
const STALE_RESENDS: u32 = 2;

/// Fetches ids of one job. Shared by a worker's fetch threads; each has its [`Session`].
pub struct Fetcher {
    config: Config,
    resolver: CachingResolver,
    tls: SharedTls,
    /// Input and output buffer sizes of a connection.
    buffers: (usize, usize),
    /// The URL's template.
    template: UrlTemplate,
    /// Headers, each a template of its value (most are constant).
    headers: Vec<(String, Template)>,
    method: ureq::http::Method,
    /// The body's template and its content type.
    body: Option<(Template, String)>,
    max_body: u64,
    policy: RetryPolicy,
    /// The credential every request is sent with, besides the job's headers.
    credentials: Arc<Credentials>,
}

/// A fetch thread's buffers for the request of one item, reused from item to item.
#[derive(Default)]
pub struct Scratch {
    /// The URL.
    pub url: String,
    /// The body, when the job has one.
    body: String,
    /// The headers' values, in the job's order.
    headers: Vec<String>,
    /// The credential the thread sends with.
    credential: Option<Arc<Held>>,
    /// In a refresh, what the item's stored answer is validated by: the request is conditional.
    pub condition: Condition,
}

/// One fetch thread's agent, and what its connections say about a failed request.
pub struct Session {
    agent: Agent,
    stale: Stale,
}

impl Fetcher {
    /// What every session of `job` shares; its requests are sent with `credentials`.
    pub fn new(job: &JobSpec, credentials: Arc<Credentials>) -> Self {
        let io = Some(Duration::from_millis(job.io_timeout_ms));
        let output = request_head_room(job);
        let config = Agent::config_builder()
            .timeout_connect(Some(Duration::from_millis(job.connect_timeout_ms)))
            .timeout_send_request(io)
            .timeout_recv_response(io)
            .timeout_recv_body(io)
            .timeout_per_read(io)
            .timeout_per_write(io)
            // A thread uses one connection at a time; a redirect to another host may keep a
            // second.
            .max_idle_connections(2)
            .max_idle_connections_per_host(1)
            .input_buffer_size(INPUT_BUFFER)
            .output_buffer_size(output)
            .max_response_header_size(MAX_RESPONSE_HEAD)
            .http_status_as_error(false)
            .user_agent(job.user_agent.as_str())
            .tls_config(tls_config(&job.tls, &job.url_template))
            .build();
        Self {
            config,
            resolver: CachingResolver::new(Duration::from_millis(job.dns_ttl_ms)),
            tls: SharedTls::default(),
            buffers: (INPUT_BUFFER, output),
            // The supervisor checked it (the item may be named in the body instead); one it let
            // through is sent as it is.
            template: Template::parse_as(&job.url_template, Encoding::Url)
                .unwrap_or_else(|_| Template::literal(&job.url_template)),
            headers: job
                .headers
                .iter()
                // The supervisor checked them: one it let through is sent as it is.
                .map(|(n, v)| {
                    (n.clone(), Template::parse_as(v, Encoding::Raw).unwrap_or_else(|_| Template::literal(v)))
                })
                .collect(),
            method: ureq::http::Method::from_bytes(job.method.as_bytes()).unwrap_or(ureq::http::Method::GET),
            body: job.body.as_ref().map(|b| {
                let ct = job.content_type.clone().unwrap_or_else(|| "application/json".to_owned());
                let t = Template::parse_as(b, body_encoding(&ct)).unwrap_or_else(|_| Template::literal(b));
                (t, ct)
            }),
            max_body: job.max_body,
            policy: RetryPolicy::of(job),
            credentials,
        }
    }

    /// A fetch thread's own agent.
    pub fn session(&self) -> Session {
        let stale = Stale::default();
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(TcpConnector { buffers: self.buffers, stale: stale.clone() })
                .chain(self.tls.clone());
        Session { agent: Agent::with_parts(self.config.clone(), connector, self.resolver.clone()), stale }
    }

    /// The request for `id` (and `key`), written into `scratch` (reused, so the steady state
    /// does not allocate). A constant header is not copied: [`Fetcher::headers_of`] lends it.
    fn render(&self, id: u64, key: &str, scratch: &mut Scratch) {
        self.template.render(id, key, &mut scratch.url);
        if let Some((body, _)) = &self.body {
            body.render(id, key, &mut scratch.body);
        }
        scratch.headers.resize_with(self.headers.len(), String::new);
        for ((_, t), out) in self.headers.iter().zip(&mut scratch.headers) {
            if t.as_text().is_none() {
                t.render(id, key, out);
            }
        }
    }

    /// The request's headers, name and value: a constant one as the job gave it, one naming
    /// the item as [`Fetcher::render`] wrote it, then the credential's.
    fn headers_of<'a>(&'a self, scratch: &'a Scratch) -> impl Iterator<Item = (&'a str, &'a str)> {
        let credential = scratch.credential.as_ref().and_then(|c| c.header.as_ref());
        let c = &scratch.condition;
        let conditional =
            [("if-none-match", c.etag.as_str()), ("if-modified-since", c.last_modified.as_str())];
        self.headers
            .iter()
            .zip(&scratch.headers)
            .map(|((name, t), value)| (name.as_str(), t.as_text().unwrap_or(value)))
            .chain(credential.map(|(name, value)| (name.as_str(), value.as_str())))
            .chain(conditional.into_iter().filter(|(_, v)| !v.is_empty()))
    }

    /// Fetches `id` until it has a final answer or runs out of attempts. Every attempt passes
    /// `gate` first; `None` when the gate closes before the id has an answer (the worker is
    /// stopping, and the id stays unreported).
    ///
    /// `place` is the thread's place at the gate: it steps aside while it waits to retry, so a
    /// sleeping retry is not one of the requests in flight the fleet's limit allows.
    pub fn fetch(
        &self,
        session: &Session,
        id: u64,
        key: &str,
        scratch: &mut Scratch,
        gate: &Gate,
        place: &mut Place<'_>,
    ) -> Option<ItemResult> {
        self.render(id, key, scratch);
        let mut backoff = self.policy.backoff();
        // Requests made for the id, and of them those that count against its attempts: one
        // that met the fleet's open circuit (the API was down) does not.
        let (mut requests, mut attempts) = (0, 0);
        // Requests sent again after a 401 with a newer credential: not the id's attempts.
        let mut replays = 0;
        loop {
            if !self.credentials.ready(&mut scratch.credential) {
                return None;
            }
            let ticket = gate.enter(requests == 0)?;
            requests += 1;
            let (attempt, mut met) = self.attempt(session, scratch);
            // Borrowed, not cloned: every thread cloning the one Arc would bounce its count.
            let credential = scratch.credential.as_deref().expect("ready gave one");
            if met.status.is_some_and(|s| s != 401) {
                credential.proven();
            }
            // The gate tells the supervisor of a server's wait at once (it decides whether the
            // fleet pauses); a limit announced used up pauses this worker there and then.
            met.wait = met.wait.map(|w| w.min(self.policy.retry_after_max));
            let wait = met.wait;
            let mut outage = gate.leave(ticket, met);
            let error = match attempt {
                Attempt::Final(outcome) => {
                    return Some(ItemResult { id, attempts: requests - replays, outcome })
                }
                Attempt::Retry { error } => error,
                Attempt::Refused => {
                    replays += 1;
                    // Not the id's attempt, and not in flight while it waits.
                    log::debug!("id {id}: refused with credential {}", credential.generation);
                    place.step_aside();
                    if !self.credentials.refused(credential) || !place.rejoin() {
                        return None;
                    }
                    continue;
                }
            };
            let backoff_wait = if outage { None } else { backoff.next() };
            if !outage && backoff_wait.is_none() {
                // The id's last attempt failed. If the API has just gone down, the fleet's
                // circuit opens within a moment (it takes the failures of a short window to
                // tell): the attempt was the outage's, not the id's.
                place.step_aside();
                outage = gate.circuit_opens_within(OUTAGE_GRACE);
                if !outage {
                    attempts += 1;
                    let plural = if attempts == 1 { "" } else { "s" };
                    let error = format!("gave up after {attempts} attempt{plural}: {error}");
                    let outcome = Outcome::Failed { error };
                    return Some(ItemResult { id, attempts: requests - replays, outcome });
                }
            }
            let pause = match backoff_wait {
                Some(jittered) => {
                    attempts += 1;
                    log::debug!("id {id}: attempt {attempts} failed ({error}), retrying");
                    match wait {
                        Some(told) => self.policy.after_told(told, jittered),
                        None => jittered,
                    }
                }
                None => {
                    // Not the id's attempt: it waits at the gate for the circuit to close (or
                    // to be the next probe), and spends nothing of the retry budget.
                    log::debug!("id {id}: request {requests} met the open circuit ({error})");
                    wait.unwrap_or(self.policy.base)
                }
            };
            place.step_aside();
            std::thread::sleep(pause);
            if !(outage || gate.retry()) || !place.rejoin() {
                return None;
            }
        }
    }

    /// Sends the request, again at once on a new connection when a kept one turns out stale.
    fn request(
        &self,
        session: &Session,
        scratch: &Scratch,
        follow_redirects: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = scratch.url.as_str();
        let mut resends = 0;
        loop {
            session.stale.take(); // what an earlier request left says nothing of this one
            let result = if self.method == ureq::http::Method::GET && self.body.is_none() {
                let mut req = session.agent.get(url);
                for (name, value) in self.headers_of(scratch) {
                    req = req.header(name, value);
                }
                if follow_redirects {
                    req.call()
                } else {
                    req.config().max_redirects(0).build().call()
                }
            } else {
                self.send(session, scratch, follow_redirects)
            };
            match result {
                Err(e) if session.stale.take() && resends < STALE_RESENDS => {
                    resends += 1;
                    log::debug!("{url}: a kept connection was closed ({}), sending again", one_line(&e));
                }
                other => return other,
            }
        }
    }

    /// A request of another method than GET, or with a body, through the `http` crate's
    /// request (ureq's builder types a body by method).
    fn send(
        &self,
        session: &Session,
        scratch: &Scratch,
        follow_redirects: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut req = ureq::http::Request::builder().method(self.method.clone()).uri(scratch.url.as_str());
        for (name, value) in self.headers_of(scratch) {
            req = req.header(name, value);
        }
        let body: &[u8] = match &self.body {
            Some((_, content_type)) => {
                req = req.header("content-type", content_type.as_str());
                scratch.body.as_bytes()
            }
            None => &[],
        };
        let req = req.body(body)?;
        if follow_redirects {
            session.agent.run(req)
        } else {
            session.agent.run(session.agent.configure_request(req).max_redirects(0).build())
        }
    }

    fn attempt(&self, session: &Session, scratch: &Scratch) -> (Attempt, Met) {
        let url = scratch.url.as_str();
        let mut resp = match self.request(session, scratch, true) {
            Ok(resp) => resp,
            // A 3xx without a Location header is the server's final answer, not a protocol
            // error: asked again without following redirects, it is stored with its status and
            // body. (ureq reports it only as an error, so this costs one more request.)
            Err(ureq::Error::Protocol(ureq_proto::Error::NoLocationHeader)) => {
                match self.request(session, scratch, false) {
                    Ok(resp) => resp,
                    Err(e) => return unanswered(e, url),
                }
            }
            Err(e) => return unanswered(e, url),
        };
        let status = resp.status().as_u16();
        let announced = crate::announce::announced(resp.headers());
        let retry_after = if status == 429 || status == 503 {
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
        } else {
            None
        };
        // A limit announced as used up waits for its reset as a Retry-After would.
        let used_up =
            announced.filter(|a| a.remaining == Some(0)).and_then(|a| a.reset_ms).map(Duration::from_millis);
        let met = Met {
            status: Some(status),
            wait: used_up.or(retry_after),
            announced,
            used_up: used_up.is_some(),
            unanswered: None,
        };
        if status == 304 && !scratch.condition.is_empty() {
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            return (Attempt::Final(Outcome::Unchanged { validators: validators(resp.headers()) }), met);
        }
        if status == 401 {
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            return (Attempt::Refused, met);
        }
        if retryable_status(status) {
            // Read (a bounded amount of) the body so the connection can be reused.
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            return (Attempt::Retry { error: format!("HTTP {status}") }, met);
        }
        // As ureq's read_to_vec, but what came before an error is counted: a body cut off says
        // how much of it came.
        let length = content_length(resp.headers());
        let validators = validators(resp.headers());
        let mut body = Vec::with_capacity(length.unwrap_or(0).min(self.max_body).min(1 << 20) as usize);
        let mut reader = resp.body_mut().with_config().limit(self.max_body).reader();
        let attempt = match std::io::Read::read_to_end(&mut reader, &mut body) {
            Ok(_) => Attempt::Final(Outcome::Response { status, body, validators }),
            Err(e) => body_error(ureq::Error::from(e), url, body.len(), length),
        };
        (attempt, met)
    }
}

/// Room for the request head: the URL with the longest id, the headers, ureq's own; at least
/// 4 KiB (ureq's default: 128 KiB).
fn request_head_room(job: &JobSpec) -> usize {
    // An id is at most 20 digits; a key at most MAX_KEY_BYTES, three times that encoded.
    let room =
        |t: &str| t.len() + t.matches("{id}").count() * 20 + t.matches("{key").count() * 3 * MAX_KEY_BYTES;
    let url = room(&job.url_template);
    let headers: usize = job.headers.iter().map(|(n, v)| n.len() + room(v) + 4).sum::<usize>() + 64;
    let head = url + headers + job.user_agent.len() + 512;
    head.next_power_of_two().max(4 << 10)
}

/// A request that got no HTTP answer: what to do about it, and what the fleet is told (how it
/// failed, in a few words).
fn unanswered(e: ureq::Error, url: &str) -> (Attempt, Met) {
    let words = no_answer(&e);
    (classify_error(e, url), Met { unanswered: Some(words), ..Met::default() })
}

/// How a request that got no HTTP answer failed, in a few words: `connection refused`,
/// `connect timed out`.
fn no_answer(e: &ureq::Error) -> String {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused => "connection refused".into(),
            K::ConnectionReset => "connection reset".into(),
            K::NetworkUnreachable => "network unreachable".into(),
            K::HostUnreachable => "host unreachable".into(),
            _ => one_line(e),
        },
        ureq::Error::Timeout(ureq::Timeout::Connect) => "connect timed out".into(),
        ureq::Error::Timeout(ureq::Timeout::Resolve) => "the resolver did not answer".into(),
        ureq::Error::HostNotFound => "no such host name".into(),
        other => one_line(other),
    }
}

/// Sorts an error of a request for `url` into final or retryable; a cause that no attempt
/// changes for any id (an untrusted certificate, a name that does not exist, a scheme not
/// spoken) as [`Outcome::Unreachable`].
fn classify_error(e: ureq::Error, url: &str) -> Attempt {
    use ureq::Error as E;
    let unreachable = |why, error: String| Attempt::Final(Outcome::Unreachable { why, error });
    match e {
        E::HostNotFound => {
            let host = url.parse::<ureq::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned));
            let host = host.unwrap_or_else(|| url.to_owned());
            unreachable(
                Unreachable::NoSuchHost,
                format!("host not found: {host} does not resolve (no such host name: check the URL)"),
            )
        }
        E::BadUri(ref why) if why.contains("scheme") => {
            unreachable(Unreachable::Scheme, format!("{} (flota speaks http:// and https://)", one_line(&e)))
        }
        E::Rustls(rustls::Error::InvalidCertificate(_)) => {
            let why = one_line(&e);
            unreachable(Unreachable::Certificate, format!("TLS: {why}{}", certificate_hint(&why)))
        }
        E::Io(ref io)
            if io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_))) =>
        {
            let why = io.get_ref().map_or_else(String::new, ToString::to_string);
            unreachable(Unreachable::Certificate, format!("TLS: {why}{}", certificate_hint(&why)))
        }
        E::BodyExceedsLimit(limit) => {
            Attempt::Final(Outcome::Failed { error: format!("body exceeds the limit of {limit} bytes") })
        }
        E::TooManyRedirects
        | E::RedirectFailed
        | E::BadUri(_)
        | E::RequireHttpsOnly(_)
        | E::LargeResponseHeader(..)
        | E::Http(_)
        | E::InvalidProxyUrl => Attempt::Final(Outcome::Failed { error: one_line(&e) }),
        // A certificate the roots do not vouch for, a name it does not cover, a handshake the
        // server refuses: the same answer on every attempt (a rerun asks again).
        E::Rustls(_) | E::Tls(_) => {
            Attempt::Final(Outcome::Failed { error: format!("TLS: {}", one_line(&e)) })
        }
        E::Io(ref io) if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            let why = io.get_ref().map_or_else(String::new, ToString::to_string);
            Attempt::Final(Outcome::Failed { error: format!("TLS: {why}") })
        }
        other => Attempt::Retry { error: one_line(&other) },
    }
}

/// What an answer says of itself that a refresh needs: its validators, and for how long it is
/// fresh (RFC 9111 4.2.1: `Cache-Control: max-age` over `Expires`, less its `Age`; `no-cache` or
/// `no-store`: not fresh at all).
fn validators(headers: &ureq::http::HeaderMap) -> Validators {
    let text = |name: &str| {
        headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned()).unwrap_or_default()
    };
    let cache_control = text("cache-control").to_ascii_lowercase();
    let directives = || cache_control.split(',').map(str::trim);
    let age: u64 = text("age").parse().unwrap_or(0);
    let lifetime = if directives().any(|d| d == "no-cache" || d == "no-store") {
        Some(0)
    } else if let Some(max_age) = directives().find_map(|d| d.strip_prefix("max-age=")) {
        max_age.trim_matches('"').parse::<u64>().ok()
    } else {
        // Dates are parsed only when there is an Expires (every answer has a Date).
        let date = |name: &str| httpdate::parse_http_date(&text(name)).ok();
        match headers.contains_key("expires").then(|| date("expires")) {
            None => None,
            // An Expires that does not parse is in the past (RFC 9111 5.3).
            Some(None) => Some(0),
            Some(Some(expires)) => match date("date") {
                Some(date) => Some(expires.duration_since(date).map_or(0, |d| d.as_secs())),
                None => Some(expires.duration_since(std::time::SystemTime::now()).map_or(0, |d| d.as_secs())),
            },
        }
    };
    Validators {
        etag: text("etag"),
        last_modified: text("last-modified"),
        fresh_for: lifetime.map(|l| u32::try_from(l.saturating_sub(age)).unwrap_or(u32::MAX)),
    }
}

/// The length a response's head promises for its body, unless it is encoded (ureq decodes it,
/// and counts what it decoded).
fn content_length(headers: &ureq::http::HeaderMap) -> Option<u64> {
    if headers.contains_key("content-encoding") {
        return None;
    }
    headers.get("content-length")?.to_str().ok()?.trim().parse().ok()
}

/// An error while the body was read, `came` bytes of it (of `length`, when the head said):
/// a body cut off says so, and how much came; it is never an answer.
fn body_error(e: ureq::Error, url: &str, came: usize, length: Option<u64>) -> Attempt {
    let of = length.map_or_else(String::new, |n| format!(" of {n}"));
    match classify_error(e, url) {
        Attempt::Retry { error } if error.starts_with("timeout") => {
            Attempt::Retry { error: format!("{error}, after {came}{of} bytes of the body") }
        }
        Attempt::Retry { error } => {
            Attempt::Retry { error: format!("body cut off after {came}{of} bytes ({error})") }
        }
        other => other,
    }
}

/// What to do about a certificate the roots do not vouch for.
fn certificate_hint(why: &str) -> &'static str {
    if why.contains("CaUsedAsEndEntity") {
        " (the server presents a CA's certificate as its own: give it one a CA signed, or a self-signed one made \
         with basicConstraints CA:FALSE, and pass that CA or certificate to --ca-cert)"
    } else if why.contains("NotValidForName") {
        " (it names another host than the URL's: use a name it holds, or give the server a certificate for this \
         one; --ca-cert trusts a CA, not a name)"
    } else {
        " (no trusted root vouches for it: pass its CA, or a self-signed certificate itself, to --ca-cert)"
    }
}

fn one_line(e: &ureq::Error) -> String {
    e.to_string().replace('\n', " ")
}

/// Checks a URL template (see [`shared::template`]): with an item put in, an absolute http(s)
/// URL. A template that begins with `{key:raw}` is the key's own URL: only the keys can say
/// whether it is one. Whether the job's items are named somewhere is the caller's to check (a
/// POST's body may name them instead).
pub fn check_url_template(template: &str) -> Result<UrlTemplate, String> {
    let parsed = Template::parse_as(template, Encoding::Url).map_err(|e| format!("`{template}`: {e}"))?;
    if parsed.starts_with_raw_key() {
        return Ok(parsed);
    }
    let url = parsed.render(0, "k", &mut String::new()).to_owned();
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("`{template}` is not a valid URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{template}` is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{template}` has no host"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let url_of = |f: &Fetcher, id, key| {
            let mut scratch = Scratch::default();
            f.render(id, key, &mut scratch);
            scratch.url
        };
        let creds = || Arc::new(Credentials::new(false, crossbeam_channel::unbounded().0));
        let f = Fetcher::new(&JobSpec::minimal("http://127.0.0.1:1/a/{id}/b?id={id}&x=1"), creds());
        assert_eq!(url_of(&f, 42, ""), "http://127.0.0.1:1/a/42/b?id=42&x=1");
        assert_eq!(url_of(&f, 7, ""), "http://127.0.0.1:1/a/7/b?id=7&x=1");
        let mut job = JobSpec::minimal("http://127.0.0.1:1/users/{key}");
        job.headers = vec![("A".into(), "fixed".into()), ("X-Item".into(), "{key}".into())];
        let f = Fetcher::new(&job, creds());
        let mut scratch = Scratch::default();
        f.render(7, "a b/c", &mut scratch);
        assert_eq!(scratch.url, "http://127.0.0.1:1/users/a%20b%2Fc");
        let headers: Vec<(&str, &str)> = f.headers_of(&scratch).collect();
        assert_eq!(headers, vec![("A", "fixed"), ("X-Item", "a b/c")]);
    }

    #[test]
    fn an_answer_says_its_validators_and_freshness() {
        let of = |pairs: &[(&'static str, &str)]| {
            let mut h = ureq::http::HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().expect("a header value"));
            }
            validators(&h)
        };
        let v = of(&[("etag", "\"abc\""), ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            (v.etag.as_str(), v.last_modified.as_str(), v.fresh_for),
            ("\"abc\"", "Sun, 06 Nov 1994 08:49:37 GMT", None)
        );
        assert_eq!(of(&[("cache-control", "public, max-age=600"), ("age", "100")]).fresh_for, Some(500));
        assert_eq!(of(&[("cache-control", "no-cache, max-age=600")]).fresh_for, Some(0));
        let (date, expires) = ("Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:59:37 GMT");
        assert_eq!(of(&[("date", date), ("expires", expires)]).fresh_for, Some(600));
        assert_eq!(of(&[("expires", "0")]).fresh_for, Some(0), "an Expires that does not parse is past");
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_url_template("http://h/{id}").is_ok());
        assert!(check_url_template("https://h/u/{key}?x={key}").is_ok());
        assert!(check_url_template("{key:raw}").is_ok());
        assert!(check_url_template("http://h/graphql").is_ok(), "a POST's body may name the item");
        for bad in ["ftp://h/{id}", "http:///{key}", "http://h/{key:path}", "/items/{id}"] {
            assert!(check_url_template(bad).is_err(), "{bad} should be refused");
        }
    }
}
