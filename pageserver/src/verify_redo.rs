//! `strata verify-redo`: the whole storage path checked against Postgres itself.
//!
//! A base data directory is imported as image layers; the WAL is ingested through the normal
//! ingest path into a timeline with a small freeze size, so that many L0 delta layers are
//! written; every natively redone page whose record carries a `wal_consistency_checking`
//! image is then read back with GetPage@LSN at that record's end LSN, through the layer map,
//! and compared with the image, masked as Postgres masks (hint bits, LSN, checksum, unused
//! space, ...). Checks are collected during ingest and run in batches after each layer flush
//! (or every [`CHECK_BATCH`] checks), so reads exercise L0 files as well as the open layer.
//! With `final_dir`, every block of every relation fork of the final (cleanly shut down) data
//! directory and of the timeline is compared with GetPage at the directory's checkpoint LSN,
//! or skipped for a reason `redo::datadir` names and counts.
//!
//! A timeline directory that already holds an imported timeline is resumed from its durable
//! state, which is how the crash test restarts an ingest it killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use walproto::consts::VISIBILITYMAP_FORKNUM;
use walproto::record::DecodedRecord;
use walproto::walfiles::{WalDirReader, WalReadError};
use walproto::Lsn;

use crate::import::{import_datadir, read_control, ImportError, ImportReport};
use crate::ingest::{ImageCheck, IngestConf, IngestError, IngestStats, PipelineError, WalIngest};
use crate::redo::datadir::{
    compare_block, count_temp_files, for_each_fork, BlockContext, DataDirReport,
};
use crate::redo::store::scan_rel_files;
use crate::redo::store::PageStore;
use crate::redo::{diff, mask};
use crate::timeline::{
    ReadStats, Timeline, TimelineConf, TimelineError, TimelineMetadata, WriteStats,
};
use layer_format::Key;

/// Checks pending at most before they are run (each holds a page image).
pub const CHECK_BATCH: usize = 4096;

/// What to verify and how.
#[derive(Clone, Debug)]
pub struct VerifyRedoOptions {
    /// A cleanly shut down data directory the WAL starts from.
    pub base: PathBuf,
    /// Directory of WAL segment files.
    pub wal_dir: PathBuf,
    /// The LSN the base stands at (default: its `pg_control` checkpoint).
    pub start: Option<Lsn>,
    /// Stop before records that end after this LSN.
    pub end: Option<Lsn>,
    /// A final, cleanly shut down data directory to compare at its checkpoint.
    pub final_dir: Option<PathBuf>,
    /// Where the timeline lives (resumed if it holds one).
    pub timeline_dir: PathBuf,
    pub freeze_bytes: u64,
    /// Compare pages (false: only ingest, e.g. for the crash test).
    pub verify: bool,
    pub max_reported: usize,
}

/// Counts per record type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeCounts {
    pub verified: u64,
    pub mismatched: u64,
}

/// The outcome.
#[derive(Clone, Debug, Default)]
pub struct VerifyRedoReport {
    pub import: Option<ImportReport>,
    /// Set when an existing timeline was resumed: its durable LSN then.
    pub resumed_from: Option<Lsn>,
    pub ingest: IngestStats,
    pub verified: u64,
    pub vm_strict_verified: u64,
    pub mismatched: u64,
    /// Of the mismatched: GetPage failed (a redo or storage error).
    pub read_errors: u64,
    pub per_type: BTreeMap<String, TypeCounts>,
    /// Records ingested per resource manager (by name).
    pub per_rmgr: BTreeMap<String, u64>,
    pub problems: Vec<String>,
    pub last_lsn: Lsn,
    pub reads: ReadStats,
    pub writes: WriteStats,
    pub layers: usize,
    pub final_lsn: Option<Lsn>,
    pub final_report: Option<DataDirReport>,
    /// Time the final-directory comparison took.
    pub final_elapsed: Duration,
    pub elapsed: Duration,
}

impl VerifyRedoReport {
    /// `verified N, mismatched M, unsupported U`.
    pub fn headline(&self) -> String {
        format!(
            "verified {}, mismatched {}, unsupported {}",
            self.verified, self.mismatched, self.ingest.unsupported
        )
    }

    /// True if nothing differs and nothing was unsupported.
    pub fn ok(&self) -> bool {
        self.mismatched == 0
            && self.ingest.unsupported == 0
            && self.final_report.as_ref().is_none_or(|f| f.differing == 0)
    }

    /// A multi-line report.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(i) = &self.import {
            s += &format!(
                "imported {} forks, {} blocks at {} into {} image layer(s), {} bytes\n",
                i.forks,
                i.blocks,
                i.lsn,
                i.layers.len(),
                i.bytes
            );
        }
        if let Some(l) = self.resumed_from {
            s += &format!("resumed the timeline at {l}\n");
        }
        let wa = if self.ingest.wal_bytes > 0 {
            self.writes.layer_bytes as f64 / self.ingest.wal_bytes as f64
        } else {
            0.0
        };
        s += &format!(
            "ingested {} records ({} WAL bytes, {} values, {} skipped) up to {} in {:.1?}\n\
             layers: {} live, {} L0 flushed, {} bytes written ({wa:.2}x the WAL ingested)\n\
             {}\n",
            self.ingest.records,
            self.ingest.wal_bytes,
            self.ingest.values,
            self.ingest.skipped,
            self.last_lsn,
            self.elapsed,
            self.layers,
            self.writes.l0_flushes,
            self.writes.layer_bytes,
            self.reads.summary()
        );
        s += &format!(
            "{} (strict VM {}, read errors {})\n",
            self.headline(),
            self.vm_strict_verified,
            self.read_errors
        );
        for (t, c) in &self.per_type {
            s += &format!(
                "  {t:<28} verified {:>7} mismatched {:>5}\n",
                c.verified, c.mismatched
            );
        }
        for (r, n) in &self.per_rmgr {
            s += &format!("rmgr {r} records {n}\n");
        }
        if let (Some(l), Some(f)) = (self.final_lsn, &self.final_report) {
            s += &format!(
                "final data directory at {l} (compared in {:.1?}): {}\n",
                self.final_elapsed,
                f.summary()
            );
            for o in &f.one_sided {
                s += &format!("  one side only: {o}\n");
            }
            for p in &f.problems {
                s += &format!("--- {p}\n");
            }
        }
        for p in self.ingest.problems.iter().chain(&self.problems) {
            s += &format!("--- {p}\n");
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyRedoError {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("reading WAL: {0}")]
    Wal(#[from] WalReadError),
    #[error("{0}")]
    Other(String),
}

/// Runs the verification (or only the ingest, with `verify: false`).
pub fn verify_redo(opts: &VerifyRedoOptions) -> Result<VerifyRedoReport, VerifyRedoError> {
    let t0 = Instant::now();
    let mut rep = VerifyRedoReport::default();
    let conf = TimelineConf {
        freeze_bytes: opts.freeze_bytes,
        ..TimelineConf::default()
    };
    // A directory whose metadata lists layers holds an imported timeline: resume it.
    // Anything else (nothing, or an import that crashed before its layers were listed) is
    // started over.
    let existing = TimelineMetadata::load(&opts.timeline_dir)?;
    let tl = match existing {
        Some(m) if !m.layers.is_empty() => {
            // Its own import: every layer is local.
            let tl = Timeline::open(&opts.timeline_dir, conf, None)?;
            rep.resumed_from = Some(tl.disk_consistent_lsn());
            tl
        }
        _ => {
            if opts.timeline_dir.exists() {
                std::fs::remove_dir_all(&opts.timeline_dir).map_err(|e| {
                    VerifyRedoError::Other(format!("removing {}: {e}", opts.timeline_dir.display()))
                })?;
            }
            let (tl, import) = import_datadir(&opts.base, &opts.timeline_dir, conf, opts.start)?;
            rep.import = Some(import);
            tl
        }
    };
    let conf = IngestConf {
        collect_checks: opts.verify,
        count_unsupported: opts.verify,
        strip_check_images: true,
    };
    let mut ingest = WalIngest::new(tl, conf)?;
    let from = if ingest.timeline().last_record_lsn() == Lsn::INVALID {
        ingest.timeline().start_lsn()
    } else {
        ingest.timeline().last_record_end()
    };
    let mut reader = WalDirReader::open(&opts.wal_dir, from, opts.end, None)?;
    let mut flushes = 0;
    // Checks run between records, on the ingest thread, against what is ingested so far.
    let after = |ingest: &mut WalIngest, rec: &DecodedRecord| {
        rep.last_lsn = rec.lsn;
        let rmgr = walproto::rmgr::rmgr_name(rec.rmid()).unwrap_or("custom");
        *rep.per_rmgr.entry(rmgr.to_string()).or_default() += 1;
        let now = ingest.timeline().write_stats().l0_flushes;
        if opts.verify && (now != flushes || ingest_pending(ingest) >= CHECK_BATCH) {
            flushes = now;
            let checks = ingest.take_checks();
            run_checks(ingest.timeline(), checks, &mut rep, opts.max_reported);
        }
    };
    ingest
        .ingest_pipelined_with(|| reader.next_record(), after)
        .map_err(|e| match e {
            PipelineError::Ingest(e) => VerifyRedoError::Ingest(e),
            PipelineError::Read(e) => VerifyRedoError::Wal(e),
        })?;
    ingest.timeline_mut().flush()?;
    let checks = ingest.take_checks();
    run_checks(ingest.timeline(), checks, &mut rep, opts.max_reported);
    if let (true, Some(dir)) = (opts.verify, &opts.final_dir) {
        let t = Instant::now();
        compare_final(&ingest, dir, &mut rep, opts.max_reported)?;
        rep.final_elapsed = t.elapsed();
    }
    let tl = ingest.timeline();
    rep.ingest = ingest.stats().clone();
    rep.reads = tl.read_stats();
    rep.writes = tl.write_stats();
    rep.layers = tl.layer_descs().len();
    rep.elapsed = t0.elapsed();
    Ok(rep)
}

fn ingest_pending(ingest: &WalIngest) -> usize {
    ingest.pending_checks()
}

fn problem(rep: &mut VerifyRedoReport, max: usize, text: impl FnOnce() -> String) {
    if rep.problems.len() < max {
        rep.problems.push(text());
    }
}

/// GetPage for each check, compared with Postgres's image.
fn run_checks(tl: &Timeline, checks: Vec<ImageCheck>, rep: &mut VerifyRedoReport, max: usize) {
    for c in checks {
        let counts = rep.per_type.entry(c.record.clone()).or_default();
        let ours = match tl.get_page(c.key, c.lsn) {
            Ok(Some(p)) => p,
            Ok(None) => {
                counts.mismatched += 1;
                rep.mismatched += 1;
                rep.read_errors += 1;
                problem(rep, max, || {
                    format!(
                        "{} ending {}: page {} does not exist",
                        c.record, c.lsn, c.key
                    )
                });
                continue;
            }
            Err(e) => {
                counts.mismatched += 1;
                rep.mismatched += 1;
                rep.read_errors += 1;
                problem(rep, max, || format!("{} ending {}: {e}", c.record, c.lsn));
                continue;
            }
        };
        let theirs = match c.image.restore() {
            Ok(p) => p,
            Err(e) => {
                counts.mismatched += 1;
                rep.mismatched += 1;
                problem(rep, max, || {
                    format!("{} ending {}: consistency image: {e}", c.record, c.lsn)
                });
                continue;
            }
        };
        let (mut a, mut b) = (ours.clone(), theirs.clone());
        mask::mask_for_rmgr(c.rmid, &mut a, c.blkno);
        mask::mask_for_rmgr(c.rmid, &mut b, c.blkno);
        let mut equal = a == b;
        let mut strict_note = "";
        if equal && c.fork == VISIBILITYMAP_FORKNUM {
            // heap_mask hides a VM page's bitmap; compare it strictly.
            let (mut x, mut y) = (ours.clone(), theirs.clone());
            mask::mask_page_lsn_and_checksum(&mut x);
            mask::mask_page_lsn_and_checksum(&mut y);
            equal = x == y;
            if equal {
                rep.vm_strict_verified += 1;
            } else {
                (a, b) = (x, y);
                strict_note = " (VM page, unmasked)";
            }
        }
        let counts = rep.per_type.entry(c.record.clone()).or_default();
        if equal {
            counts.verified += 1;
            rep.verified += 1;
        } else {
            counts.mismatched += 1;
            rep.mismatched += 1;
            problem(rep, max, || {
                format!(
                    "mismatch{strict_note}: {} ending {} key {} (fork {} blk {}): GetPage differs from Postgres's image:\n{}",
                    c.record,
                    c.lsn,
                    c.key,
                    c.fork,
                    c.blkno,
                    diff::describe(&a, &b, 8)
                )
            });
        }
    }
}

/// Every block of every relation fork, of the final data directory and of the timeline,
/// against GetPage at the directory's checkpoint.
fn compare_final(
    ingest: &WalIngest,
    dir: &std::path::Path,
    rep: &mut VerifyRedoReport,
    max: usize,
) -> Result<(), VerifyRedoError> {
    let control = read_control(dir)?;
    let lsn = control.checkpoint;
    let tl = ingest.timeline();
    if lsn > tl.last_record_end() {
        return Err(VerifyRedoError::Other(format!(
            "the final data directory's checkpoint {lsn} is beyond the WAL ingested (up to {})",
            tl.last_record_end()
        )));
    }
    rep.final_lsn = Some(lsn);
    let io_err =
        |e: std::io::Error| VerifyRedoError::Other(format!("reading {}: {e}", dir.display()));
    let files = scan_rel_files(dir).map_err(io_err)?;
    let disk = PageStore::new(dir);
    let ours: BTreeMap<_, _> = ingest
        .directory()
        .all_forks()
        .into_iter()
        .map(|(rel, fork, n)| ((rel, fork), n))
        .collect();
    let mut out = DataDirReport::default();
    count_temp_files(&mut out, &files);
    for_each_fork(&mut out, &ours, &files, max, |out, rel, fork, n| {
        let ctx = BlockContext {
            unlogged: files.is_unlogged(rel),
            wal_log_db: ingest.is_wal_log_db(rel.spc, rel.db),
            untouched: false,
        };
        let in_timeline = ours.get(&(rel, fork)).copied().unwrap_or(0);
        for blk in 0..n {
            let pkey = (rel, fork, blk);
            let theirs = disk.get(&pkey).map_err(io_err)?;
            let (page, writer) = if blk < in_timeline {
                let key = Key::rel_block(rel, fork, blk);
                match tl.get_page_version(key, lsn) {
                    Ok(Some(v)) => (Some(v.page), v.writer),
                    Ok(None) => (None, None),
                    Err(e) => {
                        out.differing += 1;
                        if out.problems.len() < max {
                            out.problems.push(format!("GetPage {key} at {lsn}: {e}"));
                        }
                        continue;
                    }
                }
            } else {
                (None, None)
            };
            compare_block(
                out,
                &pkey,
                page.as_deref(),
                writer,
                theirs.as_deref(),
                ctx,
                max,
            );
        }
        Ok::<(), VerifyRedoError>(())
    })?;
    rep.final_report = Some(out);
    Ok(())
}
