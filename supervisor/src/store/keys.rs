//! The key table (format 4): each distinct key of a keyed job gets an ordinal, and every record,
//! block, mask and shard below works on ordinals as it works on ids. Beside the segments, in
//! `keys/`:
//!
//! ```text
//! names   append-only; per block of 256 ordinals, its keys in ordinal order:
//!         magic "FLK4" | block u64 LE | count u16 LE | length u32 LE | crc32 u32 LE (of the rest)
//!         | count × (length varint, UTF-8 bytes)
//! index   16 bytes per block number (at n × 16): offset u64 LE in `names`, length u32 LE,
//!         crc32 u32 LE; zero: no keys in that block
//! table   (fingerprint u128 BE, ordinal u64 BE), sorted by fingerprint: key → ordinal
//! ```
//!
//! sled keeps `keys.next`, the ordinal the next new key gets: it is the commit point. Names, index
//! entries and table rows at or past it are from a run killed before it committed, and ignored.
//!
//! A run reads its keys file twice and sorts, never holding the list: once to take every key's
//! fingerprint, sorted on disk (`keysort`), deduplicated and joined with `table`, which says which
//! keys the store has and which are new; once more for the new keys' text, appended in the list's
//! order with the next ordinals (in the shard's own blocks: [`crate::job::next_ordinal`]). The
//! new rows are sorted and merged into a new `table`, renamed into place, then `keys.next` commits.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::block::put_varint;
use super::db::Store;
use super::error::StoreError;
use super::keysort::{Sorted, Sorter};
use crate::job::{
    fingerprint, first_ordinal_from, fold_digest, in_shard, next_ordinal, read_keys, KeySource, Keyed, Shard,
    BLOCK_IDS, DIGEST_SEED,
};

const DIR: &str = "keys";
const NAMES: &str = "names";
const INDEX: &str = "index";
const TABLE: &str = "table";
const MAGIC: &[u8; 4] = b"FLK4";
const HEADER: usize = 22;
const INDEX_ENTRY: u64 = 16;
/// sled's key for the next ordinal.
const NEXT_KEY: &str = "keys.next";

/// What adopting a keys file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The list, summarised (its count and digest over every shard, what this store holds).
    pub keyed: Keyed,
    /// Keys the store had not seen before.
    pub new: u64,
    /// Lines that repeat a key listed before them.
    pub repeated: u64,
}

impl Store {
    fn keys_dir(&self) -> PathBuf {
        self.path.join(DIR)
    }

    fn key_io(&self) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::KeyTable { path: self.path.clone(), source }
    }

    /// The ordinal the next new key gets; `None` before the table's first key.
    fn next_ordinal(&self) -> Result<Option<u64>, StoreError> {
        let v = self.guard(|| Ok(self.db.get(NEXT_KEY)?))?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Reads `source`'s keys, gives the new ones ordinals, and records the job's scope: the list,
    /// and the ordinals of its keys this store's shard holds (see [`Store::adopt_scope`], which
    /// refuses a store of another shard before anything is written).
    pub fn adopt_keys(&self, source: &KeySource, shard: Option<Shard>) -> Result<Adopted, StoreError> {
        self.check_shard(shard)?;
        let dir = self.keys_dir();
        std::fs::create_dir_all(&dir).map_err(self.key_io())?;
        let io = self.key_io();
        let next = self.next_ordinal()?.unwrap_or_else(|| first_ordinal_from(0, shard));
        let keys_error = |error| StoreError::Keys { source_label: source.label.clone(), error };

        // Every key's fingerprint and place in the list, sorted by fingerprint.
        let mut listed = Sorter::<(u128, u64)>::new(&dir);
        for (seq, key) in read_keys(source).map_err(keys_error)?.enumerate() {
            let (_, key) = key.map_err(keys_error)?;
            listed.push((fingerprint(&key), seq as u64)).map_err(&io)?;
        }
        let lines = listed.len;

        // Distinct keys, joined with the table: ordinals known, or new (by place in the list).
        let mut table = TableReader::open(&dir.join(TABLE), next).map_err(&io)?;
        let mut known = Sorter::<u64>::new(&dir);
        let mut fresh = Sorter::<(u64, u128)>::new(&dir);
        let (mut count, mut digest, mut last) = (0u64, DIGEST_SEED, None);
        for entry in listed.sorted().map_err(&io)? {
            let (fp, seq) = entry.map_err(&io)?;
            if last == Some(fp) {
                continue;
            }
            last = Some(fp);
            count += 1;
            digest = fold_digest(digest, fp);
            if !in_shard(fp, shard) {
                continue;
            }
            match table.find(fp).map_err(&io)? {
                Some(ordinal) => known.push(ordinal).map_err(&io)?,
                None => fresh.push((seq, fp)).map_err(&io)?,
            }
        }
        let new = fresh.len;
        let held = known.len + new;
        if new > 0 {
            self.append_keys(source, fresh, next, shard)?;
        }

        // The scope: the known ordinals (sorted), then the new ones, all past them.
        let known = known.sorted().map_err(&io)?.map(|r| r.map_err(&io));
        let mut fresh_ordinal = first_ordinal_from(next, shard);
        let mut fresh_ordinals = (0..new).map(move |_| {
            let o = fresh_ordinal;
            fresh_ordinal = next_ordinal(o, shard);
            Ok(o)
        });
        let keyed = Keyed { count, digest, held, source: source.label.clone() };
        let scope = crate::job::Scope { ids: crate::job::Ids::Keys(keyed.clone()), shard };
        self.adopt_scope(&scope, Some(&mut known.chain(&mut fresh_ordinals)))?;
        Ok(Adopted { keyed, new, repeated: lines - count.min(lines) })
    }

    /// Appends the new keys (`fresh`: place in the list and fingerprint) with ordinals from
    /// `next`, merges their rows into the table, and commits the next ordinal.
    fn append_keys(
        &self,
        source: &KeySource,
        fresh: Sorter<(u64, u128)>,
        next: u64,
        shard: Option<Shard>,
    ) -> Result<(), StoreError> {
        let dir = self.keys_dir();
        let io = self.key_io();
        let keys_error = |error| StoreError::Keys { source_label: source.label.clone(), error };
        let mut names = NameWriter::open(&dir, next).map_err(&io)?;
        let mut rows = Sorter::<(u128, u64)>::new(&dir);
        let mut fresh = fresh.sorted().map_err(&io)?.peekable();
        let mut ordinal = first_ordinal_from(next, shard);
        for (seq, key) in read_keys(source).map_err(keys_error)?.enumerate() {
            let Some(Ok((want, fp))) = fresh.peek() else { break };
            let (want, fp) = (*want, *fp);
            let (_, key) = key.map_err(keys_error)?;
            if seq as u64 != want {
                continue;
            }
            fresh.next();
            names.add(ordinal, &key).map_err(&io)?;
            rows.push((fp, ordinal)).map_err(&io)?;
            ordinal = next_ordinal(ordinal, shard);
        }
        if let Some(Err(e)) = fresh.next() {
            return Err(io(e));
        }
        names.finish().map_err(&io)?;
        let rows = rows.sorted().map_err(&io)?;
        rewrite_table(&dir, next, rows).map_err(&io)?;
        self.commit_next(ordinal)
    }

    fn commit_next(&self, next: u64) -> Result<(), StoreError> {
        self.guard(|| {
            self.db.insert(NEXT_KEY, &next.to_be_bytes())?;
            self.db.flush()?;
            Ok(())
        })
    }

    /// The ordinals of `source`'s keys that the store has, sorted; and how many keys it has
    /// not. For `export --keys`.
    pub fn ordinals_of(&self, source: &KeySource) -> Result<(Sorted<u64>, u64), StoreError> {
        let dir = self.keys_dir();
        let io = self.key_io();
        let next = self.next_ordinal()?.unwrap_or(0);
        let keys_error = |error| StoreError::Keys { source_label: source.label.clone(), error };
        let scratch = tempfile::tempdir_in(&self.path).map_err(&io)?;
        let mut listed = Sorter::<u128>::new(scratch.path());
        for key in read_keys(source).map_err(keys_error)? {
            listed.push(fingerprint(&key.map_err(keys_error)?.1)).map_err(&io)?;
        }
        let mut table = TableReader::open(&dir.join(TABLE), next).map_err(&io)?;
        let mut found = Sorter::<u64>::new(scratch.path());
        let (mut unknown, mut last) = (0, None);
        for fp in listed.sorted().map_err(&io)? {
            let fp = fp.map_err(&io)?;
            if last.replace(fp) == Some(fp) {
                continue;
            }
            match table.find(fp).map_err(&io)? {
                Some(o) => found.push(o).map_err(&io)?,
                None => unknown += 1,
            }
        }
        Ok((found.sorted().map_err(&io)?, unknown))
    }

    /// A reader of the keys' text by ordinal; `None` when the store has no key table.
    pub fn key_names(&self) -> Result<Option<KeyNames>, StoreError> {
        let Some(next) = self.next_ordinal()? else { return Ok(None) };
        let dir = self.keys_dir();
        let open = |name: &str| File::open(dir.join(name)).map_err(self.key_io());
        Ok(Some(KeyNames {
            path: self.path.clone(),
            names: open(NAMES)?,
            index: open(INDEX)?,
            next,
            block: None,
        }))
    }

    /// Copies the key table of the store at `from` as its files are (for `salvage`: it lives
    /// outside sled, and each block of names checks itself), committing the ordinals its table
    /// names. Nothing to do for a store without one.
    pub fn salvage_keys_from(&self, from: &Path) -> Result<(), StoreError> {
        let (theirs, ours) = (from.join(DIR), self.keys_dir());
        if !theirs.join(TABLE).is_file() {
            return Ok(());
        }
        let io = self.key_io();
        std::fs::create_dir_all(&ours).map_err(&io)?;
        for name in [NAMES, INDEX, TABLE] {
            std::fs::copy(theirs.join(name), ours.join(name)).map_err(&io)?;
            File::open(ours.join(name)).and_then(|f| f.sync_all()).map_err(&io)?;
        }
        let mut next = 0;
        for row in TableReader::open(&ours.join(TABLE), u64::MAX).map_err(&io)?.rows() {
            next = next.max(row.map_err(&io)?.1 + 1);
        }
        self.commit_next(next)
    }

    /// Takes on the keys of `inputs`, the stores of a keyed job's shards (for `merge`): their
    /// key tables, and `scope` with the union of their keys' ordinals (shards' keys live in
    /// their own blocks, so no two inputs share an ordinal).
    pub fn adopt_merged_keys(&self, scope: &crate::job::Scope, inputs: &[&Store]) -> Result<(), StoreError> {
        let io = self.key_io();
        let scratch = tempfile::tempdir_in(&self.path).map_err(&io)?;
        let mut ordinals = Sorter::<u64>::new(scratch.path());
        for input in inputs {
            self.merge_keys_from(input)?;
            for block in input.covered()?.blocks() {
                let (n, mask) = block?;
                for o in crate::job::mask_ids(n, mask) {
                    ordinals.push(o).map_err(&io)?;
                }
            }
        }
        let mut sorted = ordinals.sorted().map_err(&io)?.map(|r| r.map_err(&io));
        self.adopt_scope(scope, Some(&mut sorted))
    }

    /// Copies `input`'s key table into this store's (for `merge`): its names block by block,
    /// at the same block numbers (shards' keys live in their own blocks), and its rows merged
    /// into the table.
    fn merge_keys_from(&self, input: &Store) -> Result<(), StoreError> {
        let Some(theirs) = input.next_ordinal()? else { return Ok(()) };
        let ours = self.next_ordinal()?;
        let dir = self.keys_dir();
        std::fs::create_dir_all(&dir).map_err(self.key_io())?;
        let io = self.key_io();
        let mut names = input.key_names()?.expect("a store with keys.next has a key table");
        let mut writer = NameWriter::open(&dir, 0).map_err(&io)?;
        let blocks = names.index.metadata().map_err(&io)?.len() / INDEX_ENTRY;
        for n in 0..blocks.min(theirs.div_ceil(BLOCK_IDS)) {
            if let Some(keys) = names.read_block(n)? {
                writer.put_block(n, &keys).map_err(&io)?;
            }
        }
        writer.finish().map_err(&io)?;
        let scratch = tempfile::tempdir_in(&self.path).map_err(&io)?;
        let mut rows = Sorter::<(u128, u64)>::new(scratch.path());
        for row in TableReader::open(&input.keys_dir().join(TABLE), theirs).map_err(&io)?.rows() {
            rows.push(row.map_err(&io)?).map_err(&io)?;
        }
        let ours = ours.unwrap_or(0);
        rewrite_table(&dir, ours, rows.sorted().map_err(&io)?).map_err(&io)?;
        self.commit_next(ours.max(theirs))
    }
}

/// The keys' text by ordinal, a block at a time.
pub struct KeyNames {
    path: PathBuf,
    names: File,
    index: File,
    next: u64,
    block: Option<(u64, Vec<String>)>,
}

impl KeyNames {
    /// The key of `ordinal`.
    pub fn key(&mut self, ordinal: u64) -> Result<&str, StoreError> {
        let n = ordinal / BLOCK_IDS;
        if self.block.as_ref().is_none_or(|(b, _)| *b != n) {
            let keys = if ordinal < self.next { self.read_block(n)?.unwrap_or_default() } else { Vec::new() };
            self.block = Some((n, keys));
        }
        let keys = &self.block.as_ref().expect("just read").1;
        keys.get((ordinal % BLOCK_IDS) as usize).map(String::as_str).ok_or_else(|| StoreError::Damaged {
            path: self.path.clone(),
            detail: format!("its key table has no key for ordinal {ordinal}"),
        })
    }

    /// The keys of block `n`, in ordinal order; `None` if it has none.
    fn read_block(&mut self, n: u64) -> Result<Option<Vec<String>>, StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: self.path.clone(),
            detail: format!("its key table: {detail}"),
        };
        let mut entry = [0u8; INDEX_ENTRY as usize];
        match self.index.read_exact_at(&mut entry, n * INDEX_ENTRY) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(StoreError::KeyTable { path: self.path.clone(), source }),
        }
        let offset = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Ok(None);
        }
        let mut bytes = vec![0u8; len];
        self.names
            .read_exact_at(&mut bytes, offset)
            .map_err(|source| StoreError::KeyTable { path: self.path.clone(), source })?;
        if crc32fast::hash(&bytes) != u32::from_le_bytes(entry[12..].try_into().expect("4 bytes")) {
            return Err(damaged(format!("the keys of ordinals {}.. fail their checksum", n * BLOCK_IDS)));
        }
        decode_block(&bytes, n)
            .map(Some)
            .ok_or_else(|| damaged(format!("the keys of block {n} are malformed")))
    }
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn encode_block(n: u64, keys: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + keys.iter().map(|k| k.len() + 2).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&u16::try_from(keys.len()).expect("a block holds 256 keys").to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    for k in keys {
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
    }
    let len = u32::try_from(out.len()).expect("a block of keys fits in 4 GiB");
    out[14..18].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[HEADER..]);
    out[18..22].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_block(bytes: &[u8], n: u64) -> Option<Vec<String>> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC || u64::from_le_bytes(bytes[4..12].try_into().ok()?) != n
    {
        return None;
    }
    let count = usize::from(u16::from_le_bytes(bytes[12..14].try_into().ok()?));
    if u32::from_le_bytes(bytes[14..18].try_into().ok()?) as usize != bytes.len() {
        return None;
    }
    if crc32fast::hash(&bytes[HEADER..]) != u32::from_le_bytes(bytes[18..22].try_into().ok()?) {
        return None;
    }
    let mut at = HEADER;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
        let key = bytes.get(at..at.checked_add(len)?)?;
        at += len;
        keys.push(String::from_utf8(key.to_vec()).ok()?);
    }
    (at == bytes.len()).then_some(keys)
}

/// Appends keys to `names` block by block and points `index` at them.
struct NameWriter {
    reader: KeyNames,
    names: BufWriter<File>,
    end: u64,
    index: File,
    block: Option<(u64, Vec<String>)>,
}

impl NameWriter {
    /// Opens the table's files in `dir` for appending; ordinals below `next` are committed.
    fn open(dir: &Path, next: u64) -> std::io::Result<NameWriter> {
        let names = OpenOptions::new().create(true).append(true).open(dir.join(NAMES))?;
        let index =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(dir.join(INDEX))?;
        let end = names.metadata()?.len();
        let reader = KeyNames {
            path: dir.to_owned(),
            names: File::open(dir.join(NAMES))?,
            index: index.try_clone()?,
            next,
            block: None,
        };
        Ok(NameWriter { reader, names: BufWriter::with_capacity(1 << 20, names), end, index, block: None })
    }

    /// Adds the key of `ordinal` (ordinals come in increasing order, in blocks filled from the
    /// start: a block partly filled by an earlier run is read back and continued).
    fn add(&mut self, ordinal: u64, key: &str) -> std::io::Result<()> {
        let (n, offset) = (ordinal / BLOCK_IDS, (ordinal % BLOCK_IDS) as usize);
        if self.block.as_ref().is_none_or(|(b, _)| *b != n) {
            self.flush_block()?;
            let mut keys = if offset > 0 {
                self.reader.read_block(n).map_err(std::io::Error::other)?.unwrap_or_default()
            } else {
                Vec::new()
            };
            keys.truncate(offset);
            self.block = Some((n, keys));
        }
        let keys = &mut self.block.as_mut().expect("just set").1;
        keys.resize(offset, String::new());
        keys.push(key.to_owned());
        Ok(())
    }

    /// Writes block `n`'s keys as they are (for merge).
    fn put_block(&mut self, n: u64, keys: &[String]) -> std::io::Result<()> {
        self.flush_block()?;
        self.write_block(n, keys)
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        if let Some((n, keys)) = self.block.take() {
            self.write_block(n, &keys)?;
        }
        Ok(())
    }

    fn write_block(&mut self, n: u64, keys: &[String]) -> std::io::Result<()> {
        let bytes = encode_block(n, keys);
        self.names.write_all(&bytes)?;
        let mut entry = [0u8; INDEX_ENTRY as usize];
        entry[..8].copy_from_slice(&self.end.to_le_bytes());
        entry[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        entry[12..].copy_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        self.end += bytes.len() as u64;
        // The entry may point at bytes still in the buffer: they are written before the
        // entries are synced, and nothing reads an entry before its run commits.
        self.index.write_all_at(&entry, n * INDEX_ENTRY)
    }

    /// Writes what is buffered and syncs both files.
    fn finish(mut self) -> std::io::Result<()> {
        self.flush_block()?;
        self.names.flush()?;
        self.names.get_ref().sync_data()?;
        self.index.sync_data()
    }
}

/// Reads the table's rows in order, skipping those a killed run left (ordinal past `next`).
struct TableReader {
    rows: Option<BufReader<File>>,
    next: u64,
    head: Option<(u128, u64)>,
}

impl TableReader {
    fn open(path: &Path, next: u64) -> std::io::Result<TableReader> {
        let rows = match File::open(path) {
            Ok(f) => Some(BufReader::with_capacity(1 << 16, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut t = TableReader { rows, next, head: None };
        t.advance()?;
        Ok(t)
    }

    fn advance(&mut self) -> std::io::Result<()> {
        self.head = None;
        let Some(rows) = self.rows.as_mut() else { return Ok(()) };
        let mut bytes = [0u8; 24];
        loop {
            match rows.read_exact(&mut bytes) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let row = <(u128, u64) as super::keysort::Fixed>::get(&bytes);
            if row.1 < self.next {
                self.head = Some(row);
                return Ok(());
            }
        }
    }

    /// The ordinal of `fp`; fingerprints are asked for in increasing order.
    fn find(&mut self, fp: u128) -> std::io::Result<Option<u64>> {
        while let Some((have, ordinal)) = self.head {
            if have > fp {
                return Ok(None);
            }
            self.advance()?;
            if have == fp {
                return Ok(Some(ordinal));
            }
        }
        Ok(None)
    }

    fn rows(mut self) -> impl Iterator<Item = std::io::Result<(u128, u64)>> {
        std::iter::from_fn(move || {
            let row = self.head?;
            Some(self.advance().map(|()| row))
        })
    }
}

/// Writes the table's rows (those below `next`) merged with `new`, to a new file renamed over
/// the old one.
fn rewrite_table(dir: &Path, next: u64, new: Sorted<(u128, u64)>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{TABLE}.new"));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut old = TableReader::open(&dir.join(TABLE), next)?.rows().peekable();
    let mut new = new.peekable();
    let mut bytes = [0u8; 24];
    loop {
        let take_old = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
        };
        let row = if take_old { old.next() } else { new.next() }.expect("peeked")?;
        super::keysort::Fixed::put(&row, &mut bytes);
        out.write_all(&bytes)?;
    }
    let file = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(TABLE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_of_keys_round_trips_and_damage_is_seen() {
        let keys: Vec<String> =
            ["a", "", "é🙂", "with space/and?query"].iter().map(|s| (*s).to_owned()).collect();
        let bytes = encode_block(7, &keys);
        assert_eq!(decode_block(&bytes, 7), Some(keys));
        assert_eq!(decode_block(&bytes, 8), None, "another block's");
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(decode_block(&bad, 7).is_none(), "a flipped byte at {at} went unnoticed");
        }
    }
}
