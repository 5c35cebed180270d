//! `--model async`: the same job as the fleet's, made by coroutines on one thread's event loop
//! inside the supervisor, for comparing the concurrency models (docs/concurrency-models.md).
//!
//! Only the model differs: the same planner walks the same store, the same writer thread
//! makes results durable, the same retry policy (`worker::policy::RetryPolicy`) spaces the
//! attempts, and the same answers are final (a 2xx, a 4xx other than 408 and 429) or retried.
//! What changes is how requests wait: each id is a tokio task on a current-thread runtime, at
//! most `--concurrency` of them at once, sharing hyper's pooled keep-alive connections; a task
//! that waits for the network costs a few hundred bytes, not a thread's stack.
//!
//! What isolation is lost is the point of the crash experiment: `--chaos crash-on=ID` aborts
//! the whole process (every request in flight and every result not yet flushed), and
//! `--chaos panic-on=ID` panics one task, which the runtime catches: that id is stored as
//! failed and the rest go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use shared::{ItemResult, JobSpec, Outcome};
use worker::policy::{retryable_status, RetryPolicy};

use super::plan::PlanMsg;
use super::store_side::{self, StoreSide};
use crate::engine::{Error, Figures};
use crate::job::RunConfig;
use crate::store::{Store, WriteAck, WriteCmd};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Results are handed to the writer in batches of this many.
const BATCH: usize = 256;

/// Runs the job on an event loop. Returns the run's figures, or the error that stopped it (a
/// write that failed, a helper's panic) after storing every result already handed over.
pub fn run(cfg: &RunConfig, store: &Store) -> Result<Figures, Error> {
    let started = Instant::now();
    let side = store_side::start(cfg, store, 4)?;
    let concurrency = cfg.pace.concurrency.unwrap_or(cfg.workers * cfg.job.threads) as usize;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Thread)?;
    let mut report = Figures::default();
    let looped = runtime.block_on(event_loop(cfg, concurrency, &side, &mut report));
    let _ = side.writes.send(WriteCmd::Finish);
    let mut failure = looped.err();
    loop {
        match side.acks.recv() {
            Ok(WriteAck::Durable(d)) => {
                report.tally.add(&d.tally);
                report.new_records += d.new_records;
            }
            Ok(WriteAck::Finished) => break,
            Ok(WriteAck::Failed(e)) => {
                failure.get_or_insert(Error::Store(e));
                break;
            }
            // Ended without a word: it panicked.
            Err(_) => {
                failure.get_or_insert_with(|| side.writer_gone());
                break;
            }
        }
    }
    let limit = concurrency as u32;
    (report.pace.concurrency, report.pace.concurrency_range) = (limit, (limit, limit));
    report.wall = started.elapsed();
    match failure {
        Some(e) => Err(store_side::as_run_error(e, &cfg.store, report.fetched())),
        None => Ok(report),
    }
}

/// Takes planned chunks, runs a task per id with at most `concurrency` at once, and hands
/// results to the writer in batches.
async fn event_loop(
    cfg: &RunConfig,
    concurrency: usize,
    side: &StoreSide,
    report: &mut Figures,
) -> Result<(), Error> {
    let writes = Writes { side };
    let plans = side.plans.clone();
    let job = Arc::new(Job::of(&cfg.job, cfg.panic_on.clone(), concurrency));
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids_of: HashMap<tokio::task::Id, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut requests = 0u64;
    // The planner blocks on its channel; a thread forwards its chunks into the loop.
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<PlanMsg>(4);
    std::thread::Builder::new()
        .name("plan-bridge".into())
        .spawn(move || {
            for msg in plans.iter() {
                if chunks_tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        })
        .map_err(Error::Thread)?;
    while let Some(msg) = chunks.recv().await {
        let ids = match msg {
            PlanMsg::Chunk { ids, skipped, quarantined } => {
                report.tally.skipped += skipped;
                report.skipped_quarantined += quarantined;
                ids
            }
            PlanMsg::Failed(e) => return Err(Error::Store(e)),
            PlanMsg::End => break,
        };
        for id in ids {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let job = job.clone();
            let handle = tasks.spawn(async move {
                let result = job.fetch(id).await;
                drop(permit);
                result
            });
            ids_of.insert(handle.id(), id);
            while let Some(done) = tasks.try_join_next_with_id() {
                if settle(done, &mut ids_of, &mut batch, &mut requests) {
                    return unauthorized(cfg, &writes, batch);
                }
            }
            if batch.len() >= BATCH {
                report.pace.requests = requests;
                if writes.put(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_err() {
                    // The writer has ended: its acks say why. Nothing more could be stored.
                    return Ok(());
                }
            }
        }
        if let Ok(panic) = side.panics.try_recv() {
            return Err(panic);
        }
    }
    while let Some(done) = tasks.join_next_with_id().await {
        if settle(done, &mut ids_of, &mut batch, &mut requests) {
            return unauthorized(cfg, &writes, batch);
        }
    }
    report.pace.requests = requests;
    let _ = writes.put(batch);
    Ok(())
}

/// The way to the writer, within the run's budget.
struct Writes<'s> {
    side: &'s StoreSide,
}

impl Writes<'_> {
    /// Hands results to the writer, first waiting (the whole loop: that is the backpressure)
    /// while the results not yet durable hold the budget. Refused once the writer has ended (a
    /// write failed, or it panicked): its acks say which.
    fn put(&self, batch: Vec<ItemResult>) -> Result<(), WriterGone> {
        self.side.held.take(ItemResult::held_by(&batch));
        self.side.writes.send(WriteCmd::Put(batch)).map_err(|_| WriterGone)
    }
}

/// The store writer has ended.
struct WriterGone;

/// A 401: never an item's answer. The model sends the job's own headers only, which nothing
/// can renew, so the run stops (what was answered before is stored).
fn unauthorized(cfg: &RunConfig, writes: &Writes<'_>, batch: Vec<ItemResult>) -> Result<(), Error> {
    let _ = writes.put(batch);
    let why = "the job's headers carry no credential it takes (none, expired or revoked)".to_owned();
    Err(Error::Unauthorized { api: cfg.pace.api.clone(), why })
}

/// A finished task's result, or for a task that panicked, its id stored as failed. Returns
/// whether it was a 401 (then it is not kept).
fn settle(
    done: Result<(tokio::task::Id, ItemResult), tokio::task::JoinError>,
    ids_of: &mut HashMap<tokio::task::Id, u64>,
    batch: &mut Vec<ItemResult>,
    requests: &mut u64,
) -> bool {
    let (task, result) = match done {
        Ok((task, result)) => (task, result),
        Err(e) => {
            let id = ids_of.get(&e.id()).copied().unwrap_or(u64::MAX);
            log::error!("the task fetching id {id} panicked; the event loop goes on");
            (
                e.id(),
                ItemResult {
                    id,
                    attempts: 1,
                    outcome: Outcome::Failed { error: "its task panicked".into() },
                },
            )
        }
    };
    ids_of.remove(&task);
    *requests += u64::from(result.attempts);
    if matches!(result.outcome, Outcome::Response { status: 401, .. }) {
        return true;
    }
    batch.push(result);
    false
}

/// What every task needs: the client, the URL parts, the policy.
struct Job {
    client: HttpClient,
    url: Vec<String>,
    headers: Vec<(String, String)>,
    user_agent: String,
    max_body: usize,
    io_timeout: Duration,
    policy: RetryPolicy,
    crash_on: Vec<u64>,
    panic_on: Vec<u64>,
}

impl Job {
    fn of(spec: &JobSpec, panic_on: Vec<u64>, concurrency: usize) -> Job {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(spec.connect_timeout_ms)));
        Job {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(concurrency)
                .build(connector),
            url: spec.url_template.split("{id}").map(str::to_owned).collect(),
            headers: spec.headers.clone(),
            user_agent: spec.user_agent.clone(),
            max_body: usize::try_from(spec.max_body).unwrap_or(usize::MAX),
            io_timeout: Duration::from_millis(spec.io_timeout_ms),
            policy: RetryPolicy::of(spec),
            crash_on: spec.chaos.crash_on.clone(),
            panic_on,
        }
    }

    /// Fetches `id` until it has a final answer or runs out of attempts.
    async fn fetch(&self, id: u64) -> ItemResult {
        if self.crash_on.contains(&id) {
            log::error!("chaos: the event loop's process aborts on id {id}");
            std::process::abort();
        }
        assert!(!self.panic_on.contains(&id), "chaos: the task fetching id {id} panics");
        let url = self.url.join(&id.to_string());
        let mut waits = self.policy.backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(&url).await {
                Ok(Some(outcome)) => return ItemResult { id, attempts, outcome },
                Ok(None) => "retryable status".to_owned(),
                Err(e) => e,
            };
            match waits.next() {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    let error = format!("gave up after {attempts} attempts: {error}");
                    return ItemResult { id, attempts, outcome: Outcome::Failed { error } };
                }
            }
        }
    }

    /// One request: a final outcome, `None` for a status worth retrying, or the error.
    async fn attempt(&self, url: &str) -> Result<Option<Outcome>, String> {
        let mut req = hyper::Request::get(url).header(hyper::header::USER_AGENT, &self.user_agent);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), self.max_body).collect().await;
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.io_timeout, exchange)
            .await
            .map_err(|_| format!("timeout after {:?}", self.io_timeout))??;
        if retryable_status(status) {
            return Ok(None);
        }
        match body {
            Ok(body) => Ok(Some(Outcome::Response {
                status,
                body: body.to_bytes().to_vec(),
                validators: shared::Validators::default(),
            })),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Some(Outcome::Failed {
                error: format!("body exceeds the limit of {} bytes", self.max_body),
            })),
            Err(e) => Err(e.to_string()),
        }
    }
}
