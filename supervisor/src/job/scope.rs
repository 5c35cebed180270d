//! What a job covers: a range of ids, a list of them (`--ids-file`) or of keys (`--keys`), and the
//! shard of them one store holds. The store records it (`store::scope`); `status`, `merge` and a
//! rerun compare it.

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
    /// `--keys`: a list of keys, summarised (the store keeps the keys, and the ordinals it
    /// gave them).
    Keys(Keyed),
}

/// A list of keys, summarised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyed {
    /// Distinct keys listed (in every shard).
    pub count: u64,
    /// A hash of the keys' sorted fingerprints: two lists are the same job when count and
    /// digest agree, whatever their order.
    pub digest: u64,
    /// Of them, those this store's shard holds.
    pub held: u64,
    /// Where they were read from (a path, or `stdin`).
    pub source: String,
}

/// Folds a fingerprint (in sorted order) into a list's digest, from [`DIGEST_SEED`].
pub fn fold_digest(digest: u64, fp: u128) -> u64 {
    splitmix(splitmix(digest ^ (fp >> 64) as u64) ^ fp as u64)
}

/// Where a digest starts.
pub const DIGEST_SEED: u64 = 0x0066_6c6f_7461_u64;

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
        let digest = ids.iter().fold(DIGEST_SEED, |h, &id| splitmix(h ^ id));
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
            (Ids::Keys(a), Ids::Keys(b)) => (a.count, a.digest) == (b.count, b.digest),
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
            Ids::Keys(k) => write!(f, "{} keys listed in {}", thousands(k.count), k.source),
        }
    }
}

/// "ids 0..1000, shard 1/3", "the 5 ids listed in ids.txt (3..=99)".
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ids {
            Ids::Range(r) => write!(f, "ids {r}")?,
            Ids::Listed(_) | Ids::Keys(_) => write!(f, "the {}", self.ids)?,
        }
        match self.shard {
            Some(s) => write!(f, ", shard {s}"),
            None => Ok(()),
        }
    }
}
