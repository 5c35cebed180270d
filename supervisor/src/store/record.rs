//! One id's stored record, and the counts `status` shows over a whole store.

use shared::{ItemResult, Outcome, Validators};

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
    /// When its body last changed (first answered, or answered with another status or body
    /// than the stored one), in Unix seconds; 0: unknown (a format-3 record).
    pub changed: u32,
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

impl Fetched {
    /// Fetched at `now` (Unix seconds), with what the answer said of itself.
    pub fn at(now: u32, v: Validators) -> Fetched {
        Fetched {
            at: now,
            fresh_until: v.fresh_for.map_or(0, |f| now.saturating_add(f)),
            etag: v.etag,
            last_modified: v.last_modified,
            changed: now,
        }
    }
}

/// A result as the writer holds it until its block is written: a record to store, or a
/// `304 Not Modified` that renews the stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Stored as it is (unless it is a failure and an answer is stored: see [`Incoming::settle`]).
    Record(Record),
    /// The stored answer stands, fetched anew.
    Unchanged {
        /// Attempts made.
        attempts: u32,
        /// When, and what the 304 said.
        fetched: Fetched,
    },
}

/// What settling an incoming result against the stored record came to, for the run's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// A first answer or failure, or one replacing a failure.
    New,
    /// An answer fetched again, the same as the stored one (a 304, or the same status and body).
    Unchanged,
    /// An answer fetched again, different.
    Changed,
    /// A refetch that failed: the stored answer stays.
    Kept,
    /// A 304 with no stored answer to keep: stored as a failure.
    Orphan,
}

impl Incoming {
    /// The result of a worker, received at `now` (Unix seconds).
    pub fn of(r: ItemResult, now: u32) -> Incoming {
        let attempts = r.attempts;
        Incoming::Record(match r.outcome {
            Outcome::Response { status, body, validators } => {
                Record::Answer { attempts, status, body, fetched: Fetched::at(now, validators) }
            }
            Outcome::Unchanged { validators } => {
                return Incoming::Unchanged { attempts, fetched: Fetched::at(now, validators) }
            }
            Outcome::Failed { error } | Outcome::Unreachable { error, .. } => {
                Record::Failed { attempts, error, quarantined: false }
            }
        })
    }

    /// The record to store, given the one stored: a good answer is never replaced by a
    /// failure, and a 304 renews the stored answer's fetch time (and validators, when it brings
    /// new ones) and keeps its body.
    pub fn settle(self, stored: Option<Record>) -> (Record, Settled) {
        match (self, stored) {
            (Incoming::Record(Record::Failed { .. }), Some(old @ Record::Answer { .. })) => {
                (old, Settled::Kept)
            }
            (
                Incoming::Record(Record::Answer { attempts, status, body, mut fetched }),
                Some(Record::Answer { status: was_status, body: was_body, fetched: was, .. }),
            ) => {
                let same = status == was_status && body == was_body;
                if same {
                    // Its body has not changed since it last did.
                    fetched.changed = was.changed;
                }
                let settled = if same { Settled::Unchanged } else { Settled::Changed };
                (Record::Answer { attempts, status, body, fetched }, settled)
            }
            (Incoming::Record(new), _) => (new, Settled::New),
            (
                Incoming::Unchanged { attempts, fetched },
                Some(Record::Answer { status, body, fetched: was, .. }),
            ) => {
                let fetched = Fetched {
                    etag: if fetched.etag.is_empty() { was.etag } else { fetched.etag },
                    last_modified: if fetched.last_modified.is_empty() {
                        was.last_modified
                    } else {
                        fetched.last_modified
                    },
                    changed: was.changed,
                    ..fetched
                };
                (Record::Answer { attempts, status, body, fetched }, Settled::Unchanged)
            }
            (Incoming::Unchanged { attempts, .. }, _) => {
                let error = "304 Not Modified, and no stored answer to keep".to_owned();
                (Record::Failed { attempts, error, quarantined: false }, Settled::Orphan)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str, etag: &str) -> Record {
        let fetched = Fetched { at: 100, etag: etag.into(), ..Fetched::default() };
        Record::Answer { attempts: 1, status: 200, body: body.into(), fetched }
    }

    #[test]
    fn a_result_settles_against_the_stored_record_and_never_loses_an_answer() {
        let failed = Record::Failed { attempts: 3, error: "HTTP 503".into(), quarantined: false };
        let stored = answer("old", "\"e1\"");
        // A failure keeps the answer; a first failure is stored.
        assert_eq!(
            Incoming::Record(failed.clone()).settle(Some(stored.clone())),
            (stored.clone(), Settled::Kept)
        );
        assert_eq!(Incoming::Record(failed.clone()).settle(None), (failed.clone(), Settled::New));
        // The same body is unchanged, another is changed, over a failure it is new.
        let same = answer("old", "\"e1\"");
        assert_eq!(Incoming::Record(same.clone()).settle(Some(stored.clone())).1, Settled::Unchanged);
        let new = answer("new", "\"e2\"");
        assert_eq!(
            Incoming::Record(new.clone()).settle(Some(stored.clone())),
            (new.clone(), Settled::Changed)
        );
        assert_eq!(Incoming::Record(new.clone()).settle(Some(failed)).1, Settled::New);
        // A 304 renews the fetch time, keeps the body, and the old ETag when it brings none.
        let renewed = Fetched { at: 200, fresh_until: 260, ..Fetched::default() };
        let (record, settled) = Incoming::Unchanged { attempts: 1, fetched: renewed }.settle(Some(stored));
        assert_eq!(settled, Settled::Unchanged);
        let kept = Fetched {
            at: 200,
            fresh_until: 260,
            etag: "\"e1\"".into(),
            last_modified: String::new(),
            changed: 0,
        };
        assert_eq!(record, Record::Answer { attempts: 1, status: 200, body: b"old".to_vec(), fetched: kept });
        // When the body last changed: kept by a 304 and by the same body, moved by another.
        let first = |body: &str, at: u32| {
            let fetched = Fetched { at, changed: at, ..Fetched::default() };
            Record::Answer { attempts: 1, status: 200, body: body.into(), fetched }
        };
        let changed_of = |r: &Record| match r {
            Record::Answer { fetched, .. } => fetched.changed,
            Record::Failed { .. } => 0,
        };
        let (same, _) = Incoming::Record(first("a", 500)).settle(Some(first("a", 100)));
        assert_eq!(changed_of(&same), 100);
        let (other, _) = Incoming::Record(first("b", 500)).settle(Some(first("a", 100)));
        assert_eq!(changed_of(&other), 500);
        let renewed = Fetched { at: 600, changed: 600, ..Fetched::default() };
        let (r304, _) = Incoming::Unchanged { attempts: 1, fetched: renewed }.settle(Some(first("a", 100)));
        assert_eq!(changed_of(&r304), 100);
        let orphan = Incoming::Unchanged { attempts: 1, fetched: Fetched::default() }.settle(None);
        assert_eq!(orphan.1, Settled::Orphan);
    }
}
