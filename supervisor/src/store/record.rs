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

impl From<ItemResult> for Record {
    fn from(r: ItemResult) -> Record {
        match r.outcome {
            Outcome::Response { status, body } => Record::Answer { attempts: r.attempts, status, body },
            Outcome::Failed { error } | Outcome::Unreachable { error, .. } => {
                Record::Failed { attempts: r.attempts, error, quarantined: false }
            }
        }
    }
}
