//! Id ranges and how they are cut into chunks.
//!
//! The range is walked lazily in windows of `chunk_size` ids; each window loses the ids the
//! store already has an answer for, and what is left is one chunk. So memory stays flat
//! whatever the size of the range, and a rerun plans only what is missing. The functions here
//! are pure; the planner thread that drives them against the store lives in `dispatch`.

use std::fmt;
use std::str::FromStr;

/// A half-open range of ids, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id.
    pub start: u64,
    /// One past the last id.
    pub end: u64,
}

impl IdRange {
    /// How many ids the range holds.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// The windows of at most `size` ids that cover the range, in order.
    pub fn windows(self, size: u64) -> impl Iterator<Item = IdRange> {
        let size = size.max(1);
        let mut next = self.start;
        std::iter::from_fn(move || {
            if next >= self.end {
                return None;
            }
            let start = next;
            let end = start.saturating_add(size).min(self.end);
            next = end;
            Some(IdRange { start, end })
        })
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for IdRange {
    type Err = String;

    /// `A..B` (B excluded) or `A..=B` (B included), both non-empty.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an id range like 0..1000000 or 0..=999999");
        let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
            (a, b, true)
        } else if let Some((a, b)) = s.split_once("..") {
            (a, b, false)
        } else {
            return Err(bad());
        };
        let parse = |t: &str| t.trim().replace('_', "").parse::<u64>().map_err(|_| bad());
        let (start, last) = (parse(a)?, parse(b)?);
        let end = if inclusive {
            last.checked_add(1).ok_or_else(|| format!("`{s}` ends past the largest id"))?
        } else {
            last
        };
        if end <= start {
            return Err(format!("`{s}` holds no id"));
        }
        Ok(IdRange { start, end })
    }
}

/// The ids of `window` that are not in `settled` (sorted), in order.
pub fn unsettled(window: IdRange, settled: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity((window.len() as usize).saturating_sub(settled.len()));
    let mut done = settled.iter().copied().peekable();
    for id in window.start..window.end {
        while done.peek().is_some_and(|&d| d < id) {
            done.next();
        }
        if done.peek() != Some(&id) {
            out.push(id);
        }
    }
    out
}

/// Cuts ids (sorted) into chunks of at most `size`, as a dead worker's ids are requeued.
pub fn rechunk(ids: Vec<u64>, size: usize) -> Vec<Vec<u64>> {
    ids.chunks(size.max(1)).map(<[u64]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!("0..1000000".parse(), Ok(IdRange { start: 0, end: 1_000_000 }));
        assert_eq!("5..=5".parse(), Ok(IdRange { start: 5, end: 6 }));
        assert_eq!("1_000..2_000".parse(), Ok(IdRange { start: 1000, end: 2000 }));
        for bad in ["", "5", "5..5", "9..3", "a..b", "-1..4", "0..=18446744073709551615", "1...3"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn unsettled_drops_exactly_the_settled_ids() {
        let w = IdRange { start: 10, end: 20 };
        assert_eq!(unsettled(w, &[]), (10..20).collect::<Vec<_>>());
        assert_eq!(unsettled(w, &[3, 10, 15, 19, 25]), vec![11, 12, 13, 14, 16, 17, 18]);
        assert!(unsettled(w, &(10..20).collect::<Vec<_>>()).is_empty());
    }

    proptest! {
        /// Windows cover the range exactly once, in order, none larger than asked.
        #[test]
        fn windows_cover_the_range_exactly_once(start in 0u64..1_000_000, len in 1u64..100_000, size in 1u64..5_000) {
            let range = IdRange { start, end: start + len };
            let mut next = start;
            for w in range.windows(size) {
                prop_assert_eq!(w.start, next);
                prop_assert!(w.end > w.start && w.len() <= size);
                next = w.end;
            }
            prop_assert_eq!(next, range.end);
        }

        /// Planning against any settled set yields every unsettled id once; requeueing any
        /// subset in chunks keeps every id once.
        #[test]
        fn plans_and_requeues_lose_and_repeat_nothing(len in 1u64..3_000, size in 1u64..700,
                                                      settled in proptest::collection::btree_set(0u64..3_000, 0..500),
                                                      chunk in 1usize..300) {
            let range = IdRange { start: 0, end: len };
            let settled: Vec<u64> = settled.into_iter().collect();
            let planned: Vec<u64> = range.windows(size).flat_map(|w| {
                let lo = settled.partition_point(|&s| s < w.start);
                let hi = settled.partition_point(|&s| s < w.end);
                unsettled(w, &settled[lo..hi])
            }).collect();
            let expected: Vec<u64> = (0..len).filter(|id| settled.binary_search(id).is_err()).collect();
            prop_assert_eq!(&planned, &expected);
            let chunks = rechunk(planned, chunk);
            prop_assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= chunk));
            prop_assert_eq!(chunks.concat(), expected);
        }

        /// Edge of the id space: windows never overflow.
        #[test]
        fn windows_at_the_top_of_the_id_space(len in 1u64..1000, size in 1u64..100) {
            let range = IdRange { start: u64::MAX - len, end: u64::MAX };
            prop_assert_eq!(range.windows(size).map(|w| w.len()).sum::<u64>(), len);
        }
    }
}
