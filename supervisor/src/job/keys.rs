//! Keys: items named by strings (`--keys FILE`), read as a stream, and what a key's identity is.
//!
//! A keys file is read line by line (or CSV record by record, or JSON line by line) and never
//! held whole: the store gives each distinct key an ordinal, and everything below the job's
//! vocabulary (blocks of 256, masks, shards, merge) works on ordinals as it works on ids.
//!
//! A key's identity is its fingerprint, the XXH3-128 hash of its UTF-8 bytes: two lines are the
//! same key when their fingerprints agree (two distinct keys sharing one is a chance of about
//! n² / 2¹²⁹, under 10⁻²¹ for a billion keys). A key's shard is its fingerprint modulo the
//! number of shards (`xxhash.xxh3_128_intdigest(key.encode()) % N` in Python), so it depends on
//! the key alone: lists in any order, on any machine, cut the same way.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use shared::template::MAX_KEY_BYTES;

use super::ids::{Shard, BLOCK_IDS};

/// How the keys are laid out in their file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFormat {
    /// One key a line, as it is: no comments, no trimming; empty lines skipped.
    Lines,
    /// A CSV file with a header: the keys are the named column.
    CsvColumn(String),
    /// JSON Lines: the keys are the named field of each object (a string, or a number's text).
    JsonField(String),
}

/// Where a job's keys are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// The file (standard input is first copied to a file, as the keys are read more than once).
    pub path: PathBuf,
    /// How the keys are laid out.
    pub format: KeyFormat,
    /// What the user named: the path, or `stdin`.
    pub label: String,
}

/// Copies standard input to a temporary file, removed when the path is dropped: keys are read
/// more than once, and stdin only once.
pub fn spool_stdin() -> std::io::Result<tempfile::TempPath> {
    let mut spool = tempfile::NamedTempFile::new()?;
    std::io::copy(&mut std::io::stdin().lock(), &mut spool)?;
    Ok(spool.into_temp_path())
}

/// A key's fingerprint: its identity.
pub fn fingerprint(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// Whether the key with fingerprint `fp` is shard `shard`'s (all are when there is none).
pub fn in_shard(fp: u128, shard: Option<Shard>) -> bool {
    shard.is_none_or(|s| fp % u128::from(s.count) == u128::from(s.index))
}

/// The ordinal a store gives its next new key after `ordinal`: the next one in a block the
/// store's shard owns. A shard's keys get ordinals in its own blocks (`I`, `I + N`, ...), so
/// shard stores never share a block and merge block by block, as id shards do.
pub fn next_ordinal(ordinal: u64, shard: Option<Shard>) -> u64 {
    first_ordinal_from(ordinal + 1, shard)
}

/// The first ordinal at or after `ordinal` in a block `shard` owns.
pub fn first_ordinal_from(ordinal: u64, shard: Option<Shard>) -> u64 {
    let Some(s) = shard else { return ordinal };
    let block = ordinal / BLOCK_IDS;
    if s.owns_block(block) {
        return ordinal;
    }
    let ahead = (s.index + s.count - block % s.count) % s.count;
    (block + ahead) * BLOCK_IDS
}

/// Why a keys file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line is not UTF-8.
    #[error("line {line} is not UTF-8")]
    NotUtf8 {
        /// Its number, from 1.
        line: u64,
    },
    /// A key holds a character a key may not.
    #[error("line {line} holds a {what} (a key is any UTF-8 without CR, LF or NUL){hint}")]
    BadChar {
        /// Its number, from 1.
        line: u64,
        /// `CR` or `NUL`.
        what: &'static str,
        /// How to mend it.
        hint: &'static str,
    },
    /// A key too long for a URL.
    #[error("line {line} holds a key of {len} bytes (at most {MAX_KEY_BYTES})")]
    TooLong {
        /// Its number, from 1.
        line: u64,
        /// Its length.
        len: usize,
    },
    /// The CSV has no such column.
    #[error("it has no column `{0}` (its header: {1})")]
    NoColumn(String, String),
    /// A JSON line has no such field, or it is not a string or a number.
    #[error("line {line} {why}")]
    Json {
        /// Its number, from 1.
        line: u64,
        /// What is wrong.
        why: String,
    },
    /// The CSV is malformed.
    #[error("{0}")]
    Csv(String),
}

/// A file's keys as they are read: each with its line (or record) number.
pub type Keys = Box<dyn Iterator<Item = Result<(u64, String), KeyError>>>;

/// Reads the keys of `source`: each with its line (or record) number, empty keys skipped.
pub fn read_keys(source: &KeySource) -> Result<Keys, KeyError> {
    let file = std::fs::File::open(&source.path)?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    Ok(match &source.format {
        KeyFormat::Lines => Box::new(lines(reader)),
        KeyFormat::CsvColumn(name) => csv_column(reader, name)?,
        KeyFormat::JsonField(name) => Box::new(json_field(reader, name.clone())),
    })
}

/// A key as the file holds it, checked.
fn checked(line: u64, key: String) -> Result<(u64, String), KeyError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { line, len: key.len() });
    }
    if key.contains('\r') {
        let hint = if key.ends_with('\r') {
            ": a file with Windows line ends? convert it with dos2unix"
        } else {
            ""
        };
        return Err(KeyError::BadChar { line, what: "CR", hint });
    }
    if key.contains('\0') {
        return Err(KeyError::BadChar { line, what: "NUL", hint: "" });
    }
    Ok((line, key))
}

fn lines(mut reader: impl BufRead) -> impl Iterator<Item = Result<(u64, String), KeyError>> {
    let mut line = 0u64;
    let mut buf = Vec::with_capacity(256);
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                done = true;
                return Some(Err(e.into()));
            }
        }
        line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.is_empty() {
            continue;
        }
        let result = match std::str::from_utf8(&buf) {
            Ok(key) => checked(line, key.to_owned()),
            Err(_) => Err(KeyError::NotUtf8 { line }),
        };
        done = result.is_err();
        return Some(result);
    })
}

fn csv_column(reader: impl Read + 'static, name: &str) -> Result<Keys, KeyError> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(reader);
    let headers = csv.headers().map_err(csv_error)?.clone();
    let column = headers.iter().position(|h| h == name).ok_or_else(|| {
        let all: Vec<&str> = headers.iter().take(10).collect();
        KeyError::NoColumn(name.to_owned(), all.join(", "))
    })?;
    let mut record = csv::ByteRecord::new();
    let mut done = false;
    Ok(Box::new(std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        match csv.read_byte_record(&mut record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => {
                done = true;
                return Some(Err(csv_error(e)));
            }
        }
        let line = record.position().map_or(0, csv::Position::line);
        let Some(field) = record.get(column).filter(|f| !f.is_empty()) else { continue };
        let result = match std::str::from_utf8(field) {
            Ok(key) => checked(line, key.to_owned()),
            Err(_) => Err(KeyError::NotUtf8 { line }),
        };
        done = result.is_err();
        return Some(result);
    })))
}

fn csv_error(e: csv::Error) -> KeyError {
    match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => {
            KeyError::NotUtf8 { line: pos.as_ref().map_or(0, csv::Position::line) }
        }
        _ => KeyError::Csv(e.to_string()),
    }
}

fn json_field(reader: impl BufRead, name: String) -> impl Iterator<Item = Result<(u64, String), KeyError>> {
    let mut lines = lines(reader);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let result = lines.next()?.and_then(|(line, text)| {
            let bad = |why: String| KeyError::Json { line, why };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("is not JSON ({e})")))?;
            let key = match value.get(&name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(n @ serde_json::Value::Number(_)) => n.to_string(),
                Some(other) => return Err(bad(format!("has `{name}` as {other}, not a string or a number"))),
                None => return Err(bad(format!("has no field `{name}`"))),
            };
            checked(line, key)
        });
        done = result.is_err();
        Some(result)
    })
    .filter(|r| !matches!(r, Ok((_, k)) if k.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &tempfile::TempDir, text: &[u8], format: KeyFormat) -> KeySource {
        let path = dir.path().join("keys");
        std::fs::write(&path, text).expect("writes");
        KeySource { path, format, label: "keys".into() }
    }

    fn all(s: &KeySource) -> Result<Vec<(u64, String)>, String> {
        read_keys(s).map_err(|e| e.to_string())?.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    #[test]
    fn lines_are_keys_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = source(
            &dir,
            b"octocat\n\n#hashtag\n  spaced \na/b?c=d&e#f\n\xc3\xa9\xf0\x9f\x99\x82",
            KeyFormat::Lines,
        );
        let keys = all(&s).expect("reads");
        assert_eq!(
            keys,
            vec![
                (1, "octocat".into()),
                (3, "#hashtag".into()),
                (4, "  spaced ".into()),
                (5, "a/b?c=d&e#f".into()),
                (6, "é🙂".into())
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = all(&source(&dir, b"a\nb\n\xff\xfe\n", KeyFormat::Lines)).expect_err("refused");
        assert_eq!(e, "line 3 is not UTF-8");
        let e = all(&source(&dir, b"a\r\nb\r\n", KeyFormat::Lines)).expect_err("refused");
        assert!(e.starts_with("line 1 holds a CR") && e.contains("dos2unix"), "{e}");
        let e = all(&source(&dir, b"a\nb\0c\n", KeyFormat::Lines)).expect_err("refused");
        assert!(e.starts_with("line 2 holds a NUL"), "{e}");
        let long = format!("ok\n{}\n", "x".repeat(MAX_KEY_BYTES + 1));
        assert!(all(&source(&dir, long.as_bytes(), KeyFormat::Lines))
            .expect_err("refused")
            .starts_with("line 2"));
    }

    #[test]
    fn csv_columns_and_json_fields_are_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = b"sku,name\nA-1,\"x, y\"\n,empty\n\"B,2\",z\n";
        let keys = all(&source(&dir, csv, KeyFormat::CsvColumn("sku".into()))).expect("reads");
        assert_eq!(keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>(), vec!["A-1", "B,2"]);
        let e = all(&source(&dir, csv, KeyFormat::CsvColumn("isbn".into()))).expect_err("refused");
        assert_eq!(e, "it has no column `isbn` (its header: sku, name)");
        let jsonl = b"{\"login\":\"a\\\"b\"}\n{\"login\":42}\n\n{\"login\":\"\"}\n";
        let keys = all(&source(&dir, jsonl, KeyFormat::JsonField("login".into()))).expect("reads");
        assert_eq!(keys, vec![(1, "a\"b".into()), (2, "42".into())]);
        let e =
            all(&source(&dir, b"{\"id\":1}\n", KeyFormat::JsonField("login".into()))).expect_err("refused");
        assert_eq!(e, "line 1 has no field `login`");
        assert!(all(&source(&dir, b"{oops\n", KeyFormat::JsonField("a".into()))).is_err());
    }

    #[test]
    fn a_shard_s_ordinals_stay_in_its_blocks() {
        let shard = Shard { index: 1, count: 3 };
        let s = Some(shard);
        assert_eq!(first_ordinal_from(0, s), 256);
        assert_eq!(next_ordinal(256, s), 257);
        assert_eq!(next_ordinal(511, s), 4 * 256);
        assert_eq!(next_ordinal(4 * 256 + 255, s), 7 * 256);
        assert_eq!(next_ordinal(9, None), 10);
        let mut o = first_ordinal_from(0, s);
        for _ in 0..2000 {
            assert!(shard.owns_block(o / BLOCK_IDS));
            o = next_ordinal(o, s);
        }
    }

    #[test]
    fn a_key_s_shard_is_its_fingerprint_modulo_n() {
        // XXH3-128 of "octocat", as Python's xxhash.xxh3_128_intdigest gives it.
        let fp = fingerprint("octocat");
        assert_eq!(fp, 96_629_359_151_327_095_197_274_890_645_710_601_760);
        let count = 3;
        let owners: Vec<u64> =
            (0..count).filter(|&index| in_shard(fp, Some(Shard { index, count }))).collect();
        assert_eq!(owners, vec![1]);
        assert!(in_shard(fp, None));
    }
}
