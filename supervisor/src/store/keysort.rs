//! Sorting more fixed-size records than memory should hold: runs of [`RUN_BYTES`] sorted in
//! memory and spilled to anonymous files in the store's directory, then merged. The key table
//! sorts keys' fingerprints with it, so a list of ten million keys is planned in a few tens of
//! MiB.
//!
//! Ours rather than the `extsort` crate's: that one brings rayon and, at build time, a
//! documentation tester with cargo_metadata and a Markdown parser; records of a fixed size need
//! a hundred lines.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Bytes of records sorted in memory at once.
const RUN_BYTES: usize = 4 << 20;

/// A record of fixed size, ordered as it sorts.
pub trait Fixed: Ord + Copy {
    /// Its encoded size.
    const LEN: usize;
    /// Writes it into `out` (`LEN` bytes).
    fn put(&self, out: &mut [u8]);
    /// Reads it from `bytes` (`LEN` bytes).
    fn get(bytes: &[u8]) -> Self;
}

impl Fixed for u64 {
    const LEN: usize = 8;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_be_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
    }
}

/// A fingerprint.
impl Fixed for u128 {
    const LEN: usize = 16;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_be_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
    }
}

/// A fingerprint and a number (a line's, or an ordinal), ordered by fingerprint.
impl Fixed for (u128, u64) {
    const LEN: usize = 24;
    fn put(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.0.to_be_bytes());
        out[16..].copy_from_slice(&self.1.to_be_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        (
            u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes")),
            u64::from_be_bytes(bytes[16..].try_into().expect("8 bytes")),
        )
    }
}

/// A line number and a fingerprint, ordered by line.
impl Fixed for (u64, u128) {
    const LEN: usize = 24;
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.0.to_be_bytes());
        out[8..].copy_from_slice(&self.1.to_be_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        (
            u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            u128::from_be_bytes(bytes[8..].try_into().expect("16 bytes")),
        )
    }
}

/// Collects records, then gives them back in order.
pub struct Sorter<T: Fixed> {
    dir: PathBuf,
    buffer: Vec<T>,
    runs: Vec<File>,
    /// Records pushed.
    pub len: u64,
}

impl<T: Fixed> Sorter<T> {
    /// A sorter spilling into `dir` (anonymous files, gone when closed).
    pub fn new(dir: &Path) -> Sorter<T> {
        Sorter { dir: dir.to_owned(), buffer: Vec::new(), runs: Vec::new(), len: 0 }
    }

    fn capacity() -> usize {
        RUN_BYTES / T::LEN
    }

    /// Adds a record.
    pub fn push(&mut self, record: T) -> io::Result<()> {
        if self.buffer.len() >= Self::capacity() {
            self.spill()?;
        }
        self.buffer.push(record);
        self.len += 1;
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buffer.sort_unstable();
        let mut file = tempfile::tempfile_in(&self.dir)?;
        {
            let mut w = BufWriter::with_capacity(1 << 16, &mut file);
            let mut bytes = vec![0u8; T::LEN];
            for r in &self.buffer {
                r.put(&mut bytes);
                w.write_all(&bytes)?;
            }
            w.flush()?;
        }
        file.rewind()?;
        self.runs.push(file);
        self.buffer.clear();
        Ok(())
    }

    /// The records, in order.
    pub fn sorted(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            self.buffer.sort_unstable();
            return Ok(Sorted { memory: self.buffer.into_iter(), runs: Vec::new(), heap: BinaryHeap::new() });
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        let mut runs: Vec<BufReader<File>> =
            self.runs.into_iter().map(|f| BufReader::with_capacity(1 << 16, f)).collect();
        let mut heap = BinaryHeap::new();
        for (n, run) in runs.iter_mut().enumerate() {
            if let Some(r) = next_of::<T>(run)? {
                heap.push(Reverse((r, n)));
            }
        }
        Ok(Sorted { memory: Vec::new().into_iter(), runs, heap })
    }
}

fn next_of<T: Fixed>(run: &mut impl Read) -> io::Result<Option<T>> {
    let mut bytes = [0u8; 32];
    let bytes = &mut bytes[..T::LEN];
    match run.read_exact(bytes) {
        Ok(()) => Ok(Some(T::get(bytes))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sorted records, from memory or merged from the runs.
pub struct Sorted<T: Fixed> {
    memory: std::vec::IntoIter<T>,
    runs: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(T, usize)>>,
}

impl<T: Fixed> Iterator for Sorted<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        if self.runs.is_empty() {
            return self.memory.next().map(Ok);
        }
        let Reverse((r, n)) = self.heap.pop()?;
        match next_of::<T>(&mut self.runs[n]) {
            Ok(Some(next)) => self.heap.push(Reverse((next, n))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_records_than_a_run_come_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 3 * (RUN_BYTES / 24) + 1234;
        let mut s = Sorter::<(u128, u64)>::new(dir.path());
        let mut expected = Vec::new();
        for i in 0..n as u64 {
            let fp = u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) << 17 | u128::from(i % 7);
            s.push((fp, i)).expect("pushes");
            expected.push((fp, i));
        }
        expected.sort_unstable();
        assert_eq!(s.runs.len(), 3, "spilled");
        let back: Vec<_> = s.sorted().expect("sorts").collect::<io::Result<_>>().expect("reads");
        assert_eq!(back, expected);
        let mut small = Sorter::<u64>::new(dir.path());
        for v in [5, 1, 3] {
            small.push(v).expect("pushes");
        }
        assert_eq!(small.sorted().expect("sorts").map(|r| r.expect("ok")).collect::<Vec<_>>(), vec![1, 3, 5]);
    }
}
