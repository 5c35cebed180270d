//! How fast a run may send, as its flags say: the settings the pacer starts from, and where a
//! rate in force came from.

/// What pacing needs of the run's configuration.
#[derive(Debug, Clone)]
pub struct PaceSettings {
    /// `--rate`, requests per second.
    pub rate: Option<f64>,
    /// `--burst`, permits; `None` for the default (50ms at the rate).
    pub burst: Option<u32>,
    /// `--concurrency`: a fixed limit instead of the adaptive one.
    pub concurrency: Option<u32>,
    /// Workers times threads: no limit goes higher.
    pub ceiling: u32,
    /// `--outage-max`: how long the circuit may hold the ids' attempts.
    pub outage_max: std::time::Duration,
    /// `--wait-for-api`: how long a run waits for the API's first answer before it gives up.
    pub wait_for_api: std::time::Duration,
    /// The API's `host:port`, as the job's URL names it (for what is said while it does not
    /// answer).
    pub api: String,
}

/// Where the fleet's rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RateSource {
    /// `--rate`.
    #[serde(rename = "--rate")]
    Given,
    /// The server's headers.
    #[serde(rename = "announced")]
    Announced,
    /// Backed off on the server's refusals (429, 503), climbing back.
    #[serde(rename = "backed off")]
    Adaptive,
}
