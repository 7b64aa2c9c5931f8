//! The reject report: one CSV line per refused input line, naming the file,
//! the line, the column and the reason. Values are never copied into it,
//! so the report can be shared with whoever fixes the source file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rempart_domain::records::RecordError;

use crate::ImportError;

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub file: String,
    pub line: u64,
    pub field: Option<&'static str>,
    pub reason: String,
}

impl Reject {
    pub fn from_record_error(file: &str, line: u64, e: &RecordError) -> Self {
        Reject {
            file: file.to_string(),
            line,
            field: e.field(),
            reason: e.reason(),
        }
    }
}

/// Where rejects go: a CSV file, plus the first few kept in memory for display.
pub struct RejectSink {
    writer: Option<Mutex<csv::Writer<BufWriter<File>>>>,
    path: Option<PathBuf>,
    count: AtomicU64,
    first: Mutex<Vec<Reject>>,
}

/// How many rejects are kept in memory for display.
const KEEP: usize = 20;

impl RejectSink {
    /// Writes the report to `path` (created or truncated).
    pub fn to_file(path: &Path) -> Result<Self, ImportError> {
        let file = File::create(path).map_err(ImportError::Rejects)?;
        let mut w = csv::Writer::from_writer(BufWriter::new(file));
        w.write_record(["file", "line", "field", "reason"])
            .map_err(|e| ImportError::Rejects(e.into()))?;
        Ok(RejectSink {
            writer: Some(Mutex::new(w)),
            path: Some(path.to_path_buf()),
            count: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
        })
    }

    /// Keeps rejects in memory only (tests, dry runs).
    pub fn in_memory() -> Self {
        RejectSink {
            writer: None,
            path: None,
            count: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
        }
    }

    pub fn push(&self, r: Reject) -> Result<(), ImportError> {
        if let Some(w) = &self.writer {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            w.write_record([
                r.file.as_str(),
                &r.line.to_string(),
                r.field.unwrap_or(""),
                &r.reason,
            ])
            .map_err(|e| ImportError::Rejects(e.into()))?;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < KEEP || self.writer.is_none() {
            first.push(r);
        }
        Ok(())
    }

    /// Flushes the file.
    pub fn flush(&self) -> Result<(), ImportError> {
        if let Some(w) = &self.writer {
            w.lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush()
                .map_err(ImportError::Rejects)?;
        }
        Ok(())
    }

    /// Rejects so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first rejects (all of them for an in-memory sink).
    pub fn first(&self) -> Vec<Reject> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The report file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}
