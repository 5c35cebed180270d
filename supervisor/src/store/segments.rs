//! The bodies: append-only segment files beside the sled database (key-value separation, as
//! WiscKey, Badger and fjall's blob trees do it). sled keeps each block's index and where its
//! bytes are ([`super::blockref`]); the block itself, compressed and checksummed as
//! [`super::block`] encodes it, is appended to the current segment.
//!
//! Why not sled: sled 0.34 bounds its cache in pages, not bytes, and keeps what it reads; with
//! values of tens of KB (a compressed block of 256 bodies of 1 KiB is about 71 KB) its memory
//! grew with the store's size.
//! Why not the `value-log` crate: its segments are sorted runs, each written by one writer and
//! registered in a manifest of its own, and it compresses values itself. flota writes a batch of
//! blocks every 200 ms in no global order, and orders its writes against sled's flush; a block
//! already names and checks itself (number, length, CRC-32), so a segment is just blocks laid end
//! to end, and `salvage` reads one raw, as it read sled's files.
//!
//! Durability: a writer appends, then [`Appender::sync`]s (fdatasync of every segment written
//! since the last sync, and of the directory when a segment was created) before the sled entries
//! that point at those bytes are flushed. So no flushed entry points at bytes that are not on
//! disk; bytes nobody points at (a kill between the two, a block written again) are dead, and
//! [`super::gc`] reclaims them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// The segments' directory, inside the store's.
pub const SEGMENTS_DIR: &str = "segments";
/// A segment is closed and a new one begun once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a segment's file is.
pub fn segment_path(store: &Path, segment: u32) -> PathBuf {
    store.join(SEGMENTS_DIR).join(format!("{segment:08}.seg"))
}

/// The store's segments, in order, each with its file's length.
pub fn list(store: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
    let dir = store.join(SEGMENTS_DIR);
    let io = |source| StoreError::Io { path: store.to_owned(), source };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok()) else {
            continue;
        };
        out.push((id, entry.metadata().map_err(io)?.len()));
    }
    out.sort_unstable();
    Ok(out)
}

/// Appends blocks to the store's segments. One at a time per store: the writer thread during
/// a run, or `merge` and `salvage` into a new store, or the upgrade and the reclaim.
pub struct Appender {
    store: PathBuf,
    current: Option<(u32, File, u64)>,
    /// Segments written since the last sync, and whether the directory changed.
    unsynced: Vec<File>,
    dir_changed: bool,
    next: u32,
}

impl Appender {
    /// Starts appending to a new segment after the store's last (an old segment's tail may be
    /// torn by a kill: it is never written to again).
    pub fn open(store: &Path) -> Result<Appender, StoreError> {
        let next = list(store)?.last().map_or(1, |&(id, _)| id + 1);
        Ok(Appender {
            store: store.to_owned(),
            current: None,
            unsynced: Vec::new(),
            dir_changed: false,
            next,
        })
    }

    /// Appends one block; returns its segment and offset. Durable only after [`Appender::sync`].
    pub fn append(&mut self, bytes: &[u8]) -> Result<(u32, u64), StoreError> {
        if self.current.as_ref().is_none_or(|(_, _, len)| *len >= SEGMENT_BYTES) {
            self.roll().map_err(StoreError::Write)?;
        }
        let (id, file, len) = self.current.as_mut().expect("rolled above");
        let at = *len;
        file.write_all(bytes).map_err(StoreError::Write)?;
        *len += bytes.len() as u64;
        Ok((*id, at))
    }

    fn roll(&mut self) -> std::io::Result<()> {
        let dir = self.store.join(SEGMENTS_DIR);
        if !dir.exists() {
            std::fs::create_dir(&dir)?;
            self.dir_changed = true;
        }
        let id = self.next;
        self.next += 1;
        let file = OpenOptions::new().create_new(true).append(true).open(segment_path(&self.store, id))?;
        self.dir_changed = true;
        if let Some((_, old, _)) = self.current.replace((id, file, 0)) {
            self.unsynced.push(old);
        }
        Ok(())
    }

    /// Makes everything appended so far durable: the segments' data, and the directory entries
    /// of segments created since the last sync.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for file in self.unsynced.drain(..) {
            file.sync_data().map_err(StoreError::Write)?;
        }
        if let Some((_, file, _)) = &self.current {
            file.sync_data().map_err(StoreError::Write)?;
        }
        if std::mem::take(&mut self.dir_changed) {
            File::open(self.store.join(SEGMENTS_DIR))
                .and_then(|d| d.sync_all())
                .map_err(StoreError::Write)?;
            File::open(&self.store).and_then(|d| d.sync_all()).map_err(StoreError::Write)?;
        }
        Ok(())
    }

    /// The segment being written, if one is: it is never reclaimed while it is.
    pub fn current(&self) -> Option<u32> {
        self.current.as_ref().map(|(id, ..)| *id)
    }
}

/// Reads blocks from a store's segments, keeping each segment it reads open.
pub struct SegmentReader {
    store: PathBuf,
    open: HashMap<u32, File>,
}

impl SegmentReader {
    /// A reader of the store at `store`.
    pub fn new(store: &Path) -> SegmentReader {
        SegmentReader { store: store.to_owned(), open: HashMap::new() }
    }

    /// The `len` bytes at `offset` of `segment`. A segment or bytes that are not there mean a
    /// damaged store.
    pub fn read(&mut self, segment: u32, offset: u64, len: u32) -> Result<Vec<u8>, StoreError> {
        let damaged = |detail: String| StoreError::Damaged { path: self.store.clone(), detail };
        if !self.open.contains_key(&segment) {
            let file = File::open(segment_path(&self.store, segment))
                .map_err(|e| damaged(format!("segment {segment} cannot be opened ({e})")))?;
            self.open.insert(segment, file);
        }
        let file = &self.open[&segment];
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| damaged(format!("segment {segment} has no {len} bytes at {offset} ({e})")))?;
        Ok(buf)
    }

    /// Forgets an open segment (it is about to be deleted).
    pub fn close(&mut self, segment: u32) {
        self.open.remove(&segment);
    }
}
