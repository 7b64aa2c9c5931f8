//! Streaming CSV import into the vault.
//!
//! Files are read record by record (never whole), validated in parallel,
//! checked for duplicates, sealed in parallel and written in batches, each
//! batch one transaction. So:
//! - memory stays bounded whatever the file size;
//! - an import killed half-way leaves whole batches only, and a rerun
//!   skips what is already stored (unchanged records are detected by
//!   their keyed fingerprint, not rewritten);
//! - every bad line goes to the reject report with its line number, the
//!   column at fault and the reason, never its values.
//!
//! Files are recognised by their header line; a directory means its
//! `organisations.csv`, `accounts.csv`, `persons.csv`, `mandates.csv`,
//! imported in that order (each may refer to the ones before).

mod mandates;
mod persons;
mod rejects;
mod resume;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rempart_domain::records::{
    ACCOUNT_COLUMNS, MANDATE_COLUMNS, ORGANISATION_COLUMNS, PERSON_COLUMNS, RecordError,
    RecordRules,
};
use rempart_storage::{RowRefusal, StorageError, UpsertCount};
use rempart_vault::{Vault, VaultError};

pub use rejects::{Reject, RejectSink};

/// The kinds of file the import knows, in the order they must be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Organisations,
    Accounts,
    Persons,
    Mandates,
}

impl FileKind {
    /// Conventional file name inside a directory.
    pub fn file_name(self) -> &'static str {
        match self {
            FileKind::Organisations => "organisations.csv",
            FileKind::Accounts => "accounts.csv",
            FileKind::Persons => "persons.csv",
            FileKind::Mandates => "mandates.csv",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            FileKind::Organisations => &ORGANISATION_COLUMNS,
            FileKind::Accounts => &ACCOUNT_COLUMNS,
            FileKind::Persons => &PERSON_COLUMNS,
            FileKind::Mandates => &MANDATE_COLUMNS,
        }
    }

    const ALL: [FileKind; 4] = [
        FileKind::Organisations,
        FileKind::Accounts,
        FileKind::Persons,
        FileKind::Mandates,
    ];
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Any bad line fails the run; with persons, nothing is written then.
    pub strict: bool,
    /// Date used by validation rules ("born at least 14 years ago"…).
    pub today: NaiveDate,
    /// Records per batch (one transaction each).
    pub batch: usize,
}

impl ImportOptions {
    pub fn new(today: NaiveDate) -> Self {
        ImportOptions {
            strict: false,
            today,
            batch: 8192,
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub kind: FileKind,
    /// Data lines read (header excluded).
    pub records: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub elapsed: Duration,
    /// Where the time went (persons and mandates; stages overlap).
    pub stages: Stages,
    /// The line this run started from when it resumed an interrupted
    /// import of the same file (the counts above cover the whole file).
    pub resumed_at: Option<u64>,
}

/// Wall time spent in each stage of the persons pipeline, summed over batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    pub parse: Duration,
    pub lookup: Duration,
    pub seal: Duration,
    pub write: Duration,
    /// Building the indexes after a first (bulk) load.
    pub index: Duration,
}

impl FileReport {
    fn new(path: &Path, kind: FileKind) -> Self {
        FileReport {
            path: path.to_path_buf(),
            kind,
            records: 0,
            inserted: 0,
            updated: 0,
            unchanged: 0,
            rejected: 0,
            elapsed: Duration::ZERO,
            stages: Stages::default(),
            resumed_at: None,
        }
    }

    fn add(&mut self, c: UpsertCount) {
        self.inserted += c.inserted;
        self.updated += c.updated;
        self.unchanged += c.unchanged;
    }
}

/// Progress callbacks, so the CLI can draw a bar on a terminal or print lines.
pub trait Progress: Send + Sync {
    /// A file starts; `bytes` is its size.
    fn start(&self, path: &Path, kind: FileKind, bytes: u64);
    /// `bytes` read so far, `records` stored or rejected so far.
    fn advance(&self, bytes: u64, records: u64);
    /// The file is done.
    fn finish(&self, report: &FileReport);
}

/// Progress that shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &Path, _: FileKind, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
    fn finish(&self, _: &FileReport) {}
}

/// Import failures that stop a file (bad lines do not: they are rejected).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a Rempart CSV file: the header must be one of\n{expected}")]
    Header { path: PathBuf, expected: String },
    #[error(
        "{path}: is a directory without any of organisations.csv, accounts.csv, persons.csv, mandates.csv"
    )]
    EmptyDirectory { path: PathBuf },
    #[error("{path} line {line}: {reason}")]
    Csv {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}: {rejected} bad line(s) and --strict is set{}", if *.written { "" } else { "; nothing was written" })]
    Strict {
        path: PathBuf,
        rejected: u64,
        written: bool,
    },
    #[error("reject report: {0}")]
    Rejects(std::io::Error),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Lists the files to import from the given paths, in import order.
pub fn resolve_inputs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, FileKind)>, ImportError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            for kind in FileKind::ALL {
                let f = p.join(kind.file_name());
                if f.is_file() {
                    out.push((f, kind));
                }
            }
            if out.len() == before {
                return Err(ImportError::EmptyDirectory { path: p.clone() });
            }
        } else {
            let kind = sniff(p)?;
            out.push((p.clone(), kind));
        }
    }
    out.sort_by_key(|(_, k)| *k);
    Ok(out)
}

/// Recognises a file by its header line.
fn sniff(path: &Path) -> Result<FileKind, ImportError> {
    let mut reader = open_csv(path)?;
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(path, &e))?
        .clone();
    FileKind::ALL
        .into_iter()
        .find(|k| header_matches(&header, k.columns()))
        .ok_or_else(|| header_error(path))
}

fn header_matches(header: &csv::ByteRecord, columns: &[&str]) -> bool {
    header.len() == columns.len()
        && header
            .iter()
            .zip(columns)
            .all(|(h, c)| trim_bom(h).eq_ignore_ascii_case(c.as_bytes()))
}

fn trim_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b).trim_ascii()
}

fn header_error(path: &Path) -> ImportError {
    ImportError::Header {
        path: path.to_path_buf(),
        expected: FileKind::ALL
            .iter()
            .map(|k| format!("  {}: {}", k.file_name(), k.columns().join(",")))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

pub(crate) fn csv_error(path: &Path, e: &csv::Error) -> ImportError {
    ImportError::Csv {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        // csv's messages describe structure (lengths, positions), not values.
        reason: match e.kind() {
            csv::ErrorKind::Io(io) => io.to_string(),
            _ => "malformed CSV".into(),
        },
    }
}

pub(crate) fn open_csv(path: &Path) -> Result<csv::Reader<File>, ImportError> {
    let file = File::open(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(file))
}

/// A batch of raw records with their line numbers, as read.
pub(crate) struct RawBatch {
    pub lines: Vec<u64>,
    pub records: Vec<csv::ByteRecord>,
    /// Bytes of the file read once this batch was complete: where the
    /// next batch starts.
    pub end_byte: u64,
    /// The line the next batch starts on.
    pub end_line: u64,
}

/// A batch's good records and refused lines, each with its line number.
pub(crate) type InFileOrder<T> = (Vec<(u64, T)>, Vec<(u64, RecordError)>);

/// Parses a batch's records in parallel (rayon; call it on a blocking
/// thread), then keeps, in file order, each record `fresh` has not met
/// before; a repeat is refused as a duplicate of `field`.
pub(crate) fn parse_in_file_order<T: Send>(
    lines: Vec<u64>,
    records: &[csv::ByteRecord],
    parse: impl Fn(&[&[u8]]) -> Result<T, RecordError> + Sync,
    mut fresh: impl FnMut(&T) -> bool,
    field: &'static str,
) -> InFileOrder<T> {
    use rayon::prelude::*;
    let parsed: Vec<Result<T, RecordError>> = records
        .par_iter()
        .map(|rec| {
            let fields: Vec<&[u8]> = rec.iter().collect();
            parse(&fields)
        })
        .collect();
    let mut good = Vec::with_capacity(parsed.len());
    let mut bad = Vec::new();
    for (line, res) in lines.into_iter().zip(parsed) {
        match res {
            Ok(v) if fresh(&v) => good.push((line, v)),
            Ok(_) => bad.push((line, RecordError::Duplicate { field })),
            Err(e) => bad.push((line, e)),
        }
    }
    (good, bad)
}

/// Which part of a file to read: from `from` (a record's start, as an
/// import's progress recorded it; the top when `None`) up to the record
/// starting at byte `until` (the end when `None`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span {
    pub from: Option<(u64, u64)>,
    pub until: Option<u64>,
}

/// Reads `path` in batches on a thread of its own, sending them on a
/// bounded channel (so a slow writer holds the reader back, and memory
/// stays flat). Checks the header against `kind`.
pub(crate) fn spawn_reader(
    path: &Path,
    kind: FileKind,
    batch: usize,
    span: Span,
) -> Result<tokio::sync::mpsc::Receiver<Result<RawBatch, ImportError>>, ImportError> {
    let mut reader = open_csv(path)?;
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(path, &e))?
        .clone();
    if !header_matches(&header, kind.columns()) {
        return Err(header_error(path));
    }
    if let Some((byte, line)) = span.from {
        // The header is read: the reader goes on from the recorded record.
        let mut at = csv::Position::new();
        at.set_byte(byte).set_line(line);
        reader
            .seek_raw(std::io::SeekFrom::Start(byte), at)
            .map_err(|e| csv_error(path, &e))?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("csv-reader".into())
        .spawn(move || {
            loop {
                let mut b = RawBatch {
                    lines: Vec::with_capacity(batch),
                    records: Vec::with_capacity(batch),
                    end_byte: 0,
                    end_line: 0,
                };
                let mut done = false;
                while b.records.len() < batch {
                    if span.until.is_some_and(|u| reader.position().byte() >= u) {
                        done = true;
                        break;
                    }
                    let mut record = csv::ByteRecord::new();
                    match reader.read_byte_record(&mut record) {
                        Ok(true) => {
                            b.lines.push(record.position().map_or(0, |p| p.line()));
                            b.records.push(record);
                        }
                        Ok(false) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(csv_error(&path, &e)));
                            return;
                        }
                    }
                }
                b.end_byte = reader.position().byte();
                b.end_line = reader.position().line();
                if !b.records.is_empty() && tx.blocking_send(Ok(b)).is_err() {
                    return;
                }
                if done {
                    return;
                }
            }
        })
        .map_err(|e| ImportError::Task(e.to_string()))?;
    Ok(rx)
}

/// Imports the given files or directories, in dependency order.
pub async fn import(
    vault: &Vault,
    inputs: &[PathBuf],
    opts: &ImportOptions,
    rejects: &RejectSink,
    progress: &dyn Progress,
) -> Result<Vec<FileReport>, ImportError> {
    let files = resolve_inputs(inputs)?;
    let mut reports = Vec::new();
    for (path, kind) in files {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        progress.start(&path, kind, bytes);
        let start = Instant::now();
        let mut report = match kind {
            FileKind::Persons => {
                persons::import_persons(vault, &path, opts, rejects, progress).await?
            }
            FileKind::Mandates => {
                mandates::import_mandates(vault, &path, opts, rejects, progress).await?
            }
            _ => import_small(vault, &path, kind, opts, rejects, progress).await?,
        };
        report.elapsed = start.elapsed();
        progress.finish(&report);
        if opts.strict && report.rejected > 0 {
            return Err(ImportError::Strict {
                path,
                rejected: report.rejected,
                written: true,
            });
        }
        reports.push(report);
    }
    // Once, after every file, and only if rows changed: the planner must
    // know the new rows before the first consultation.
    if reports.iter().any(|r| r.inserted + r.updated > 0) {
        vault.store().refresh_statistics().await?;
    }
    Ok(reports)
}

/// Organisations and accounts (small files): parse a batch, then one upsert
/// per batch.
async fn import_small(
    vault: &Vault,
    path: &Path,
    kind: FileKind,
    opts: &ImportOptions,
    rejects: &RejectSink,
    progress: &dyn Progress,
) -> Result<FileReport, ImportError> {
    let rules = RecordRules::new(opts.today);
    let mut report = FileReport::new(path, kind);
    let mut rx = spawn_reader(path, kind, opts.batch, Span::default())?;
    let file_name = path.display().to_string();
    let mut seen = std::collections::HashSet::new();
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        report.records += batch.records.len() as u64;
        let reject = |line: u64, e: RecordError| -> Result<(), ImportError> {
            rejects.push(Reject::from_record_error(&file_name, line, &e))
        };
        // Parse; keep line numbers beside the values for the refusals.
        let mut lines: Vec<u64> = Vec::new();
        macro_rules! parse_all {
            ($parse:ident, $key:expr) => {{
                let mut out = Vec::new();
                for (line, rec) in batch.lines.iter().zip(&batch.records) {
                    let fields: Vec<&[u8]> = rec.iter().collect();
                    match rules.$parse(&fields) {
                        Ok(v) => {
                            if !seen.insert($key(&v)) {
                                reject(
                                    *line,
                                    RecordError::Duplicate {
                                        field: kind.columns()[0],
                                    },
                                )?;
                                report.rejected += 1;
                                continue;
                            }
                            lines.push(*line);
                            out.push(v);
                        }
                        Err(e) => {
                            reject(*line, e)?;
                            report.rejected += 1;
                        }
                    }
                }
                out
            }};
        }
        let refusals: Vec<RowRefusal> = match kind {
            FileKind::Organisations => {
                let rows = parse_all!(organisation, |o: &rempart_domain::Organisation| o
                    .code
                    .clone());
                report.add(vault.store().upsert_organisations(rows).await?);
                Vec::new()
            }
            FileKind::Accounts => {
                let rows = parse_all!(account, |a: &rempart_domain::Account| a.login.clone());
                let (count, refused) = vault.store().upsert_accounts(rows).await?;
                report.add(count);
                refused
            }
            FileKind::Persons | FileKind::Mandates => {
                return Err(ImportError::Task(
                    "persons and mandates go through their own pipelines".into(),
                ));
            }
        };
        for r in refusals {
            rejects.push(Reject {
                file: file_name.clone(),
                line: lines.get(r.index).copied().unwrap_or(0),
                field: Some(r.field),
                reason: r.reason,
            })?;
            report.rejected += 1;
        }
        progress.advance(batch.end_byte, report.records);
    }
    Ok(report)
}
