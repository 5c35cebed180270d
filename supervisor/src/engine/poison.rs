//! Poison ids: which ids keep killing the workers that hold them.
//!
//! Each worker death counts against every id it held. An id held at [`SUSPECT_AFTER_DEATHS`]
//! deaths becomes a suspect and is retried alone, in a worker holding nothing else; a suspect
//! that kills [`QUARANTINE_AFTER_SOLO_DEATHS`] workers holding it alone is quarantined (stored as
//! failed, not fetched again unless asked). Innocent ids caught in other deaths succeed when
//! retried alone and are forgotten. The decision core owns one [`Poison`] and asks it; this
//! type only counts, so its rules read apart from the queue's.

use std::collections::{HashMap, HashSet, VecDeque};

use shared::ItemResult;

/// An id held by this many dying workers is retried alone.
pub const SUSPECT_AFTER_DEATHS: u32 = 2;
/// An id that kills this many workers holding it alone is quarantined.
pub const QUARANTINE_AFTER_SOLO_DEATHS: u32 = 2;

/// The deaths counted against ids, and the suspects waiting to be retried alone.
#[derive(Debug, Default)]
pub struct Poison {
    /// Suspects, in the order they are to be retried alone.
    pub(super) suspects: VecDeque<u64>,
    /// Deaths of workers that held the id among others.
    pub(super) deaths_held: HashMap<u64, u32>,
    /// Deaths of workers that held the id alone.
    pub(super) solo_deaths: HashMap<u64, u32>,
    /// Quarantines with no result delivered in between.
    quarantines_in_a_row: u32,
}

/// What a death of a worker holding one suspect alone means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Not enough yet: it waits to be retried alone again, first in line.
    Again,
    /// Quarantine it: it killed `deaths` workers, `strikes` of them holding it alone.
    Quarantine {
        /// Workers it killed in all.
        deaths: u32,
        /// Of those, holding it alone.
        strikes: u32,
    },
}

impl Poison {
    /// Suspects waiting to be retried alone.
    pub fn waiting(&self) -> usize {
        self.suspects.len()
    }

    /// The next suspect to retry alone.
    pub fn next_suspect(&mut self) -> Option<u64> {
        self.suspects.pop_front()
    }

    /// A suspect that was not retried after all (its worker never received it) goes back first.
    pub fn put_back(&mut self, id: u64) {
        self.suspects.push_front(id);
    }

    /// A worker died holding `ids` among others: a death counts against each. Those held at
    /// too many deaths become suspects; the rest, sorted, are returned to be requeued.
    pub fn died_holding(&mut self, ids: HashSet<u64>) -> Vec<u64> {
        let mut ids: Vec<u64> = ids.into_iter().collect();
        ids.sort_unstable();
        let mut requeue = Vec::with_capacity(ids.len());
        for id in ids {
            let count = self.deaths_held.entry(id).or_insert(0);
            *count += 1;
            if *count >= SUSPECT_AFTER_DEATHS {
                self.suspects.push_back(id);
            } else {
                requeue.push(id);
            }
        }
        requeue
    }

    /// A worker holding only suspect `id` died.
    pub fn died_alone(&mut self, id: u64) -> Strike {
        let strikes = {
            let s = self.solo_deaths.entry(id).or_insert(0);
            *s += 1;
            *s
        };
        if strikes < QUARANTINE_AFTER_SOLO_DEATHS {
            self.suspects.push_front(id);
            return Strike::Again;
        }
        let deaths = strikes + self.deaths_held.remove(&id).unwrap_or(0);
        self.solo_deaths.remove(&id);
        self.quarantines_in_a_row += 1;
        Strike::Quarantine { deaths, strikes }
    }

    /// Quarantines since a result was last delivered.
    pub fn quarantines_in_a_row(&self) -> u32 {
        self.quarantines_in_a_row
    }

    /// Results arrived: their ids are innocent, and the quarantines in a row end.
    pub fn delivered(&mut self, results: &[ItemResult]) {
        self.quarantines_in_a_row = 0;
        if !self.deaths_held.is_empty() || !self.solo_deaths.is_empty() {
            for r in results {
                self.deaths_held.remove(&r.id);
                self.solo_deaths.remove(&r.id);
            }
        }
    }
}
