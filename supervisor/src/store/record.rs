//! One id's stored record, and the counts `status` shows over a whole store.

use shared::{ItemResult, Outcome};

/// One id's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A final HTTP answer.
    Answer {
        /// Attempts made.
        attempts: u32,
        /// HTTP status.
        status: u16,
        /// The body, byte for byte.
        body: Vec<u8>,
        /// When it was fetched, and what the server said of its freshness.
        fetched: Fetched,
    },
    /// No HTTP answer: the id failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why.
        error: String,
        /// Whether it was quarantined (it killed workers) rather than failing over HTTP.
        quarantined: bool,
    },
}

/// When an answer was fetched, and what the server said of it that a refresh needs (format 4;
/// a record of format 3 has none of it: all zero and empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// When it was stored, in Unix seconds; 0: unknown (a format-3 record).
    pub at: u32,
    /// Until when the server said it is fresh (`Cache-Control: max-age`, `Expires`), in Unix
    /// seconds; 0: it did not say.
    pub fresh_until: u32,
    /// Its `ETag`, as sent; empty: none.
    pub etag: String,
    /// Its `Last-Modified`, as sent; empty: none.
    pub last_modified: String,
}

/// Counts over the whole store, for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Ids with an HTTP answer.
    pub answered: u64,
    /// Of those, with a 2xx status.
    pub success: u64,
    /// Ids that failed, quarantined ones included.
    pub failed: u64,
    /// Of those, quarantined.
    pub quarantined: u64,
}

impl Record {
    /// The record of a worker's result, stored at `now` (Unix seconds).
    pub fn of(r: ItemResult, now: u32) -> Record {
        match r.outcome {
            Outcome::Response { status, body } => Record::Answer {
                attempts: r.attempts,
                status,
                body,
                fetched: Fetched { at: now, ..Fetched::default() },
            },
            Outcome::Failed { error } | Outcome::Unreachable { error, .. } => {
                Record::Failed { attempts: r.attempts, error, quarantined: false }
            }
        }
    }
}
