//! The persons pipeline, the one that must be fast:
//!
//! ```text
//! reader thread ──raw batches──▶ prepare task ──sealed batches──▶ writer task
//!  (CSV records)      (bounded)   parse ∥ (rayon), dedupe,  (bounded)  one transaction
//!                                 lookup, reserve ids,                 per batch
//!                                 seal ∥ (rayon)
//! ```
//! Preparing batch k+1 overlaps writing batch k. Channels are bounded, so
//! memory does not grow with the file.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use rempart_domain::records::RecordRules;
use rempart_domain::{FtId, Person, PersonId};
use rempart_storage::{ImportKind, ImportMark, SealedPerson};
use rempart_vault::{Sealed, Vault};

use crate::resume::{done, rest, resume_point};
use crate::{
    FileKind, FileReport, ImportError, ImportOptions, InFileOrder, Progress, RawBatch, Reject,
    RejectSink, Span, parse_in_file_order, spawn_reader,
};

/// Which France Travail ids this import has seen: one bit per possible id
/// (260 M ids, 32.5 MB, pages touched only as ids appear), so duplicates
/// are caught across the whole file at a fixed memory cost.
struct SeenIds(Vec<u64>);

impl SeenIds {
    fn new() -> Self {
        SeenIds(vec![0; (FtId::SPACE as usize).div_ceil(64)])
    }

    /// Marks `id`; false if it was already marked.
    fn insert(&mut self, id: &FtId) -> bool {
        let n = id.ordinal() as usize;
        let (word, bit) = (n / 64, 1u64 << (n % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// Person ids reserved at a time. An interrupted import leaves at most this
/// many ids unused, which costs nothing.
const ID_BLOCK: u64 = 65_536;

/// A parsed batch: the good persons with their line numbers.
struct ParsedBatch {
    good: Vec<(u64, Person)>,
    rejected: u64,
    records: u64,
    end_byte: u64,
    end_line: u64,
    parse_time: std::time::Duration,
}

/// A batch ready for the writer.
struct Ready {
    /// Time spent parsing, looking up and sealing this batch.
    timings: [std::time::Duration; 3],
    inserts: Vec<SealedPerson>,
    updates: Vec<(SealedPerson, rempart_storage::Blind)>,
    unchanged: u64,
    rejected: u64,
    records: u64,
    end_byte: u64,
    end_line: u64,
}

pub(crate) async fn import_persons(
    vault: &Vault,
    path: &Path,
    opts: &ImportOptions,
    rejects: &RejectSink,
    progress: &dyn Progress,
) -> Result<FileReport, ImportError> {
    let file: Arc<str> = path.display().to_string().into();
    let rules = RecordRules::new(opts.today);
    if opts.strict {
        // Validate the whole file before writing anything.
        let mut rx = spawn_reader(path, FileKind::Persons, opts.batch, Span::default())?;
        let mut seen = Box::new(SeenIds::new());
        let mut rejected = 0;
        while let Some(batch) = rx.recv().await {
            let (s, parsed) = parse_off_thread(rules, batch?, seen).await?;
            seen = s;
            for (line, e) in parsed.1 {
                rejects.push(Reject::from_record_error(&file, line, &e))?;
                rejected += 1;
            }
        }
        if rejected > 0 {
            return Err(ImportError::Strict {
                path: path.to_path_buf(),
                rejected,
                written: false,
            });
        }
    }

    let (file_id, resume) = resume_point(vault, path, ImportKind::Persons).await?;
    let mut seen = Box::new(SeenIds::new());
    if let Some(p) = &resume {
        // The ids of the lines already imported, as their import saw them.
        let mut rx = spawn_reader(path, FileKind::Persons, opts.batch, done(p))?;
        while let Some(batch) = rx.recv().await {
            seen = parse_off_thread(rules, batch?, seen).await?.0;
        }
        progress.advance(p.next_byte, p.counts.records);
    }
    let mut rx = spawn_reader(path, FileKind::Persons, opts.batch, rest(resume.as_ref()))?;
    // On an empty registry, load without indexes and build them at the
    // end; nothing can already be stored, so lookups are skipped too. The
    // rest of such a load goes on the same way.
    let bulk = match &resume {
        None => vault.store().begin_bulk_load(false).await?,
        Some(p) if p.bulk => vault.store().begin_bulk_load(true).await?,
        Some(_) => false,
    };
    if resume.is_none() {
        vault
            .store()
            .start_import(ImportKind::Persons, file_id, bulk)
            .await?;
    }
    let (tx_parsed, mut rx_parsed) = tokio::sync::mpsc::channel::<ParsedBatch>(2);
    let (tx_ready, mut rx_ready) = tokio::sync::mpsc::channel::<Ready>(2);

    // Three stages run concurrently in this task (parse, prepare, write),
    // each handing batches to the next over a bounded channel; their heavy
    // work runs on rayon (parse, seal) and the blocking pool (SQLite).
    let parse = async move {
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            let (end_byte, end_line, records) =
                (batch.end_byte, batch.end_line, batch.records.len() as u64);
            let t = std::time::Instant::now();
            let (s, (good, bad)) = parse_off_thread(rules, batch, seen).await?;
            seen = s;
            let rejected = bad.len() as u64;
            for (line, e) in bad {
                rejects.push(Reject::from_record_error(&file, line, &e))?;
            }
            let parsed = ParsedBatch {
                good,
                rejected,
                records,
                end_byte,
                end_line,
                parse_time: t.elapsed(),
            };
            if tx_parsed.send(parsed).await.is_err() {
                break; // a later stage stopped on an error; it reports it
            }
        }
        Ok::<(), ImportError>(())
    };

    let prepare = async move {
        // Ids are reserved in large blocks: the reservation is a write and
        // would otherwise queue behind every batch's transaction.
        let mut ids_left = 0u64;
        let mut next = 0i64;
        while let Some(batch) = rx_parsed.recv().await {
            let ParsedBatch {
                good,
                rejected,
                records,
                end_byte,
                end_line,
                parse_time,
            } = batch;
            let sealer = vault.sealer();
            let t_lookup = std::time::Instant::now();
            let existing = if bulk {
                vec![None; good.len()]
            } else {
                let blinds: Vec<_> = good
                    .iter()
                    .map(|(_, p)| vault.blind_ft(&p.identity.ft_id))
                    .collect();
                vault.store().lookup_persons(&blinds).await?
            };
            let new_count = existing.iter().filter(|e| e.is_none()).count() as u64;
            if new_count > ids_left {
                let block = new_count.max(ID_BLOCK);
                next = vault.store().reserve_person_ids(block).await?.get();
                ids_left = block;
            }
            ids_left -= new_count;
            let lookup_time = t_lookup.elapsed();
            // New persons get ids in file order.
            let ids: Vec<i64> = existing
                .iter()
                .map(|e| match e {
                    None => {
                        next += 1;
                        next - 1
                    }
                    Some(_) => 0,
                })
                .collect();
            let t_seal = std::time::Instant::now();
            let sealed = tokio::task::spawn_blocking(move || {
                good.par_iter()
                    .zip(existing.par_iter())
                    .zip(ids.par_iter())
                    .map(|(((_, p), e), id)| sealer.seal(p, e.as_ref(), PersonId::new(*id)))
                    .collect::<Result<Vec<Sealed>, _>>()
            })
            .await
            .map_err(|e| ImportError::Task(e.to_string()))??;
            let mut ready = Ready {
                timings: [parse_time, lookup_time, t_seal.elapsed()],
                inserts: Vec::with_capacity(new_count as usize),
                updates: Vec::new(),
                unchanged: 0,
                rejected,
                records,
                end_byte,
                end_line,
            };
            for s in sealed {
                match s {
                    Sealed::Insert(p) => ready.inserts.push(p),
                    Sealed::Update(p, prev) => ready.updates.push((p, prev)),
                    Sealed::Unchanged => ready.unchanged += 1,
                }
            }
            if tx_ready.send(ready).await.is_err() {
                break;
            }
        }
        // Closing the channel stops the parse stage if this one failed.
        rx_parsed.close();
        Ok::<(), ImportError>(())
    };

    let mut report = FileReport::new(path, FileKind::Persons);
    report.resumed_at = resume.as_ref().map(|p| p.next_line);
    let write = async {
        let mut result: Result<(), ImportError> = Ok(());
        while let Some(ready) = rx_ready.recv().await {
            let (inserted, updated) = (ready.inserts.len() as u64, ready.updates.len() as u64);
            let t_write = std::time::Instant::now();
            let mark = ImportMark {
                kind: ImportKind::Persons,
                file_id,
                next_byte: ready.end_byte,
                next_line: ready.end_line,
                records: ready.records,
                unchanged: ready.unchanged,
                rejected: ready.rejected,
            };
            if let Err(e) = vault
                .store()
                .write_persons_marked(ready.inserts, ready.updates, Some(mark))
                .await
            {
                result = Err(e.into());
                break;
            }
            report.stages.write += t_write.elapsed();
            report.stages.parse += ready.timings[0];
            report.stages.lookup += ready.timings[1];
            report.stages.seal += ready.timings[2];
            report.records += ready.records;
            report.inserted += inserted;
            report.updated += updated;
            report.unchanged += ready.unchanged;
            report.rejected += ready.rejected;
            progress.advance(ready.end_byte, report.records);
        }
        // Closing the channel stops the prepare stage if writing failed.
        rx_ready.close();
        result
    };
    let (parsed, prepared, written) = tokio::join!(parse, prepare, write);
    conclude(
        vault,
        ImportKind::Persons,
        bulk,
        &mut report,
        [written, prepared, parsed],
    )
    .await?;
    Ok(report)
}

/// The end of a file's pipeline: its indexes back if it loaded in bulk
/// (even after an error: the store must not stay without them), then the
/// first error of its stages, last stage first; or, when all went well,
/// the file's counts over every run that imported part of it, which are
/// the store's, and its progress forgotten.
pub(crate) async fn conclude(
    vault: &Vault,
    kind: ImportKind,
    bulk: bool,
    report: &mut FileReport,
    stages: [Result<(), ImportError>; 3],
) -> Result<(), ImportError> {
    if bulk {
        let t = std::time::Instant::now();
        vault.store().end_bulk_load().await?;
        report.stages.index = t.elapsed();
    }
    stages.into_iter().collect::<Result<Vec<()>, _>>()?;
    if let Some(p) = vault.store().import_progress(kind).await? {
        report.records = p.counts.records;
        report.inserted = p.counts.inserted;
        report.updated = p.counts.updated;
        report.unchanged = p.counts.unchanged;
        report.rejected = p.counts.rejected;
    }
    vault.store().finish_import(kind).await?;
    Ok(())
}

type Parsed = InFileOrder<Person>;

/// Parses a batch on the blocking pool (in parallel with rayon), then drops
/// duplicates in file order. The bitmap travels with the work and back.
async fn parse_off_thread(
    rules: RecordRules,
    batch: RawBatch,
    mut seen: Box<SeenIds>,
) -> Result<(Box<SeenIds>, Parsed), ImportError> {
    tokio::task::spawn_blocking(move || {
        let parsed = parse_in_file_order(
            batch.lines,
            &batch.records,
            |fields| rules.person(fields),
            |p: &Person| seen.insert(&p.identity.ft_id),
            "ft_id",
        );
        (seen, parsed)
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))
}
