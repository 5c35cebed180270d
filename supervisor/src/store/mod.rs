//! The store: one sled database, written only by the supervisor. The only module that imports
//! sled.
//!
//! Layout (format 2): the default tree holds metadata (`format`, `job.url`, `run.last`); the
//! `blocks` tree maps each block number (id / 256), as 8 big-endian bytes so scans come out in
//! id order, to the records of those 256 ids, compressed and checksummed: see [`block`] for
//! why and how.
//!
//! Writes go through one writer thread ([`write_loop`]). It gathers results by block, and at
//! each flush merges them into their blocks (a block is read, merged and written again when
//! its ids arrive over several flushes), applies one sled batch and flushes: a result counts as
//! done only after that `flush()`, sled's durability point.
//! A store is held by one process at a time: `flota.lock` in its directory is flock()ed and
//! names the holder's pid.
//!
//! The files, each importing only those listed before it: `error`, `record`, `block`,
//! `access` (sled names, keys, the panic guard, the metadata file), `lock`, `covered` (the
//! ids a scope covers, and a stored list), `reader`, `messages` (the writer's vocabulary),
//! `writer` (its thread), `db` (the open [`Store`]), and on top of it `scope`, `history`,
//! `merge`, `coverage` and `salvage`.

mod access;
pub mod block;
mod coverage;
mod covered;
mod db;
mod error;
mod history;
mod lock;
pub mod merge;
mod messages;
mod reader;
mod record;
pub mod salvage;
mod scope;
mod writer;

pub use coverage::Coverage;
pub use covered::Covered;
pub use db::Store;
pub use error::StoreError;
pub use history::LastRun;
pub use messages::{WriteAck, WriteCmd};
pub use reader::Reader;
pub use record::{Counts, Record};
pub use writer::{write_loop, Timing};

#[cfg(test)]
mod tests;
