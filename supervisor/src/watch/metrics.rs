//! Prometheus metrics (`--metrics ADDR`): prometheus-client keeps and encodes them, tiny_http
//! serves them on `/metrics`, from a thread of their own.
//!
//! The dispatcher loop updates them: counters from the events it sees (a worker's traffic
//! report, a store ack, a worker's end) and gauges from the core's snapshot every tick. Reading
//! them never touches the run's state: the metrics are atomics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use shared::{Traffic, LATENCY_BUCKETS};

use crate::engine::Snapshot;
use crate::job::Durable;

type Labels = Vec<(&'static str, String)>;

/// Every metric of a run.
pub struct Metrics {
    items: Family<Labels, Counter>,
    refetched: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    requests: Counter,
    retries: Counter,
    restarts: Counter,
    deaths: Family<Labels, Counter>,
    in_flight: Gauge,
    latency: Arc<Buckets>,
    store_write: Histogram,
    queued: Gauge,
    to_fetch: Gauge,
    workers_up: Gauge,
    concurrency: Gauge,
    rate: Gauge<f64, AtomicU64>,
    paused: Gauge,
    circuit_open: Gauge,
    outages: Counter,
    credentials: Counter,
    held: Gauge,
    /// Each worker slot's last `sending`, summed into `in_flight`.
    sending: Mutex<Vec<u32>>,
    last_restarts: AtomicU64,
    last_outages: AtomicU64,
    last_credentials: AtomicU64,
    registry: Registry,
}

impl Metrics {
    /// Registers every metric, for `workers` slots.
    pub fn new(workers: usize) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("flota");
        let m = Metrics {
            items: Family::default(),
            refetched: Family::default(),
            responses: Family::default(),
            requests: Counter::default(),
            retries: Counter::default(),
            restarts: Counter::default(),
            deaths: Family::default(),
            in_flight: Gauge::default(),
            latency: Arc::new(Buckets::default()),
            store_write: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            queued: Gauge::default(),
            to_fetch: Gauge::default(),
            workers_up: Gauge::default(),
            concurrency: Gauge::default(),
            rate: Gauge::default(),
            paused: Gauge::default(),
            circuit_open: Gauge::default(),
            outages: Counter::default(),
            credentials: Counter::default(),
            held: Gauge::default(),
            sending: Mutex::new(vec![0; workers]),
            last_restarts: AtomicU64::new(0),
            last_outages: AtomicU64::new(0),
            last_credentials: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "items",
            "Ids stored, by outcome: ok (2xx), other_status, failed, quarantined",
            m.items.clone(),
        );
        r.register(
            "refetched",
            "Stored answers fetched again (--refresh, --refetch-status), by result: unchanged (a 304, or the same \
             status and body), changed, kept (the refetch failed: the stored answer stays)",
            m.refetched.clone(),
        );
        r.register(
            "http_responses",
            "HTTP answers by status code, retried ones included",
            m.responses.clone(),
        );
        r.register("http_requests", "HTTP requests sent, retries included", m.requests.clone());
        r.register("retries", "Attempts beyond the first, over the ids stored", m.retries.clone());
        r.register("worker_restarts", "Workers started again after one ended", m.restarts.clone());
        r.register("worker_deaths", "Workers that ended other than cleanly, by cause", m.deaths.clone());
        r.register("in_flight_requests", "Requests being sent now", m.in_flight.clone());
        r.register_with_unit(
            "http_request_duration",
            "How long requests took",
            Unit::Seconds,
            SharedBuckets(m.latency.clone()),
        );
        r.register_with_unit(
            "store_write_duration",
            "How long each flush of the store took",
            Unit::Seconds,
            m.store_write.clone(),
        );
        r.register("queued_ids", "Ids waiting for a worker", m.queued.clone());
        r.register("ids_to_fetch", "Ids this run has to store in all, once counted", m.to_fetch.clone());
        r.register("workers_up", "Workers taking work", m.workers_up.clone());
        r.register("concurrency_limit", "The fleet's limit on requests in flight", m.concurrency.clone());
        r.register("rate_limit_requests_per_second", "The rate in force; 0 for none", m.rate.clone());
        r.register("paused", "1 while a server-asked pause is in force", m.paused.clone());
        r.register(
            "circuit_open",
            "1 while the API is down (nearly every request failing) and only probes go",
            m.circuit_open.clone(),
        );
        r.register("outages", "Times the circuit opened", m.outages.clone());
        r.register(
            "credentials_obtained",
            "Credentials obtained from --auth-command or --oauth2-token-url (401s: http_responses{code=\"401\"})",
            m.credentials.clone(),
        );
        r.register_with_unit(
            "held_results",
            "Results the supervisor holds until they are durable (bounded by its budget)",
            Unit::Bytes,
            m.held.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A worker's traffic report.
    pub fn traffic(&self, slot: usize, t: &Traffic) {
        self.requests.inc_by(u64::from(t.requests));
        for &(code, n) in &t.statuses {
            self.responses.get_or_create(&vec![("code", code.to_string())]).inc_by(u64::from(n));
        }
        self.latency.add(t);
        let mut sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sending.get_mut(slot) {
            *s = t.sending;
        }
        self.in_flight.set(i64::from(sending.iter().sum::<u32>()));
    }

    /// A worker of `slot` ended; `cause` is `None` for a clean exit.
    pub fn worker_gone(&self, slot: usize, cause: Option<&str>) {
        if let Some(cause) = cause {
            self.deaths.get_or_create(&vec![("cause", cause.to_owned())]).inc();
        }
        if let Some(s) = self.sending.lock().unwrap_or_else(|p| p.into_inner()).get_mut(slot) {
            *s = 0;
        }
    }

    /// The store writer made results durable.
    pub fn durable(&self, d: &Durable) {
        let outcome = |name: &str| self.items.get_or_create(&vec![("outcome", name.to_owned())]);
        let t = &d.tally;
        outcome("ok").inc_by(d.success);
        outcome("other_status").inc_by(t.answered - d.success);
        outcome("failed").inc_by(t.failed - t.quarantined);
        outcome("quarantined").inc_by(t.quarantined);
        let refetched = |name: &str| self.refetched.get_or_create(&vec![("result", name.to_owned())]);
        for (name, n) in [("unchanged", t.unchanged), ("changed", t.changed), ("kept", t.kept)] {
            if n > 0 {
                refetched(name).inc_by(n);
            }
        }
        self.retries.inc_by(t.retries);
        if let Some(flush) = d.flush {
            self.store_write.observe(flush.as_secs_f64());
        }
    }

    /// The run's figures at a tick, and the bytes of results held then.
    pub fn snapshot(&self, s: &Snapshot, held: usize) {
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        let before = self.last_restarts.swap(s.tally.restarts, Ordering::Relaxed);
        self.restarts.inc_by(s.tally.restarts.saturating_sub(before));
        self.queued.set(s.queued as i64);
        self.to_fetch.set(s.to_fetch.map_or(0, |n| n as i64));
        self.workers_up.set(i64::from(s.workers_up));
        self.concurrency.set(i64::from(s.pace.concurrency));
        self.rate.set(s.pace.rate.unwrap_or(0.0));
        self.paused.set(i64::from(s.paused_ms.is_some()));
        self.circuit_open.set(i64::from(s.circuit_open));
        let before = self.last_outages.swap(s.pace.outages, Ordering::Relaxed);
        self.outages.inc_by(s.pace.outages.saturating_sub(before));
        let before = self.last_credentials.swap(s.pace.credentials, Ordering::Relaxed);
        self.credentials.inc_by(s.pace.credentials.saturating_sub(before));
    }
}

/// Request durations as the workers counted them, in [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
struct Buckets {
    inner: Mutex<(f64, u64, Vec<u64>)>,
}

impl Buckets {
    fn add(&self, t: &Traffic) {
        if t.latency_buckets.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, count, buckets) = &mut *g;
        if buckets.is_empty() {
            *buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        *sum += t.latency_us as f64 / 1e6;
        *count += u64::from(t.requests);
        for (b, n) in buckets.iter_mut().zip(&t.latency_buckets) {
            *b += u64::from(*n);
        }
    }
}

#[derive(Debug)]
struct SharedBuckets(Arc<Buckets>);

impl TypedMetric for SharedBuckets {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SharedBuckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let g = self.0.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, count, counts) = &*g;
        // Each bucket's own count: the encoder sums them up, and adds +Inf from `count`.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &upper)| (upper, counts.get(i).copied().unwrap_or(0)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Serves `/metrics` on `addr` from a thread of its own until the process ends.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("not an IP address"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for request in server.incoming_requests() {
            let response = if request.url() == "/metrics" {
                let header = "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                    .parse::<tiny_http::Header>()
                    .expect("a valid header");
                tiny_http::Response::from_string(metrics.encode()).with_header(header)
            } else {
                tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
            };
            let _ = request.respond(response);
        }
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Pacing, Tally};

    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_that_exist() {
        let m = Metrics::new(1);
        let mut t = Traffic::default();
        t.count(std::time::Duration::from_millis(3), Some(200));
        m.traffic(0, &t);
        m.durable(&Durable {
            tally: Tally { answered: 1, ..Tally::default() },
            success: 1,
            flush: Some(std::time::Duration::from_millis(2)),
            ..Durable::default()
        });
        m.worker_gone(0, Some("crashed"));
        let text = m.encode();
        let dashboard = include_str!("../../../scripts/grafana/flota-dashboard.json");
        let mut names: Vec<&str> = dashboard
            .match_indices("flota_")
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 12, "{names:?}");
        for name in names {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "the dashboard asks for {name}, which is not in:\n{text}"
            );
        }
    }

    #[test]
    fn the_exposition_names_every_metric_by_prometheus_conventions() {
        let m = Metrics::new(2);
        let mut t = Traffic::default();
        t.count(std::time::Duration::from_millis(3), Some(200));
        t.count(std::time::Duration::from_millis(40), Some(429));
        t.sending = 5;
        m.traffic(1, &t);
        m.durable(&Durable {
            tally: Tally { answered: 3, failed: 1, quarantined: 1, retries: 4, ..Tally::default() },
            success: 2,
            ..Durable::default()
        });
        m.worker_gone(0, Some("crashed"));
        m.snapshot(
            &Snapshot {
                tally: Tally { restarts: 1, ..Tally::default() },
                pace: Pacing { concurrency: 64, rate: Some(20.0), ..Pacing::default() },
                ..Snapshot::default()
            },
            4096,
        );
        let text = m.encode();
        for line in [
            "flota_items_total{outcome=\"ok\"} 2",
            "flota_items_total{outcome=\"other_status\"} 1",
            "flota_items_total{outcome=\"quarantined\"} 1",
            "flota_http_responses_total{code=\"429\"} 1",
            "flota_http_requests_total 2",
            "flota_retries_total 4",
            "flota_worker_restarts_total 1",
            "flota_worker_deaths_total{cause=\"crashed\"} 1",
            "flota_in_flight_requests 5",
            "flota_http_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "flota_http_request_duration_seconds_bucket{le=\"0.05\"} 2",
            "flota_http_request_duration_seconds_count 2",
            "flota_concurrency_limit 64",
            "flota_rate_limit_requests_per_second 20.0",
            "flota_held_results_bytes 4096",
            "# TYPE flota_store_write_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }
}
