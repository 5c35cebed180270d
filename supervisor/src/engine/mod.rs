//! The engine: a run's decisions, with no I/O and no clock.
//!
//! [`Core`] owns the run's state and turns each [`Event`], seen at a time the loop passes in,
//! into the [`Command`]s that answer it; the loop in `drive` carries them out. The pacer
//! ([`pace`]) decides how fast the fleet may send (with [`throttle`]'s rules for refusals and
//! [`circuit`]'s for an outage), [`poison`] which ids kill their workers.
//! The vocabulary the core shares with its loop lives here too: the events (a worker's among
//! them), the commands, the run's [`Error`]s, and its [`Figures`] and [`Snapshot`]s. So every
//! rule is unit-tested without a process or a sleep.
//!
//! The files, each importing only those before it: `error`, `figures`, `messages`,
//! `throttle`, `circuit`, `pace`, `poison`, `core`.

pub mod circuit;
mod core;
mod error;
mod figures;
mod messages;
pub mod pace;
pub mod poison;
pub mod throttle;

pub use self::core::{Core, Settings};
pub use error::Error;
pub use figures::{Figures, Snapshot};
pub use messages::{Command, Ended, Event, EventKind, FleetEvent, KillReason, ProtocolFault};
