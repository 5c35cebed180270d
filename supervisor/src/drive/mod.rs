//! The runtimes: what carries a run out once its settings are checked and its store is open.
//!
//! [`dispatch`] is the fleet's: one thread `select!`s over the workers, the store writer, the
//! planner, signals and timers, and feeds the engine's decision core. [`coroutines`] is the
//! async model (`--model async`): the same job by tasks on one thread's event loop, through the
//! same planner and store writer, which [`store_side`] starts for both. [`plan`] walks the job's
//! ids against the store; [`signals`] turns signals into events.
//!
//! A runtime never parses flags: what a SIGHUP rereads is a [`Reload`] the command hands in.

pub mod coroutines;
pub mod dispatch;
pub mod plan;
pub mod signals;
pub mod store_side;

use crate::job::PaceSettings;
use crate::watch::progress;

/// Rereads the settings for a SIGHUP, given the fleet's ceiling (workers times threads, which
/// cannot change in flight): the new pacing and log level, or why they do not parse.
pub type Reload = Box<dyn Fn(u32) -> Result<(PaceSettings, log::LevelFilter), String>>;

/// How a run is watched and steered from outside.
pub struct Watch {
    /// How progress is shown.
    pub progress: progress::Mode,
    /// What a SIGHUP rereads; `None`: it rereads nothing.
    pub reload: Option<Reload>,
}

/// The agent the credential keeper asks a token endpoint with: trusting what the workers trust
/// (`--ca-cert`, `--insecure`), within the keeper's timeout, redirects not followed (a token
/// request is not sent on to another host).
fn token_agent(cfg: &crate::job::RunConfig) -> ureq::Agent {
    let url = match &cfg.credentials {
        Some(crate::job::CredentialSource::OAuth2(c)) => c.token_url.as_str(),
        _ => "",
    };
    ureq::Agent::config_builder()
        .timeout_global(Some(crate::auth::OBTAIN_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(cfg.job.user_agent.as_str())
        .tls_config(worker::fetch::tls_config(&cfg.job.tls, url))
        .build()
        .new_agent()
}
