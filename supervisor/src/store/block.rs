//! A block: the records of up to [`BLOCK_IDS`] consecutive ids, in one sled value.
//!
//! sled's cost grows with the number of keys it holds, and large values cost it copies on disk,
//! so the store keeps one key per block of 256 ids: few keys, values of a few KiB to a few
//! hundred (docs/design.md has the measurements behind both bounds). A block is:
//!
//! ```text
//! magic "FLB4" | block number u64 LE | count u16 LE | length u32 LE (of the whole block)
//!              | crc32 u32 LE (of every other byte of the block)
//!              | oldest, newest answer's fetch time u32 LE (Unix seconds; 0: unknown)
//! index: count × (offset u16 LE, kind u8, status u16 LE)       sorted by offset, distinct
//! payload: raw length u32 LE | zstd frame (level 1) of
//!          per record in index order: attempts varint | fetched − oldest varint
//!            | fresh until − fetched + 1 varint (0: not said)
//!            | fetched − changed + 1 varint (0: unknown) | ETag length varint
//!            | Last-Modified length varint | length varint
//!          then per record: ETag | Last-Modified | body (answer) or error text (failed)
//! ```
//!
//! Format 4's block ("FLB4") is format 3's ("FLB2", 22-byte header, per record attempts, length,
//! bytes) with what a refresh needs: when each answer was fetched, until when its server called
//! it fresh, when its body last changed (for `export --changed-since`), and its validators. They are in the compressed payload, its small fields before the
//! bodies, where format 4 costs 0.2 bytes a record more than format 3 (6.1 against 5.9 bytes of
//! segments an item, 1M small bodies from nginx: a block's answers mostly share their second);
//! in the index the times cost 8 bytes a record uncompressed (14.0 bytes an item). The header's oldest and newest fetch time let a refresh by age pass over a block
//! without decompressing it. A format-3 block is read as it is, with all of that unknown (zero,
//! empty); blocks are rewritten as FLB4 when their ids are next written.
//!
//! The index is small and uncompressed, so planning a rerun and counting read no body. The
//! payload of a whole block is compressed together, so what records share (JSON keys, a
//! common shape) costs little. A block names itself and checks itself (its number, length and
//! checksum), so it can be recognised in raw bytes: `salvage` finds every intact block in the
//! store's files even when sled cannot read them ([`scan`]).

use std::collections::BTreeMap;

pub use crate::job::{first_id, locate, BLOCK_IDS};

use super::record::{Fetched, Record};

const MAGIC: &[u8; 4] = b"FLB4";
/// Format 3's blocks, read as they are.
const MAGIC_3: &[u8; 4] = b"FLB2";
/// zstd's fastest level: about three times smaller than the records for JSON bodies, at a
/// small fraction of a core.
const ZSTD_LEVEL: i32 = 1;
/// Format 3's header; format 4's adds the fetch times after it.
const HEADER_3: usize = 22;
const HEADER: usize = 30;
const CRC_AT: usize = 18;
const INDEX_ENTRY: usize = 5;

/// What kind of record an index entry is.
pub const KIND_ANSWER: u8 = 1;
/// No HTTP answer.
pub const KIND_FAILED: u8 = 2;
/// Killed its workers.
pub const KIND_QUARANTINED: u8 = 3;

/// Why a block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Its checksum does not match: its bytes changed after it was written.
    #[error("checksum mismatch")]
    Checksum,
    /// Its bytes do not have the block's shape.
    #[error("malformed ({0})")]
    Malformed(&'static str),
}

/// One entry of a block's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The id's offset in its block.
    pub offset: u16,
    /// [`KIND_ANSWER`], [`KIND_FAILED`] or [`KIND_QUARANTINED`].
    pub kind: u8,
    /// The HTTP status of an answer; 0 otherwise.
    pub status: u16,
}

/// A block's index, checked, without its payload decompressed.
pub struct Index<'a> {
    raw: &'a [u8],
    /// Format 3's block: no fetch times, no validators.
    old: bool,
    /// Its oldest and newest answer's fetch time (Unix seconds; 0: unknown).
    pub fetched: (u32, u32),
}

impl<'a> Index<'a> {
    /// Checks `value`'s shape and checksum, and that it is block `n`, and reads its index.
    pub fn parse(value: &'a [u8], n: u64) -> Result<Index<'a>, BlockError> {
        let (block, len) = header(value).ok_or(BlockError::Malformed("no block header"))?;
        if len != value.len() {
            return Err(BlockError::Malformed("its length does not match"));
        }
        if checksum(value) != u32::from_le_bytes(value[CRC_AT..HEADER_3].try_into().expect("4 bytes")) {
            return Err(BlockError::Checksum);
        }
        if block != n {
            return Err(BlockError::Malformed("it names another block"));
        }
        let count = usize::from(u16::from_le_bytes([value[12], value[13]]));
        let old = &value[..4] == MAGIC_3;
        let start = if old { HEADER_3 } else { HEADER };
        let fetched = if old {
            (0, 0)
        } else {
            let word = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().expect("4 bytes"));
            (word(HEADER_3), word(HEADER_3 + 4))
        };
        let raw =
            value.get(start..start + count * INDEX_ENTRY).ok_or(BlockError::Malformed("index cut short"))?;
        Ok(Index { raw, old, fetched })
    }

    /// The entries, in offset order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + 'a {
        self.raw.chunks_exact(INDEX_ENTRY).map(|e| Entry {
            offset: u16::from_le_bytes([e[0], e[1]]),
            kind: e[2],
            status: u16::from_le_bytes([e[3], e[4]]),
        })
    }

    /// Where the payload starts in the block.
    fn payload_at(&self) -> usize {
        (if self.old { HEADER_3 } else { HEADER }) + self.raw.len()
    }
}

/// The block number and length a block's header claims, unchecked.
fn header(bytes: &[u8]) -> Option<(u64, usize)> {
    let header = if bytes.get(..4) == Some(MAGIC_3) { HEADER_3 } else { HEADER };
    if bytes.len() < header || (&bytes[..4] != MAGIC && &bytes[..4] != MAGIC_3) {
        return None;
    }
    let n = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(bytes[14..18].try_into().expect("4 bytes")) as usize;
    Some((n, len))
}

/// Every intact block in `bytes` (a file of the store, read raw), with its number and its
/// records: each place the magic appears whose header, length, checksum and payload hold. What
/// it finds may include older copies of a block that sled has not yet reclaimed.
pub fn scan(bytes: &[u8]) -> Vec<(u64, Vec<(u16, Record)>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = find_block(&bytes[at..]) {
        let start = at + i;
        let candidate = &bytes[start..];
        match header(candidate) {
            Some((n, len)) if len >= HEADER_3 && len <= candidate.len() => {
                if let Ok(records) = decode(&candidate[..len], n) {
                    found.push((n, records));
                    at = start + len;
                    continue;
                }
            }
            _ => {}
        }
        at = start + 1;
    }
    found
}

/// Where the next block magic (of either format) is.
fn find_block(hay: &[u8]) -> Option<usize> {
    hay.windows(4).position(|w| w == MAGIC || w == MAGIC_3)
}

/// Decodes every record of block `n`, in offset order.
pub fn decode(value: &[u8], n: u64) -> Result<Vec<(u16, Record)>, BlockError> {
    let index = Index::parse(value, n)?;
    let payload = &value[index.payload_at()..];
    let raw_len = payload.get(..4).ok_or(BlockError::Malformed("payload cut short"))?;
    let raw_len = u32::from_le_bytes(raw_len.try_into().expect("4 bytes")) as usize;
    let data =
        zstd::bulk::decompress(&payload[4..], raw_len).map_err(|_| BlockError::Malformed("payload"))?;
    if data.len() != raw_len {
        return Err(BlockError::Malformed("payload length"));
    }
    let records = if index.old { decode_3(&index, &data)? } else { decode_4(&index, &data)? };
    Ok(records)
}

fn record(e: Entry, attempts: u64, fetched: Fetched, bytes: &[u8]) -> Result<Record, BlockError> {
    let attempts = u32::try_from(attempts).map_err(|_| BlockError::Malformed("attempts"))?;
    Ok(match e.kind {
        KIND_ANSWER => Record::Answer { attempts, status: e.status, body: bytes.to_vec(), fetched },
        KIND_FAILED | KIND_QUARANTINED => Record::Failed {
            attempts,
            error: String::from_utf8_lossy(bytes).into_owned(),
            quarantined: e.kind == KIND_QUARANTINED,
        },
        _ => return Err(BlockError::Malformed("unknown record kind")),
    })
}

/// Format 3's payload: per record, attempts, length, bytes.
fn decode_3(index: &Index<'_>, data: &[u8]) -> Result<Vec<(u16, Record)>, BlockError> {
    let mut at = 0;
    let mut out = Vec::with_capacity(index.raw.len() / INDEX_ENTRY);
    for e in index.entries() {
        let attempts = varint(data, &mut at)?;
        let len = length(varint(data, &mut at)?)?;
        let bytes = data.get(at..at.saturating_add(len)).ok_or(BlockError::Malformed("record cut short"))?;
        at += len;
        out.push((e.offset, record(e, attempts, Fetched::default(), bytes)?));
    }
    if at != data.len() {
        return Err(BlockError::Malformed("trailing bytes"));
    }
    Ok(out)
}

/// Format 4's payload: every record's small fields, then every record's bytes.
fn decode_4(index: &Index<'_>, data: &[u8]) -> Result<Vec<(u16, Record)>, BlockError> {
    let mut at = 0;
    let count = index.raw.len() / INDEX_ENTRY;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let mut f = [0u64; 7];
        for v in &mut f {
            *v = varint(data, &mut at)?;
        }
        fields.push(f);
    }
    let oldest = u64::from(index.fetched.0);
    let mut out = Vec::with_capacity(count);
    for (e, [attempts, since, fresh, unchanged_for, etag, modified, len]) in index.entries().zip(fields) {
        let mut take = |len: u64| -> Result<&[u8], BlockError> {
            let len = length(len)?;
            let bytes =
                data.get(at..at.saturating_add(len)).ok_or(BlockError::Malformed("record cut short"))?;
            at += len;
            Ok(bytes)
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (etag, last_modified) = (text(take(etag)?), text(take(modified)?));
        let bytes = take(len)?;
        let time = |v: u64| u32::try_from(v).map_err(|_| BlockError::Malformed("a fetch time"));
        let fetched_at = time(oldest + since)?;
        let fresh_until = if fresh == 0 { 0 } else { time(u64::from(fetched_at) + fresh - 1)? };
        let changed = match unchanged_for {
            0 => 0,
            n => {
                time(u64::from(fetched_at).checked_sub(n - 1).ok_or(BlockError::Malformed("a change time"))?)?
            }
        };
        let fetched = Fetched { at: fetched_at, fresh_until, etag, last_modified, changed };
        out.push((e.offset, record(e, attempts, fetched, bytes)?));
    }
    if at != data.len() {
        return Err(BlockError::Malformed("trailing bytes"));
    }
    Ok(out)
}

fn length(v: u64) -> Result<usize, BlockError> {
    usize::try_from(v).map_err(|_| BlockError::Malformed("length"))
}

/// Encodes records (offset → record) as block `n`.
pub fn encode(n: u64, records: &BTreeMap<u16, Record>) -> Vec<u8> {
    Encoder::new().encode(n, records)
}

/// Encodes blocks one after another, reusing its buffers and its compression context: a block
/// of kilobyte bodies is megabytes before compression, and a fresh context and fresh buffers
/// for each would be allocated, grown and freed again for every block.
pub struct Encoder {
    index: Vec<u8>,
    data: Vec<u8>,
    packed: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder with empty buffers.
    pub fn new() -> Encoder {
        let zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a compression context can be made");
        Encoder { index: Vec::new(), data: Vec::new(), packed: Vec::new(), zstd }
    }

    /// Encodes records (offset → record) as block `n`: a buffer of exactly the block's size.
    pub fn encode(&mut self, n: u64, records: &BTreeMap<u16, Record>) -> Vec<u8> {
        let (index, data) = (&mut self.index, &mut self.data);
        index.clear();
        data.clear();
        let none = Fetched::default();
        let answers = || {
            records.values().filter_map(|r| {
                if let Record::Answer { fetched, .. } = r {
                    Some(fetched.at)
                } else {
                    None
                }
            })
        };
        let (oldest, newest) = (answers().min().unwrap_or(0), answers().max().unwrap_or(0));
        for (&offset, record) in records {
            let (kind, status, attempts, fetched, bytes) = fields(record, &none);
            index.extend_from_slice(&offset.to_le_bytes());
            index.push(kind);
            index.extend_from_slice(&status.to_le_bytes());
            let fresh =
                if fetched.fresh_until == 0 { 0 } else { fetched.fresh_until.saturating_sub(fetched.at) + 1 };
            let unchanged_for = if fetched.changed == 0 {
                0
            } else {
                u64::from(fetched.at.saturating_sub(fetched.changed)) + 1
            };
            for v in [
                u64::from(attempts),
                u64::from(fetched.at.saturating_sub(oldest)),
                u64::from(fresh),
                unchanged_for,
                fetched.etag.len() as u64,
                fetched.last_modified.len() as u64,
                bytes.len() as u64,
            ] {
                put_varint(data, v);
            }
        }
        for record in records.values() {
            let (_, _, _, fetched, bytes) = fields(record, &none);
            for b in [fetched.etag.as_bytes(), fetched.last_modified.as_bytes(), bytes] {
                data.extend_from_slice(b);
            }
        }
        self.packed.clear();
        self.packed.reserve(zstd::zstd_safe::compress_bound(data.len()));
        self.zstd
            .compress_to_buffer(data, &mut self.packed)
            .expect("compressing into a large enough buffer cannot fail");
        let count = u16::try_from(records.len()).expect("a block holds at most BLOCK_IDS records");
        let mut out = Vec::with_capacity(HEADER + index.len() + 4 + self.packed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&oldest.to_le_bytes());
        out.extend_from_slice(&newest.to_le_bytes());
        out.extend_from_slice(index);
        out.extend_from_slice(
            &u32::try_from(data.len()).expect("a block's records fit in 4 GiB").to_le_bytes(),
        );
        out.extend_from_slice(&self.packed);
        let len = u32::try_from(out.len()).expect("a block fits in 4 GiB");
        out[14..18].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&out);
        out[CRC_AT..HEADER_3].copy_from_slice(&crc.to_le_bytes());
        // A block of big bodies leaves big buffers: keep them for the next only if modest.
        for buf in [&mut self.data, &mut self.packed] {
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
        }
        out
    }
}

/// A record's kind, status, attempts, fetch and bytes (`none` for a failure's fetch).
fn fields<'r>(record: &'r Record, none: &'r Fetched) -> (u8, u16, u32, &'r Fetched, &'r [u8]) {
    match record {
        Record::Answer { attempts, status, body, fetched } => {
            (KIND_ANSWER, *status, *attempts, fetched, body)
        }
        Record::Failed { attempts, error, quarantined } => {
            let kind = if *quarantined { KIND_QUARANTINED } else { KIND_FAILED };
            (kind, 0, *attempts, none, error.as_bytes())
        }
    }
}

/// Encoding buffers up to this size are kept for the next block.
const KEEP_CAPACITY: usize = 4 << 20;

/// CRC-32 of a block's bytes but its own field.
fn checksum(value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&value[..CRC_AT]);
    h.update(&value[HEADER_3..]);
    h.finalize()
}

/// Appends `v` as a LEB128 varint.
pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64, BlockError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(BlockError::Malformed("varint cut short"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(BlockError::Malformed("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<u16, Record> {
        BTreeMap::from([
            (
                0,
                Record::Answer {
                    attempts: 1,
                    status: 200,
                    body: b"{\"id\":0}".to_vec(),
                    fetched: Fetched {
                        at: 1_800_000_000,
                        fresh_until: 1_800_000_060,
                        etag: "\"v1\"".into(),
                        last_modified: "Sun, 06 Dec 2026 15:00:00 GMT".into(),
                        changed: 1_799_990_000,
                    },
                },
            ),
            (7, Record::Answer { attempts: 300, status: 404, body: Vec::new(), fetched: Fetched::default() }),
            (
                8,
                Record::Failed {
                    attempts: 8,
                    error: "gave up after 8 attempts: HTTP 503".into(),
                    quarantined: false,
                },
            ),
            (
                255,
                Record::Failed {
                    attempts: 4,
                    error: "quarantined: killed 4 workers".into(),
                    quarantined: true,
                },
            ),
        ])
    }

    #[test]
    fn blocks_round_trip_and_their_index_reads_without_the_payload() {
        let records = sample();
        let value = encode(3, &records);
        let back: BTreeMap<u16, Record> = decode(&value, 3).expect("decodes").into_iter().collect();
        assert_eq!(back, records);
        let entries: Vec<Entry> = Index::parse(&value, 3).expect("parses").entries().collect();
        assert_eq!(
            entries,
            vec![
                Entry { offset: 0, kind: KIND_ANSWER, status: 200 },
                Entry { offset: 7, kind: KIND_ANSWER, status: 404 },
                Entry { offset: 8, kind: KIND_FAILED, status: 0 },
                Entry { offset: 255, kind: KIND_QUARANTINED, status: 0 },
            ]
        );
    }

    #[test]
    fn every_changed_byte_and_every_truncation_is_caught() {
        let value = encode(5, &sample());
        for at in 0..value.len() {
            let mut bad = value.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, 5).is_err(), "a flipped byte at {at} went unnoticed");
            assert!(decode(&value[..at], 5).is_err(), "a block cut to {at} bytes went unnoticed");
        }
        assert_eq!(decode(&value, 6).err(), Some(BlockError::Malformed("it names another block")));
    }

    #[test]
    fn similar_bodies_compress_together() {
        let body = |i: u64| {
            format!("{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{},\"tags\":[\"a\",\"b\"]}}", i * 7)
        };
        let records: BTreeMap<u16, Record> = (0..BLOCK_IDS as u16)
            .map(|i| {
                let body = body(i.into()).into_bytes();
                (i, Record::Answer { attempts: 1, status: 200, body, fetched: Fetched::default() })
            })
            .collect();
        let raw: usize = (0..BLOCK_IDS).map(|i| body(i).len()).sum();
        let stored = encode(0, &records).len();
        assert!(stored * 3 < raw, "{stored} bytes stored for {raw} bytes of bodies");
    }

    #[test]
    fn intact_blocks_are_found_in_raw_bytes_and_damaged_ones_are_not() {
        let (a, b, c) = (encode(1, &sample()), encode(9, &sample()), encode(4, &sample()));
        let mut file = b"sled's own bytes FLB2 and a false magic".to_vec();
        file.extend_from_slice(&a);
        file.extend_from_slice(b"between");
        let b_at = file.len();
        file.extend_from_slice(&b);
        file.extend_from_slice(&c[..c.len() - 3]); // cut short, as a truncated file leaves it
        file[b_at + 40] ^= 0xff; // block 9 damaged
        let found: Vec<u64> = scan(&file).into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, vec![1]);
    }

    #[test]
    fn ids_map_to_blocks_and_back() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(255), (0, 255));
        assert_eq!(locate(256), (1, 0));
        assert_eq!(locate(u64::MAX), (u64::MAX / 256, 255));
        assert_eq!(first_id(3) + 5, 773);
    }
}
