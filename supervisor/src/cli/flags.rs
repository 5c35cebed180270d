//! The command line as clap parses it: raw flags, each parsed into its type but not yet checked
//! against the others. `validate` turns them into a [`RunConfig`](crate::job::RunConfig).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::parse::{parse_chaos, parse_duration, parse_rate, parse_retry_budget, parse_size, RetryBudgetPct};
use crate::job::{Chaos, IdRange, Model, Shard};

/// flota's supervisor: fetches every id of a range from an HTTP API with a fleet of isolated
/// worker processes, into one sled store that a rerun resumes from.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version, subcommand_negates_reqs = true)]
#[command(after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do; without one, run the job described by the flags.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The job's flags.
    #[command(flatten)]
    pub run: RunArgs,
    /// How much is said.
    #[command(flatten)]
    pub output: Output,
}

const AFTER_HELP: &str = "\
Examples:
  supervisor --url 'https://api.example.com/items/{id}' --ids 0..1000000 --store items.sled
  supervisor --url 'https://api.example.com/items/{id}' --ids 0..40000 --rate 600/min
  supervisor --config /etc/flota/job.toml --metrics 127.0.0.1:9898
  supervisor --url 'https://api.example.com/items/{id}' --ids 0..1000000 --shard 0/3 --store part0.sled
  supervisor merge items.sled part0.sled part1.sled part2.sled
  supervisor status --store items.sled --json
  supervisor export --store items.sled --only failed --format csv --output failed.csv
  supervisor demo --items 100000 --chaos kill-every=1s

Every flag can also be set as FLOTA_<FLAG> in the environment (FLOTA_RATE=20/s) or as a key of the
--config TOML file (rate = \"20/s\"); a flag wins over the environment, which wins over the file.

Exit codes: 0 every id has an HTTP answer; 3 finished, some ids failed or are quarantined; 4 the API
cannot be reached as written (its certificate, its host name, its scheme) or never answered within
--wait-for-api, nothing stored; 2 bad invocation; 1 any other fatal error; 130/143 stopped by
SIGINT/SIGTERM (a rerun resumes).";

/// Flags that say how much is said, for every command.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Read settings from this TOML file: keys are the long flags (`workers = 8`,
    /// `rate = "600/min"`, `header = ["Authorization: Bearer ..."]`). SIGHUP rereads it.
    #[arg(long, global = true, env = "FLOTA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Say less: no progress, warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more: -v debug, -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The log level (error, warn, info, debug, trace); -q and -v move it. SIGHUP rereads it
    /// from the config file.
    #[arg(long, global = true, env = "FLOTA_LOG_LEVEL", value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
}

impl Output {
    /// The log level these flags ask for.
    pub fn level(&self) -> log::LevelFilter {
        use log::LevelFilter as L;
        if self.quiet {
            return L::Warn.min(self.log_level);
        }
        let levels = [L::Off, L::Error, L::Warn, L::Info, L::Debug, L::Trace];
        let at = levels.iter().position(|&l| l == self.log_level).unwrap_or(3);
        levels[(at + usize::from(self.verbose)).min(levels.len() - 1)]
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // built once per process; boxing buys nothing
pub enum Command {
    /// Write every stored record, in id order.
    Export(ExportArgs),
    /// Show a store's job, its counts and the figures of its last run.
    Status(StatusArgs),
    /// Read every record of a store and say whether it is sound (exit 0) or damaged (exit 2),
    /// and what a salvage would recover. Changes nothing.
    Verify(VerifyArgs),
    /// Copy every intact record of a (damaged) store into a new store of the same job; a run of
    /// the job on the new store then fetches only what was lost. Changes nothing in the old one.
    Salvage(SalvageArgs),
    /// Upgrade a store written by an older flota to this build's format, in place (any command
    /// that opens it does the same on the way; this does only that). Safe to interrupt.
    Upgrade(UpgradeArgs),
    /// Merge the stores of a job's shards into a new store OUT; says whether every id has a
    /// record (exit 0) or some are missing (exit 3), and refuses stores of another job (exit 2).
    Merge(MergeArgs),
    /// Start mockapi on a free loopback port and run a whole job against it.
    Demo(DemoArgs),
    /// Print the effective settings of a run (flags, environment, config file, defaults) and
    /// where each comes from, secrets redacted. Checks them as a run would.
    Config(RunArgs),
    /// Print a shell completion script: `supervisor completions bash > /etc/bash_completion.d/supervisor`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `supervisor man > supervisor.1`.
    Man,
    /// Serve as a worker on stdin/stdout (started by the supervisor itself).
    #[command(hide = true)]
    Worker,
    /// Run mockapi (used by `demo`).
    #[command(hide = true)]
    Mockapi(mockapi::Args),
    /// Run a fault proxy in front of a server: Toxiproxy's toxics on a share of connections
    /// (used by the tests and `scripts/bench-faults`).
    #[command(hide = true)]
    FaultProxy(mockapi::proxy::ProxyArgs),
}

/// Flags of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// URL of one item, with `{id}` where the id goes, or `{key}` (percent-encoded for where it
    /// stands) or `{key:raw}` (as it is) where the key goes. Any other brace is literal.
    #[arg(long, env = "FLOTA_URL", value_name = "TEMPLATE")]
    pub url: Option<String>,
    /// Ids to fetch: `A..B` (B excluded) or `A..=B`.
    #[arg(long, env = "FLOTA_IDS", value_name = "RANGE", conflicts_with = "ids_file")]
    pub ids: Option<String>,
    /// Ids to fetch, one per line (`-`: stdin); blank lines and `#` comments are skipped, and
    /// an id listed twice is fetched once. For APIs whose ids are not a range.
    #[arg(long, env = "FLOTA_IDS_FILE", value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// Keys to fetch, one a line (`-`: stdin), each exactly as written: any UTF-8 without CR or
    /// NUL, up to 2000 bytes; no comments, no trimming; empty lines skipped, a key listed twice
    /// fetched once. The URL names it `{key}`. The store keeps the keys: a rerun fetches only
    /// keys it has no answer for.
    #[arg(long, env = "FLOTA_KEYS", value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// With --keys: the file is a CSV with a header line, and the keys are this column.
    #[arg(long, env = "FLOTA_KEYS_COLUMN", value_name = "NAME")]
    pub keys_column: Option<String>,
    /// With --keys: the file is JSON Lines, and the keys are this field of each object (a
    /// string, or a number as written).
    #[arg(long, env = "FLOTA_KEYS_FIELD", value_name = "NAME")]
    pub keys_field: Option<String>,
    /// The request's method: GET, POST, PUT, PATCH, DELETE, HEAD, ... (a fetch may be any
    /// read; it is retried as a GET is).
    #[arg(long, env = "FLOTA_METHOD", value_name = "METHOD", default_value = "GET")]
    pub method: String,
    /// The request's body, a template: `{id}`, `{key}` are written for its content type (JSON
    /// string content in JSON, form-encoded in a form); any other brace is literal, so a GraphQL
    /// query needs no escaping.
    #[arg(long, env = "FLOTA_BODY", value_name = "TEMPLATE")]
    pub body: Option<String>,
    /// The request's body template, from a file.
    #[arg(long, env = "FLOTA_BODY_FILE", value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// The body's Content-Type (with --body or --body-file) [default: application/json].
    #[arg(long, env = "FLOTA_CONTENT_TYPE", value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Take only part I of N of the ids (I counts from 0): blocks of 256 ids dealt round-robin,
    /// so N supervisors with 0/N .. N-1/N fetch every id exactly once, each into its own store;
    /// `supervisor merge` joins the stores. Read from a Slurm job array or (with --shards) a
    /// Kubernetes Indexed Job when not given. --rate is per shard.
    #[arg(long, env = "FLOTA_SHARD", value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// How many shards the job has, when the scheduler gives only this one's index
    /// (JOB_COMPLETION_INDEX in a Kubernetes Indexed Job: its completions).
    #[arg(long, env = "FLOTA_SHARDS", value_name = "N")]
    pub shards: Option<u64>,
    /// The store (a directory); created if missing.
    #[arg(long, env = "FLOTA_STORE", value_name = "DIR", default_value = "flota.sled")]
    pub store: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics while the run lasts (e.g.
    /// 127.0.0.1:9898).
    #[arg(long, env = "FLOTA_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// How the end-of-run summary is printed on stdout: text (for a person), or json (one
    /// object: the store, the job, and the run's figures under the keys `status --json` gives
    /// its last run: answered, failed, retries, pacing.requests, ...).
    #[arg(long, env = "FLOTA_SUMMARY", value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,
    /// Fetch again stored answers fetched more than AGE ago (`0s`: every answer of the job),
    /// or `stale`: those the server's own freshness says have expired (Cache-Control max-age,
    /// Expires; else a tenth of the age its Last-Modified gave it). Conditional when the
    /// answer had an ETag or a Last-Modified: a 304 keeps the stored body. A refetch that fails
    /// keeps the stored answer.
    #[arg(long, env = "FLOTA_REFRESH", value_name = "AGE|stale")]
    pub refresh: Option<String>,
    /// Fetch again stored answers of these statuses, comma-separated: `404,410`, `4xx`, `403`.
    #[arg(long, env = "FLOTA_REFETCH_STATUS", value_name = "LIST")]
    pub refetch_status: Option<String>,
    /// Where the credential comes from, when it expires.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// How the job is run.
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Credentials that expire: a source the supervisor renews them from, ahead of expiry and on
/// a 401, for the whole fleet. One source at most; its credential goes in `Authorization:
/// Bearer`.
#[derive(Debug, Clone, Default, Args)]
pub struct AuthArgs {
    /// A credential helper, run with `sh -c`, printing on stdout a bare token (no expiry: renewed
    /// when refused), an OAuth 2.0 token answer (`{"access_token": ..., "expires_in": SECS}`: curl
    /// to a token endpoint will do), or kubectl's ExecCredential (`status.token`,
    /// `status.expirationTimestamp`). A helper that fails at the start stops the run (exit 5).
    #[arg(long, env = "FLOTA_AUTH_COMMAND", value_name = "CMD")]
    pub auth_command: Option<String>,
    /// An OAuth 2.0 token endpoint: the client-credentials grant (with --oauth2-client-id and a
    /// secret from --oauth2-client-secret-file or FLOTA_OAUTH2_CLIENT_SECRET), or the
    /// refresh-token grant with --oauth2-refresh-token-file.
    #[arg(long, env = "FLOTA_OAUTH2_TOKEN_URL", value_name = "URL")]
    pub oauth2_token_url: Option<String>,
    /// The OAuth 2.0 client's id.
    #[arg(long, env = "FLOTA_OAUTH2_CLIENT_ID", value_name = "ID")]
    pub oauth2_client_id: Option<String>,
    /// A file holding the client's secret (its first line), kept out of the process list;
    /// or set FLOTA_OAUTH2_CLIENT_SECRET.
    #[arg(long, env = "FLOTA_OAUTH2_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub oauth2_client_secret_file: Option<PathBuf>,
    /// The scope to ask for (space-separated, as the server names them).
    #[arg(long, env = "FLOTA_OAUTH2_SCOPE", value_name = "SCOPE")]
    pub oauth2_scope: Option<String>,
    /// How the client authenticates to the token endpoint: basic (HTTP Basic, as RFC 6749
    /// prefers: client_secret_basic) or body (in the form: client_secret_post) [default: basic].
    #[arg(long, env = "FLOTA_OAUTH2_CLIENT_AUTH", value_enum, value_name = "HOW")]
    pub oauth2_client_auth: Option<ClientAuthFlag>,
    /// A file holding a refresh token: the refresh-token grant instead of client credentials.
    /// A token the server rotates is written back to it (atomically, mode 0600) before the
    /// access token it came with is used.
    #[arg(long, env = "FLOTA_OAUTH2_REFRESH_TOKEN_FILE", value_name = "FILE")]
    pub oauth2_refresh_token_file: Option<PathBuf>,
}

/// `--oauth2-client-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientAuthFlag {
    /// HTTP Basic (client_secret_basic).
    Basic,
    /// In the form body (client_secret_post).
    Body,
}

impl RunArgs {
    /// A GET of `url` over the ids `ids` into `store`, every other flag of the job unset: the
    /// demo's run, and the tests'.
    pub fn of_ids(url: Option<String>, ids: Option<String>, store: PathBuf, tuning: Tuning) -> RunArgs {
        RunArgs {
            url,
            ids,
            ids_file: None,
            keys: None,
            keys_column: None,
            keys_field: None,
            method: "GET".into(),
            body: None,
            body_file: None,
            content_type: None,
            shard: None,
            shards: None,
            store,
            metrics: None,
            summary: SummaryFormat::Text,
            refresh: None,
            refetch_status: None,
            auth: AuthArgs::default(),
            tuning,
        }
    }
}

/// Flags shared by a run and the demo.
#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Worker processes.
    #[arg(long, env = "FLOTA_WORKERS", default_value_t = 4)]
    pub workers: u32,
    /// Fetch threads in each worker. Workers times threads bounds the requests in flight; the
    /// adaptive limit (or --concurrency) decides how many are.
    #[arg(long, env = "FLOTA_THREADS", default_value_t = 256)]
    pub threads: u32,
    /// At most this many requests a second from the whole fleet, retries included: `20`,
    /// `0.5`, `20/s`, `600/min`, `50000/h`. Without it, the fleet keeps to the limit a server
    /// announces in RateLimit or X-RateLimit headers, if it announces one.
    #[arg(long, env = "FLOTA_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// With a rate: how many requests may go at once beyond it (default: 50ms worth).
    #[arg(long, env = "FLOTA_BURST", value_name = "N")]
    pub burst: Option<u32>,
    /// Keep exactly this many requests in flight across the fleet instead of adapting the
    /// number to the server's answers (at most workers times threads).
    #[arg(long, env = "FLOTA_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<u32>,
    /// Ids per chunk handed to a worker.
    #[arg(long, env = "FLOTA_CHUNK_SIZE", default_value_t = 256)]
    pub chunk_size: u32,
    /// Attempts per id before it is stored as failed.
    #[arg(long, env = "FLOTA_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// Largest body accepted, in bytes (suffixes K, M, G: powers of 1024).
    #[arg(long, env = "FLOTA_MAX_BODY", default_value = "16M", value_parser = parse_size)]
    pub max_body: u64,
    /// TCP connect timeout.
    #[arg(long, env = "FLOTA_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Timeout of each phase of a request: sending it, awaiting the response, reading the body.
    #[arg(long, env = "FLOTA_IO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub io_timeout: Duration,
    /// How long a host name's addresses are kept before it is resolved again (in the
    /// background); 0 resolves it for every request.
    #[arg(long, env = "FLOTA_DNS_TTL", default_value = "30s", value_parser = parse_duration)]
    pub dns_ttl: Duration,
    /// First backoff delay between attempts (doubles each retry, with full jitter).
    #[arg(long, env = "FLOTA_BACKOFF_BASE", default_value = "100ms", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest backoff delay.
    #[arg(long, env = "FLOTA_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured (a 429 or 503 waits what the server asks, up to this).
    #[arg(long, env = "FLOTA_RETRY_AFTER_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_after_max: Duration,
    /// Retries allowed, as a share of first attempts over the last 10 s (plus 10 a second for
    /// the fleet, always): a failing API is not sent many times what a healthy one is. A retry
    /// past it waits. At 100% a run keeps its speed while up to half the requests fail; past
    /// that it slows to what the budget allows. `off` retries every failure at once.
    #[arg(long, env = "FLOTA_RETRY_BUDGET", default_value = "100%", value_parser = parse_retry_budget)]
    pub retry_budget: RetryBudgetPct,
    /// How long an outage may hold the ids' attempts: while the API is down (nearly every
    /// request failing) the fleet only probes it and no id spends its attempts; past this,
    /// attempts count again, so ids that fail on their own end as failures.
    #[arg(long, env = "FLOTA_OUTAGE_MAX", default_value = "5m", value_parser = parse_duration)]
    pub outage_max: Duration,
    /// How long a run waits for the API's first answer: while none has come (connections
    /// refused, connects timing out), no id spends its attempts and the progress line says
    /// why; past this the run gives up (exit 4) with nothing stored. Raise it for a service
    /// that starts before its API.
    #[arg(long, env = "FLOTA_WAIT_FOR_API", default_value = "3m", value_parser = parse_duration)]
    pub wait_for_api: Duration,
    /// A worker silent this long (no heartbeat) is killed and replaced.
    #[arg(long, env = "FLOTA_WORKER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub worker_timeout: Duration,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", env = "FLOTA_HEADER", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The User-Agent of every request (default: flota/VERSION). APIs ask to be told who
    /// calls them, often with a contact: `acme-sync/2 (ops@example.com)`.
    #[arg(long, env = "FLOTA_USER_AGENT", value_name = "UA", default_value = DEFAULT_USER_AGENT)]
    pub user_agent: String,
    /// Trust the certificate authorities of this PEM file besides the system's roots, for
    /// https servers whose certificates a private CA signed (repeatable).
    #[arg(long = "ca-cert", env = "FLOTA_CA_CERT", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// Do not verify https servers' certificates at all: anyone on the path can read and
    /// change what is fetched. For a test server, never for data you keep.
    #[arg(long, env = "FLOTA_INSECURE", conflicts_with = "ca_certs")]
    pub insecure: bool,
    /// Read extra request headers from this file, one `Name: value` per line (keeps secrets
    /// out of the process list).
    #[arg(long, env = "FLOTA_HEADER_FILE", value_name = "FILE")]
    pub header_file: Option<PathBuf>,
    /// Worker executable (default: this supervisor, re-executed in worker mode).
    #[arg(long, env = "FLOTA_WORKER_BIN", value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
    /// Address-space limit of each worker (suffixes K, M, G).
    #[arg(long, env = "FLOTA_WORKER_MEMORY", default_value = "2G", value_parser = parse_size)]
    pub worker_memory: u64,
    /// Run workers as this user (and its group) when the supervisor runs as root.
    #[arg(long, env = "FLOTA_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// On SIGTERM or SIGINT, how long workers get to finish the requests in hand.
    #[arg(long, env = "FLOTA_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Fetch ids quarantined by an earlier run (they killed their workers) again.
    #[arg(long, env = "FLOTA_RETRY_QUARANTINED")]
    pub retry_quarantined: bool,
    /// How the job is run concurrently: fleet (worker processes, each with a pool of threads:
    /// the default; --workers 1 is one process of threads), or async (no workers: coroutines
    /// on one thread's event loop in the supervisor itself, --concurrency of them, http only;
    /// for comparing the models, see docs/concurrency-models.md).
    #[arg(long, env = "FLOTA_MODEL", value_enum, default_value_t = Model::Fleet)]
    pub model: Model,
    /// Inject faults, comma-separated: crash-on=ID (the worker fetching ID aborts), hang-on=ID
    /// (it stops answering), bad-frame-on=ID (it sends a malformed frame), kill-every=DURATION
    /// (the supervisor SIGKILLs a random worker that often); with --model async, crash-on=ID
    /// aborts the process and panic-on=ID panics the task fetching ID.
    #[arg(long, env = "FLOTA_CHAOS", value_name = "SPEC", value_parser = parse_chaos)]
    pub chaos: Option<Chaos>,
}

/// The default `User-Agent`: the project and its version.
pub const DEFAULT_USER_AGENT: &str = concat!("flota/", env!("CARGO_PKG_VERSION"));

/// Flags of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The store to read.
    #[arg(long)]
    pub store: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Output file (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Only these records: ok (a 2xx), answered (any HTTP answer), failed (no answer,
    /// quarantined included), quarantined.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Only the ids of this range: `A..B` or `A..=B`.
    #[arg(long, value_name = "RANGE", value_parser = parse_ids)]
    pub ids: Option<IdRange>,
    /// Of a keyed store, only the keys listed in this file (one a line, as `--keys` reads it;
    /// `-`: stdin).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// How a body is written in JSON Lines: text (a string; base64 in `body_base64` when it is
    /// not UTF-8), or json (a body that is valid JSON embedded as JSON, as it is, so `jq
    /// '.body.name'` and DuckDB's `read_json` see its fields; any other as text).
    #[arg(long, value_enum, default_value_t = BodyAs::Text)]
    pub body: BodyAs,
    /// Only the answers whose body changed, or that were first answered, at or after TIME: an
    /// RFC 3339 time (`2026-12-06T00:00:00Z`) or an age (`24h`: since a day ago). For loading
    /// what a refresh changed.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub changed_since: Option<u32>,
}

/// `--changed-since`: an RFC 3339 time, or an age before now, in Unix seconds.
fn parse_since(s: &str) -> Result<u32, String> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).map_err(|_| {
                format!("`{s}` is neither an RFC 3339 time (2026-12-06T00:00:00Z) nor an age (24h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    let secs =
        at.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("`{s}` is before 1970"))?.as_secs();
    u32::try_from(secs).map_err(|_| format!("`{s}` is too far ahead"))
}

/// How `export` writes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BodyAs {
    /// A JSON string (or base64).
    Text,
    /// JSON itself, when it is JSON.
    Json,
}

/// Which records `export --only` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Only {
    /// A 2xx answer.
    Ok,
    /// Any HTTP answer.
    Answered,
    /// No HTTP answer: failed or quarantined.
    Failed,
    /// Quarantined: it killed the workers that fetched it.
    Quarantined,
}

fn parse_ids(s: &str) -> Result<IdRange, String> {
    s.parse()
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse()
}

/// How the end-of-run summary is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Lines for a person.
    Text,
    /// One JSON object, for scripts.
    Json,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The store to read.
    #[arg(long)]
    pub store: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also count the answers fetched more than AGE ago (what `--refresh AGE` would fetch again).
    #[arg(long, value_name = "AGE", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

/// Flags of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store to read.
    #[arg(long)]
    pub store: PathBuf,
}

/// Flags of `upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The store to upgrade in place.
    #[arg(long)]
    pub store: PathBuf,
}

/// Flags of `salvage`.
#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// The store to read.
    #[arg(long)]
    pub store: PathBuf,
    /// The new store to write; must not exist.
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
}

/// Flags of `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The new store; must not exist.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// The stores to merge: the shards of one job.
    #[arg(value_name = "IN", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Items to fetch.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u64,
    /// Keep the store here (default: a temporary directory, removed afterwards). A demo rerun
    /// on the same store resumes it.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// mockapi's answer delay, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// How the job is run.
    #[command(flatten)]
    pub tuning: Tuning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_and_verbose_move_the_log_level() {
        use log::LevelFilter as L;
        let out = |quiet, verbose, log_level| Output { config: None, quiet, verbose, log_level };
        assert_eq!(out(false, 0, L::Info).level(), L::Info);
        assert_eq!(out(false, 1, L::Info).level(), L::Debug);
        assert_eq!(out(false, 2, L::Info).level(), L::Trace);
        assert_eq!(out(false, 5, L::Info).level(), L::Trace);
        assert_eq!(out(false, 1, L::Warn).level(), L::Info);
        assert_eq!(out(true, 0, L::Info).level(), L::Warn);
        assert_eq!(out(true, 0, L::Error).level(), L::Error);
    }
}
