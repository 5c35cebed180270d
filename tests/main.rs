//! flota's integration tests: real processes, real signals, real sockets on loopback.
//!
//! One test binary (it is the supervisor package's `integration` test, so cargo builds the
//! `supervisor` binary first), a module per area, helpers in `util`. Every test is bounded in
//! time and cleans up every process it started.

mod auth;
mod care;
mod cli;
mod connections;
mod engines;
mod faults;
mod fleet;
mod hostile;
mod isolation;
mod keys;
mod layers;
mod models;
mod network;
mod operate;
mod outage;
mod pace;
mod private;
mod refresh;
mod report;
mod requests;
mod resume;
mod shards;
mod store;
mod survive;
mod util;
mod web;
