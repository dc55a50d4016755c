//! GetPage@LSN latency, in-process, at the latest LSN and at an LSN halfway back, after
//! ingesting real pgbench WAL through the normal ingest path.
//!
//! Setup (once, ~20 s): a throw-away Postgres 15 is initialized, its data directory copied as
//! the base, then `pgbench -i -s 4` and a 10 s run with 4 clients write the WAL; the base is
//! imported and the WAL ingested into a timeline (64 MiB L0 layers). The page cache is off,
//! so every read collects its versions from the layers and runs redo. Read amplification
//! (layer files visited per read) is printed after the runs.
//!
//! `cargo bench -p pageserver --bench getpage`

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use layer_format::Key;
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::TimelineConf;
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
    let base = pg.copy_data_dir("bench-base")?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "4", "-q"])?;
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
        "ingested {} records, {:.1} MB of WAL in {secs:.2} s: {:.1} MB/s, {:.0} records/s; {} layers, write amplification {:.2}",
        s.records,
        s.wal_bytes as f64 / 1e6,
        s.wal_bytes as f64 / 1e6 / secs,
        s.records as f64 / secs,
        ingest.timeline().layer_descs().len(),
        ingest.timeline().write_stats().layer_bytes as f64 / s.wal_bytes as f64
    );
    let latest = ingest.timeline().last_record_end();
    let halfway = Lsn(start.0 + (latest.0 - start.0) / 2);
    // Blocks of the biggest fork (pgbench_accounts), every 7th.
    let (rel, fork, n) = ingest
        .directory()
        .all_forks()
        .into_iter()
        .max_by_key(|f| f.2)
        .expect("forks");
    let keys = (0..n)
        .step_by(7)
        .map(|b| Key::rel_block(rel, fork, b))
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

fn bench(c: &mut Criterion) {
    let s = setup().expect("setup");
    let tl = s.ingest.timeline();
    for (name, lsn) in [("latest", s.latest), ("halfway", s.halfway)] {
        let mut i = 0;
        c.bench_function(&format!("getpage/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % s.keys.len();
                tl.get_page(s.keys[i], lsn).expect("getpage")
            })
        });
    }
    println!("{}", tl.read_stats().summary());
}

criterion_group!(benches, bench);
criterion_main!(benches);
