//! Read and write amplification with and without compaction, and GetPage@LSN latency, after
//! ingesting real pgbench WAL through the normal ingest path. Prints a report.
//!
//! Setup (once): a throw-away Postgres 15 is initialized, its data directory copied as the
//! base, then `pgbench -i -s $STRATA_BENCH_SCALE` (default 4) and a `$STRATA_BENCH_SECONDS`
//! (default 10) s run with 4 clients write the WAL. (A WAL sample from
//! `scripts/gen-wal-sample.sh` cannot be used: it has no base to import, and ingest needs
//! the relations the WAL names to exist.) The WAL is ingested three times, with L0 layers of
//! `$STRATA_BENCH_FREEZE_MIB` (default 8) MiB — smaller than production's 64 MiB, so that there
//! are many layers and images are made often relative to the WAL:
//!
//! 1. `none`: compaction off (every L0 layer stays);
//! 2. `once`: the same, then one explicit `Timeline::compact()`;
//! 3. `auto`: automatic compaction after flushes (the default configuration), then an
//!    explicit `compact()` at the end.
//!
//! For each: layers per level, read amplification (layer files visited per GetPage) p50/p99
//! over blocks of every fork at the latest, a halfway and an early LSN, write amplification
//! (bytes written to layer files by ingest and compaction ÷ WAL bytes ingested; the import's
//! image layers are not counted), and GetPage latency p50/p99 at the latest and the halfway
//! LSN (page cache off: every read collects its versions and runs redo).
//!
//! `cargo bench -p pageserver --bench compaction`

use std::path::Path;
use std::time::{Duration, Instant};

use layer_format::Key;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{CompactionConf, Timeline, TimelineConf};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// GetPage latency of every key at `lsn`, three passes.
fn latency(tl: &Timeline, keys: &[Key], lsn: Lsn) -> anyhow::Result<(Duration, Duration)> {
    let mut t = Vec::with_capacity(keys.len() * 3);
    for _ in 0..3 {
        for &k in keys {
            let t0 = Instant::now();
            std::hint::black_box(tl.get_page(k, lsn)?);
            t.push(t0.elapsed());
        }
    }
    t.sort();
    Ok((percentile(&t, 0.5), percentile(&t, 0.99)))
}

struct Wal<'a> {
    base: &'a Path,
    wal: &'a Path,
    start: Lsn,
}

fn run(name: &str, w: &Wal, dir: &Path, conf: TimelineConf, compact: bool) -> anyhow::Result<()> {
    let (tl, _) = import_datadir(w.base, dir, conf, None)?;
    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(w.wal, w.start, None, None)?;
    let t0 = Instant::now();
    while let Some(rec) = reader.next_record()? {
        ing.ingest_record(&rec)?;
    }
    ing.timeline_mut().flush()?;
    let ingest_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    if compact {
        ing.timeline_mut().compact()?;
    }
    let compact_secs = t0.elapsed().as_secs_f64();
    let wal_bytes = ing.stats().wal_bytes;
    let tl = ing.timeline();
    let start = tl.start_lsn();
    let latest = tl.last_record_end();
    let span = latest.0 - start.0;
    let halfway = Lsn(start.0 + span / 2);
    let early = Lsn(start.0 + span / 10);
    let mut keys = Vec::new();
    for (rel, fork, n) in ing.directory().all_forks() {
        let step = if n > 64 { 7 } else { 1 };
        keys.extend((0..n).step_by(step).map(|b| Key::rel_block(rel, fork, b)));
    }
    tl.reset_read_stats();
    for lsn in [latest, halfway, early] {
        for &k in &keys {
            tl.get_page(k, lsn)?;
        }
    }
    let ra = tl.read_stats();
    let (l50, l99) = latency(tl, &keys, latest)?;
    let (h50, h99) = latency(tl, &keys, halfway)?;
    let ws = tl.write_stats();
    println!(
        "[{name}] ingest {:.1} MB of WAL in {ingest_secs:.2} s, final compaction {compact_secs:.2} s\n\
         [{name}] {}\n\
         [{name}] read amplification ({} reads at latest/halfway/early): p50 {} p99 {} max {}\n\
         [{name}] write amplification {:.2}x (L0 {:.2}x, L1 {:.2}x, images {:.2}x; {} compactions)\n\
         [{name}] GetPage latest p50 {l50:?} p99 {l99:?}; halfway p50 {h50:?} p99 {h99:?} ({} keys)",
        wal_bytes as f64 / 1e6,
        tl.layer_stats().summary(),
        ra.reads(),
        ra.quantile(0.5),
        ra.quantile(0.99),
        ra.hist.len().saturating_sub(1),
        ws.write_amplification(wal_bytes),
        ws.l0_bytes as f64 / wal_bytes as f64,
        ws.compaction_bytes as f64 / wal_bytes as f64,
        ws.image_bytes as f64 / wal_bytes as f64,
        ws.compactions,
        keys.len(),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let scale = env_u64("STRATA_BENCH_SCALE", 4);
    let seconds = env_u64("STRATA_BENCH_SECONDS", 10);
    let freeze = env_u64("STRATA_BENCH_FREEZE_MIB", 8) * 1024 * 1024;
    let opts = InitOptions::default().keep_all_wal();
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("bench-base")?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string()])?;
    pg.stop(StopMode::Fast)?;
    let wal_dir = pg.wal_dir();
    let w = Wal {
        base: &base,
        wal: &wal_dir,
        start: read_control(&base)?.checkpoint,
    };
    println!(
        "pgbench -i -s {scale}, {seconds} s with 4 clients; L0 layers of {} MiB",
        freeze >> 20
    );
    let dir = tempfile::tempdir()?;
    let conf = |auto| TimelineConf {
        freeze_bytes: freeze,
        page_cache_pages: 0,
        compaction: CompactionConf {
            auto,
            ..CompactionConf::default()
        },
    };
    run("none", &w, &dir.path().join("none"), conf(false), false)?;
    run("once", &w, &dir.path().join("once"), conf(false), true)?;
    run("auto", &w, &dir.path().join("auto"), conf(true), true)?;
    Ok(())
}
