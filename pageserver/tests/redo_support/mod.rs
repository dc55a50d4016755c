//! Checks one resource manager's native redo against a real Postgres 15, the same way for
//! every index access method:
//!
//! 1. [`check_against_images`]: the workload runs with `wal_consistency_checking = all`; the
//!    WAL is replayed over the base with Strata's redo and every redone page is compared,
//!    masked, with the image Postgres logged. No mismatch, no unsupported record, no redo
//!    error, and every record type in `must_verify` verified at least once.
//! 2. [`check_tamper_is_caught`]: the same replay with a deliberate one-byte bug in what redo
//!    produced for this resource manager: the comparison must report those pages.
//! 3. [`check_production_wal`]: the workload runs again with consistency checking off, as
//!    users run Postgres; the WAL replays without error and the final pages equal the data
//!    directory after the clean shutdown.

#![allow(dead_code)]

use pageserver::redo::datadir::{compare_with_data_dir, DataDirReport};
use pageserver::redo::verify::{replay, VerifyOptions, VerifyReport};
use pageserver::redo::Page;
use strata_tests::redo_run::{redo_run, RedoRun};
use walproto::record::DecodedRecord;

/// A workload: settings added to `postgresql.conf` and SQL steps (one `psql` call each).
pub struct Workload<'a> {
    pub settings: &'a [(&'a str, &'a str)],
    pub steps: &'a [&'a str],
}

fn options(run: &RedoRun, check_images: bool) -> VerifyOptions {
    VerifyOptions {
        base: run.base.clone(),
        wal_dir: run.pg.wal_dir(),
        start: run.start,
        end: None,
        check_images,
        max_reported: 20,
        tamper: None,
    }
}

/// Prints the report as `strata verify-redo` does: the summary, one line per record type,
/// the first problems.
pub fn print(rep: &VerifyReport) {
    println!("{}", rep.summary());
    for (t, c) in &rep.per_type {
        println!(
            "  {t:<28} verified {:>7} mismatched {:>5}",
            c.verified, c.mismatched
        );
    }
    for p in &rep.problems {
        println!("--- {p}");
    }
}

/// Runs `w` with consistency checking and replays it; returns the run (for
/// [`check_tamper_is_caught`]) after asserting that every page matched.
pub fn check_against_images(w: &Workload, must_verify: &[&str]) -> anyhow::Result<RedoRun> {
    let run = redo_run(true, w.settings, w.steps)?;
    let (rep, _) = replay(&options(&run, true))?;
    print(&rep);
    assert_eq!(rep.mismatched, 0, "pages differ from Postgres's images");
    assert_eq!(rep.unsupported, 0, "records without native redo");
    assert_eq!(rep.errors, 0, "redo errors");
    assert_eq!(rep.missing, 0, "records on pages that do not exist");
    assert_eq!(rep.nonnative_images, 0, "pages taken from images");
    let unverified: Vec<&&str> = must_verify
        .iter()
        .filter(|t| rep.per_type.get(**t).map_or(0, |c| c.verified) == 0)
        .collect();
    assert!(unverified.is_empty(), "no page verified for {unverified:?}");
    Ok(run)
}

/// Replays `run` with `tamper` altering redo's results; asserts that pages of records named
/// `prefix` (e.g. `"Gin/"`) mismatch and nothing else does.
pub fn check_tamper_is_caught(
    run: &RedoRun,
    prefix: &str,
    tamper: fn(&DecodedRecord, &mut Page),
) -> anyhow::Result<()> {
    let mut opts = options(run, true);
    opts.max_reported = 1;
    opts.tamper = Some(tamper);
    let (rep, _) = replay(&opts)?;
    print(&rep);
    let caught: u64 = rep
        .per_type
        .iter()
        .filter(|(t, _)| t.starts_with(prefix))
        .map(|(_, c)| c.mismatched)
        .sum();
    assert!(caught > 0, "the tampered {prefix} pages were not caught");
    assert_eq!(rep.mismatched, caught, "only tampered pages may differ");
    Ok(())
}

/// Runs `w` without consistency checking, replays the WAL as production ingest would and
/// compares the final pages with the data directory after the clean shutdown.
pub fn check_production_wal(w: &Workload) -> anyhow::Result<(VerifyReport, DataDirReport)> {
    let run = redo_run(false, w.settings, w.steps)?;
    let (rep, store) = replay(&options(&run, false))?;
    print(&rep);
    assert_eq!(rep.unsupported, 0, "records without native redo");
    assert_eq!(rep.errors, 0, "redo errors");
    assert_eq!(rep.missing, 0, "records on pages that do not exist");
    let disk = compare_with_data_dir(&store, run.pg.data_dir(), 10)?;
    println!("end state vs data directory: {disk:?}");
    assert_eq!(
        disk.differing, 0,
        "final pages differ from the data directory"
    );
    assert!(disk.equal > 0, "no page compared: {disk:?}");
    Ok((rep, disk))
}
