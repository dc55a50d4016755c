//! WAL ingest throughput beside Postgres's own recovery of the same WAL, in one run.
//!
//! A throw-away Postgres 15 writes pgbench WAL (`pgbench -i -s $STRATA_BENCH_SCALE`, default
//! 40, then `$STRATA_BENCH_SECONDS`, default 300, with 4 clients: about 0.9 GB, the ~1 GB the
//! benchmark asks for, a third of it OLTP records) on top of a copied base. Then:
//! - **Strata**: the base is imported and all the WAL ingested into a timeline through the
//!   normal ingest path (with automatic compaction), then flushed durably: the time runs until
//!   every layer is written and fsynced and the metadata listing them is stored — background
//!   flushes and compactions included, since `flush` waits for them;
//! - **Postgres**: the same base is started as a standby over the same WAL in `pg_wal`, and
//!   timed until `pg_last_wal_replay_lsn()` reaches the end of the WAL.
//!
//! Also printed: the decoder alone over the same WAL, Strata's ingest without automatic
//! compaction (decode + in-memory layers + L0 flushes, until durable) followed by an explicit
//! compaction timed on its own, and CPU seconds, so the cost of each stage shows. Each side
//! runs `$STRATA_BENCH_RUNS` (default 3) times and the fastest run counts (the machine may be
//! shared), after one untimed Strata run that warms the process up as a running pageserver
//! is; the runs go in rounds (Strata, then Postgres, then again), so that a drift of the
//! machine's speed during the bench affects both sides alike. Each run's time is printed, and
//! each round's ratio (Postgres's run over Strata's until-durable run of the same round).
//!
//! `STRATA_BENCH_WORKLOAD=indexes` writes an index-heavy WAL instead
//! (`strata_tests::index_workload`: GIN on jsonb and tsvector, GiST, SP-GiST, hash and BRIN
//! beside the heap and its B-tree key; `$STRATA_BENCH_ROWS` rows, default 300,000), so the
//! native redo of every index access method is on the measured path.
//!
//! `STRATA_BENCH_NO_PG=1` skips Postgres's side, and `STRATA_BENCH_ONLY=l0` (ingest until
//! durable, no explicit compaction) or `=full` runs only one of Strata's (for profiling).
//! `STRATA_BENCH_FIXTURE=<dir>` keeps the generated base and WAL in `<dir>` and reuses them in
//! later runs (the WAL generation takes minutes; delete the directory to start over).
//!
//! `cargo bench -p pageserver --bench ingest_vs_recovery` prints the table.

// The pageserver binary's allocator (src/bin/pageserver.rs), so ingest runs as it does there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The Postgres side and file helpers are the served bench's.
#[allow(dead_code)]
#[path = "ingest_served/served.rs"]
mod served;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{CompactionConf, TimelineConf};
use strata_tests::index_workload::run_index_workload;
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use served::{copy as cp, postgres_run, settle};

/// `STRATA_BENCH_WORKLOAD=indexes`: the index-heavy workload instead of pgbench.
fn index_heavy() -> bool {
    std::env::var("STRATA_BENCH_WORKLOAD").is_ok_and(|w| w == "indexes")
}

/// A base data directory and the WAL written on top of it (`wal` holds every segment).
struct Fixture {
    base: PathBuf,
    wal: PathBuf,
    start: Lsn,
    end: Lsn,
}

/// Writes the pgbench WAL, or reuses the one kept in `STRATA_BENCH_FIXTURE`.
fn fixture(pg: &PgCluster) -> anyhow::Result<Fixture> {
    let keep = std::env::var_os("STRATA_BENCH_FIXTURE").map(PathBuf::from);
    if let Some(dir) = keep.as_ref().filter(|d| d.join("range").exists()) {
        let range = std::fs::read_to_string(dir.join("range"))?;
        let (s, e) = range.trim().split_once(' ').context("bad fixture range")?;
        println!("reusing the WAL kept in {}", dir.display());
        return Ok(Fixture {
            base: dir.join("base"),
            wal: dir.join("wal"),
            start: s.parse()?,
            end: e.parse()?,
        });
    }
    let base = pg.copy_data_dir("base")?;
    pg.start()?;
    if index_heavy() {
        let rows = env_u64("STRATA_BENCH_ROWS", 300_000);
        println!("writing WAL: the index-heavy workload, {rows} rows");
        run_index_workload(pg, rows)?;
    } else {
        let scale = env_u64("STRATA_BENCH_SCALE", 40);
        let seconds = env_u64("STRATA_BENCH_SECONDS", 300);
        println!("writing WAL: pgbench -i -s {scale}, then {seconds} s with 4 clients");
        pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
        pg.pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string()])?;
    }
    pg.stop(StopMode::Fast)?;
    let start = read_control(&base)?.checkpoint;
    let end = wal_end_after_clean_stop(pg)?;
    let wal = pg.base_dir().join("wal");
    cp(&pg.wal_dir(), &wal)?;
    let mut f = Fixture {
        base,
        wal,
        start,
        end,
    };
    if let Some(dir) = keep {
        std::fs::create_dir_all(&dir)?;
        cp(&f.base, &dir.join("base"))?;
        cp(&f.wal, &dir.join("wal"))?;
        std::fs::write(dir.join("range"), format!("{start} {end}\n"))?;
        f.base = dir.join("base");
        f.wal = dir.join("wal");
    }
    Ok(f)
}

/// Seconds of one timed stage.
struct Timed {
    import: f64,
    ingest: f64,
    flush: f64,
    /// CPU seconds of the process (all threads) during ingest + flush.
    cpu: f64,
    /// An explicit compaction after the durable ingest, if asked for.
    compaction: Option<(f64, String)>,
    records: u64,
    layer_bytes: u64,
    l0_bytes: u64,
}

/// CPU seconds (user + system, all threads) used by this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) : utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Linux reports them in USER_HZ, 100 per second.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// Imports the base into a fresh timeline under `scratch`, ingests all the WAL (decoding on a
/// thread of its own) and flushes; then compacts explicitly if `compact_after`.
fn strata(
    f: &Fixture,
    scratch: &Path,
    conf: TimelineConf,
    compact_after: bool,
) -> anyhow::Result<Timed> {
    let dir = tempfile::tempdir_in(scratch)?;
    let t0 = Instant::now();
    let (tl, _) = import_datadir(&f.base, &dir.path().join("tl"), conf, None)?;
    let import = t0.elapsed().as_secs_f64();
    let mut ingest = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(&f.wal, f.start, Some(f.end), None)?;
    settle()?;
    let (t1, cpu0) = (Instant::now(), cpu_secs());
    ingest.ingest_pipelined(|| reader.next_record())?;
    let ingest_secs = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    ingest.timeline_mut().flush()?;
    let flush = t2.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let compaction = if compact_after {
        let t3 = Instant::now();
        let rep = ingest.timeline_mut().compact()?;
        Some((
            t3.elapsed().as_secs_f64(),
            format!(
                "{} L0 merged into {} L1 files ({:.0} MB), {} image layers ({:.0} MB)",
                rep.l0_merged,
                rep.l1_layers_written,
                rep.l1_bytes as f64 / 1e6,
                rep.image_layers_written,
                rep.image_bytes as f64 / 1e6
            ),
        ))
    } else {
        None
    };
    let w = ingest.timeline().write_stats();
    Ok(Timed {
        import,
        ingest: ingest_secs,
        flush,
        cpu,
        compaction,
        records: ingest.stats().records,
        layer_bytes: w.layer_bytes - w.import_bytes,
        l0_bytes: w.l0_bytes,
    })
}

/// The decoder alone over the same WAL (the second of two passes: the first brings the WAL
/// into the page cache, as it is for the other runs).
fn decode_only(f: &Fixture) -> anyhow::Result<f64> {
    let mut secs = 0.0;
    for _ in 0..2 {
        let mut reader = WalDirReader::open(&f.wal, f.start, Some(f.end), None)?;
        let t = Instant::now();
        let mut n = 0u64;
        while let Some(rec) = reader.next_record()? {
            n += rec.raw.len() as u64;
        }
        std::hint::black_box(n);
        secs = t.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// Postgres: the same base as a standby replaying the same WAL from `pg_wal`.
fn postgres(pg: &PgCluster, f: &Fixture) -> anyhow::Result<f64> {
    Ok(postgres_run(pg, &f.base, &f.wal, f.end)?.secs)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this is a load tool with a printed report.
    let pg = PgCluster::init(&InitOptions::default().keep_all_wal())?;
    let f = fixture(&pg)?;
    let wal_mb = (f.end.0 - f.start.0) as f64 / 1e6;
    println!("WAL {} .. {}: {wal_mb:.0} MB", f.start, f.end);

    let decode = decode_only(&f)?;
    let no_compaction = TimelineConf {
        compaction: CompactionConf {
            auto: false,
            ..CompactionConf::default()
        },
        ..TimelineConf::default()
    };
    // The machine may be shared: every side runs `runs` times, the fastest run counts.
    let runs = env_u64("STRATA_BENCH_RUNS", 3).max(1);
    let best = |a: Timed, b: Timed| {
        if b.ingest + b.flush < a.ingest + a.flush {
            b
        } else {
            a
        }
    };
    // STRATA_BENCH_ONLY=l0 (without the explicit compaction) or =full runs only that side.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    let (want_l0, want_full) = (only != "full", only != "l0");
    // STRATA_BENCH_NO_PG=1 skips Postgres's side (for profiling Strata's).
    let with_pg = std::env::var_os("STRATA_BENCH_NO_PG").is_none();
    let mut l0 = None;
    let mut full = None;
    let mut pg_secs = f64::NAN;
    // A pageserver is a long-running process: its first ingest faults in the memory its
    // in-memory layers then reuse (arena, entry and index pools). One untimed run first, so
    // that every timed run sees the steady state.
    if want_l0 || want_full {
        let t = strata(&f, pg.base_dir(), no_compaction.clone(), false)?;
        eprintln!(
            "warm-up (not counted): ingest until durable {:.2} s",
            t.ingest + t.flush
        );
    }
    // Postgres's run over Strata's (until durable) in each round.
    let mut round_ratios = Vec::new();
    // Each round runs every side once, so that a machine whose speed drifts during the bench
    // (this shared one does) slows or speeds up both sides alike.
    for _ in 0..runs {
        let mut round_strata = None;
        if want_l0 {
            let t = strata(&f, pg.base_dir(), no_compaction.clone(), only != "l0")?;
            round_strata = Some(t.ingest + t.flush);
            eprintln!(
                "run: ingest until durable {:.2} s, {:.2} CPU s",
                t.ingest + t.flush,
                t.cpu
            );
            l0 = Some(match l0 {
                Some(a) => best(a, t),
                None => t,
            });
        }
        if want_full {
            let t = strata(&f, pg.base_dir(), TimelineConf::default(), false)?;
            eprintln!(
                "run: ingest with compaction {:.2} s, {:.2} CPU s",
                t.ingest + t.flush,
                t.cpu
            );
            full = Some(match full {
                Some(a) => best(a, t),
                None => t,
            });
        }
        if with_pg {
            let secs = postgres(&pg, &f)?;
            eprintln!("run: Postgres recovery {secs:.2} s");
            pg_secs = secs.min(pg_secs);
            if let Some(s) = round_strata {
                round_ratios.push(secs / s);
            }
        }
    }

    let records = l0.as_ref().or(full.as_ref()).map_or(0, |t| t.records);
    let row = |what: &str, secs: f64| {
        println!(
            "| {what} | {secs:.2} | {:.0} | {:.0} | {:.1}x |",
            wal_mb / secs,
            records as f64 / secs,
            pg_secs / secs
        )
    };
    println!();
    let kind = if index_heavy() {
        "index-heavy"
    } else {
        "pgbench"
    };
    println!("| replay of {wal_mb:.0} MB of {kind} WAL ({records} records), best of {runs} runs | seconds | MB/s | records/s | vs Postgres |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    row(
        "Postgres 15 recovery (standby from pg_wal, start to replay end)",
        pg_secs,
    );
    if let Some(t) = &l0 {
        row(
            "Strata ingest until durable: decode, in-memory layers, background L0 flushes, final flush (compaction separate, below)",
            t.ingest + t.flush,
        );
    }
    if let Some(t) = &full {
        row(
            "Strata ingest with automatic compaction (background L0→L1 merges, images), until durable and compacted",
            t.ingest + t.flush,
        );
    }
    row("WAL decoder alone", decode);
    println!();
    for (name, t) in [("L0 only", &l0), ("with compaction", &full)] {
        let Some(t) = t else { continue };
        println!(
            "Strata {name}: ingest loop {:.2} s + final flush {:.2} s, {:.2} CPU s; {:.0} MB of layers written ({:.2}x the WAL; L0 {:.0} MB); import of the base {:.2} s (not included)",
            t.ingest,
            t.flush,
            t.cpu,
            t.layer_bytes as f64 / 1e6,
            t.layer_bytes as f64 / 1e6 / wal_mb,
            t.l0_bytes as f64 / 1e6,
            t.import
        );
        if let Some((secs, what)) = &t.compaction {
            println!("  then an explicit compaction: {secs:.2} s: {what}");
        }
    }
    let ratio = |t: &Option<Timed>| {
        t.as_ref()
            .map_or(f64::NAN, |t| pg_secs / (t.ingest + t.flush))
    };
    println!(
        "Strata (until durable) / Postgres: {:.1}x; with compaction: {:.1}x",
        ratio(&l0),
        ratio(&full)
    );
    if !round_ratios.is_empty() {
        let each: Vec<String> = round_ratios.iter().map(|r| format!("{r:.1}x")).collect();
        round_ratios.sort_by(f64::total_cmp);
        println!(
            "until durable, round by round (Postgres's run / Strata's run of the same round): {}; median {:.1}x",
            each.join(", "),
            round_ratios[round_ratios.len() / 2]
        );
    }
    Ok(())
}
