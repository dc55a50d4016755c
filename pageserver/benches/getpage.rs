//! GetPage@LSN latency and throughput, in-process, at the latest LSN and at an LSN halfway
//! back, split into pages that need no redo (the newest version at that LSN is an image) and
//! pages that need redo, after ingesting real pgbench WAL through the normal ingest path.
//!
//! Setup (once, ~30 s): a throw-away Postgres 15 is initialized and `pgbench -i -s 4` fills
//! it; its data directory, cleanly stopped, is copied as the base; then a 10 s pgbench run
//! with 4 clients writes the WAL. The base is imported (image layers) and the WAL ingested
//! into a timeline (32 MiB L0 layers, the default compaction): pages the run changed need
//! redo, the others read the base's image.
//! The page cache is off, so every read collects its versions from the layers (and runs
//! redo when it needs to).
//!
//! The keys are every 3rd block of every main fork of the pgbench tables and indexes. Each
//! is classified per LSN by a first read (`PageVersion::writer` is `None` when the newest
//! version is an image), then each class is read round-robin for ~2 s, one thread, each
//! read timed on its own. The table gives p50 / p99 / mean latency, reads per second, and
//! layer files visited per read (p50 / max).
//!
//! `cargo bench -p pageserver --bench getpage`

use std::time::{Duration, Instant};

use layer_format::Key;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{Timeline, TimelineConf};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

struct Setup {
    ingest: WalIngest,
    keys: Vec<Key>,
    latest: Lsn,
    halfway: Lsn,
    _pg: PgCluster,
    _dir: tempfile::TempDir,
}

fn setup() -> anyhow::Result<Setup> {
    let opts = InitOptions::default().keep_all_wal();
    let pg = PgCluster::init(&opts)?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "4", "-q"])?;
    let rels = pg.psql(
        "SELECT pg_relation_filenode(oid) FROM pg_class \
         WHERE relname LIKE 'pgbench\\_%' AND relkind IN ('r', 'i')",
    )?;
    let rels: Vec<u32> = rels.lines().filter_map(|l| l.trim().parse().ok()).collect();
    pg.stop(StopMode::Fast)?;
    // The base holds the pgbench tables: the run's WAL changes some of their pages.
    let base = pg.copy_data_dir("bench-base")?;
    pg.start()?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "10"])?;
    pg.stop(StopMode::Fast)?;
    let start = read_control(&base)?.checkpoint;
    let dir = tempfile::tempdir()?;
    let conf = TimelineConf {
        page_cache_pages: 0,
        ..TimelineConf::default()
    };
    let (tl, _) = import_datadir(&base, &dir.path().join("tl"), conf, None)?;
    let mut ingest = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(&pg.wal_dir(), start, None, None)?;
    let t0 = Instant::now();
    while let Some(rec) = reader.next_record()? {
        ingest.ingest_record(&rec)?;
    }
    ingest.timeline_mut().flush()?;
    let s = ingest.stats().clone();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ingested {} records, {:.1} MB of WAL in {secs:.2} s; {} layers ({})",
        s.records,
        s.wal_bytes as f64 / 1e6,
        ingest.timeline().layer_descs().len(),
        ingest.timeline().layer_stats().summary()
    );
    let latest = ingest.timeline().last_record_end();
    let halfway = Lsn(start.0 + (latest.0 - start.0) / 2);
    let keys = ingest
        .directory()
        .all_forks()
        .into_iter()
        .filter(|(rel, fork, _)| *fork == 0 && rels.contains(&rel.rel))
        .flat_map(|(rel, fork, n)| (0..n).step_by(3).map(move |b| Key::rel_block(rel, fork, b)))
        .collect();
    Ok(Setup {
        ingest,
        keys,
        latest,
        halfway,
        _pg: pg,
        _dir: dir,
    })
}

/// Latencies of reading `keys` round-robin at `lsn` for about `dur`.
fn measure(tl: &Timeline, keys: &[Key], lsn: Lsn, dur: Duration) -> (Vec<Duration>, Duration) {
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < dur || lat.len() < 1000 {
        let t = Instant::now();
        let p = tl.get_page(keys[i], lsn).expect("getpage");
        lat.push(t.elapsed());
        std::hint::black_box(p);
        i = (i + 1) % keys.len();
    }
    (lat, t0.elapsed())
}

fn q(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

/// The table for `tl` as it is now.
fn table(tl: &Timeline, keys: &[Key], latest: Lsn, halfway: Lsn) -> anyhow::Result<()> {
    println!(
        "{:<8} {:<8} {:>6} {:>9} {:>9} {:>9} {:>10} {:>15}",
        "lsn", "class", "keys", "p50 µs", "p99 µs", "mean µs", "reads/s", "layers p50/max"
    );
    let mut p50s = Vec::new();
    for (name, lsn) in [("latest", latest), ("halfway", halfway)] {
        let (mut image, mut redo) = (Vec::new(), Vec::new());
        for &k in keys {
            match tl.get_page_version(k, lsn)? {
                Some(v) if v.writer.is_none() => image.push(k),
                Some(_) => redo.push(k),
                None => {}
            }
        }
        for (class, keys) in [("no-redo", &image), ("redo", &redo)] {
            if keys.is_empty() {
                println!("{name:<8} {class:<8} {:>6}", 0);
                continue;
            }
            tl.reset_read_stats();
            let (mut lat, total) = measure(tl, keys, lsn, Duration::from_secs(2));
            let stats = tl.read_stats();
            lat.sort_unstable();
            let mean = total.as_secs_f64() * 1e6 / lat.len() as f64;
            println!(
                "{name:<8} {class:<8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>11}/{}",
                keys.len(),
                q(&lat, 0.5),
                q(&lat, 0.99),
                mean,
                lat.len() as f64 / total.as_secs_f64(),
                stats.quantile(0.5),
                stats.hist.len().saturating_sub(1)
            );
            p50s.push((name, class, q(&lat, 0.5)));
        }
    }
    for class in ["no-redo", "redo"] {
        let get = |n: &str| p50s.iter().find(|x| x.0 == n && x.1 == class).map(|x| x.2);
        if let (Some(l), Some(h)) = (get("latest"), get("halfway")) {
            println!("{class}: halfway p50 / latest p50 = {:.2}", h / l);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let s = setup()?;
    println!(
        "{} keys (every 3rd block of the pgbench tables and indexes); latest {}, halfway {}",
        s.keys.len(),
        s.latest,
        s.halfway
    );
    println!("\nAs ingested:");
    table(s.ingest.timeline(), &s.keys, s.latest, s.halfway)?;
    Ok(())
}
