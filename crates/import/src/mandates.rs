//! The mandates pipeline, as fast as the persons' one:
//!
//! ```text
//! reader thread ──raw batches──▶ parse task ──parsed──▶ lookup task ──rows──▶ writer task
//!  (CSV records)                 parse ∥ (rayon),       persons' ids by       one transaction
//!                                dedupe, blind ∥        blind index           per batch
//! ```
//! Looking up batch k+1 overlaps writing batch k; channels are bounded.
//! Duplicated references are found exactly in fixed memory ([`SeenRefs`]).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

use rayon::prelude::*;
use rempart_domain::Mandate;
use rempart_domain::records::{RecordError, RecordRules};
use rempart_storage::{Blind, ImportKind, ImportMark, MandateRow};
use rempart_vault::Vault;

use crate::persons::conclude;
use crate::resume::{done, rest, resume_point};
use crate::{
    FileKind, FileReport, ImportError, ImportOptions, Progress, RawBatch, Reject, RejectSink,
    csv_error, open_csv, parse_in_file_order, spawn_reader,
};

/// Which mandate references this import has seen, exactly, in memory that
/// does not grow with the file: a first pass over the file puts every
/// reference in a Bloom filter and keeps the ones it may have met before
/// (every repeated reference, and a few false positives) as candidates.
/// Only candidates need remembering: any other reference occurs once.
pub(crate) struct SeenRefs {
    candidates: HashSet<Box<str>>,
    seen: HashSet<Box<str>>,
}

/// Bits of the filter per byte of file: a mandate line is about 80 bytes,
/// so about 20 bits per reference, and a false positive rate near 2e-4
/// with 7 probes. Bounded at 2^30 bits (128 MiB).
const BITS_PER_BYTE: u64 = 1;
const MAX_BITS: u64 = 1 << 30;
const PROBES: u64 = 7;

struct Bloom {
    bits: Vec<u64>,
    mask: u64,
    hashers: (RandomState, RandomState),
}

impl Bloom {
    fn new(file_bytes: u64) -> Self {
        let bits = (file_bytes * BITS_PER_BYTE)
            .clamp(1 << 16, MAX_BITS)
            .next_power_of_two();
        Bloom {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    /// Sets the key's bits; true if they were all set already.
    fn insert(&mut self, key: &str) -> bool {
        let h1 = self.hashers.0.hash_one(key);
        let h2 = self.hashers.1.hash_one(key) | 1;
        let mut present = true;
        for i in 0..PROBES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            present &= self.bits[word] & mask != 0;
            self.bits[word] |= mask;
        }
        present
    }
}

impl SeenRefs {
    /// The first pass: reads the file's first column only. A reference is
    /// keyed as `Reference::parse` will see it (UTF-8, trimmed); a field
    /// that is not UTF-8 fails to parse later and never counts.
    fn scan(path: &Path) -> Result<Self, ImportError> {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut bloom = Bloom::new(bytes);
        let mut candidates = HashSet::new();
        let mut reader = open_csv(path)?;
        let mut record = csv::ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(csv_error(path, &e)),
            }
            let Some(key) = record.get(0).and_then(|f| std::str::from_utf8(f).ok()) else {
                continue;
            };
            let key = key.trim();
            if bloom.insert(key) {
                candidates.insert(Box::from(key));
            }
        }
        Ok(SeenRefs {
            candidates,
            seen: HashSet::new(),
        })
    }

    /// Marks `reference`; false if this import met it before.
    fn insert(&mut self, reference: &str) -> bool {
        !self.candidates.contains(reference) || self.seen.insert(Box::from(reference))
    }
}

/// A parsed batch: the good mandates with their line and person's blind.
struct Parsed {
    parse_time: std::time::Duration,
    good: Vec<(u64, Mandate, Blind)>,
    rejected: u64,
    records: u64,
    end_byte: u64,
    end_line: u64,
}

/// A batch ready for the writer.
struct Ready {
    /// Time spent parsing and looking up this batch.
    timings: [std::time::Duration; 2],
    rows: Vec<MandateRow>,
    lines: Vec<u64>,
    rejected: u64,
    records: u64,
    end_byte: u64,
    end_line: u64,
}

pub(crate) async fn import_mandates(
    vault: &Vault,
    path: &Path,
    opts: &ImportOptions,
    rejects: &RejectSink,
    progress: &dyn Progress,
) -> Result<FileReport, ImportError> {
    let file = path.display().to_string();
    let rules = RecordRules::new(opts.today);
    let (file_id, resume) = resume_point(vault, path, ImportKind::Mandates).await?;
    let mut seen = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || SeenRefs::scan(&path))
            .await
            .map_err(|e| ImportError::Task(e.to_string()))??
    };
    if let Some(p) = &resume {
        // The references of the lines already imported, as their import
        // saw them.
        let mut rx = spawn_reader(path, FileKind::Mandates, opts.batch, done(p))?;
        while let Some(batch) = rx.recv().await {
            seen = parse_off_thread(vault, rules, batch?, seen).await?.0;
        }
        progress.advance(p.next_byte, p.counts.records);
    }
    // Into an empty mandate table, load without the secondary indexes and
    // sort them once at the end; the rest of such a load goes on the same way.
    let bulk = match &resume {
        None => vault.store().begin_mandate_bulk_load(false).await?,
        Some(p) if p.bulk => vault.store().begin_mandate_bulk_load(true).await?,
        Some(_) => false,
    };
    if resume.is_none() {
        vault
            .store()
            .start_import(ImportKind::Mandates, file_id, bulk)
            .await?;
    }
    let mut rx = spawn_reader(path, FileKind::Mandates, opts.batch, rest(resume.as_ref()))?;
    let (tx_parsed, mut rx_parsed) = tokio::sync::mpsc::channel::<Parsed>(2);
    let (tx_ready, mut rx_ready) = tokio::sync::mpsc::channel::<Ready>(2);

    let parse = async {
        while let Some(batch) = rx.recv().await {
            let t = std::time::Instant::now();
            let (s, mut parsed, bad) = parse_off_thread(vault, rules, batch?, seen).await?;
            parsed.parse_time = t.elapsed();
            seen = s;
            for (line, e) in bad {
                rejects.push(Reject::from_record_error(&file, line, &e))?;
            }
            if tx_parsed.send(parsed).await.is_err() {
                break; // a later stage stopped on an error; it reports it
            }
        }
        // The end of the batches, for the lookup stage.
        drop(tx_parsed);
        Ok::<(), ImportError>(())
    };

    let lookup = async {
        while let Some(batch) = rx_parsed.recv().await {
            let t = std::time::Instant::now();
            let blinds: Vec<Blind> = batch.good.iter().map(|(_, _, b)| *b).collect();
            let found = vault.store().lookup_person_ids(&blinds).await?;
            let mut ready = Ready {
                timings: [batch.parse_time, t.elapsed()],
                rows: Vec::with_capacity(batch.good.len()),
                lines: Vec::with_capacity(batch.good.len()),
                rejected: batch.rejected,
                records: batch.records,
                end_byte: batch.end_byte,
                end_line: batch.end_line,
            };
            for ((line, m, _), person) in batch.good.into_iter().zip(found) {
                let Some(person_id) = person else {
                    rejects.push(Reject {
                        file: file.clone(),
                        line,
                        field: Some("ft_id"),
                        reason: "no such person in the registry".into(),
                    })?;
                    ready.rejected += 1;
                    continue;
                };
                ready.lines.push(line);
                ready.rows.push(MandateRow {
                    reference: m.reference,
                    organisation: m.organisation,
                    account: m.account,
                    person_id,
                    purpose: m.purpose,
                    valid_from: m.valid_from,
                    valid_to: m.valid_to,
                    source: m.source,
                });
            }
            if tx_ready.send(ready).await.is_err() {
                break;
            }
        }
        drop(tx_ready);
        // Closing the channel stops the parse stage if this one failed.
        rx_parsed.close();
        Ok::<(), ImportError>(())
    };

    let mut report = FileReport::new(path, FileKind::Mandates);
    report.resumed_at = resume.as_ref().map(|p| p.next_line);
    let write = async {
        let mut result: Result<(), ImportError> = Ok(());
        let mut records = resume.as_ref().map_or(0, |p| p.counts.records);
        while let Some(ready) = rx_ready.recv().await {
            let mark = ImportMark {
                kind: ImportKind::Mandates,
                file_id,
                next_byte: ready.end_byte,
                next_line: ready.end_line,
                records: ready.records,
                unchanged: 0,
                rejected: ready.rejected,
            };
            let t = std::time::Instant::now();
            let refusals = match vault
                .store()
                .upsert_mandates_marked(ready.rows, Some(mark))
                .await
            {
                Ok((_, refusals)) => {
                    report.stages.write += t.elapsed();
                    report.stages.parse += ready.timings[0];
                    report.stages.lookup += ready.timings[1];
                    refusals
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            for r in refusals {
                let reject = Reject {
                    file: file.clone(),
                    line: ready.lines.get(r.index).copied().unwrap_or(0),
                    field: Some(r.field),
                    reason: r.reason,
                };
                if let Err(e) = rejects.push(reject) {
                    result = Err(e);
                    break;
                }
            }
            records += ready.records;
            progress.advance(ready.end_byte, records);
        }
        // Closing the channel stops the lookup stage if writing failed.
        rx_ready.close();
        result
    };
    let (parsed, looked_up, written) = tokio::join!(parse, lookup, write);
    let stages = [written, looked_up, parsed];
    conclude(vault, ImportKind::Mandates, bulk, &mut report, stages).await?;
    Ok(report)
}

/// Parses a batch on the blocking pool (in parallel), drops duplicated
/// references in file order, then computes each person's blind index (in
/// parallel). The set of references travels with the work and back.
async fn parse_off_thread(
    vault: &Vault,
    rules: RecordRules,
    batch: RawBatch,
    mut seen: SeenRefs,
) -> Result<(SeenRefs, Parsed, Vec<(u64, RecordError)>), ImportError> {
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || {
        let records = batch.records.len() as u64;
        let (good, bad) = parse_in_file_order(
            batch.lines,
            &batch.records,
            |fields| rules.mandate(fields),
            |m: &Mandate| seen.insert(m.reference.as_str()),
            "reference",
        );
        let good: Vec<(u64, Mandate, Blind)> = good
            .into_par_iter()
            .map(|(line, m)| {
                let b = vault.blind_ft(&m.person);
                (line, m, b)
            })
            .collect();
        let parsed = Parsed {
            parse_time: std::time::Duration::ZERO,
            rejected: bad.len() as u64,
            good,
            records,
            end_byte: batch.end_byte,
            end_line: batch.end_line,
        };
        (seen, parsed, bad)
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_references_are_found_exactly_and_only_from_their_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mandates.csv");
        let mut text = String::from("reference,x\n");
        for i in 0..50_000 {
            text.push_str(&format!("M-{i},x\n"));
        }
        // Repeats, one with spaces around it (parsed the same), and a
        // field that is not UTF-8 (it never parses).
        text.push_str("M-7,x\n  M-49999 ,x\nM-123,x\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe,x\n");
        std::fs::write(&p, bytes).unwrap();
        let mut seen = SeenRefs::scan(&p).unwrap();
        for r in ["M-7", "M-49999", "M-123"] {
            assert!(seen.candidates.contains(r), "{r} repeats");
        }
        // A tiny filter on a small file: false positives stay few.
        assert!(seen.candidates.len() < 100, "{}", seen.candidates.len());
        for i in 0..50_000 {
            assert!(seen.insert(&format!("M-{i}")), "M-{i} first seen");
        }
        for r in ["M-7", "M-49999", "M-123"] {
            assert!(!seen.insert(r), "{r} seen before");
        }
    }
}
