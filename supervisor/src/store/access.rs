//! How the store touches sled, in one place below every other store file: its names and
//! settings, block keys, the guard that turns a sled panic into an error, and the metadata file
//! kept beside the database.

use std::path::Path;

use super::block::{self, BlockError};
use super::error::StoreError;
use crate::job::Scope;
use crate::util::panics;

/// The store format this build writes. Format 1 kept one sled key per id; format 2 a block of
/// 256 ids per sled key, bodies and all; format 3 keeps the blocks in segment files and only
/// their entries in sled; format 4 adds keys (a key table beside the segments: `keys`) and each
/// answer's fetch time and validators. A format-2 or format-3 store is upgraded in place when
/// it is opened.
pub const FORMAT: &str = "4";
/// The lock file's name in the store directory.
pub const LOCK_FILE: &str = "flota.lock";
/// The job and format again, outside sled, for `salvage` when sled has lost them.
pub const META_FILE: &str = "flota.meta";
/// Format 2's tree of whole blocks (block number → block).
pub const BLOCKS_TREE: &str = "blocks";
/// Format 3's tree of block entries (block number → `BlockRef`).
pub const REFS_TREE: &str = "refs";
/// sled's page cache. Its default (1 GiB) would let the supervisor grow to that size on a long
/// run; writes go block by block and reads are range scans, so a small cache costs little.
pub const CACHE_BYTES: u64 = 1 << 20;

/// The sled key of block `block`: big-endian, so scans come out in id order.
pub fn key(block: u64) -> [u8; 8] {
    block.to_be_bytes()
}

/// The block number a sled key names.
pub fn block_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| StoreError::BadKey { len: key.len() })?))
}

/// The error for a block that does not decode.
pub fn corrupt(path: &Path, block: u64, why: BlockError) -> StoreError {
    let first = block::first_id(block);
    StoreError::Corrupt { path: path.to_owned(), first, end: first.saturating_add(block::BLOCK_IDS), why }
}

/// Runs `f`, which uses sled on the store at `path`: a panic inside sled (as some damage makes
/// it) comes back as [`StoreError::Damaged`], and prints nothing.
pub fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    panics::catching(f).unwrap_or_else(|panic| {
        Err(StoreError::Damaged { path: path.to_owned(), detail: format!("sled: {panic}") })
    })
}

/// What [`META_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The store format.
    pub format: String,
    /// The job's URL template.
    pub job_url: String,
    /// Records in the store when the last run ended. sled, opening a damaged store, drops what
    /// follows the damage without a word; a count below this one is how flota notices.
    #[serde(default)]
    pub records: u64,
    /// What the job covers, as [`Scope`] (absent before flota recorded it).
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Reads a store's [`META_FILE`], if it has one.
pub fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(path.join(META_FILE)).ok()?).ok()
}
