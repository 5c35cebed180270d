//! `supervisor export`: every stored record, in id order, as JSON Lines or CSV.
//!
//! A body that is valid UTF-8 is written as text (`body`); any other body is written as base64
//! (`body_base64`), never mangled. A failed id has `"status": null` and its `error`. `--only`
//! keeps one kind of record, `--ids` one range (only its blocks are read).

use std::io::{self, BufWriter, Write};
use std::path::Path;

use base64::Engine;
use serde::Serialize;

use crate::cli::{ExportArgs, Format, Only};
use crate::engine::Error;
use crate::store::{Record, Store, StoreError};

#[derive(Serialize)]
struct Row<'a> {
    id: u64,
    status: Option<u16>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct CsvRow<'a> {
    id: u64,
    status: Option<u16>,
    attempts: u32,
    body: Option<&'a str>,
    body_base64: Option<String>,
    error: Option<&'a str>,
}

fn row(id: u64, record: &Record) -> Row<'_> {
    match record {
        Record::Answer { attempts, status, body, .. } => {
            let text = std::str::from_utf8(body).ok();
            Row {
                id,
                status: Some(*status),
                attempts: *attempts,
                body: text,
                body_base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(body)),
                error: None,
            }
        }
        Record::Failed { attempts, error, .. } => {
            Row { id, status: None, attempts: *attempts, body: None, body_base64: None, error: Some(error) }
        }
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

/// Writes the records `args` asks for to `out`.
fn write_records(store: &Store, args: &ExportArgs, out: impl Write) -> Result<(), ExportError> {
    let (from, to) = args.ids.map_or((0, u64::MAX), |r| (r.start, r.end - 1));
    let records =
        store.records_in(from, to).filter(|r| r.as_ref().map_or(true, |(_, rec)| wanted(args.only, rec)));
    match args.format {
        Format::Jsonl => {
            let mut out = BufWriter::with_capacity(1 << 20, out);
            for rec in records {
                let (id, record) = rec?;
                serde_json::to_writer(&mut out, &row(id, &record)).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Ok(out.flush()?)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            for rec in records {
                let (id, record) = rec?;
                let r = row(id, &record);
                let csv_row = CsvRow {
                    id: r.id,
                    status: r.status,
                    attempts: r.attempts,
                    body: r.body,
                    body_base64: r.body_base64,
                    error: r.error,
                };
                w.serialize(csv_row).map_err(csv_io_error)?;
            }
            Ok(w.flush()?)
        }
    }
}

fn csv_io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// `supervisor export --store S [--format jsonl|csv] [--output F]`.
pub fn run(args: &ExportArgs) -> Result<i32, Error> {
    let store = Store::open_existing(&args.store)?;
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
