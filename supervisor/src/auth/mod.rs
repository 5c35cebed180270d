//! The run's credential, when it comes from a source (`--auth-command`, `--oauth2-*`): one
//! keeper thread obtains it, renews it ahead of expiry, and hands each new one to the
//! dispatcher, which pushes it to every worker over its pipe. Nothing secret leaves this room but
//! in a [`shared::Credential`] bound for a pipe.
//!
//! The keeper's rules:
//! - **Ahead of expiry**: a credential is renewed once [`RENEW_AT`] of its lifetime has passed
//!   (a 5-second token at 4 s, an hour's at 48 min), once for the whole fleet.
//! - **On a 401**: a worker says which credential was refused ([`Keeper::refused`]); if it is
//!   still the newest, the keeper obtains another at once (one request, however many 401s). If
//!   the API refuses a credential obtained for a refusal before taking it even once, none will
//!   do: the run stops.
//! - **Failures**: the first credential of a run, or a refusal by the source (the endpoint's
//!   `invalid_client`, a helper's output that is no credential), stops the run at once, as no
//!   request could succeed. Later failures (an endpoint down, a helper failing) are retried with
//!   backoff; while no usable credential is in hand the fleet waits (the workers hold their
//!   requests) and the progress line says why; after [`PATIENCE`] of failures the run stops.

mod source;

use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use shared::{Credential, Secret};

pub use source::OBTAIN_TIMEOUT;
use source::{obtain, Failure};

use crate::job::CredentialSource;

/// The share of a credential's lifetime after which it is renewed.
pub const RENEW_AT: f64 = 0.8;

/// How long renewals may keep failing before the run stops.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// The first wait before a failed renewal is tried again; each further one twice as long, up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the keeper tells the dispatcher.
#[derive(Debug)]
pub enum News {
    /// A credential newer than any before, and when it runs out.
    Fresh(Credential, Option<Instant>),
    /// No usable credential is in hand and none could be had yet: the fleet waits. Why, in a
    /// line (never a secret).
    Waiting(String),
    /// None can be had: the run stops. Why, in a line.
    Fatal(String),
}

/// The keeper thread's handle.
pub struct Keeper {
    /// What it says.
    pub news: Receiver<News>,
    refusals: Sender<(u64, bool)>,
}

impl Keeper {
    /// Starts the keeper of `source`, which makes its token requests with `agent`. Its first
    /// news is the first credential, or why there is none.
    pub fn start(source: CredentialSource, agent: ureq::Agent) -> std::io::Result<Keeper> {
        let (news_tx, news) = unbounded();
        let (refusals, refusals_rx) = bounded(1024);
        std::thread::Builder::new().name("credentials".into()).spawn(move || {
            let obtain = move || obtain(&source, &agent);
            keep(&obtain, &refusals_rx, &news_tx);
        })?;
        Ok(Keeper { news, refusals })
    }

    /// A worker met a 401 with credential `generation`; `proven`: it had another answer with
    /// it first.
    pub fn refused(&self, generation: u64, proven: bool) {
        let _ = self.refusals.try_send((generation, proven));
    }
}

/// The credential in hand, as the keeper sees it.
struct InHand {
    generation: u64,
    /// When to renew it.
    renew_at: Option<Instant>,
    expires: Option<Instant>,
    /// It was obtained because the one before was refused.
    for_refusal: bool,
    /// It was refused.
    refused: bool,
}

impl InHand {
    fn usable(&self, now: Instant) -> bool {
        !self.refused && self.expires.is_none_or(|at| now < at)
    }
}

/// The keeper's loop: until the dispatcher is gone (the run is over) or it has said `Fatal`.
fn keep(
    obtain: &dyn Fn() -> Result<source::Issued, Failure>,
    refusals: &Receiver<(u64, bool)>,
    news: &Sender<News>,
) {
    let mut hand: Option<InHand> = None;
    // When renewals began failing, and when to try again.
    let mut failing: Option<(Instant, Duration)> = None;
    let mut next_try = Instant::now();
    loop {
        let now = Instant::now();
        let due = match &hand {
            None => Some(next_try),
            Some(h) if h.refused => Some(next_try),
            Some(h) => h.renew_at.map(|at| at.max(next_try)),
        };
        let wait = due.map(|at| at.saturating_duration_since(now));
        if wait.is_none_or(|w| !w.is_zero()) {
            let got = match wait {
                Some(w) => refusals.recv_timeout(w),
                None => refusals.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((generation, proven)) => {
                    let Some(h) = hand.as_mut().filter(|h| h.generation == generation && !h.refused) else {
                        continue; // an older one's, already replaced
                    };
                    if h.for_refusal && !proven {
                        let _ = news.send(News::Fatal(format!(
                            "the API refused (401) credential {generation}, obtained because the one before was \
                             refused, before taking it once: the source gives credentials this API does not take"
                        )));
                        return;
                    }
                    log::info!("credential {generation} was refused (401): obtaining another");
                    h.refused = true;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let for_refusal = hand.as_ref().is_some_and(|h| h.refused);
        match obtain() {
            Ok(got) => {
                let now = Instant::now();
                let generation = hand.as_ref().map_or(0, |h| h.generation) + 1;
                let expires = got.lifetime.map(|l| now + l);
                let renew_at = got.lifetime.map(|l| now + l.mul_f64(RENEW_AT));
                match got.lifetime {
                    Some(l) => log::info!(
                        "credential {generation} obtained, good for {}",
                        humantime::format_duration(l)
                    ),
                    None => log::info!("credential {generation} obtained (no expiry: renewed when refused)"),
                }
                hand = Some(InHand { generation, renew_at, expires, for_refusal, refused: false });
                failing = None;
                next_try = now;
                let credential = Credential {
                    generation,
                    header: "Authorization".into(),
                    value: Secret(format!("Bearer {}", got.token)),
                    expires_in_ms: got.lifetime.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
                };
                if news.send(News::Fresh(credential, expires)).is_err() {
                    return;
                }
            }
            Err(failure) => {
                let now = Instant::now();
                let first = hand.is_none();
                if first || matches!(failure, Failure::Refused(_)) {
                    let _ = news.send(News::Fatal(failure.why().to_owned()));
                    return;
                }
                let (since, delay) = failing.unwrap_or((now, RETRY_FIRST));
                if now.duration_since(since) >= PATIENCE {
                    let for_how_long = humantime::format_duration(PATIENCE);
                    let _ = news
                        .send(News::Fatal(format!("no credential for {for_how_long}: {}", failure.why())));
                    return;
                }
                log::warn!("cannot renew the credential ({}); trying again in {delay:?}", failure.why());
                failing = Some((since, (delay * 2).min(RETRY_MAX)));
                next_try = now + delay;
                if hand.as_ref().is_some_and(|h| !h.usable(now))
                    && news
                        .send(News::Waiting(format!("waiting for a credential: {}", failure.why())))
                        .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn issued(lifetime_ms: Option<u64>) -> source::Issued {
        source::Issued { token: "t".into(), lifetime: lifetime_ms.map(Duration::from_millis) }
    }

    /// A keeper's news, where refusals go, and how many times it asked its source.
    type Harness = (Receiver<News>, Sender<(u64, bool)>, Arc<Mutex<u32>>);

    /// Runs the keeper over `answers` (one per obtain; then it fails) in a thread.
    fn keeper(answers: Vec<Result<source::Issued, Failure>>) -> Harness {
        let (news_tx, news) = unbounded();
        let (refusals, refusals_rx) = bounded(16);
        let asked = Arc::new(Mutex::new(0));
        let count = asked.clone();
        let answers = Mutex::new(answers.into_iter());
        std::thread::spawn(move || {
            let obtain = || {
                *count.lock().expect("lock") += 1;
                answers.lock().expect("lock").next().unwrap_or(Err(Failure::Failed("no more".into())))
            };
            keep(&obtain, &refusals_rx, &news_tx);
        });
        (news, refusals, asked)
    }

    fn next(news: &Receiver<News>) -> News {
        news.recv_timeout(Duration::from_secs(5)).expect("news within 5 s")
    }

    #[test]
    fn a_credential_is_renewed_ahead_of_expiry_and_a_refusal_asks_for_one_at_once() {
        let (news, refusals, asked) =
            keeper(vec![Ok(issued(Some(500))), Ok(issued(Some(60_000))), Ok(issued(None))]);
        let t0 = Instant::now();
        assert!(matches!(next(&news), News::Fresh(Credential { generation: 1, .. }, Some(_))));
        assert!(matches!(next(&news), News::Fresh(Credential { generation: 2, .. }, Some(_))));
        let renewed = t0.elapsed();
        assert!(renewed >= Duration::from_millis(380) && renewed < Duration::from_millis(480), "{renewed:?}");
        // Refusals of an old one change nothing; of the newest, one request however many.
        refusals.send((1, true)).expect("sends");
        refusals.send((2, true)).expect("sends");
        refusals.send((2, true)).expect("sends");
        assert!(matches!(
            next(&news),
            News::Fresh(Credential { generation: 3, expires_in_ms: None, .. }, None)
        ));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*asked.lock().expect("lock"), 3);
    }

    #[test]
    fn a_credential_refused_before_it_was_taken_after_a_refusal_stops_the_run() {
        let (news, refusals, _) = keeper(vec![Ok(issued(None)), Ok(issued(None))]);
        assert!(matches!(next(&news), News::Fresh(..)));
        refusals.send((1, false)).expect("sends");
        assert!(matches!(next(&news), News::Fresh(Credential { generation: 2, .. }, _)));
        refusals.send((2, false)).expect("sends");
        assert!(matches!(next(&news), News::Fatal(why) if why.contains("refused (401) credential 2")));
    }

    #[test]
    fn the_first_failure_or_a_refusal_stops_at_once_and_later_failures_wait_and_retry() {
        let (news, _r, _) = keeper(vec![Err(Failure::Failed("helper failed (exit status: 3)".into()))]);
        assert!(matches!(next(&news), News::Fatal(why) if why.contains("exit status: 3")));
        let (news, _r, asked) = keeper(vec![
            Ok(issued(Some(1000))),
            Err(Failure::Failed("endpoint down".into())),
            Err(Failure::Failed("endpoint down".into())),
            Ok(issued(Some(60_000))),
        ]);
        assert!(matches!(next(&news), News::Fresh(..)));
        // Renewed at 800 ms, failing; at 1 s it has run out: the fleet waits.
        assert!(matches!(next(&news), News::Waiting(why) if why.contains("endpoint down")));
        assert!(matches!(next(&news), News::Fresh(Credential { generation: 2, .. }, _)));
        assert_eq!(*asked.lock().expect("lock"), 4);
        let (news, refusals, _) =
            keeper(vec![Ok(issued(None)), Err(Failure::Refused("answered 401: invalid_client".into()))]);
        assert!(matches!(next(&news), News::Fresh(..)));
        refusals.send((1, true)).expect("sends");
        assert!(matches!(next(&news), News::Fatal(why) if why.contains("invalid_client")));
    }
}
