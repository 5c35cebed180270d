//! `supervisor export`: every stored record, in id order, as JSON Lines or CSV.
//!
//! A body that is valid UTF-8 is written as text (`body`); any other body is written as base64
//! (`body_base64`), never mangled. A failed id has `"status": null` and its `error`. `--only`
//! keeps one kind of record, `--ids` one range (only its blocks are read). A keyed store's
//! records name their `key` instead of an id (in the order its keys were first listed), and
//! `--keys FILE` keeps those of the keys listed. `fetched_at` says when an answer was fetched
//! (RFC 3339, UTC; left out for a record of a format-3 store, which did not keep it);
//! `--body json` embeds a body that is valid JSON as JSON.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use base64::Engine;
use serde::Serialize;

use crate::cli::{BodyAs, ExportArgs, Format, Only};
use crate::engine::Error;
use crate::job::{spool_stdin, Ids, KeyFormat, KeySource};
use crate::store::{Record, Store, StoreError};
use crate::util::thousands;

#[derive(Serialize)]
struct Row<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    status: Option<u16>,
    attempts: u32,
    /// When it was fetched (RFC 3339, UTC); left out when unknown (a record of format 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    fetched_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Body<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// A body in JSON Lines: a string, or (`--body json`) JSON as it is.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Text(&'a str),
    Json(&'a serde_json::value::RawValue),
}

impl<'a> Body<'a> {
    fn text(self) -> Option<&'a str> {
        match self {
            Body::Text(t) => Some(t),
            Body::Json(j) => Some(j.get()),
        }
    }
}

#[derive(Serialize)]
struct CsvRow<'a> {
    id: u64,
    status: Option<u16>,
    attempts: u32,
    fetched_at: Option<String>,
    body: Option<&'a str>,
    body_base64: Option<String>,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct CsvKeyRow<'a> {
    key: &'a str,
    status: Option<u16>,
    attempts: u32,
    fetched_at: Option<String>,
    body: Option<&'a str>,
    body_base64: Option<String>,
    error: Option<&'a str>,
}

/// The row of the record of `id`, or of `key` in a keyed store; `json`: a body that is JSON is
/// embedded as JSON.
fn row<'a>(id: u64, key: Option<&'a str>, record: &'a Record, json: bool) -> Row<'a> {
    let id = if key.is_some() { None } else { Some(id) };
    match record {
        Record::Answer { attempts, status, body, fetched } => {
            let text = std::str::from_utf8(body).ok();
            let as_json = text.filter(|_| json).and_then(|t| serde_json::from_str(t).ok());
            Row {
                id,
                key,
                status: Some(*status),
                attempts: *attempts,
                fetched_at: (fetched.at > 0).then(|| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(fetched.at));
                    humantime::format_rfc3339_seconds(at).to_string()
                }),
                body: as_json.map(Body::Json).or(text.map(Body::Text)),
                body_base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(body)),
                error: None,
            }
        }
        Record::Failed { attempts, error, .. } => Row {
            id,
            key,
            status: None,
            attempts: *attempts,
            fetched_at: None,
            body: None,
            body_base64: None,
            error: Some(error),
        },
    }
}

/// Why writing records stopped: the store could not be read, or the output not written. The
/// caller knows where the output goes, so it names it.
enum ExportError {
    Store(StoreError),
    Write(io::Error),
}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> Self {
        ExportError::Store(e)
    }
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        ExportError::Write(e)
    }
}

impl ExportError {
    /// As the command's error, naming the output it was writing.
    fn writing(self, output: &Path) -> Error {
        match self {
            ExportError::Store(e) => Error::Store(e),
            ExportError::Write(source) => Error::Output { path: output.to_owned(), source },
        }
    }
}

/// Whether `record` is one `--only` asks for.
fn wanted(only: Option<Only>, record: &Record) -> bool {
    match (only, record) {
        (None, _) => true,
        (Some(Only::Ok), Record::Answer { status, .. }) => (200..300).contains(status),
        (Some(Only::Answered), Record::Answer { .. }) => true,
        (Some(Only::Failed), Record::Failed { .. }) => true,
        (Some(Only::Quarantined), Record::Failed { quarantined, .. }) => *quarantined,
        _ => false,
    }
}

/// Whether `record` is an answer whose body changed, or that was first answered, at or after
/// `t` (Unix seconds). A format-3 answer, whose change time was not kept, was answered before
/// format 4 existed: not since `t`.
fn changed_since(record: &Record, t: u32) -> bool {
    matches!(record, Record::Answer { fetched, .. } if fetched.changed > 0 && fetched.changed >= t)
}

/// Writes the records `args` asks for to `out`.
fn write_records(store: &Store, args: &ExportArgs, out: impl Write) -> Result<(), ExportError> {
    let (from, to) = args.ids.map_or((0, u64::MAX), |r| (r.start, r.end - 1));
    let mut names = store.key_names()?;
    let mut listed = match &args.keys {
        Some(file) => Some(listed_ordinals(store, file)?.peekable()),
        None => None,
    };
    let since = args.changed_since;
    let records = store.records_in(from, to).filter(|r| {
        let Ok((ordinal, record)) = r else { return true };
        let wanted = wanted(args.only, record) && since.is_none_or(|t| changed_since(record, t));
        let Some(listed) = listed.as_mut() else { return wanted };
        while listed.next_if(|o| o < ordinal).is_some() {}
        listed.peek() == Some(ordinal) && wanted
    });
    match args.format {
        Format::Jsonl => {
            let mut out = BufWriter::with_capacity(1 << 20, out);
            for rec in records {
                let (id, record) = rec?;
                let key = match names.as_mut() {
                    Some(n) => Some(n.key(id)?),
                    None => None,
                };
                let r = row(id, key, &record, args.body == BodyAs::Json);
                serde_json::to_writer(&mut out, &r).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Ok(out.flush()?)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            for rec in records {
                let (id, record) = rec?;
                let key = match names.as_mut() {
                    Some(n) => Some(n.key(id)?),
                    None => None,
                };
                let r = row(id, key, &record, false);
                let written = match r.key {
                    Some(key) => w.serialize(CsvKeyRow {
                        key,
                        status: r.status,
                        attempts: r.attempts,
                        fetched_at: r.fetched_at,
                        body: r.body.and_then(Body::text),
                        body_base64: r.body_base64,
                        error: r.error,
                    }),
                    None => w.serialize(CsvRow {
                        id,
                        status: r.status,
                        attempts: r.attempts,
                        fetched_at: r.fetched_at,
                        body: r.body.and_then(Body::text),
                        body_base64: r.body_base64,
                        error: r.error,
                    }),
                };
                written.map_err(csv_io_error)?;
            }
            Ok(w.flush()?)
        }
    }
}

/// The ordinals of the keys `file` lists that the store has, in order (an unreadable one ends
/// the export with its error).
fn listed_ordinals(store: &Store, file: &Path) -> Result<impl Iterator<Item = u64>, ExportError> {
    let stdin = file.as_os_str() == "-";
    let label = if stdin { "stdin".to_owned() } else { file.display().to_string() };
    let spool = if stdin { Some(spool_stdin().map_err(ExportError::Write)?) } else { None };
    let path = spool.as_ref().map_or_else(|| file.to_owned(), |s| s.to_path_buf());
    let source = KeySource { path, format: KeyFormat::Lines, label: label.clone() };
    let (ordinals, unknown) = store.ordinals_of(&source)?;
    if unknown > 0 {
        log::warn!("--keys {label}: {} keys are not in the store", thousands(unknown));
    }
    Ok(ordinals.map_while(Result::ok))
}

fn csv_io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// `supervisor export --store S [--format jsonl|csv] [--output F]`.
pub fn run(args: &ExportArgs) -> Result<i32, Error> {
    if args.body == BodyAs::Json && args.format == Format::Csv {
        return Err(Error::Usage("--body json embeds JSON in JSON Lines: a CSV body is text".into()));
    }
    let store = Store::open_existing(&args.store)?;
    let keyed = matches!(store.scope()?.map(|s| s.ids), Some(Ids::Keys(_)));
    if keyed && args.ids.is_some() {
        return Err(Error::Usage("--ids: this store's items are keys: choose them with --keys FILE".into()));
    }
    if !keyed && args.keys.is_some() {
        return Err(Error::Usage("--keys: this store's items are ids: choose them with --ids A..B".into()));
    }
    if keyed && store.key_names()?.is_none() {
        return Err(Error::Store(StoreError::Damaged {
            path: args.store.clone(),
            detail: "it is a keyed job's store and its key table is gone".into(),
        }));
    }
    match &args.output {
        None => match write_records(&store, args, io::stdout().lock()) {
            // A reader that stopped reading (`| head`) is not an error.
            Err(ExportError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(e.writing(Path::new("stdout"))),
            Ok(()) => Ok(0),
        },
        Some(path) => {
            write_atomically(path, |file| write_records(&store, args, file))?;
            Ok(0)
        }
    }
}

/// Writes `path` through a temporary file beside it, renamed into place only once complete.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<(), ExportError>,
) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let out_err = |source| Error::Output { path: path.to_owned(), source };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(out_err)?;
    fill(tmp.as_file_mut()).map_err(|e| e.writing(path))?;
    tmp.as_file().sync_all().map_err(out_err)?;
    tmp.persist(path).map_err(|e| out_err(e.error))?;
    Ok(())
}
