//! What the store writer thread is asked, and what it answers: the vocabulary the engine and
//! the drive speak with it.

use shared::ItemResult;

use super::error::StoreError;
use crate::job::Durable;

/// Asks the writer thread to do something.
pub enum WriteCmd {
    /// Store these results.
    Put(Vec<ItemResult>),
    /// Store this id as quarantined: it killed `deaths` workers; `reason` starts "quarantined:".
    Quarantine {
        /// The id.
        id: u64,
        /// Workers it killed.
        deaths: u32,
        /// The stored error.
        reason: String,
    },
    /// Flush everything and end.
    Finish,
}

/// What the writer thread reports.
#[derive(Debug)]
pub enum WriteAck {
    /// These results are flushed: they count as done.
    Durable(Durable),
    /// Everything is flushed and the thread has ended.
    Finished,
    /// A write failed; the thread has ended.
    Failed(StoreError),
}
