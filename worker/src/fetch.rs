//! Fetching one id: the shared ureq Agent, and one attempt after another as the retry policy
//! ([`crate::policy`]) spaces them.
//!
//! Every fetch thread of a worker shares one [`Fetcher`] and so one keep-alive connection pool.
//! What is retried: connection errors, timeouts, 408, 429 and 5xx. What is final: any other
//! HTTP answer (stored with its status and body; a 3xx without a `Location` is such an answer),
//! and errors no retry can fix (a body over the limit, a redirect loop, a malformed URL).
//!
//! Only ureq's phase timeouts are set (connect, send request, receive response, receive body):
//! its global and per-call timeouts make it resolve names on a thread per request.

use std::time::Duration;

use shared::{ItemResult, JobSpec, Outcome, TlsTrust};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::transport::DefaultConnector;
use ureq::Agent;

use crate::gate::{Gate, Met};
use crate::policy::{parse_retry_after, retryable_status, RetryPolicy};
use crate::resolve::CachingResolver;

/// How https servers are trusted: the system's roots (as `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// point, else the distribution's bundle) plus `--ca-cert`'s; Mozilla's roots, built in, when
/// the system has none (a bare container). Roots are loaded only for an https job.
fn tls_config(trust: &TlsTrust, url_template: &str) -> TlsConfig {
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
    Retry { error: String },
}

/// Fetches ids of one job. Cheap to share between threads.
pub struct Fetcher {
    agent: Agent,
    /// The template cut at each `{id}`: the id goes between consecutive parts.
    url_parts: Vec<String>,
    headers: Vec<(String, String)>,
    max_body: u64,
    policy: RetryPolicy,
}

impl Fetcher {
    /// Builds the agent for `job`.
    pub fn new(job: &JobSpec) -> Self {
        let io = Some(Duration::from_millis(job.io_timeout_ms));
        let threads = job.threads.max(1) as usize;
        let config = Agent::config_builder()
            .timeout_connect(Some(Duration::from_millis(job.connect_timeout_ms)))
            .timeout_send_request(io)
            .timeout_recv_response(io)
            .timeout_recv_body(io)
            .max_idle_connections(threads)
            .max_idle_connections_per_host(threads)
            .http_status_as_error(false)
            .user_agent(job.user_agent.as_str())
            .tls_config(tls_config(&job.tls, &job.url_template))
            .build();
        let resolver = CachingResolver::new(Duration::from_millis(job.dns_ttl_ms));
        let agent = Agent::with_parts(config, DefaultConnector::default(), resolver);
        Self {
            agent,
            url_parts: job.url_template.split("{id}").map(str::to_owned).collect(),
            headers: job.headers.clone(),
            max_body: job.max_body,
            policy: RetryPolicy::of(job),
        }
    }

    /// The URL of `id`, built in `url` (reused, so the steady state does not allocate).
    pub fn url_of<'u>(&self, id: u64, url: &'u mut String) -> &'u str {
        url.clear();
        let mut digits = [0u8; 20];
        let id = itoa(id, &mut digits);
        for (n, part) in self.url_parts.iter().enumerate() {
            if n > 0 {
                url.push_str(id);
            }
            url.push_str(part);
        }
        url
    }

    /// Fetches `id` until it has a final answer or runs out of attempts. Every attempt passes
    /// `gate` first; `None` when the gate closes before the id has an answer (the worker is
    /// stopping, and the id stays unreported).
    pub fn fetch(&self, id: u64, url: &mut String, gate: &Gate) -> Option<ItemResult> {
        self.url_of(id, url);
        let mut backoff = self.policy.backoff();
        let mut attempts = 0;
        loop {
            let started = gate.enter()?;
            attempts += 1;
            let (attempt, mut met) = self.attempt(url);
            // A server's wait is the fleet's: the gate pauses this worker at once and tells the
            // supervisor, which pauses the others.
            met.wait = met.wait.map(|w| w.min(self.policy.retry_after_max));
            gate.leave(started, met);
            match attempt {
                Attempt::Final(outcome) => return Some(ItemResult { id, attempts, outcome }),
                Attempt::Retry { error } => {
                    let Some(jittered) = backoff.next() else {
                        let plural = if attempts == 1 { "" } else { "s" };
                        let error = format!("gave up after {attempts} attempt{plural}: {error}");
                        return Some(ItemResult { id, attempts, outcome: Outcome::Failed { error } });
                    };
                    log::debug!("id {id}: attempt {attempts} failed ({error}), retrying");
                    // After a server's wait, the gate holds the retry until the wait is over; the
                    // jittered backoff on top spreads the fleet's retries out.
                    std::thread::sleep(jittered);
                }
            }
        }
    }

    fn request(
        &self,
        url: &str,
        follow_redirects: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut req = self.agent.get(url);
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if follow_redirects {
            req.call()
        } else {
            req.config().max_redirects(0).build().call()
        }
    }

    fn attempt(&self, url: &str) -> (Attempt, Met) {
        let mut resp = match self.request(url, true) {
            Ok(resp) => resp,
            // A 3xx without a Location header is the server's final answer, not a protocol
            // error: asked again without following redirects, it is stored with its status and
            // body. (ureq reports it only as an error, so this costs one more request.)
            Err(ureq::Error::Protocol(ureq_proto::Error::NoLocationHeader)) => match self.request(url, false)
            {
                Ok(resp) => resp,
                Err(e) => return (classify_error(e), Met::default()),
            },
            Err(e) => return (classify_error(e), Met::default()),
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
        let met = Met { status: Some(status), wait: retry_after.or(used_up), announced };
        if retryable_status(status) {
            // Read (a bounded amount of) the body so the connection can be reused.
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            return (Attempt::Retry { error: format!("HTTP {status}") }, met);
        }
        let attempt = match resp.body_mut().with_config().limit(self.max_body).read_to_vec() {
            Ok(body) => Attempt::Final(Outcome::Response { status, body }),
            Err(e) => classify_error(e),
        };
        (attempt, met)
    }
}

/// Sorts an error into final or retryable.
fn classify_error(e: ureq::Error) -> Attempt {
    use ureq::Error as E;
    match e {
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
            Attempt::Final(Outcome::Failed { error: format!("TLS: {why}{}", tls_hint(&why)) })
        }
        other => Attempt::Retry { error: one_line(&other) },
    }
}

/// What to do about the TLS failures a user meets first.
fn tls_hint(why: &str) -> &'static str {
    if why.contains("CaUsedAsEndEntity") {
        " (the server presents a CA's certificate as its own: give it one a CA signed, or a self-signed one made \
         with basicConstraints CA:FALSE, and pass that CA or certificate to --ca-cert)"
    } else if why.contains("UnknownIssuer") {
        " (no trusted root signed it: pass its CA to --ca-cert)"
    } else if why.contains("NotValidForName") {
        " (it names another host than the URL's)"
    } else {
        ""
    }
}

fn one_line(e: &ureq::Error) -> String {
    e.to_string().replace('\n', " ")
}

/// Formats `n` in decimal into `buf` without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// Checks a URL template: `{id}` present, and with an id put in, an absolute http(s) URL.
pub fn check_url_template(template: &str) -> Result<(), String> {
    if !template.contains("{id}") {
        return Err(format!("`{template}` has no {{id}} in it"));
    }
    let url = template.replace("{id}", "0");
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("`{template}` is not a valid URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{template}` is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{template}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_placeholder_is_filled() {
        let f = Fetcher::new(&JobSpec::minimal("http://127.0.0.1:1/a/{id}/b?id={id}&x=1"));
        let mut url = String::new();
        assert_eq!(f.url_of(42, &mut url), "http://127.0.0.1:1/a/42/b?id=42&x=1");
        assert_eq!(f.url_of(7, &mut url), "http://127.0.0.1:1/a/7/b?id=7&x=1");
    }

    #[test]
    fn itoa_matches_display() {
        for n in [0, 7, 10, 999_999, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string());
        }
    }
}
