//! The messages exchanged between the supervisor and a worker.
//!
//! A session is: supervisor sends [`ToWorker::Hello`] (version, then the job); the worker answers
//! [`FromWorker::Hello`]; then the supervisor sends [`ToWorker::Assign`] frames and the worker
//! answers with [`FromWorker::Results`] batches and a [`FromWorker::Heartbeat`] every
//! [`HEARTBEAT_EVERY`]. The supervisor ends a session by closing the worker's stdin: the worker finishes the
//! ids it holds, reports them, and exits 0.
//!
//! Credentials: when the job's credential comes from a source (a helper, a token endpoint),
//! the supervisor sends a [`ToWorker::Credential`] right after the hello and each time it has a
//! newer one. A request answered 401 is never an item's answer: the worker says
//! [`FromWorker::Refused`] (once per credential), holds the item until a newer credential
//! comes, and sends it again without counting an attempt; the supervisor either has one or
//! stops the run.
//!
//! Variants are only ever appended, and any change to a message's shape bumps
//! [`PROTOCOL_VERSION`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a worker's retry budget is counted over: Finagle's `RetryBudget` keeps deposits 10 s.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// How often a worker says it is alive, from a thread of its own, whatever its fetch threads
/// are doing. The supervisor's `--worker-timeout` is a multiple of it.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// The version of this protocol. Both sides put it first in their `Hello` and refuse a peer
/// that speaks another.
pub const PROTOCOL_VERSION: u32 = 10;

/// A message from the supervisor to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first frame of a session.
    Hello {
        /// Must be the first field: see [`crate::frame::peek_hello_version`].
        version: u32,
        /// What to fetch and how (boxed: it is sent once, and keeps the enum small).
        job: Box<JobSpec>,
    },
    /// Fetch these items (ids sorted, distinct) and report each exactly once.
    Assign {
        /// The ids to fetch (in a keyed job, the keys' ordinals in the store).
        ids: Vec<u64>,
        /// In a keyed job, the key of each id, in the same order; empty otherwise.
        keys: Vec<String>,
        /// In a refresh, what each id's stored answer was validated by, in the same order: the
        /// request is conditional; empty otherwise.
        conditions: Vec<Condition>,
    },
    /// How this worker may send from now on: see [`Pace`].
    Pace(Pace),
    /// More permits, each good for one request (retries included), when the worker is metered.
    Permits(u32),
    /// Send nothing for this long (a server asked the fleet to wait), and drop the permits in
    /// hand: sending resumes on fresh ones.
    Pause {
        /// How long, in milliseconds, from when the worker reads this.
        ms: u64,
    },
    /// Send every request from now on with this credential (newer than any before).
    Credential(Credential),
}

/// What a stored answer can be validated by: a request carrying it is conditional
/// (`If-None-Match`, `If-Modified-Since`), and a `304 Not Modified` keeps the stored body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Its `ETag`; empty: none.
    pub etag: String,
    /// Its `Last-Modified`; empty: none.
    pub last_modified: String,
}

impl Condition {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.etag.is_empty() && self.last_modified.is_empty()
    }
}

/// What an answer said of itself that a later refresh needs (RFC 9111, RFC 9110 8.8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// Its `ETag`, as sent; empty: none.
    pub etag: String,
    /// Its `Last-Modified`, as sent; empty: none.
    pub last_modified: String,
    /// For how many seconds from now the server says it stays fresh (`Cache-Control: max-age`
    /// less `Age`, or `Expires` less `Date`); `None`: it did not say.
    pub fresh_for: Option<u32>,
}

/// A credential the supervisor obtained, as a worker sends it: one header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Counts up from 1 with every credential of a run; a worker's [`FromWorker::Refused`]
    /// names the one a 401 met. (0 stands for the job's own headers.)
    pub generation: u64,
    /// The header it goes in (`Authorization`).
    pub header: String,
    /// The header's value (`Bearer ...`).
    pub value: Secret,
    /// How long it is good for, in milliseconds from when the worker reads this; `None`: until
    /// refused. Past it, the worker waits for a newer one rather than send.
    pub expires_in_ms: Option<u64>,
}

/// A secret (a token, a header's value): its `Debug` says only that it is there, so no log
/// line of a message that carries one can show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The limits a worker sends under; the supervisor sends them after the hello and whenever
/// they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pace {
    /// The most requests this worker has in flight at once (its share of the fleet's limit).
    pub concurrency: u32,
    /// Whether each request needs a permit ([`ToWorker::Permits`]): the fleet is under a rate,
    /// or its circuit is open and only probes go.
    pub metered: bool,
    /// The API is down (nearly every request fails) and the fleet's circuit is open: an attempt
    /// sent now, or failing now, does not count against its id.
    pub circuit_open: bool,
}

/// Everything a worker needs to know about the job. Secrets (request headers) travel here,
/// through the pipe, never through argv or the environment; `Debug` redacts their values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// URL with `{id}` or `{key}` where the item goes, e.g. `http://127.0.0.1:8080/items/{id}`
    /// (see [`crate::template`]).
    pub url_template: String,
    /// Fetch threads in the worker.
    pub threads: u32,
    /// The most ids the supervisor will have outstanding at this worker at once; the worker
    /// sizes its queue to hold them all, so reading an assignment never blocks.
    pub max_in_flight: u32,
    /// Attempts per id before it is reported as failed.
    pub max_attempts: u32,
    /// Bodies larger than this many bytes are a failure for that id.
    pub max_body: u64,
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout for each of sending the request, receiving the response head and receiving the
    /// body, in milliseconds.
    pub io_timeout_ms: u64,
    /// How long a host name's addresses are kept, in milliseconds; 0: resolved per request.
    pub dns_ttl_ms: u64,
    /// Base delay of the exponential backoff between attempts, in milliseconds.
    pub backoff_base_ms: u64,
    /// Ceiling of the backoff delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Ceiling of an honoured `Retry-After`, in milliseconds.
    pub retry_after_max_ms: u64,
    /// Retries this worker may make, in percent of its first attempts over the last
    /// [`RETRY_BUDGET_WINDOW`], besides [`JobSpec::retry_floor_per_min`]; `None`: no budget.
    pub retry_budget_pct: Option<u32>,
    /// Retries a minute this worker may always make, whatever the budget (its share of the
    /// fleet's floor).
    pub retry_floor_per_min: u32,
    /// Extra request headers, name and value (a value may hold `{id}` or `{key}`, written as
    /// it is).
    pub headers: Vec<(String, String)>,
    /// The request's method (`GET`, `POST`, ...).
    pub method: String,
    /// The request's body, a template (`{id}`, `{key}` written for [`JobSpec::content_type`]:
    /// see [`crate::template::Encoding`]); `None`: no body.
    pub body: Option<String>,
    /// The body's `Content-Type`.
    pub content_type: Option<String>,
    /// The `User-Agent` header of every request.
    pub user_agent: String,
    /// The job's credential comes from a source the supervisor holds: requests wait for its
    /// [`ToWorker::Credential`] and are sent with it.
    pub credential_source: bool,
    /// How https URLs are trusted.
    pub tls: TlsTrust,
    /// Faults to inject, for tests and teaching; empty unless asked for.
    pub chaos: WorkerChaos,
}

/// How a worker trusts https servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsTrust {
    /// Certificates (DER) trusted besides the system's roots (`--ca-cert`).
    pub extra_roots: Vec<Vec<u8>>,
    /// Verify nothing (`--insecure`): any certificate, any name.
    pub insecure: bool,
}

impl JobSpec {
    /// A job for `url_template` with one thread, one attempt and one-millisecond timeouts: a
    /// starting point for tests and tools, which set the fields they care about.
    pub fn minimal(url_template: impl Into<String>) -> JobSpec {
        JobSpec {
            url_template: url_template.into(),
            threads: 1,
            max_in_flight: 1,
            max_attempts: 1,
            max_body: 1,
            connect_timeout_ms: 1,
            io_timeout_ms: 1,
            dns_ttl_ms: 0,
            backoff_base_ms: 1,
            backoff_max_ms: 1,
            retry_after_max_ms: 1,
            retry_budget_pct: None,
            retry_floor_per_min: 0,
            headers: Vec::new(),
            method: "GET".to_owned(),
            body: None,
            content_type: None,
            user_agent: String::new(),
            credential_source: false,
            tls: TlsTrust::default(),
            chaos: WorkerChaos::default(),
        }
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> =
            self.headers.iter().map(|(name, _)| format!("{name}: <redacted>")).collect();
        f.debug_struct("JobSpec")
            .field("url_template", &self.url_template)
            .field("threads", &self.threads)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_attempts", &self.max_attempts)
            .field("max_body", &self.max_body)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("io_timeout_ms", &self.io_timeout_ms)
            .field("dns_ttl_ms", &self.dns_ttl_ms)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("retry_after_max_ms", &self.retry_after_max_ms)
            .field("retry_budget_pct", &self.retry_budget_pct)
            .field("retry_floor_per_min", &self.retry_floor_per_min)
            .field("headers", &headers)
            .field("method", &self.method)
            .field("body", &self.body)
            .field("content_type", &self.content_type)
            .field("user_agent", &self.user_agent)
            .field("credential_source", &self.credential_source)
            .field("tls", &self.tls)
            .field("chaos", &self.chaos)
            .finish()
    }
}

/// Faults a worker injects into itself when it is about to fetch certain ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerChaos {
    /// Fetching one of these aborts the worker process.
    pub crash_on: Vec<u64>,
    /// Fetching one of these stops the worker process (SIGSTOP): no more heartbeats.
    pub hang_on: Vec<u64>,
    /// Fetching one of these makes the worker send a malformed frame.
    pub bad_frame_on: Vec<u64>,
}

impl WorkerChaos {
    /// Whether any fault is asked for.
    pub fn is_empty(&self) -> bool {
        self.crash_on.is_empty() && self.hang_on.is_empty() && self.bad_frame_on.is_empty()
    }
}

/// A worker's answer to the supervisor's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The worker's process id, for logs.
    pub pid: u32,
}

/// A message from a worker to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first frame of a session.
    Hello(WorkerHello),
    /// Final answers for some of the assigned ids, each reported once.
    Results(Vec<ItemResult>),
    /// Sent every [`HEARTBEAT_EVERY`] from a thread of its own: the worker is alive.
    Heartbeat,
    /// It has spent this many permits since it last said so, and is running low.
    Spent(u32),
    /// What its requests met since the last report: sent every [`TRAFFIC_EVERY`] while it
    /// sends, and at once when a server asks the fleet to wait or announces a new limit.
    Traffic(Traffic),
    /// A request sent with this credential was answered 401 (once per credential): its item
    /// waits for a newer one.
    Refused {
        /// The credential's [`Credential::generation`] (0: the job's own headers).
        generation: u64,
        /// Whether this worker had any other answer with it first: a credential the API took
        /// before is one that expired or was revoked, not one it never took.
        proven: bool,
    },
}

/// Whether an answer with `status` is a failure of the API, not of the id and not a refusal:
/// a 5xx or a 408. (A request with no answer is one too.) The worker's wait for the fleet's
/// circuit and the supervisor's count of an outage both go by it.
pub fn api_failure(status: u16) -> bool {
    status == 408 || (500..600).contains(&status)
}

/// How often a busy worker reports its [`Traffic`].
pub const TRAFFIC_EVERY: Duration = Duration::from_millis(100);

/// What a worker's requests met over one report period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// HTTP requests that ended (answered or not).
    pub requests: u32,
    /// Of those, answered 429.
    pub too_many: u32,
    /// Answered 429 or 503: the server is overloaded or limiting us.
    pub throttled: u32,
    /// Sum of the requests' durations, in microseconds.
    pub latency_us: u64,
    /// The longest wait a `Retry-After` asked for (or a limit announced as used up until its
    /// reset), in milliseconds.
    pub wait_ms: Option<u64>,
    /// The latest rate limit the server announced in its headers.
    pub announced: Option<Announced>,
    /// Answers by HTTP status: (status, count).
    pub statuses: Vec<(u16, u32)>,
    /// Requests by duration: the count in each of [`LATENCY_BUCKETS`], and one more past the
    /// last (empty when there were no requests).
    pub latency_buckets: Vec<u32>,
    /// Requests being sent at the moment of the report.
    pub sending: u32,
    /// How the latest request that got no HTTP answer at all failed, in a few words
    /// (`connection refused`, `connect timed out`): what the supervisor names while the API
    /// has never answered.
    pub unanswered: Option<String>,
}

/// The upper bounds, in seconds, of the request-duration buckets workers count in.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Traffic {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.wait_ms.is_none() && self.announced.is_none() && self.unanswered.is_none()
    }

    /// Counts one request of `duration` that was answered `status` (if it was).
    pub fn count(&mut self, duration: Duration, status: Option<u16>) {
        self.requests += 1;
        self.latency_us += u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let secs = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket] += 1;
        if let Some(status) = status {
            match self.statuses.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => self.statuses.push((status, 1)),
            }
            if status == 429 {
                self.too_many += 1;
            }
            if status == 429 || status == 503 {
                self.throttled += 1;
            }
        }
    }
}

/// A rate limit as a server announces it (`RateLimit`, `RateLimit-Policy`, `RateLimit-*`,
/// `X-RateLimit-*` headers), each part as far as it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// Requests allowed per window.
    pub limit: Option<u64>,
    /// The window, in milliseconds (from a policy's `w`).
    pub window_ms: Option<u64>,
    /// Requests left in the current window.
    pub remaining: Option<u64>,
    /// Until the window resets, in milliseconds.
    pub reset_ms: Option<u64>,
}

/// The final answer for one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The id.
    pub id: u64,
    /// HTTP requests made for it, including the last.
    pub attempts: u32,
    /// What came of it.
    pub outcome: Outcome,
}

impl ItemResult {
    /// About the bytes it holds in memory: its body or its error, and itself. The supervisor
    /// counts results against its budget by this.
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.outcome {
                Outcome::Response { body, validators, .. } => {
                    body.len() + validators.etag.len() + validators.last_modified.len()
                }
                Outcome::Unchanged { validators } => validators.etag.len() + validators.last_modified.len(),
                Outcome::Failed { error } | Outcome::Unreachable { error, .. } => error.len(),
            }
    }

    /// What a batch of results holds, by [`ItemResult::held_bytes`].
    pub fn held_by(results: &[ItemResult]) -> usize {
        results.iter().map(ItemResult::held_bytes).sum()
    }
}

/// What came of fetching one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The server gave a final HTTP answer: a 2xx or a 4xx other than 408 and 429.
    Response {
        /// HTTP status code.
        status: u16,
        /// The body, byte for byte (as bytes on the wire, not a sequence of u8: bincode decodes a
        /// sequence element by element, which was the supervisor's largest cost after zstd).
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        /// What it said of itself, for a later refresh.
        validators: Validators,
    },
    /// `304 Not Modified` to a conditional request: the stored answer stands.
    Unchanged {
        /// What the 304 said of it (new validators, a new freshness), if anything.
        validators: Validators,
    },
    /// Every attempt failed, or the answer could not be taken (too large, redirect loop).
    Failed {
        /// The last error, one line.
        error: String,
    },
    /// The server cannot be reached as the job is written, and no attempt would change it: its
    /// certificate is not trusted, its name does not resolve, its scheme is not spoken. While
    /// the API has never answered in a run, this stops the run and nothing is stored; after
    /// that it is the id's failure (a redirect to a host of its own), stored as
    /// [`Outcome::Failed`] with `error`.
    Unreachable {
        /// Which of the causes.
        why: Unreachable,
        /// What happened and what to do, one line (as the stored error says it).
        error: String,
    },
}

/// Why a server cannot be reached as a job is written: a cause no retry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unreachable {
    /// Its TLS certificate is not trusted, or names another host.
    Certificate,
    /// Its host name does not exist (NXDOMAIN; not a resolver that did not answer).
    NoSuchHost,
    /// Its URL's scheme is not one this build speaks.
    Scheme,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unreachable::Certificate => "its certificate is not trusted",
            Unreachable::NoSuchHost => "its host name does not resolve",
            Unreachable::Scheme => "its URL's scheme is not spoken",
        })
    }
}
