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
//! `STRATA_BENCH_WORKLOAD=indexes`: the index-heavy workload instead
//! (`strata_tests::index_workload`): the base holds the table and its GIN, GiST, SP-GiST, hash,
//! BRIN and B-tree indexes with 20,000 rows, the WAL inserts 20,000 more; the keys are every
//! block of the indexes, and the table has one row per access method and class, so the latency
//! of pages rebuilt by each index AM's native redo shows.
//!
//! `STRATA_BENCH_METRICS_AB=1`: the cost of the metrics instead: the latest LSN's no-redo and
//! redo classes are read in alternating rounds with recording on and off
//! (`strata_metrics::set_enabled`), 1 s each, 8 rounds per mode; prints each round's p50 and
//! the median p50 per mode.
//!
//! `cargo bench -p pageserver --bench getpage`

use std::time::{Duration, Instant};

use layer_format::Key;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{Timeline, TimelineConf};
use strata_tests::{index_workload, InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

struct Setup {
    ingest: WalIngest,
    /// Keys to read, by group (`all`, or one per index access method).
    groups: Vec<(String, Vec<Key>)>,
    latest: Lsn,
    halfway: Lsn,
    _pg: PgCluster,
    _dir: tempfile::TempDir,
}

/// `STRATA_BENCH_WORKLOAD=indexes`.
fn index_heavy() -> bool {
    std::env::var("STRATA_BENCH_WORKLOAD").is_ok_and(|w| w == "indexes")
}

/// (relfilenode, group name) of the relations whose blocks are read.
fn relations(pg: &PgCluster) -> anyhow::Result<Vec<(u32, String)>> {
    let sql = if index_heavy() {
        "SELECT pg_relation_filenode(c.oid), a.amname FROM pg_class c \
         JOIN pg_am a ON a.oid = c.relam WHERE c.relkind = 'i' AND c.relname LIKE 'docs\\_%'"
    } else {
        "SELECT pg_relation_filenode(oid), 'all' FROM pg_class \
         WHERE relname LIKE 'pgbench\\_%' AND relkind IN ('r', 'i')"
    };
    Ok(pg
        .psql(sql)?
        .lines()
        .filter_map(|l| {
            let (rel, group) = l.split_once('|')?;
            Some((rel.trim().parse().ok()?, group.trim().to_string()))
        })
        .collect())
}

fn setup() -> anyhow::Result<Setup> {
    let opts = InitOptions::default().keep_all_wal();
    let pg = PgCluster::init(&opts)?;
    pg.start()?;
    if index_heavy() {
        pg.psql(index_workload::SCHEMA)?;
        index_workload::insert_rows(&pg, 1, 20_000)?;
    } else {
        pg.pgbench(&["-i", "-s", "4", "-q"])?;
    }
    let rels = relations(&pg)?;
    pg.stop(StopMode::Fast)?;
    // The base holds the tables: the run's WAL changes some of their pages.
    let base = pg.copy_data_dir("bench-base")?;
    pg.start()?;
    if index_heavy() {
        index_workload::insert_rows(&pg, 20_001, 40_000)?;
    } else {
        pg.pgbench(&["-c", "4", "-j", "2", "-T", "10"])?;
    }
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
    // Every 3rd block of pgbench's relations; every block of the (smaller) indexes.
    let step = if index_heavy() { 1 } else { 3 };
    let forks = ingest.directory().all_forks();
    let mut groups: Vec<(String, Vec<Key>)> = Vec::new();
    for (relno, group) in rels {
        let keys = forks
            .iter()
            .filter(|(rel, fork, _)| *fork == 0 && rel.rel == relno)
            .flat_map(|&(rel, fork, n)| {
                (0..n)
                    .step_by(step)
                    .map(move |b| Key::rel_block(rel, fork, b))
            });
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, k)) => k.extend(keys),
            None => groups.push((group, keys.collect())),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Setup {
        ingest,
        groups,
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
fn table(
    tl: &Timeline,
    group: &str,
    keys: &[Key],
    latest: Lsn,
    halfway: Lsn,
) -> anyhow::Result<()> {
    println!(
        "{:<7} {:<8} {:<8} {:>6} {:>9} {:>9} {:>9} {:>10} {:>15}",
        "group", "lsn", "class", "keys", "p50 µs", "p99 µs", "mean µs", "reads/s", "layers p50/max"
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
                println!("{group:<7} {name:<8} {class:<8} {:>6}", 0);
                continue;
            }
            tl.reset_read_stats();
            let (mut lat, total) = measure(tl, keys, lsn, Duration::from_secs(2));
            let stats = tl.read_stats();
            lat.sort_unstable();
            let mean = total.as_secs_f64() * 1e6 / lat.len() as f64;
            println!(
                "{group:<7} {name:<8} {class:<8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>11}/{}",
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
            println!("{group} {class}: halfway p50 / latest p50 = {:.2}", h / l);
        }
    }
    Ok(())
}

/// p50 latency in µs of `keys` at `lsn`, read for 1 s.
fn p50(tl: &Timeline, keys: &[Key], lsn: Lsn) -> f64 {
    let (mut lat, _) = measure(tl, keys, lsn, Duration::from_secs(1));
    lat.sort_unstable();
    q(&lat, 0.5)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `STRATA_BENCH_METRICS_AB`: GetPage p50 with the metrics on and off, alternating.
fn metrics_ab(s: &Setup) -> anyhow::Result<()> {
    const ROUNDS: usize = 8;
    let tl = s.ingest.timeline();
    let keys: Vec<Key> = s
        .groups
        .iter()
        .flat_map(|(_, k)| k.iter().copied())
        .collect();
    let (mut image, mut redo) = (Vec::new(), Vec::new());
    for &k in &keys {
        match tl.get_page_version(k, s.latest)? {
            Some(v) if v.writer.is_none() => image.push(k),
            Some(_) => redo.push(k),
            None => {}
        }
    }
    println!("metrics on/off, latest LSN, {ROUNDS} alternating rounds of 1 s per class and mode");
    println!(
        "{:<8} {:<6} {:>7} {:>8}",
        "class", "round", "metrics", "p50 µs"
    );
    for (class, keys) in [("no-redo", &image), ("redo", &redo)] {
        if keys.is_empty() {
            continue;
        }
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which mode goes first, so drift does not favour one.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for enabled in order {
                strata_metrics::set_enabled(enabled);
                let p = p50(tl, keys, s.latest);
                let mode = if enabled { "on" } else { "off" };
                println!("{class:<8} {round:<6} {mode:>7} {p:>8.2}");
                if enabled {
                    on.push(p)
                } else {
                    off.push(p)
                }
            }
        }
        strata_metrics::set_enabled(true);
        let (m_on, m_off) = (median(on), median(off));
        println!(
            "{class}: median p50 {m_on:.2} µs with metrics, {m_off:.2} µs without ({:+.1}%)",
            (m_on / m_off - 1.0) * 100.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let s = setup()?;
    if std::env::var_os("STRATA_BENCH_METRICS_AB").is_some() {
        return metrics_ab(&s);
    }
    let what = if index_heavy() {
        "every block of the docs table's indexes, by access method"
    } else {
        "every 3rd block of the pgbench tables and indexes"
    };
    let n: usize = s.groups.iter().map(|(_, k)| k.len()).sum();
    println!(
        "{n} keys ({what}); latest {}, halfway {}",
        s.latest, s.halfway
    );
    println!("\nAs ingested:");
    for (group, keys) in &s.groups {
        table(s.ingest.timeline(), group, keys, s.latest, s.halfway)?;
    }
    Ok(())
}
