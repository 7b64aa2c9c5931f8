//! A deterministic synthetic French population, written as the CSV files
//! `rempart import` reads (formats in [`rempart_domain::records`]).
//!
//! What comes out, for `persons` people:
//! - `persons.csv`: French names (first names by sex and generation),
//!   birth dates 1950–2009, NIRs consistent with sex, birth date and a birth
//!   place (≈10 % abroad, ≈3 % overseas, ≈2 % Corsica) and unique, addresses
//!   in real communes weighted by population, ≈85 % with a unique e-mail,
//!   ≈90 % with a phone, and 35 % `inscrit`, 55 % `sorti`, 10 % `radie`.
//! - `organisations.csv`: France Travail agencies (≈1 per 20,000 people),
//!   Cap emploi (one per département with enough people), Missions Locales
//!   (≈1 per 25,000), training providers (≈1 per 5,000), 2–3 processors.
//! - `accounts.csv`: officers, one security and one DPO account, then per
//!   organisation 1–2 managers and enough agents for realistic caseloads.
//! - `mandates.csv`: France Travail follow-up of every registered person,
//!   Cap emploi (6 % of people), Mission Locale (15 % of 16–25 year olds),
//!   training sessions (5 %) and document processing batches (3 %).
//!
//! Same seed, count and date give the same bytes, whatever the number of
//! threads. People are generated in chunks of [`CHUNK`], in parallel, and
//! streamed to disk in order, so memory stays bounded. A first, cheap pass
//! draws only what decides mandates (residence, age, status), so that
//! organisations and advisers can be sized from exact counts before the
//! second pass writes the rows.

mod data;
mod orgs;
mod plan;
mod render;
pub mod traffic;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use rayon::prelude::*;
use rempart_domain::FtId;
use rempart_domain::records::{
    ACCOUNT_COLUMNS, MANDATE_COLUMNS, ORGANISATION_COLUMNS, PERSON_COLUMNS,
};

use crate::orgs::Directory;
use crate::plan::{N_CELLS, N_DEPTS, Plan, Tables, counter, plan_chunk, plan_person};
use crate::render::{ChunkOut, ChunkStart, render_chunk};

/// Persons generated per chunk; each chunk has its own random streams.
pub const CHUNK: u64 = 65_536;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of persons (at most 260 million, the France Travail identifier space).
    pub persons: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// The date the data is "as of": ages, statuses and mandate dates are
    /// relative to it. Between 1966-01-01 and 2098-12-31.
    pub today: NaiveDate,
}

/// Rows written to each file (headers excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub persons: u64,
    pub organisations: u64,
    pub accounts: u64,
    pub mandates: u64,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("invalid options: {0}")]
    Options(&'static str),
    /// A bug: something the generator built did not pass its own checks.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<csv::Error> for SynthError {
    // CSV is only ever written to memory here, so this cannot be an I/O error.
    fn from(e: csv::Error) -> Self {
        SynthError::Internal(format!("cannot format a CSV row: {e}"))
    }
}

/// Writes `persons.csv`, `organisations.csv`, `accounts.csv` and
/// `mandates.csv` into `out_dir` (created if missing), replacing them.
/// `progress` is called after each chunk with the number of persons written
/// so far, in increasing order, possibly from a worker thread (hence `Sync`).
pub fn generate(
    opts: &GenerateOptions,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary, SynthError> {
    generate_chunked(opts, out_dir, progress, CHUNK)
}

/// Mandates of each kind per residence département, for one chunk.
type Counts = [[u32; N_DEPTS]; counter::COUNT];

fn generate_chunked(
    opts: &GenerateOptions,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
    chunk: u64,
) -> Result<Summary, SynthError> {
    if opts.persons > u64::from(FtId::SPACE) {
        return Err(SynthError::Options(
            "at most 260,000,000 persons (the France Travail identifier space)",
        ));
    }
    let t = Tables::new(opts.seed, opts.today, opts.persons)?;
    std::fs::create_dir_all(out_dir).map_err(|source| SynthError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let n_chunks = opts.persons.div_ceil(chunk);
    let len_of = |c: u64| chunk.min(opts.persons - c * chunk);

    // Pass 1: count mandates per kind and département, to size organisations.
    let counts: Vec<Box<Counts>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| count_chunk(&t, c, len_of(c)))
        .collect();
    let mut per_dept = [[0u64; N_DEPTS]; counter::COUNT];
    for chunk_counts in &counts {
        for (k, row) in chunk_counts.iter().enumerate() {
            for (d, n) in row.iter().enumerate() {
                per_dept[k][d] += u64::from(*n);
            }
        }
    }
    let dir = Directory::plan(&t, opts.persons, &per_dept);
    write_directory(&dir, out_dir)?;

    // Pass 2: generate and write persons and mandates, chunk by chunk.
    let mut persons = Output::create(out_dir, "persons.csv", &PERSON_COLUMNS)?;
    let mut mandates = Output::create(out_dir, "mandates.csv", &MANDATE_COLUMNS)?;
    let mut running: Vec<Vec<u64>> = (0..counter::COUNT).map(|c| vec![0; dir.areas(c)]).collect();
    let mut mandate_no = 0u64;
    let mut nir_cells = vec![0u32; N_CELLS];
    // Enough chunks in flight to keep every thread busy, few enough to
    // bound memory (a chunk's rows take about 15 MB).
    let batch = rayon::current_num_threads().clamp(2, 8) as u64;
    let mut written = 0u64;
    // Rows rendered but not yet written: written while the next batch renders.
    let mut pending: Vec<(ChunkOut, u64)> = Vec::new();
    let mut write = |pending: Vec<(ChunkOut, u64)>| -> Result<(), SynthError> {
        for (out, len) in pending {
            persons.write(&out.persons)?;
            mandates.write(&out.mandates)?;
            written += len;
            progress(written);
        }
        Ok(())
    };
    let mut first = 0;
    while first < n_chunks {
        let chunks: Vec<u64> = (first..(first + batch).min(n_chunks)).collect();
        first += batch;
        let plans: Vec<Vec<Plan>> = chunks
            .par_iter()
            .map(|&c| plan_chunk(&t, c, len_of(c)))
            .collect();
        // Sequential, in person order: NIR order numbers and mandate
        // ordinals must not depend on how chunks are scheduled.
        let mut jobs = Vec::with_capacity(chunks.len());
        for (&c, plans) in chunks.iter().zip(plans) {
            let ranks: Vec<u32> = plans
                .iter()
                .map(|p| {
                    let seen = &mut nir_cells[p.cell as usize];
                    let rank = *seen;
                    *seen = seen.saturating_add(1);
                    rank
                })
                .collect();
            let start = ChunkStart {
                person: c * chunk,
                mandate: mandate_no,
                ordinals: running.clone(),
            };
            for (k, row) in counts[c as usize].iter().enumerate() {
                for (d, n) in row.iter().enumerate() {
                    running[k][dir.area_of(k, d as u8)] += u64::from(*n);
                    mandate_no += u64::from(*n);
                }
            }
            jobs.push((c, start, plans, ranks));
        }
        let previous = std::mem::take(&mut pending);
        let (written, rendered) = rayon::join(
            || write(previous),
            || {
                jobs.into_par_iter()
                    .map(|(c, start, plans, ranks)| {
                        render_chunk(&t, &dir, c, start, &plans, &ranks).map(|out| (out, len_of(c)))
                    })
                    .collect::<Result<Vec<_>, SynthError>>()
            },
        );
        written?;
        pending = rendered?;
    }
    write(pending)?;
    persons.finish()?;
    mandates.finish()?;
    Ok(Summary {
        persons: opts.persons,
        organisations: dir.orgs.len() as u64,
        accounts: dir.accounts.len() as u64,
        mandates: mandate_no,
    })
}

fn count_chunk(t: &Tables, chunk: u64, len: u64) -> Box<Counts> {
    let mut counts = Box::new([[0u32; N_DEPTS]; counter::COUNT]);
    let mut rng = plan::rng_for(t.seed, plan::Stream::Plan, chunk);
    for _ in 0..len {
        let p = plan_person(t, &mut rng);
        for (k, row) in counts.iter_mut().enumerate() {
            if p.has(k) {
                row[usize::from(p.dept)] += 1;
            }
        }
    }
    counts
}

/// Writes `organisations.csv` and `accounts.csv`; small enough to format in memory.
fn write_directory(dir: &Directory, out_dir: &Path) -> Result<(), SynthError> {
    let mut orgs = csv_buffer(&ORGANISATION_COLUMNS)?;
    for o in &dir.orgs {
        orgs.write_record([&o.code, o.kind.as_str(), &o.name, o.dept.unwrap_or("")])?;
    }
    let mut accounts = csv_buffer(&ACCOUNT_COLUMNS)?;
    let login = |a: Option<usize>| a.map_or("", |a| dir.accounts[a].login.as_str());
    for a in &dir.accounts {
        accounts.write_record([
            &a.login,
            &dir.orgs[a.org].code,
            a.role.as_str(),
            a.state.as_str(),
            login(a.requested_by),
            login(a.approved_by),
        ])?;
    }
    for (name, w) in [("organisations.csv", orgs), ("accounts.csv", accounts)] {
        let path = out_dir.join(name);
        let bytes = w
            .into_inner()
            .map_err(|e| SynthError::Internal(e.error().to_string()))?;
        std::fs::write(&path, bytes).map_err(|source| SynthError::Write { path, source })?;
    }
    Ok(())
}

fn csv_buffer(header: &[&str]) -> Result<csv::Writer<Vec<u8>>, SynthError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    Ok(w)
}

/// A CSV file being streamed, with its path for error messages.
struct Output {
    path: PathBuf,
    file: BufWriter<File>,
}

impl Output {
    fn create(dir: &Path, name: &str, header: &[&str]) -> Result<Self, SynthError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|source| SynthError::Write {
            path: path.clone(),
            source,
        })?;
        let mut out = Output {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
        };
        let header = csv_buffer(header)?
            .into_inner()
            .map_err(|e| SynthError::Internal(e.error().to_string()))?;
        out.write(&header)?;
        Ok(out)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SynthError> {
        self.file
            .write_all(bytes)
            .map_err(|source| SynthError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Flushes the buffer. No fsync: the files are a reproducible test
    /// fixture, not data to keep safe, and syncing gigabytes is slow.
    fn finish(mut self) -> Result<(), SynthError> {
        self.file.flush().map_err(|source| SynthError::Write {
            path: self.path,
            source,
        })
    }
}

#[cfg(test)]
mod tests;
