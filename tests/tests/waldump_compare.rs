//! `strata waldump` decodes real Postgres 15 WAL exactly like `pg_waldump`.
//!
//! For each WAL flavour that changes how records are encoded (full-page image compression
//! off/pglz/lz4/zstd, and `wal_consistency_checking = all`, which adds an image to nearly
//! every record), run the full workload on a fresh cluster, stop it cleanly, dump the
//! whole WAL with both tools and compare them record by record: rmgr, rec/tot lengths, xid,
//! LSN, prev-LSN, record type, and every block reference line (relation, fork, block,
//! image flags, hole, compression), and then the descriptions too: every line must be
//! identical in full.
//!
//! The strata binary is not built here: build it first (`cargo build -p strata`), or point
//! `STRATA_BIN` at it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strata_tests::waldump::{self, Comparison};
use strata_tests::workload::{promote_in_place, run_full_workload, workload_settings};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::Lsn;

/// One WAL flavour.
#[derive(Clone, Copy, Debug)]
struct Flavour {
    name: &'static str,
    compression: &'static str,
    consistency_checking: bool,
    /// Also promote the cluster afterwards and compare timeline 2 (END_OF_RECOVERY).
    promote: bool,
}

const FLAVOURS: &[Flavour] = &[
    // The slowest first, so the two workers finish at about the same time.
    Flavour {
        name: "consistency-checking",
        compression: "off",
        consistency_checking: true,
        promote: false,
    },
    Flavour {
        name: "off",
        compression: "off",
        consistency_checking: false,
        promote: true,
    },
    Flavour {
        name: "pglz",
        compression: "pglz",
        consistency_checking: false,
        promote: false,
    },
    Flavour {
        name: "lz4",
        compression: "lz4",
        consistency_checking: false,
        promote: false,
    },
    Flavour {
        name: "zstd",
        compression: "zstd",
        consistency_checking: false,
        promote: false,
    },
];

/// Minimum records per flavour: the comparison must not pass vacuously.
const MIN_RECORDS: usize = 10_000;

struct Outcome {
    flavour: Flavour,
    range: (Lsn, Lsn),
    comparisons: Vec<(String, Comparison)>,
    workload: Duration,
    total: Duration,
}

fn compare_range(
    strata: &Path,
    pg: &PgCluster,
    start: Lsn,
    end: Lsn,
    extra: &[&str],
) -> Result<(Comparison, Vec<waldump::DumpRecord>)> {
    let wal = pg.wal_dir();
    let theirs = waldump::run_pg_waldump(&wal, start, end, extra)?;
    let ours = waldump::run_strata_waldump(strata, &wal, start, end, extra)?;
    let theirs = waldump::parse_dump(&theirs).context("parsing pg_waldump output")?;
    let ours = waldump::parse_dump(&ours).context("parsing strata waldump output")?;
    Ok((waldump::compare(&theirs, &ours), theirs))
}

fn run_flavour(f: Flavour, strata: &Path) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut opts = InitOptions {
        settings: workload_settings(),
        ..Default::default()
    }
    .set("wal_compression", f.compression);
    if f.consistency_checking {
        opts = opts.set("wal_consistency_checking", "all");
    }
    let pg = PgCluster::init(&opts)?;
    let report = run_full_workload(&pg)?;
    let workload = t0.elapsed();
    pg.stop(StopMode::Fast)?;
    let end = waldump::wal_end_after_clean_stop(&pg)?;

    let (cmp, records) = compare_range(strata, &pg, report.start, end, &[])?;
    ensure!(
        records.len() > MIN_RECORDS,
        "{}: only {} records",
        f.name,
        records.len()
    );
    // The flavour really is what it claims to be: images are compressed with the method,
    // or carry the "for WAL verification" flag.
    let blkrefs = || records.iter().flat_map(|r| r.blkrefs.iter());
    if f.compression != "off" {
        let needle = format!("method: {}", f.compression);
        ensure!(
            blkrefs().any(|b| b.contains(&needle)),
            "{}: no image compressed with {}",
            f.name,
            f.compression
        );
    } else {
        ensure!(
            !blkrefs().any(|b| b.contains("compression saved")),
            "{}: compressed images although wal_compression = off",
            f.name
        );
    }
    ensure!(
        blkrefs().any(|b| b.contains("(FPW for WAL verification)")) == f.consistency_checking,
        "{}: images for WAL verification present iff wal_consistency_checking",
        f.name
    );
    let mut comparisons = vec![("timeline 1".to_string(), cmp)];

    if f.promote {
        let seg = promote_in_place(&pg)?;
        let (_, segno) = walproto::lsn::parse_segment_file_name(&seg).context("segment name")?;
        let tl2_start = Lsn(segno * walproto::consts::WAL_SEGMENT_SIZE);
        let tl2_end = waldump::wal_end_after_clean_stop(&pg)?;
        let (cmp, records) = compare_range(strata, &pg, tl2_start, tl2_end, &["-t", "2"])?;
        ensure!(
            records
                .iter()
                .any(|r| r.rmgr == "XLOG" && r.record_type() == "END_OF_RECOVERY"),
            "no END_OF_RECOVERY on timeline 2"
        );
        comparisons.push(("timeline 2 (after promotion)".to_string(), cmp));
    }
    Ok(Outcome {
        flavour: f,
        range: (report.start, end),
        comparisons,
        workload,
        total: t0.elapsed(),
    })
}

#[test]
fn waldump_matches_pg_waldump() {
    let t0 = Instant::now();
    let strata: PathBuf = waldump::strata_bin().unwrap_or_else(|e| panic!("{e:#}"));
    println!("comparing against {}", strata.display());

    // Two workers (the machines this runs on have two cores); each takes the next flavour.
    let queue = Mutex::new(FLAVOURS.iter().copied().rev().collect::<Vec<_>>());
    let results: Mutex<Vec<(Flavour, Result<Outcome>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(f) = queue.lock().unwrap().pop() else {
                    break;
                };
                let r = run_flavour(f, &strata);
                results.lock().unwrap().push((f, r));
            });
        }
    });

    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(f, _)| FLAVOURS.iter().position(|g| g.name == f.name));
    let mut failures = Vec::new();
    for (f, r) in &results {
        match r {
            Err(e) => failures.push(format!("{}: {e:#}", f.name)),
            Ok(o) => {
                println!(
                    "{:<22} WAL {}..{} ({} MiB), workload {:.1}s, total {:.1}s",
                    o.flavour.name,
                    o.range.0,
                    o.range.1,
                    (o.range.1 .0 - o.range.0 .0) >> 20,
                    o.workload.as_secs_f64(),
                    o.total.as_secs_f64()
                );
                for (what, c) in &o.comparisons {
                    println!(
                        "    {what}: {} records; {} of {} lines identical in full{}",
                        c.records_left,
                        c.exact_lines,
                        c.total_lines,
                        if c.is_match() { "" } else { "; MISMATCH" }
                    );
                    if !c.inexact_by_type.is_empty() {
                        let mut v: Vec<_> = c.inexact_by_type.iter().collect();
                        v.sort_by(|a, b| b.1.cmp(a.1));
                        let top: Vec<String> = v
                            .iter()
                            .take(12)
                            .map(|(t, n)| format!("{t}: {n}"))
                            .collect();
                        println!("      descriptions differ: {}", top.join(", "));
                        for (l, r) in &c.inexact_examples {
                            println!("        pg_waldump: {l}\n        strata:     {r}");
                        }
                    }
                    if !c.is_match() {
                        failures.push(format!("{} {what}: {}", f.name, c.describe(20)));
                    } else if !c.inexact_by_type.is_empty() {
                        failures.push(format!(
                            "{} {what}: descriptions differ for {:?}",
                            f.name, c.inexact_by_type
                        ));
                    }
                }
            }
        }
    }
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "strata waldump differs from pg_waldump:\n{}",
        failures.join("\n")
    );
}
