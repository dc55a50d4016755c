//! The same WAL ingested without its consistency images gives identical pages.
//!
//! Postgres with `wal_consistency_checking = all` adds to every block reference an image of
//! the page after the record, without `BKPIMAGE_APPLY` (with it only when the image is also a
//! real full-page write). Strata redoes every built-in resource manager natively, so those
//! images only verify redo and are never stored.
//!
//! The consistency-checked workload's WAL goes into two timelines over the same base:
//! - A: every record as Postgres wrote it;
//! - B: every natively redone record with its verification-only images removed, exactly as
//!   Postgres would have written it without consistency checking (LSNs unchanged).
//!
//! At the end and at four workload marks, every page of every relation fork the directory
//! lists, every SLRU page, the relation directory and sizes, the relmapper files, the
//! checkpoint counters, the two-phase and restore-point state must be byte-identical,
//! unmasked.
//!
//! `STRATA_TIMELINE_FIXTURE=<file>` (four lines: base dir, WAL dir, final data dir, start
//! LSN; see `timeline_ingest.rs`) reuses a saved workload; LSNs along the WAL then stand in
//! for the marks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use layer_format::{Key, SlruKind};
use pageserver::import::import_datadir;
use pageserver::ingest::nonpage::keys;
use pageserver::ingest::nonpage::read::{
    checkpoint_state_at, prepared_xacts, relmap_at, restore_points, slru_page_at, slru_segments,
};
use pageserver::ingest::reldir::RelDirectory;
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::redo::{diff, has_native_redo};
use pageserver::timeline::{Timeline, TimelineConf};
use strata_tests::workload::consistency_checked_workload;
use strata_tests::PgCluster;
use walproto::record::DecodedRecord;
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

/// The workload's WAL and base, and the LSNs to compare at besides the end.
struct Fixture {
    _pg: Option<PgCluster>,
    base: PathBuf,
    wal: PathBuf,
    start: Lsn,
    /// (label, LSN): workload marks, or points along the WAL.
    marks: Vec<(String, Lsn)>,
}

/// Marks spread over the workload: after pgbench (heap, btree), after the index access
/// methods (records whose images are the page), after VACUUM and rewrites, after the
/// databases and tablespaces.
const MARKS: &[&str] = &[
    "pgbench",
    "index_access_methods",
    "vacuum_and_rewrites",
    "databases_and_tablespaces",
];

fn fixture() -> Result<Fixture> {
    if let Some(f) = std::env::var_os("STRATA_TIMELINE_FIXTURE") {
        let text = std::fs::read_to_string(f)?;
        let v: Vec<&str> = text.lines().collect();
        ensure!(v.len() >= 4, "fixture file needs base, wal, data, start");
        return Ok(Fixture {
            _pg: None,
            base: v[0].into(),
            wal: v[1].into(),
            start: v[3].parse()?,
            marks: Vec::new(),
        });
    }
    let (pg, base, report) = consistency_checked_workload("noimages-base")?;
    let marks = MARKS
        .iter()
        .map(|m| {
            report
                .mark(m)
                .map(|l| (m.to_string(), l))
                .with_context(|| format!("the workload has no mark {m:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Fixture {
        wal: pg.wal_dir(),
        base,
        start: report.start,
        marks,
        _pg: Some(pg),
    })
}

/// What stripping removed.
#[derive(Default, Debug)]
struct Stripped {
    records: u64,
    images: u64,
    /// Bytes of the records as written, and as stripped.
    bytes_before: u64,
    bytes_after: u64,
    /// Verification-only images left in place: on records of resource managers without
    /// native redo, where they are the page.
    kept_non_native: u64,
}

fn new_timeline(f: &Fixture, dir: &Path) -> Result<WalIngest> {
    let (tl, _) = import_datadir(&f.base, dir, TimelineConf::default(), Some(f.start))?;
    Ok(WalIngest::new(tl, IngestConf::default())?)
}

/// Ingests the WAL into A as it is (on a thread of its own) and into B without
/// verification-only images.
fn ingest_both(f: &Fixture, a: &mut WalIngest, b: &mut WalIngest) -> Result<Stripped> {
    let mut st = Stripped::default();
    let mut reader = WalDirReader::open(&f.wal, f.start, None, None)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<DecodedRecord>>(64);
    std::thread::scope(|scope| -> Result<()> {
        let ingest_a = scope.spawn(move || -> Result<()> {
            for batch in rx {
                for rec in batch {
                    a.ingest_record(&rec)?;
                }
            }
            a.timeline_mut().flush()?;
            Ok(())
        });
        let mut batch = Vec::with_capacity(256);
        let fed = (|| -> Result<()> {
            while let Some(rec) = reader.next_record()? {
                batch.push(rec.clone());
                if batch.len() == 256 && tx.send(std::mem::take(&mut batch)).is_err() {
                    // A stopped on an error: its result says which.
                    return Ok(());
                }
                st.ingest_b(b, &rec)?;
            }
            let _ = tx.send(batch);
            Ok(())
        })();
        drop(tx);
        let a_result = ingest_a
            .join()
            .map_err(|_| anyhow::anyhow!("ingest into A panicked"))?;
        a_result.context("ingest into A")?;
        fed.context("ingest into B")?;
        Ok(())
    })?;
    b.timeline_mut().flush()?;
    Ok(st)
}

impl Stripped {
    /// One record into B: a natively redone one without its verification-only images.
    fn ingest_b(&mut self, b: &mut WalIngest, rec: &DecodedRecord) -> Result<()> {
        let checks = rec
            .blocks
            .iter()
            .filter(|blk| blk.image.as_ref().is_some_and(|i| !i.apply()))
            .count() as u64;
        if !has_native_redo(rec.rmid()) {
            self.kept_non_native += checks;
            b.ingest_record(rec)?;
            return Ok(());
        }
        match rec
            .without_check_images()
            .with_context(|| format!("stripping the record at {}", rec.lsn))?
        {
            Some(s) => {
                ensure!(
                    !s.has_check_images() && s.blocks.len() == rec.blocks.len(),
                    "record at {}: stripping left {} blocks, check images: {}",
                    rec.lsn,
                    s.blocks.len(),
                    s.has_check_images()
                );
                self.records += 1;
                self.images += checks;
                self.bytes_before += rec.raw.len() as u64;
                self.bytes_after += s.raw.len() as u64;
                b.ingest_record(&s)?;
            }
            None => {
                b.ingest_record(rec)?;
            }
        }
        Ok(())
    }
}

#[derive(Default, Debug)]
struct Compared {
    pages: u64,
    /// Blocks inside a fork that have no version on either side (never written).
    absent: u64,
    slru_pages: u64,
    nonpage_values: u64,
}

/// A value that must be the same on both timelines, as text for the error message.
fn same<T: PartialEq + std::fmt::Debug>(what: &str, lsn: Lsn, a: T, b: T) -> Result<()> {
    ensure!(a == b, "{what} at {lsn} differs:\n  A: {a:?}\n  B: {b:?}");
    Ok(())
}

fn compare_at(a: &Timeline, b: &Timeline, lsn: Lsn, c: &mut Compared) -> Result<()> {
    // Relation directory and sizes.
    let (da, db) = (RelDirectory::load(a, lsn)?, RelDirectory::load(b, lsn)?);
    same("the relation directory", lsn, &da, &db)?;
    ensure!(!da.all_forks().is_empty(), "no relations at {lsn}");

    // Every block of every fork.
    let mut differing = Vec::new();
    let mut dbs = BTreeSet::new();
    for (rel, fork, n) in da.all_forks() {
        dbs.insert((rel.spc, rel.db));
        for blk in 0..n {
            let key = Key::rel_block(rel, fork, blk);
            let (pa, pb) = (a.get_page(key, lsn)?, b.get_page(key, lsn)?);
            match (&pa, &pb) {
                (Some(x), Some(y)) if x == y => c.pages += 1,
                (None, None) => c.absent += 1,
                (Some(x), Some(y)) => {
                    if differing.len() < 5 {
                        differing.push(format!("{key}:\n{}", diff::describe(x, y, 4)));
                    }
                }
                _ => {
                    if differing.len() < 5 {
                        differing.push(format!(
                            "{key}: exists in A {}, in B {}",
                            pa.is_some(),
                            pb.is_some()
                        ));
                    }
                }
            }
        }
    }
    ensure!(
        differing.is_empty(),
        "pages differ at {lsn}:\n{}",
        differing.join("\n")
    );

    // SLRU segments and pages.
    for slru in [
        SlruKind::Clog,
        SlruKind::MultiXactOffsets,
        SlruKind::MultiXactMembers,
    ] {
        let (sa, sb) = (slru_segments(a, slru, lsn)?, slru_segments(b, slru, lsn)?);
        same(&format!("{slru:?} segments"), lsn, &sa, &sb)?;
        for (&segno, &n) in &sa {
            for blk in 0..n {
                let (pa, pb) = (
                    slru_page_at(a, slru, segno, blk, lsn)?,
                    slru_page_at(b, slru, segno, blk, lsn)?,
                );
                ensure!(
                    pa == pb,
                    "{slru:?} segment {segno} page {blk} differs at {lsn}"
                );
                c.slru_pages += 1;
            }
        }
    }

    // The rest of the non-page state.
    same(
        "the checkpoint counters",
        lsn,
        checkpoint_state_at(a, lsn)?,
        checkpoint_state_at(b, lsn)?,
    )?;
    same(
        "the restore points",
        lsn,
        restore_points(a, lsn)?,
        restore_points(b, lsn)?,
    )?;
    same(
        "the prepared transactions",
        lsn,
        prepared_xacts(a, lsn)?,
        prepared_xacts(b, lsn)?,
    )?;
    c.nonpage_values += 3;
    let mut image_keys = vec![
        Key::db_dir(),
        Key::checkpoint(),
        Key::control_file(),
        Key::global_relmap(),
        keys::restore_points(),
        keys::commit_count(),
        keys::twophase_dir(),
    ];
    for (spc, db) in dbs {
        same(
            &format!("the relmapper file of {spc}/{db}"),
            lsn,
            relmap_at(a, spc, db, lsn)?,
            relmap_at(b, spc, db, lsn)?,
        )?;
        image_keys.push(Key::rel_dir(spc, db));
        c.nonpage_values += 1;
    }
    for key in image_keys {
        let va: Option<Bytes> = a.get_image_value(key, lsn)?;
        let vb: Option<Bytes> = b.get_image_value(key, lsn)?;
        same(&format!("value {key}"), lsn, va, vb)?;
        c.nonpage_values += 1;
    }
    Ok(())
}

#[test]
fn same_pages_without_consistency_images() -> Result<()> {
    let f = fixture()?;
    let scratch = tempfile::tempdir()?;
    let t0 = Instant::now();
    let mut a = new_timeline(&f, &scratch.path().join("as-written"))?;
    let mut b = new_timeline(&f, &scratch.path().join("stripped"))?;
    let st = ingest_both(&f, &mut a, &mut b)?;
    let end = a.timeline().last_record_end();
    println!(
        "ingested {} records in {:.1?}: stripped {} verification-only images from {} natively redone records ({} -> {} bytes); kept {} images of records without native redo",
        a.stats().records,
        t0.elapsed(),
        st.images,
        st.records,
        st.bytes_before,
        st.bytes_after,
        st.kept_non_native,
    );
    println!(
        "WAL bytes ingested: A {} B {}; values stored: A {} B {}",
        a.stats().wal_bytes,
        b.stats().wal_bytes,
        a.stats().values,
        b.stats().values
    );
    assert_eq!(a.stats().records, b.stats().records);
    assert_eq!(
        a.timeline().last_record_end(),
        b.timeline().last_record_end()
    );
    // Stripping must have done something, a lot of it: the workload has ~100k checked pages.
    assert!(st.images > 50_000, "only {} images stripped", st.images);
    assert!(
        b.stats().wal_bytes * 2 < a.stats().wal_bytes,
        "B's records are not much smaller: {} vs {} bytes",
        b.stats().wal_bytes,
        a.stats().wal_bytes
    );
    // Every built-in resource manager is redone natively: no check image is ever kept.
    assert_eq!(
        st.kept_non_native, 0,
        "images kept for records without native redo"
    );

    // The marks, or points along the WAL for a saved fixture.
    let mut points: Vec<(String, Lsn)> = f.marks.clone();
    if points.is_empty() {
        let span = end.0 - f.start.0;
        points = (1..=4)
            .map(|i| (format!("{i}/5 of the WAL"), Lsn(f.start.0 + span * i / 5)))
            .collect();
    }
    points.push(("end".to_string(), end));
    ensure!(points.len() >= 4);
    let mut total = Compared::default();
    for (label, lsn) in &points {
        ensure!(
            *lsn > f.start && *lsn <= end,
            "{label} {lsn} is outside the WAL"
        );
        let t = Instant::now();
        let mut c = Compared::default();
        compare_at(a.timeline(), b.timeline(), *lsn, &mut c)?;
        println!(
            "{label:<28} {lsn}: {} pages identical ({} never written), {} SLRU pages, {} other values, in {:.1?}",
            c.pages,
            c.absent,
            c.slru_pages,
            c.nonpage_values,
            t.elapsed()
        );
        assert!(c.pages > 1000, "only {} pages at {lsn}", c.pages);
        assert!(c.slru_pages > 0, "no SLRU page at {lsn}");
        total.pages += c.pages;
        total.slru_pages += c.slru_pages;
        total.nonpage_values += c.nonpage_values;
    }
    println!(
        "identical: {} pages, {} SLRU pages, {} other values at {} LSNs; {} images stripped",
        total.pages,
        total.slru_pages,
        total.nonpage_values,
        points.len(),
        st.images
    );
    Ok(())
}
