//! mockapi: the HTTP API that flota's demo, tests and benchmarks fetch from.
//!
//! `GET /items/{id}` answers 200 with a small JSON body naming the id ([`body_for`]), so a test
//! can check that every stored body is its own. Faults are injected on request: latency, 5xx
//! errors, a per-second rate limit answered with 429 and `Retry-After`, and connections dropped
//! without an answer. Whether a request meets a fault is a pure function of the seed, the id and
//! how many times that id was asked for before, so a run is reproducible whatever order the
//! requests arrive in. `GET /stats` reports what was served, for tests that count requests;
//! with `--record`, `GET /log` lists every item request with its arrival time and answer.
//!
//! Hostile routes, for tests of a client's defences: `/huge/{id}` (a 64 MiB body),
//! `/trickle/{id}` (1000 bytes, one every 200ms), `/loop/{id}` (redirects to itself),
//! `/nolocation/{id}` (a 300 with a body and no `Location`),
//! `/binary/{id}` (a body that is not UTF-8). `/items/...` counts in `/stats`; these do not.
//!
//! Key echo, for keyed jobs: `/keys/{key}` and `/search?q={key}` answer `{"key": …}` with the key
//! decoded as servers decode a path segment and a form-encoded query parameter (counted in
//! `/stats` as requests). `/echo` answers any request with its method, content type, `X-Item`
//! header and body, as JSON.
//!
//! Credentials ([`auth`]): with `--token-lifetime`, `--static-token` or `--refresh-token`, the
//! item and key routes answer 401 without a valid bearer token; `POST /oauth/token` issues
//! tokens that expire (client credentials, or a rotating refresh token), `--revoke-after N`
//! revokes every token after the N-th item request. `/stats` counts tokens issued and 401s.
//!
//! `--compress` encodes item bodies as real servers do (br or gzip, when `Accept-Encoding` offers it);
//! `--tls-cert`/`--tls-key` serve HTTPS (rustls).
//!
//! [`proxy`] is a fault proxy to put between a client and it: Toxiproxy's toxics (latency,
//! stalls, resets, cut and sliced answers, a slow link) on a share of connections.
//!
//! Built on hyper 1, tokio and tokio-rustls: no HTTP or TLS of our own.
#![deny(unsafe_code)]

pub mod auth;
pub mod proxy;
mod server;

use std::net::SocketAddr;

pub use server::{tls_config, Announce, Coding, Faults, Logged, Server, Stats};

/// Command-line flags of `mockapi` (also `supervisor mockapi`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Delay before each answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of item requests answered 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Item requests served per second (a fixed window); beyond it, 429 with `Retry-After: 1`.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Announce the rate limit in `RateLimit-Policy` and `RateLimit` headers.
    #[arg(long, requires = "rate_limit")]
    pub announce_limit: bool,
    /// How --announce-limit writes it: `draft` (the IETF draft's `RateLimit-Policy` and
    /// `RateLimit`), or `slowapi` (`X-RateLimit-Limit`, `-Remaining`, and `-Reset` as a
    /// fractional Unix time, as the `limits` library behind slowapi and Flask-Limiter does).
    #[arg(long, value_enum, default_value_t = Announce::Draft, requires = "announce_limit")]
    pub announce_as: Announce,
    /// Ids that are multiples of N answer 404.
    #[arg(long, value_name = "N")]
    pub missing_every: Option<u64>,
    /// Answer every N-th item request (by arrival) 503 with `Retry-After: 1`.
    #[arg(long, value_name = "N")]
    pub unavailable_every: Option<u64>,
    /// Fraction of item requests answered 429 with `Retry-After: 1`, at random: a gateway
    /// shedding a little load (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub throttle_rate: f64,
    /// Fraction of item requests answered 503 without `Retry-After`, at random (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub unavailable_rate: f64,
    /// After the N-th item request, answer every item request 503 (no `Retry-After`) for
    /// --outage-secs: the API is down.
    #[arg(long, value_name = "N", requires = "outage_secs")]
    pub outage_after: Option<u64>,
    /// How long the outage of --outage-after lasts, in seconds.
    #[arg(long, value_name = "SECS", requires = "outage_after")]
    pub outage_secs: Option<f64>,
    /// A quota of N item requests per --quota-window, announced in `X-RateLimit-Limit`,
    /// `-Remaining` and `-Reset` (seconds to the window's end); beyond it, 429 with a
    /// `Retry-After` to the window's end.
    #[arg(long, value_name = "N")]
    pub quota: Option<u32>,
    /// The quota's fixed window, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1, requires = "quota")]
    pub quota_window: u64,
    /// Log every item request (arrival time, id, status), served as `GET /log`.
    #[arg(long)]
    pub record: bool,
    /// Size of each item's body in bytes: a realistic JSON record of at least this size
    /// (default: a small body of about 70 bytes).
    #[arg(long)]
    pub body_bytes: Option<usize>,
    /// Fraction of item requests whose connection is closed without an answer (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_rate: f64,
    /// Compress item bodies with this coding when a request's `Accept-Encoding` offers it.
    #[arg(long, value_name = "CODING")]
    pub compress: Option<Coding>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Seed of the fault decisions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Item routes need a bearer token, and `POST /oauth/token` issues ones that last this
    /// many seconds (the client-credentials grant, or the refresh-token grant).
    #[arg(long, value_name = "SECS")]
    pub token_lifetime: Option<f64>,
    /// The OAuth 2.0 client the token endpoint knows.
    #[arg(long, default_value = "flota")]
    pub client_id: String,
    /// Its secret.
    #[arg(long, default_value = "s3cret")]
    pub client_secret: String,
    /// A bearer token item routes take, that never expires (until --revoke-after).
    #[arg(long, value_name = "TOKEN")]
    pub static_token: Option<String>,
    /// A refresh token the token endpoint takes once (it answers with the next one).
    #[arg(long, value_name = "TOKEN", requires = "token_lifetime")]
    pub refresh_token: Option<String>,
    /// After the N-th item request, every token issued so far and the static token are revoked.
    #[arg(long, value_name = "N")]
    pub revoke_after: Option<u64>,
    /// Runtime threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The standalone `mockapi` command.
#[derive(Debug, clap::Parser)]
#[command(name = "mockapi", version, about = "A deterministic, fault-injecting HTTP API for flota")]
pub struct Cli {
    #[command(flatten)]
    /// The server's settings.
    pub args: Args,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is not between 0 and 1"))
    }
}

/// The body served for `id`. Tests compare stored bodies against it.
pub fn body_for(id: u64) -> String {
    format!("{{\"id\":{id},\"name\":\"item-{id}\",\"checksum\":\"{:016x}\"}}", mix(id, 0x5eed))
}

/// Words of the descriptions in [`sized_body`].
const WORDS: [&str; 64] = [
    "acoustic", "amber", "anchor", "arc", "atlas", "aurora", "basalt", "beacon", "birch", "bolt", "breeze",
    "bronze", "canyon", "carbon", "cedar", "cobalt", "comet", "coral", "crest", "delta", "dune", "ember",
    "falcon", "fern", "flint", "forge", "frost", "garnet", "glacier", "granite", "harbor", "hazel", "helix",
    "indigo", "iris", "jade", "juniper", "kelp", "lagoon", "lantern", "lumen", "maple", "meadow", "mesa",
    "nebula", "nickel", "oak", "onyx", "orbit", "pebble", "pine", "prism", "quartz", "raven", "ridge",
    "sable", "sierra", "slate", "summit", "tidal", "timber", "umber", "vertex", "willow",
];

/// A JSON body for `id` of at least `bytes` bytes (`--body-bytes`), shaped like a product
/// record: the fields of [`body_for`], a price, tags, and a description of words drawn from a
/// small vocabulary by a hash of the id, so bodies differ as real records do and compress as
/// real JSON does, not as a repeated pattern would.
pub fn sized_body(id: u64, bytes: usize) -> String {
    let h = |k: u64| mix(id, k);
    let mut body = format!(
        "{{\"id\":{id},\"name\":\"item-{id}\",\"checksum\":\"{:016x}\",\"price\":{}.{:02},\"stock\":{},\"tags\":[\"{}\",\"{}\"],\"description\":\"",
        h(0x5eed),
        h(1) % 1000,
        h(2) % 100,
        h(3) % 5000,
        WORDS[(h(4) % 64) as usize],
        WORDS[(h(5) % 64) as usize],
    );
    let mut k = 6;
    while body.len() + 2 < bytes {
        if !body.ends_with('"') {
            body.push(' ');
        }
        body.push_str(WORDS[(h(k) % 64) as usize]);
        k += 1;
    }
    body.push_str("\"}");
    body
}

/// A 64-bit mixer (splitmix64's finaliser) over two words: the fault decisions' randomness.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs mockapi until the process is killed: binds, prints the bound address on stdout, serves.
/// Returns the process exit code.
pub fn run(args: Args) -> i32 {
    let faults = Faults {
        latency: std::time::Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        rate_limit: args.rate_limit,
        drop_rate: args.drop_rate,
        seed: args.seed,
        body_bytes: args.body_bytes,
        announce_limit: args.announce_limit.then_some(args.announce_as),
        record: args.record,
        unavailable_every: args.unavailable_every,
        missing_every: args.missing_every,
        compress: args.compress,
        throttle_rate: args.throttle_rate,
        unavailable_rate: args.unavailable_rate,
        outage: args.outage_after.zip(args.outage_secs.map(std::time::Duration::from_secs_f64)),
        quota: args.quota.map(|n| (n, args.quota_window.max(1))),
        auth: (args.token_lifetime.is_some() || args.static_token.is_some()).then(|| auth::AuthConfig {
            lifetime: args.token_lifetime.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
            client_id: args.client_id.clone(),
            client_secret: args.client_secret.clone(),
            static_token: args.static_token.clone(),
            refresh_token: args.refresh_token.clone(),
            revoke_after: args.revoke_after,
        }),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match tls_config(cert, key) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("mockapi: {e}");
                return 2;
            }
        },
        _ => None,
    };
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let server = match Server::start_with(args.listen, faults, threads, tls) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mockapi: cannot listen on {}: {e}", args.listen);
            return 2;
        }
    };
    println!("{}", server.addr());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.wait();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_their_id_and_differ() {
        assert!(body_for(42).starts_with("{\"id\":42,"));
        assert_ne!(body_for(1), body_for(2));
        let v: serde_json::Value = serde_json::from_str(&body_for(7)).expect("valid JSON");
        assert_eq!(v["id"], 7);
    }

    #[test]
    fn sized_bodies_are_json_of_at_least_their_size_and_differ() {
        for bytes in [0, 100, 1024, 4096] {
            let body = sized_body(9, bytes);
            assert!(body.len() >= bytes && body.len() < bytes.max(150) + 16, "{bytes}: {} bytes", body.len());
            let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
            assert_eq!(v["id"], 9);
        }
        assert_ne!(sized_body(1, 1024)[40..], sized_body(2, 1024)[40..]);
    }

    #[test]
    fn fractions_are_checked() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
