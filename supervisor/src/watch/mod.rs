//! Watching a run from outside: the progress bar or lines, systemd's notify protocol, the live
//! status file, and Prometheus metrics. Each reads the engine's figures (a snapshot each tick,
//! the events it is shown) and never changes the run.

pub mod live;
pub mod metrics;
pub mod notify;
pub mod progress;

pub use live::LiveFile;
pub use metrics::Metrics;
pub use notify::Notifier;
pub use progress::Progress;
