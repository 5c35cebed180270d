//! Id ranges, shards, and the masks the planner walks them in.
//!
//! The ids a job covers are walked lazily, block by block (the store's blocks of 256 ids):
//! each block's ids lose those the store already has an answer for, and what is left fills
//! chunks. So memory stays flat whatever the size of the range, and a rerun plans only what is
//! missing. The functions here are pure; the planner thread that drives them against the
//! store lives in `drive`.
//!
//! A shard `I/N` owns the blocks whose number is `I` modulo `N`: interleaved, so that every
//! shard gets its share of every part of the range (an API slow on some ids slows all shards
//! alike), and a function of the id alone, so a shard resumes its own part whatever the range
//! of a rerun, and shard stores merge block by block without two of them writing one block.

use std::fmt;
use std::str::FromStr;

/// Ids per block. Offsets within a block fit a u16.
pub const BLOCK_IDS: u64 = 256;

/// The block holding `id`, and `id`'s offset in it.
pub fn locate(id: u64) -> (u64, u16) {
    (id / BLOCK_IDS, (id % BLOCK_IDS) as u16)
}

/// The first id of block `block`.
pub fn first_id(block: u64) -> u64 {
    block * BLOCK_IDS
}

/// A half-open range of ids, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Which ids of a block: bit `i` of word `i / 64` is the block's `i`-th id.
pub type Mask = [u64; 4];

/// The ids of block `n` that `range` holds.
pub fn range_mask(n: u64, range: IdRange) -> Mask {
    let first = n.saturating_mul(BLOCK_IDS);
    let lo = range.start.max(first).saturating_sub(first).min(BLOCK_IDS);
    let hi = range.end.min(first.saturating_add(BLOCK_IDS)).saturating_sub(first).min(BLOCK_IDS);
    let mut mask = [0u64; 4];
    for (w, word) in mask.iter_mut().enumerate() {
        let (from, to) = ((w as u64) * 64, (w as u64 + 1) * 64);
        let (a, b) = (lo.clamp(from, to) - from, hi.clamp(from, to) - from);
        if b > a {
            *word = (u64::MAX >> (64 - (b - a))) << a;
        }
    }
    mask
}

/// How many ids a mask holds.
pub fn mask_len(mask: &Mask) -> u64 {
    mask.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// The ids of block `n` in `mask`, in order.
pub fn mask_ids(n: u64, mask: Mask) -> impl Iterator<Item = u64> {
    let first = n * BLOCK_IDS;
    (0..BLOCK_IDS).filter(move |&i| mask[(i / 64) as usize] & (1 << (i % 64)) != 0).map(move |i| first + i)
}

/// The ids in both masks.
pub fn mask_and(a: &Mask, b: &Mask) -> Mask {
    [a[0] & b[0], a[1] & b[1], a[2] & b[2], a[3] & b[3]]
}

/// The ids of `a` that are not in `b`.
pub fn mask_minus(a: &Mask, b: &Mask) -> Mask {
    [a[0] & !b[0], a[1] & !b[1], a[2] & !b[2], a[3] & !b[3]]
}

/// Sets `id`'s bit in `mask` (its block's).
pub fn mask_set(mask: &mut Mask, id: u64) {
    let i = id % BLOCK_IDS;
    mask[(i / 64) as usize] |= 1 << (i % 64);
}

/// One supervisor's part of a job: the blocks whose number is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// Which part, from 0.
    pub index: u64,
    /// Of how many.
    pub count: u64,
}

/// The most shards a job is cut into.
pub const MAX_SHARDS: u64 = 1 << 20;

impl Shard {
    /// Whether the shard owns block `n`.
    pub fn owns_block(&self, n: u64) -> bool {
        n % self.count == self.index
    }

    /// The shard's blocks among `first..=last`, in order.
    pub fn blocks(self, first: u64, last: u64) -> impl Iterator<Item = u64> {
        let start = first + (self.index + self.count - first % self.count) % self.count;
        let step = usize::try_from(self.count).unwrap_or(usize::MAX);
        (start..=last).step_by(step)
    }

    /// How many ids of `range` the shard owns.
    pub fn ids_in(&self, range: IdRange) -> u64 {
        let (first, last) = (range.start / BLOCK_IDS, (range.end - 1) / BLOCK_IDS);
        let whole = self.blocks(first, last).count() as u64 * BLOCK_IDS;
        let mut n = whole;
        if self.owns_block(first) {
            n -= range.start - first * BLOCK_IDS;
        }
        if self.owns_block(last) {
            n -= (last + 1) * BLOCK_IDS - range.end;
        }
        n
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`: part I (from 0) of N.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a shard like 0/3 (part 0 of 3; parts count from 0)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse::<u64>().map_err(|_| bad())?, n.trim().parse::<u64>().map_err(|_| bad())?);
        shard(index, count).map_err(|e| format!("`{s}`: {e}"))
    }
}

/// Part `index` of `count`, checked.
pub fn shard(index: u64, count: u64) -> Result<Shard, String> {
    if count == 0 || count > MAX_SHARDS {
        return Err(format!("the number of shards must be between 1 and {MAX_SHARDS}, not {count}"));
    }
    if index >= count {
        return Err(format!(
            "shard {index} does not exist among {count} (they count from 0 to {})",
            count - 1
        ));
    }
    Ok(Shard { index, count })
}

/// The shard a scheduler gave this process, from its environment: a Kubernetes Indexed Job's
/// `JOB_COMPLETION_INDEX` (the count is `shards`, the Job's completions: Kubernetes does not
/// tell the pod), or a Slurm job array's task (`SLURM_ARRAY_TASK_ID` counted from
/// `SLURM_ARRAY_TASK_MIN` in steps of `SLURM_ARRAY_TASK_STEP`, of `SLURM_ARRAY_TASK_COUNT`).
/// With the variable that said so.
pub fn shard_from_env(
    env: impl Fn(&str) -> Option<String>,
    shards: Option<u64>,
) -> Result<Option<(Shard, &'static str)>, String> {
    let number = |name: &str| -> Result<Option<u64>, String> {
        env(name)
            .map(|v| v.trim().parse::<u64>().map_err(|_| format!("{name}={v:?} is not a number")))
            .transpose()
    };
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let count = shards.ok_or(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shards N, the Job's completions, \
             or --shard I/N",
        )?;
        return Ok(Some((
            shard(index, count).map_err(|e| format!("JOB_COMPLETION_INDEX: {e}"))?,
            "JOB_COMPLETION_INDEX",
        )));
    }
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let count = number("SLURM_ARRAY_TASK_COUNT")?
            .ok_or("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT")?;
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        if let Some(n) = shards.filter(|&n| n != count) {
            return Err(format!("--shards {n} disagrees with SLURM_ARRAY_TASK_COUNT={count}"));
        }
        let offset = id.checked_sub(min).filter(|o| o % step == 0).ok_or_else(|| {
            format!(
                "SLURM_ARRAY_TASK_ID={id} is not MIN + k x STEP ({min} + k x {step}): give the array as A-B or \
                 A-B:STEP, or pass --shard I/N"
            )
        })?;
        return Ok(Some((
            shard(offset / step, count).map_err(|e| format!("SLURM_ARRAY_TASK_ID: {e}"))?,
            "SLURM_ARRAY_TASK_ID",
        )));
    }
    Ok(None)
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
    fn shards_parse_and_refuse_nonsense() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(" 0 / 1 ".parse(), Ok(Shard { index: 0, count: 1 }));
        for bad in ["", "1", "3/3", "0/0", "-1/3", "a/b", "1/3/4", "0/2000000"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn shards_come_from_a_scheduler_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(shard_from_env(env(&[]), None), Ok(None));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert_eq!(
            shard_from_env(k8s, Some(3)),
            Ok(Some((Shard { index: 2, count: 3 }, "JOB_COMPLETION_INDEX")))
        );
        assert!(shard_from_env(k8s, None).expect_err("needs --shards").contains("--shards"));
        assert!(shard_from_env(k8s, Some(2)).is_err(), "index 2 of 2");
        // sbatch --array=1-3: ids 1, 2, 3.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            shard_from_env(slurm, None),
            Ok(Some((Shard { index: 2, count: 3 }, "SLURM_ARRAY_TASK_ID")))
        );
        assert!(shard_from_env(slurm, Some(4)).is_err(), "--shards disagrees");
        // --array=0-10:5: ids 0, 5, 10.
        let step = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            shard_from_env(step, None),
            Ok(Some((Shard { index: 1, count: 3 }, "SLURM_ARRAY_TASK_ID")))
        );
        // --array=1,4,5: not evenly spaced.
        let odd = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(shard_from_env(odd, None).is_err());
        assert!(shard_from_env(env(&[("JOB_COMPLETION_INDEX", "x")]), Some(3)).is_err());
    }

    #[test]
    fn range_masks_hold_exactly_the_range() {
        let r = IdRange { start: 300, end: 700 };
        assert_eq!(mask_ids(0, range_mask(0, r)).count(), 0);
        assert_eq!(mask_ids(1, range_mask(1, r)).collect::<Vec<_>>(), (300..512).collect::<Vec<_>>());
        assert_eq!(mask_ids(2, range_mask(2, r)).collect::<Vec<_>>(), (512..700).collect::<Vec<_>>());
        assert_eq!(mask_len(&range_mask(5, IdRange { start: 0, end: u64::MAX })), 256);
        let mut m = [0; 4];
        mask_set(&mut m, 256 + 200);
        assert_eq!(mask_ids(1, m).collect::<Vec<_>>(), vec![456]);
    }

    proptest! {
        /// The shards of a range own each of its ids exactly once, and count them right.
        #[test]
        fn shards_cover_a_range_exactly_once(start in 0u64..5_000, len in 1u64..5_000, count in 1u64..7) {
            let range = IdRange { start, end: start + len };
            let mut owners = vec![0u32; len as usize];
            for index in 0..count {
                let s = Shard { index, count };
                let (first, last) = (start / BLOCK_IDS, (range.end - 1) / BLOCK_IDS);
                let mut owned = 0;
                for n in s.blocks(first, last) {
                    prop_assert!(s.owns_block(n));
                    for id in mask_ids(n, range_mask(n, range)) {
                        owners[(id - start) as usize] += 1;
                        owned += 1;
                    }
                }
                prop_assert_eq!(owned, s.ids_in(range));
            }
            prop_assert!(owners.iter().all(|&o| o == 1));
        }

        /// Planning block by block against any settled set yields every unsettled id once;
        /// requeueing any subset in chunks keeps every id once.
        #[test]
        fn plans_and_requeues_lose_and_repeat_nothing(start in 0u64..1_000, len in 1u64..3_000,
                                                      settled in proptest::collection::btree_set(0u64..4_000, 0..500),
                                                      chunk in 1usize..300) {
            let range = IdRange { start, end: start + len };
            let settled: Vec<u64> = settled.into_iter().collect();
            let planned: Vec<u64> = (range.start / BLOCK_IDS..=(range.end - 1) / BLOCK_IDS).flat_map(|n| {
                let mut done = [0; 4];
                settled.iter().filter(|&&s| s / BLOCK_IDS == n).for_each(|&s| mask_set(&mut done, s));
                let m = range_mask(n, range);
                mask_ids(n, [m[0] & !done[0], m[1] & !done[1], m[2] & !done[2], m[3] & !done[3]])
            }).collect();
            let expected: Vec<u64> = (range.start..range.end).filter(|id| settled.binary_search(id).is_err()).collect();
            prop_assert_eq!(&planned, &expected);
            let chunks = rechunk(planned, chunk);
            prop_assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= chunk));
            prop_assert_eq!(chunks.concat(), expected);
        }

        /// Edge of the id space: masks never overflow.
        #[test]
        fn masks_at_the_top_of_the_id_space(len in 1u64..1000) {
            let range = IdRange { start: u64::MAX - len, end: u64::MAX };
            let n: u64 = (range.start / BLOCK_IDS..=(range.end - 1) / BLOCK_IDS).map(|b| mask_len(&range_mask(b, range))).sum();
            prop_assert_eq!(n, len);
            prop_assert_eq!(Shard { index: 0, count: 1 }.ids_in(range), len);
        }
    }
}
