//! A fault proxy: the network between a client and a server, made hostile with the toxics of
//! Toxiproxy (Shopify's, the standard tool for this), for tests and benchmarks of a client's
//! defences. `supervisor fault-proxy --upstream 127.0.0.1:8080 --toxic timeout:toxicity=0.02`.
//!
//! Each toxic acts on a share of connections (`toxicity`, 0 to 1, drawn per connection from
//! `--seed`) and on one direction (`stream`: `downstream`, the server's answers, by default, or
//! `upstream`, the client's requests). Toxiproxy's types and attributes:
//! - `latency`: `latency` ms, ± up to `jitter` ms, before each chunk of data.
//! - `bandwidth`: at most `rate` KB/s. Per connection, as Toxiproxy's; with `shared=1`, one
//!   link for every connection that meets it (a slow uplink all of them queue on).
//! - `slow_close`: the server's close is passed on `delay` ms late.
//! - `timeout`: data stops (it is read and dropped); the connection is closed `timeout` ms
//!   later, or held open until the client closes it if 0.
//! - `reset_peer`: the client's connection is reset (TCP RST) `timeout` ms after it opened.
//! - `slicer`: data in pieces of `average_size` ± `size_variation` bytes, `delay` µs apart.
//! - `limit_data`: the connection is closed once `bytes` bytes have passed.
//!
//! One attribute of ours, for every toxic: `after`, the bytes of the stream that pass untouched
//! before it acts. `reset_peer:after=600` resets a connection in the middle of its first answer
//! of 1 KiB, `timeout:after=0` stalls it once the request is sent, `slicer:after=200` slices a
//! body but not its head.
//!
//! The first line on stdout is the address it listens on; then a line for each connection
//! (`conn 6`), with the toxics it met (`conn 7: timeout, slicer`), for a test to count what it
//! did.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, sleep_until, Instant};

/// Command-line flags of `supervisor fault-proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address to listen on; port 0 picks a free one. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The server's address, where every connection is forwarded.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// A toxic, `TYPE[:ATTR=VALUE,...]`: `latency:latency=50,jitter=40`,
    /// `timeout:timeout=0,toxicity=0.02`, `reset_peer:after=600,toxicity=0.02`,
    /// `slicer:average_size=1,delay=2000`, `bandwidth:rate=256,shared=1`, `limit_data:bytes=600`,
    /// `slow_close:delay=100`. Repeatable; they act in the order given.
    #[arg(long = "toxic", value_name = "TOXIC", value_parser = Toxic::parse)]
    pub toxics: Vec<Toxic>,
    /// Seed of which connections meet a toxic, and of the jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Which way a toxic's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The client's requests, to the server.
    Upstream,
    /// The server's answers, to the client.
    Downstream,
}

/// What a toxic does (Toxiproxy's types; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A delay before each chunk.
    Latency {
        /// The mean delay.
        latency: Duration,
        /// Up to this much more or less, uniformly.
        jitter: Duration,
    },
    /// A rate in bytes a second.
    Bandwidth {
        /// Bytes a second.
        rate: u64,
        /// One link for every connection that meets it.
        shared: bool,
    },
    /// The close passed on late.
    SlowClose {
        /// How late.
        delay: Duration,
    },
    /// Data stops; the connection closes this long after (never if zero).
    Timeout {
        /// When the connection is closed, after the data stopped.
        timeout: Duration,
    },
    /// A TCP reset this long after the connection opened (or at `after` bytes).
    ResetPeer {
        /// After the connection opened.
        timeout: Duration,
    },
    /// Data in small pieces.
    Slicer {
        /// The pieces' mean size, in bytes.
        average: usize,
        /// Up to this many bytes more or fewer.
        variation: usize,
        /// The pause between pieces.
        delay: Duration,
    },
    /// The connection closes once this many bytes have passed.
    LimitData {
        /// Bytes.
        bytes: u64,
    },
}

/// A toxic: what it does, to which direction, on which share of connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    /// What it does.
    pub kind: Kind,
    /// To which direction.
    pub stream: Stream,
    /// The share of connections it acts on.
    pub toxicity: f64,
    /// Bytes of the stream that pass untouched before it acts.
    pub after: u64,
}

impl Toxic {
    /// Parses `TYPE[:ATTR=VALUE,...]`, Toxiproxy's type names and attributes (times in ms, the
    /// slicer's delay in µs, bandwidth in KB/s).
    pub fn parse(s: &str) -> Result<Toxic, String> {
        let (name, attrs) = s.split_once(':').unwrap_or((s, ""));
        let mut kind = match name {
            "latency" => Kind::Latency { latency: Duration::ZERO, jitter: Duration::ZERO },
            "bandwidth" => Kind::Bandwidth { rate: 0, shared: false },
            "slow_close" => Kind::SlowClose { delay: Duration::ZERO },
            "timeout" => Kind::Timeout { timeout: Duration::ZERO },
            "reset_peer" => Kind::ResetPeer { timeout: Duration::ZERO },
            "slicer" => Kind::Slicer { average: 1, variation: 0, delay: Duration::ZERO },
            "limit_data" => Kind::LimitData { bytes: 0 },
            _ => {
                return Err(format!(
                    "`{name}` is not a toxic (latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data)"
                ))
            }
        };
        let mut toxic = Toxic { kind, stream: Stream::Downstream, toxicity: 1.0, after: 0 };
        for attr in attrs.split(',').filter(|a| !a.is_empty()) {
            let (key, value) = attr.split_once('=').ok_or_else(|| format!("`{attr}` is not ATTR=VALUE"))?;
            let number =
                || value.parse::<u64>().map_err(|_| format!("{key}: `{value}` is not a whole number"));
            let ms = || number().map(Duration::from_millis);
            match (key, &mut kind) {
                ("toxicity", _) => {
                    toxic.toxicity = value
                        .parse::<f64>()
                        .ok()
                        .filter(|t| (0.0..=1.0).contains(t))
                        .ok_or_else(|| format!("toxicity: `{value}` is not between 0 and 1"))?;
                }
                ("stream", _) => {
                    toxic.stream = match value {
                        "upstream" => Stream::Upstream,
                        "downstream" => Stream::Downstream,
                        _ => return Err(format!("stream: `{value}` is not upstream or downstream")),
                    }
                }
                ("after", _) => toxic.after = number()?,
                ("latency", Kind::Latency { latency, .. }) => *latency = ms()?,
                ("jitter", Kind::Latency { jitter, .. }) => *jitter = ms()?,
                ("rate", Kind::Bandwidth { rate, .. }) => *rate = number()? * 1000,
                ("shared", Kind::Bandwidth { shared, .. }) => *shared = matches!(value, "1" | "true"),
                ("delay", Kind::SlowClose { delay }) => *delay = ms()?,
                ("timeout", Kind::Timeout { timeout } | Kind::ResetPeer { timeout }) => *timeout = ms()?,
                ("average_size", Kind::Slicer { average, .. }) => *average = number()?.max(1) as usize,
                ("size_variation", Kind::Slicer { variation, .. }) => *variation = number()? as usize,
                ("delay", Kind::Slicer { delay, .. }) => *delay = Duration::from_micros(number()?),
                ("bytes", Kind::LimitData { bytes }) => *bytes = number()?,
                _ => return Err(format!("`{key}` is not an attribute of {name}")),
            }
        }
        if matches!(kind, Kind::Bandwidth { rate: 0, .. }) {
            return Err("bandwidth needs a rate (KB/s)".into());
        }
        toxic.kind = kind;
        Ok(toxic)
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Latency { .. } => "latency",
            Kind::Bandwidth { .. } => "bandwidth",
            Kind::SlowClose { .. } => "slow_close",
            Kind::Timeout { .. } => "timeout",
            Kind::ResetPeer { .. } => "reset_peer",
            Kind::Slicer { .. } => "slicer",
            Kind::LimitData { .. } => "limit_data",
        }
    }
}

impl fmt::Display for Toxic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A link of a given rate, in bytes a second: the time it is busy until, as a queue.
#[derive(Debug)]
struct Link {
    rate: u64,
    free_at: Mutex<Option<Instant>>,
}

impl Link {
    fn new(rate: u64) -> Link {
        Link { rate, free_at: Mutex::new(None) }
    }

    /// When `bytes` sent now have gone through, behind what is queued before them.
    fn send(&self, bytes: usize) -> Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        let start = free_at.map_or_else(Instant::now, |at| at.max(Instant::now()));
        let done = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        *free_at = Some(done);
        done
    }
}

/// A toxic a connection met, with the link of a bandwidth toxic.
#[derive(Debug)]
struct Active {
    toxic: Toxic,
    link: Option<Arc<Link>>,
}

/// How a direction's stream goes on after a chunk.
enum Flow {
    Go,
    Close,
    Reset,
    Stall(Duration),
}

/// One direction of a connection: its toxics, and how many bytes passed.
struct Direction {
    toxics: Vec<Active>,
    passed: u64,
    stalled: bool,
    /// For the jitter and the slicer's variation.
    seed: u64,
    draws: u64,
}

impl Direction {
    fn draw(&mut self, below: u64) -> u64 {
        self.draws += 1;
        if below == 0 {
            0
        } else {
            crate::mix(self.seed, self.draws) % below
        }
    }

    /// Passes `data` on to `to`, through the toxics.
    async fn forward(&mut self, data: &[u8], to: &mut TcpStream) -> Flow {
        if self.stalled {
            return Flow::Go; // dropped
        }
        // The first toxic that ends the stream within this chunk, at the byte where it does.
        let end = self
            .toxics
            .iter()
            .filter_map(|a| match a.toxic.kind {
                Kind::LimitData { bytes } => Some((bytes.max(a.toxic.after), Flow::Close)),
                Kind::ResetPeer { .. } if a.toxic.after > 0 => Some((a.toxic.after, Flow::Reset)),
                Kind::Timeout { timeout } => Some((a.toxic.after, Flow::Stall(timeout))),
                _ => None,
            })
            .filter(|(at, _)| *at < self.passed + data.len() as u64)
            .min_by_key(|(at, _)| *at);
        let Some((at, flow)) = end else {
            return match self.write(data, to).await {
                Ok(()) => Flow::Go,
                Err(_) => Flow::Close,
            };
        };
        let keep = at.saturating_sub(self.passed) as usize;
        if self.write(&data[..keep], to).await.is_err() {
            return Flow::Close;
        }
        if matches!(flow, Flow::Stall(_)) {
            self.stalled = true;
        }
        flow
    }

    /// Writes `data` to `to` through the latency, bandwidth and slicer toxics.
    async fn write(&mut self, data: &[u8], to: &mut TcpStream) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut delay = Duration::ZERO;
        let mut slicer = None;
        let mut links = Vec::new();
        for i in 0..self.toxics.len() {
            let (kind, after) = (self.toxics[i].toxic.kind, self.toxics[i].toxic.after);
            if self.passed + (data.len() as u64) <= after {
                continue; // not yet
            }
            match kind {
                Kind::Latency { latency, jitter } => {
                    let j = jitter.as_micros() as u64;
                    let off = self.draw(2 * j + 1);
                    delay += (latency + Duration::from_micros(off)).saturating_sub(jitter);
                }
                Kind::Slicer { average, variation, delay } => {
                    slicer = Some((average, variation, delay, after.saturating_sub(self.passed) as usize))
                }
                Kind::Bandwidth { .. } => links.extend(self.toxics[i].link.clone()),
                _ => {}
            }
        }
        if !delay.is_zero() {
            sleep(delay).await;
        }
        let mut rest = data;
        let mut first = true;
        while !rest.is_empty() {
            let n = match slicer {
                None => rest.len(),
                Some((_, _, _, whole)) if whole > 0 && first => whole.min(rest.len()),
                Some((average, variation, pause, _)) => {
                    if !first {
                        sleep(pause).await;
                    }
                    let v = variation.min(average - 1);
                    (average - v + self.draw(2 * v as u64 + 1) as usize).clamp(1, rest.len())
                }
            };
            first = false;
            let (piece, next) = rest.split_at(n);
            for link in &links {
                sleep_until(link.send(piece.len())).await;
            }
            to.write_all(piece).await?;
            rest = next;
        }
        self.passed += data.len() as u64;
        Ok(())
    }
}

/// One client's connection, forwarded to `upstream` through the toxics it met.
async fn connection(mut client: TcpStream, upstream: SocketAddr, met: Vec<Active>, seed: u64) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let opened = Instant::now();
    let reset_at = met
        .iter()
        .filter_map(|a| match a.toxic.kind {
            Kind::ResetPeer { timeout } if a.toxic.after == 0 => Some(opened + timeout),
            _ => None,
        })
        .min();
    let slow_close = met
        .iter()
        .filter_map(|a| match a.toxic.kind {
            Kind::SlowClose { delay } if a.toxic.stream == Stream::Downstream => Some(delay),
            _ => None,
        })
        .max();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for a in met {
        match a.toxic.stream {
            Stream::Upstream => up.push(a),
            Stream::Downstream => down.push(a),
        }
    }
    let direction =
        |toxics, k| Direction { toxics, passed: 0, stalled: false, seed: crate::mix(seed, k), draws: 0 };
    let (mut up, mut down) = (direction(up, 1), direction(down, 2));
    let mut close_at: Option<Instant> = None;
    let (mut ubuf, mut dbuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let flow = loop {
        let flow = tokio::select! {
            r = client.read(&mut ubuf) => match r {
                Ok(0) | Err(_) => Flow::Close,
                Ok(n) => up.forward(&ubuf[..n], &mut server).await,
            },
            r = server.read(&mut dbuf) => match r {
                Ok(0) | Err(_) => {
                    if let Some(delay) = slow_close {
                        sleep(delay).await;
                    }
                    Flow::Close
                }
                Ok(n) => down.forward(&dbuf[..n], &mut client).await,
            },
            _ = sleep_until(reset_at.unwrap_or(opened)), if reset_at.is_some() => Flow::Reset,
            _ = sleep_until(close_at.unwrap_or(opened)), if close_at.is_some() => Flow::Close,
        };
        match flow {
            Flow::Go => {}
            Flow::Stall(after) => {
                if !after.is_zero() {
                    close_at =
                        Some(close_at.map_or(Instant::now() + after, |c| c.min(Instant::now() + after)));
                }
            }
            end => break end,
        }
    };
    if matches!(flow, Flow::Reset) {
        let _ = client.set_zero_linger();
    }
}

/// Runs the proxy until the process is killed. Returns the process exit code.
pub fn run_proxy(args: ProxyArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fault-proxy: cannot start its runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fault-proxy: cannot listen on {}: {e}", args.listen);
                return 2;
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("{addr}"),
            Err(e) => {
                eprintln!("fault-proxy: {e}");
                return 2;
            }
        }
        let _ = std::io::stdout().flush();
        let shared: Vec<Option<Arc<Link>>> = args
            .toxics
            .iter()
            .map(|t| match t.kind {
                Kind::Bandwidth { rate, shared: true } => Some(Arc::new(Link::new(rate))),
                _ => None,
            })
            .collect();
        let mut conns = 0u64;
        loop {
            let client = match listener.accept().await {
                Ok((c, _)) => c,
                Err(_) => {
                    sleep(Duration::from_millis(10)).await; // out of descriptors: later
                    continue;
                }
            };
            conns += 1;
            let mut met = Vec::new();
            for (i, t) in args.toxics.iter().enumerate() {
                let draw = crate::mix(args.seed ^ conns, i as u64) as f64 / u64::MAX as f64;
                if draw < t.toxicity {
                    let link = match t.kind {
                        Kind::Bandwidth { rate, shared: false } => Some(Arc::new(Link::new(rate))),
                        _ => shared[i].clone(),
                    };
                    met.push(Active { toxic: t.clone(), link });
                }
            }
            let names: Vec<String> = met.iter().map(|a| a.toxic.to_string()).collect();
            if names.is_empty() {
                println!("conn {conns}");
            } else {
                println!("conn {conns}: {}", names.join(", "));
            }
            let _ = std::io::stdout().flush();
            tokio::spawn(connection(client, args.upstream, met, args.seed ^ conns));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxics_parse_with_toxiproxys_names_and_attributes() {
        let t = Toxic::parse("latency:latency=50,jitter=40").expect("parses");
        assert_eq!(
            t.kind,
            Kind::Latency { latency: Duration::from_millis(50), jitter: Duration::from_millis(40) }
        );
        assert_eq!((t.stream, t.toxicity, t.after), (Stream::Downstream, 1.0, 0));
        let t = Toxic::parse("reset_peer:after=600,toxicity=0.02,stream=upstream").expect("parses");
        assert_eq!(
            (t.kind, t.stream, t.toxicity, t.after),
            (Kind::ResetPeer { timeout: Duration::ZERO }, Stream::Upstream, 0.02, 600)
        );
        assert_eq!(
            Toxic::parse("bandwidth:rate=256,shared=1").map(|t| t.kind),
            Ok(Kind::Bandwidth { rate: 256_000, shared: true })
        );
        assert_eq!(
            Toxic::parse("slicer:average_size=1,delay=2000").map(|t| t.kind),
            Ok(Kind::Slicer { average: 1, variation: 0, delay: Duration::from_micros(2000) })
        );
        for (bad, says) in [
            ("jitter", "not a toxic"),
            ("latency:jitter", "not ATTR=VALUE"),
            ("latency:bytes=3", "not an attribute of latency"),
            ("timeout:toxicity=2", "not between 0 and 1"),
            ("limit_data:bytes=-1", "not a whole number"),
            ("bandwidth", "needs a rate"),
        ] {
            let err = Toxic::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_shared_link_queues_what_is_sent_behind_what_was_sent_before() {
        let link = Link::new(1000);
        let now = Instant::now();
        let first = link.send(500);
        let second = link.send(500);
        assert!(first >= now + Duration::from_millis(500) && first < now + Duration::from_millis(600));
        assert!(second >= first + Duration::from_millis(500), "behind the first");
    }
}
