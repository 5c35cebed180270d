//! What sled keeps of a block: which of its ids have a record, which an HTTP answer, which are
//! quarantined, how many answers are 2xx, when its oldest and newest answers were fetched, and
//! where the block's bytes are in the segments. 134 bytes, whatever the bodies: the planner, the
//! counter, `status` and `coverage` read only these, and sled's memory stays small however large
//! the store grows.
//!
//! ```text
//! magic "FLR4" | recorded, answered, quarantined: 3 × 256-bit mask (32 bytes each)
//!              | 2xx count u16 LE | segment u32 LE | offset u64 LE | length u32 LE
//!              | crc32 u32 LE of the block's bytes
//!              | oldest, newest answer's fetch time: 2 × u32 LE (Unix seconds; 0: unknown)
//!              | crc32 u32 LE of everything before it
//! ```
//!
//! Format 3's entry ("FLR3", 126 bytes) is the same without the fetch times, and is read as it
//! is (times unknown) until its block is next written.

use std::path::Path;

use super::access::corrupt;
use super::block::{self, BlockError, Index, KIND_ANSWER, KIND_QUARANTINED};
use super::error::StoreError;
use super::segments::SegmentReader;
use crate::job::{mask_len, mask_set, Mask};

const MAGIC: &[u8; 4] = b"FLR4";
const MAGIC_3: &[u8; 4] = b"FLR3";
/// The encoded length of a [`BlockRef`].
pub const REF_LEN: usize = 4 + 3 * 32 + 2 + 4 + 8 + 4 + 4 + 8 + 4;
/// A format-3 entry's length.
const REF_LEN_3: usize = REF_LEN - 8;

/// Which ids of a block have a record, and of which kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    /// With an HTTP answer.
    pub answered: Mask,
    /// With any record.
    pub recorded: Mask,
    /// Quarantined.
    pub quarantined: Mask,
}

/// A block's entry in sled: its kinds, and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Which ids have which kind of record.
    pub kinds: Kinds,
    /// Answers with a 2xx status.
    pub success: u16,
    /// The segment holding the block.
    pub segment: u32,
    /// Where in it.
    pub offset: u64,
    /// The block's length.
    pub len: u32,
    /// The CRC-32 of the block's bytes.
    pub crc: u32,
    /// When its oldest answer was fetched (Unix seconds); 0: unknown, or no answer.
    pub oldest: u32,
    /// When its newest answer was fetched.
    pub newest: u32,
}

impl BlockRef {
    /// The entry of block `n`, encoded as `bytes`, now at `offset` of `segment`.
    pub fn of_block(n: u64, bytes: &[u8], segment: u32, offset: u64) -> Result<BlockRef, BlockError> {
        let index = Index::parse(bytes, n)?;
        let base = block::first_id(n);
        let (mut kinds, mut success) = (Kinds::default(), 0u16);
        for e in index.entries() {
            let id = base + u64::from(e.offset);
            mask_set(&mut kinds.recorded, id);
            match e.kind {
                KIND_ANSWER => {
                    mask_set(&mut kinds.answered, id);
                    success += u16::from((200..300).contains(&e.status));
                }
                KIND_QUARANTINED => mask_set(&mut kinds.quarantined, id),
                _ => {}
            }
        }
        let len = u32::try_from(bytes.len()).map_err(|_| BlockError::Malformed("block over 4 GiB"))?;
        let (oldest, newest) = index.fetched;
        Ok(BlockRef { kinds, success, segment, offset, len, crc: crc32fast::hash(bytes), oldest, newest })
    }

    /// Ids with a record.
    pub fn records(&self) -> u64 {
        mask_len(&self.kinds.recorded)
    }

    /// The bytes sled keeps.
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut out = [0u8; REF_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(MAGIC);
        for mask in [&self.kinds.recorded, &self.kinds.answered, &self.kinds.quarantined] {
            for word in mask {
                put(&word.to_le_bytes());
            }
        }
        put(&self.success.to_le_bytes());
        put(&self.segment.to_le_bytes());
        put(&self.offset.to_le_bytes());
        put(&self.len.to_le_bytes());
        put(&self.crc.to_le_bytes());
        put(&self.oldest.to_le_bytes());
        put(&self.newest.to_le_bytes());
        let own = crc32fast::hash(&out[..REF_LEN - 4]);
        out[REF_LEN - 4..].copy_from_slice(&own.to_le_bytes());
        out
    }

    /// Reads the entry sled keeps; damage is an error.
    pub fn decode(bytes: &[u8]) -> Result<BlockRef, BlockError> {
        let len = match &bytes[..4.min(bytes.len())] {
            m if m == MAGIC => REF_LEN,
            m if m == MAGIC_3 => REF_LEN_3,
            _ => return Err(BlockError::Malformed("not a block entry")),
        };
        if bytes.len() != len {
            return Err(BlockError::Malformed("not a block entry"));
        }
        let own = u32::from_le_bytes(bytes[len - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..len - 4]) != own {
            return Err(BlockError::Checksum);
        }
        let mut at = 4;
        let mut take = |n: usize| {
            let s = &bytes[at..at + n];
            at += n;
            s
        };
        let mut mask = || -> Mask {
            let mut m = [0u64; 4];
            for w in &mut m {
                *w = u64::from_le_bytes(take(8).try_into().expect("8 bytes"));
            }
            m
        };
        let kinds = Kinds { recorded: mask(), answered: mask(), quarantined: mask() };
        let success = u16::from_le_bytes(take(2).try_into().expect("2 bytes"));
        let segment = u32::from_le_bytes(take(4).try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(take(8).try_into().expect("8 bytes"));
        let block_len = u32::from_le_bytes(take(4).try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(take(4).try_into().expect("4 bytes"));
        let (oldest, newest) = if len == REF_LEN {
            let mut word = || u32::from_le_bytes(take(4).try_into().expect("4 bytes"));
            (word(), word())
        } else {
            (0, 0)
        };
        Ok(BlockRef { kinds, success, segment, offset, len: block_len, crc, oldest, newest })
    }

    /// Reads the entry of block `n` of the store at `path`; damage is a [`StoreError::Corrupt`].
    pub fn read(path: &Path, n: u64, bytes: &[u8]) -> Result<BlockRef, StoreError> {
        BlockRef::decode(bytes).map_err(|why| corrupt(path, n, why))
    }

    /// The block's bytes, checked against the entry's checksum (and, when decoded, against its
    /// own number and checksum).
    pub fn load(&self, segments: &mut SegmentReader, path: &Path, n: u64) -> Result<Vec<u8>, StoreError> {
        let bytes = segments.read(self.segment, self.offset, self.len)?;
        if crc32fast::hash(&bytes) != self.crc {
            return Err(corrupt(path, n, BlockError::Checksum));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::record::{Fetched, Record};

    #[test]
    fn an_entry_reads_back_as_written_and_damage_is_seen() {
        let mut records = BTreeMap::new();
        let at = |t: u32| Fetched { at: t, ..Fetched::default() };
        records.insert(0, Record::Answer { attempts: 1, status: 200, body: b"a".to_vec(), fetched: at(900) });
        records.insert(7, Record::Answer { attempts: 2, status: 404, body: b"b".to_vec(), fetched: at(800) });
        records.insert(9, Record::Failed { attempts: 8, error: "HTTP 503".into(), quarantined: false });
        records
            .insert(255, Record::Failed { attempts: 2, error: "quarantined: x".into(), quarantined: true });
        let bytes = block::encode(3, &records);
        let r = BlockRef::of_block(3, &bytes, 12, 4096).expect("a block");
        assert_eq!(
            (r.records(), r.success, mask_len(&r.kinds.answered), mask_len(&r.kinds.quarantined)),
            (4, 1, 2, 1)
        );
        assert_eq!((r.segment, r.offset, r.len as usize), (12, 4096, bytes.len()));
        assert_eq!((r.oldest, r.newest), (800, 900));
        let encoded = r.encode();
        assert_eq!(BlockRef::decode(&encoded), Ok(r));
        let mut flipped = encoded;
        flipped[40] ^= 1;
        assert_eq!(BlockRef::decode(&flipped), Err(BlockError::Checksum));
        assert!(BlockRef::decode(&encoded[..REF_LEN - 1]).is_err());
    }
}
