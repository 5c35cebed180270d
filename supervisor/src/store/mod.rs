//! The store: one sled database, written only by the supervisor. The only module that imports
//! sled.
//!
//! Layout (format 4): the default tree holds metadata (`format`, `job.url`, `run.last`); the
//! `refs` tree maps each block number (id / 256), as 8 big-endian bytes so scans come out in id
//! order, to a 126-byte entry: which of its ids have which kind of record, and where the block
//! is. The block itself (the records of those 256 ids, compressed and checksummed: see [`block`])
//! is in an append-only segment file beside the database (`segments/`). sled holds the index,
//! the segments the bodies, so sled's memory stays small whatever the bodies' size.
//!
//! Writes go through one writer thread ([`write_loop`]). It gathers results by block, and at
//! each flush merges them into their blocks (a block is read, merged and written again when its
//! ids arrive over several flushes), appends the blocks to the current segment, fdatasyncs it,
//! then writes their entries in one sled batch and flushes: a result counts as done only after
//! that `flush()`, and no flushed entry points at bytes not yet on disk. At the end of a run the
//! writer reclaims segments mostly dead (`gc`).
//! A store is held by one process at a time: `flota.lock` in its directory is flock()ed and
//! names the holder's pid.
//!
//! The files, each importing only those listed before it: `error`, `record`, `block`,
//! `access` (sled names, keys, the panic guard, the metadata file), `segments` (the bodies'
//! files), `blockref` (a block's entry in sled), `put` (the one durable write), `lock`,
//! `covered` (the ids a scope covers, and a stored list of them), `reader`, `messages` (the writer's
//! vocabulary), `db` (the open [`Store`]), `gc` (reclaiming dead bytes), `writer` (its thread),
//! `keysort` (sorting on disk), and on top of them `upgrade`, `open`, `scope`, `keys` (the key
//! table: a keyed job's keys and their ordinals), `history`, `merge`, `gaps` (what a store lacks
//! of its scope) and `salvage`.

mod access;
pub mod block;
mod blockref;
mod covered;
mod db;
mod error;
mod gaps;
mod gc;
mod history;
mod keys;
mod keysort;
mod lock;
pub mod merge;
mod messages;
mod open;
mod put;
mod reader;
mod record;
pub mod salvage;
mod scope;
mod segments;
mod upgrade;
mod writer;

pub use access::FORMAT;
pub use covered::Covered;
pub use db::{Ages, Store};
pub use error::StoreError;
pub use gaps::Coverage;
pub use history::LastRun;
pub use keys::KeyNames;
pub use messages::{WriteAck, WriteCmd};
pub use reader::Reader;
pub use record::{Counts, Record};
pub use writer::{write_loop, Timing, HOLD_BYTES};

#[cfg(test)]
mod tests;
