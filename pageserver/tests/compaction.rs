//! Compaction against real Postgres 15 WAL (pgbench -i -s 2 and a short run): the pages
//! GetPage@LSN returns at the latest, a halfway and an early LSN are byte-identical before
//! and after compaction, after a simulated crash at each step of a compaction, and after
//! reopening; read amplification p99 after compaction is at most 4 layers and write
//! amplification at most 3×.
//!
//! One test builds the WAL once and performs every check on it, in order.

use std::path::{Path, PathBuf};

use layer_format::Key;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{
    CompactionConf, FailPoint, ReadStats, Timeline, TimelineConf, TimelineMetadata,
};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

/// A pgbench workload: the base copy, its WAL, the start LSN.
struct Workload {
    _pg: PgCluster,
    base: PathBuf,
    wal: PathBuf,
    start: Lsn,
}

fn workload() -> anyhow::Result<Workload> {
    let opts = InitOptions::default().keep_all_wal();
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("compaction-base")?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "2", "-q"])?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "5"])?;
    pg.stop(StopMode::Fast)?;
    let start = read_control(&base)?.checkpoint;
    Ok(Workload {
        wal: pg.wal_dir(),
        _pg: pg,
        base,
        start,
    })
}

/// Small layers so that there are many; no page cache, so every read walks the layers.
fn conf(auto: bool) -> TimelineConf {
    TimelineConf {
        freeze_bytes: 1024 * 1024,
        page_cache_pages: 0,
        compaction: CompactionConf {
            auto,
            target_file_bytes: 4 * 1024 * 1024,
            image_partition_pages: 1024,
            ..CompactionConf::default()
        },
    }
}

/// Imports the base and ingests the whole WAL; returns the ingest (flushed).
fn ingest(w: &Workload, dir: &Path, conf: TimelineConf) -> anyhow::Result<WalIngest> {
    let (tl, _) = import_datadir(&w.base, dir, conf, None)?;
    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(&w.wal, w.start, None, None)?;
    while let Some(rec) = reader.next_record()? {
        ing.ingest_record(&rec)?;
    }
    ing.timeline_mut().flush()?;
    Ok(ing)
}

type Pages = Vec<(Key, Lsn, Option<Vec<u8>>)>;

/// The sampled keys at each LSN.
fn read_all(tl: &Timeline, keys: &[Key], lsns: &[Lsn]) -> anyhow::Result<Pages> {
    let mut out = Vec::new();
    for &lsn in lsns {
        for &k in keys {
            out.push((k, lsn, tl.get_page(k, lsn)?.map(|p| p.to_vec())));
        }
    }
    Ok(out)
}

fn assert_same(what: &str, a: &Pages, b: &Pages) {
    assert_eq!(a.len(), b.len());
    let differing: Vec<_> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| (x.0, x.1))
        .take(5)
        .collect();
    assert!(differing.is_empty(), "{what}: pages differ: {differing:?}");
}

/// The metadata lists exactly the layer files in the directory.
fn assert_files_listed(dir: &Path) -> anyhow::Result<()> {
    let meta = TimelineMetadata::load(dir)?.expect("metadata");
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".delta") || n.ends_with(".image") || n.ends_with(".tmp"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = meta.layers.iter().map(|d| d.file_name()).collect();
    listed.sort();
    assert_eq!(files, listed, "layer files on disk vs metadata");
    Ok(())
}

fn amp(tl: &Timeline, keys: &[Key], lsns: &[Lsn]) -> anyhow::Result<ReadStats> {
    tl.reset_read_stats();
    read_all(tl, keys, lsns)?;
    Ok(tl.read_stats())
}

#[test]
fn compaction_against_postgres() -> anyhow::Result<()> {
    let w = workload()?;
    let scratch = tempfile::tempdir()?;

    // Reference: no compaction, many L0 layers.
    let ref_dir = scratch.path().join("reference");
    let ing = ingest(&w, &ref_dir, conf(false))?;
    let wal_bytes = ing.stats().wal_bytes;
    let tl = ing.timeline();
    let start = tl.start_lsn();
    let latest = tl.last_record_end();
    let span = latest.0 - start.0;
    let lsns = [latest, Lsn(start.0 + span / 2), Lsn(start.0 + span / 10)];
    // Every 3rd block of every fork (and every block of small forks).
    let mut keys = Vec::new();
    for (rel, fork, n) in ing.directory().all_forks() {
        let step = if n > 30 { 3 } else { 1 };
        keys.extend((0..n).step_by(step).map(|b| Key::rel_block(rel, fork, b)));
    }
    let l0 = tl.layer_stats().l0_layers;
    println!(
        "WAL {wal_bytes} bytes, {} keys sampled at {lsns:?}; {}",
        keys.len(),
        tl.layer_stats().summary()
    );
    assert!(l0 >= 20, "only {l0} L0 layers");
    assert!(keys.len() > 1000, "only {} keys", keys.len());
    let before = amp(tl, &keys, &lsns)?;
    let reference = read_all(tl, &keys, &lsns)?;
    println!("before compaction: {}", before.summary());
    assert!(
        reference.iter().filter(|p| p.2.is_some()).count() > 1000,
        "too few existing pages"
    );
    drop(ing);

    // A crash after the new files are written, before the metadata lists them: reopening
    // deletes them, the L0 layers are all still there.
    let mut tl = Timeline::open(&ref_dir, conf(false), None)?;
    assert!(tl.compact_with(true, FailPoint::AfterNewFiles).is_err());
    drop(tl);
    let tl = Timeline::open(&ref_dir, conf(false), None)?;
    assert_files_listed(&ref_dir)?;
    assert_eq!(tl.layer_stats().l0_layers, l0);
    assert_same(
        "crash before metadata",
        &reference,
        &read_all(&tl, &keys, &lsns)?,
    );
    drop(tl);

    // A crash after the metadata lists the new set, before the old files are deleted:
    // reopening deletes the old files, the L0 layers are merged.
    let mut tl = Timeline::open(&ref_dir, conf(false), None)?;
    assert!(tl.compact_with(true, FailPoint::AfterMetadata).is_err());
    drop(tl);
    let mut tl = Timeline::open(&ref_dir, conf(false), None)?;
    assert_files_listed(&ref_dir)?;
    let s = tl.layer_stats();
    println!("after a crash mid-compaction: {}", s.summary());
    assert_eq!(s.l0_layers, 0);
    assert!(s.l1_runs >= 1 && s.l1_layers >= 2, "{s:?}");
    assert_same(
        "crash after metadata",
        &reference,
        &read_all(&tl, &keys, &lsns)?,
    );
    // An explicit compaction with nothing left to do changes nothing.
    let rep = tl.compact()?;
    println!("compaction of a compacted timeline: {rep:?}");
    assert_same("recompacted", &reference, &read_all(&tl, &keys, &lsns)?);
    let after_once = amp(&tl, &keys, &lsns)?;
    println!("after one full L0 merge: {}", after_once.summary());
    assert!(after_once.quantile(0.99) <= 4, "{}", after_once.summary());
    drop(tl);

    // Automatic compaction during the ingest (the production setting), then an explicit one.
    let auto_dir = scratch.path().join("auto");
    let mut ing = ingest(&w, &auto_dir, conf(true))?;
    let s = ing.timeline().layer_stats();
    println!("auto compaction during ingest: {}", s.summary());
    assert!(s.l0_layers < 2, "{s:?}");
    assert!(s.l1_runs >= 3, "{s:?}");
    assert!(s.image_runs >= 2, "no images made by compaction: {s:?}");
    let rep = ing.timeline_mut().compact()?;
    println!("explicit compaction: {rep:?}");
    let tl = ing.timeline();
    let after = amp(tl, &keys, &lsns)?;
    let pages = read_all(tl, &keys, &lsns)?;
    assert_same("auto compaction", &reference, &pages);
    let ws = tl.write_stats();
    let wa = ws.write_amplification(ing.stats().wal_bytes);
    println!(
        "after compaction: {}; {}\nwrite amplification {wa:.2} ({ws:?})",
        after.summary(),
        tl.layer_stats().summary()
    );
    assert!(after.quantile(0.99) <= 4, "{}", after.summary());
    assert!(wa <= 3.0, "write amplification {wa:.2}");
    assert!(ws.compaction_bytes > 0 && ws.image_bytes > 0, "{ws:?}");
    assert_files_listed(&auto_dir)?;
    drop(ing);

    // Reopened: the same pages.
    let tl = Timeline::open(&auto_dir, conf(true), None)?;
    assert_same("reopened", &reference, &read_all(&tl, &keys, &lsns)?);
    Ok(())
}
