//! What a job covers: a range of ids or a list of them (`--ids-file`), and the shard of them one
//! store holds. The store records it (`store::scope`); `status`, `merge` and a rerun compare it.

use std::fmt;

use super::ids::{IdRange, Shard};
use crate::util::thousands;

/// The ids a job covers, and the shard of them one store holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// The job's ids.
    pub ids: Ids,
    /// The part of them this store holds; `None`: all of them.
    pub shard: Option<Shard>,
}

/// A job's ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ids {
    /// `--ids A..B`.
    Range(IdRange),
    /// `--ids-file`: a list, summarised (the store keeps the ids themselves).
    Listed(Listed),
}

/// A list of ids, summarised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// Distinct ids.
    pub count: u64,
    /// The smallest and the largest.
    pub first: u64,
    /// The largest.
    pub last: u64,
    /// A hash of the sorted ids: two lists are the same job when count and digest agree.
    pub digest: u64,
    /// Where they were read from (a path, or `stdin`).
    pub source: String,
}

impl Listed {
    /// The summary of `ids` (sorted, distinct, not empty) read from `source`.
    pub fn of(ids: &[u64], source: String) -> Listed {
        let digest = ids.iter().fold(0x0066_6c6f_7461_u64, |h, &id| splitmix(h ^ id));
        Listed {
            count: ids.len() as u64,
            first: ids.first().copied().unwrap_or(0),
            last: ids.last().copied().unwrap_or(0),
            digest,
            source,
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ids {
    /// Whether two jobs cover the same ids (a list's source may differ).
    pub fn same(&self, other: &Ids) -> bool {
        match (self, other) {
            (Ids::Range(a), Ids::Range(b)) => a == b,
            (Ids::Listed(a), Ids::Listed(b)) => (a.count, a.digest) == (b.count, b.digest),
            _ => false,
        }
    }
}

impl fmt::Display for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ids::Range(r) => write!(f, "{r}"),
            Ids::Listed(l) => {
                write!(f, "{} ids listed in {} ({}..={})", thousands(l.count), l.source, l.first, l.last)
            }
        }
    }
}

/// "ids 0..1000, shard 1/3", "the 5 ids listed in ids.txt (3..=99)".
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ids {
            Ids::Range(r) => write!(f, "ids {r}")?,
            Ids::Listed(_) => write!(f, "the {}", self.ids)?,
        }
        match self.shard {
            Some(s) => write!(f, ", shard {s}"),
            None => Ok(()),
        }
    }
}
