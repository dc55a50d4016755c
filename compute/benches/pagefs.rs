//! Page filesystem read speed: a cold sequential read of a big relation file through the
//! mount against the same file read from a local full copy, then the latency of single-page
//! reads of cold pages. The page source is a stopped Postgres's data directory (the local
//! file system, so this measures the filesystem's own cost, not a pageserver's).
//!
//! `cargo bench -p compute --bench pagefs` (PAGEFS_BENCH_MB sets the table size, default 256).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use compute::pagefs::source::copy_data_dir;
use compute::pagefs::{self, names, DataDirSource, Options};
use strata_tests::{InitOptions, PgCluster, StopMode};

/// Reads `path` from start to end in `chunk`-byte reads; returns (bytes, elapsed).
fn read_all(path: &Path, chunk: usize) -> Result<(u64, Duration)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; chunk];
    let (mut off, t) = (0u64, Instant::now());
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    Ok((off, t.elapsed()))
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() -> Result<()> {
    let mb: u64 = std::env::var("PAGEFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    // ~1 KiB rows: `mb` MiB of heap in two tables (one for sequential reads, one for latency).
    let rows = mb * 1024 / 2;
    for t in ["seqscan", "points", "pgscan", "pgscan_hinted", "smallreads"] {
        orig.psql(&format!(
            "CREATE TABLE {t} AS SELECT g, repeat(md5(g::text), 30) AS v \
             FROM generate_series(1, {rows}) g"
        ))?;
    }
    // Hint bits set: a scan of it only reads (the other one also writes every page back).
    orig.psql("VACUUM pgscan_hinted")?;
    let relpath = |t: &str| -> Result<String> {
        Ok(orig
            .psql(&format!("SELECT pg_relation_filepath('{t}')"))?
            .trim()
            .to_string())
    };
    let (seq_file, point_file) = (relpath("seqscan")?, relpath("points")?);
    let small_file = relpath("smallreads")?;
    let pgscan_bytes: u64 = orig
        .psql("SELECT pg_relation_size('pgscan')")?
        .trim()
        .parse()?;
    orig.stop(StopMode::Fast)?;

    let source = Arc::new(DataDirSource::new(orig.data_dir())?);
    let local = orig.base_dir().join("slim");
    copy_data_dir(orig.data_dir(), &local, false)?;
    let mnt = orig.make_postgres_dir("mnt")?;
    let mounted = pagefs::mount(&Options::new(&local, &mnt), source.clone())?;

    // The local file: warmed first so both sides read from memory (the source reads the same
    // local files, so the difference is the filesystem's cost).
    let local_file = orig.data_dir().join(&seq_file);
    read_all(&local_file, 1 << 20)?;
    let (bytes, local_t) = read_all(&local_file, 1 << 20)?;
    let (mbytes, lazy_t) = read_all(&mnt.join(&seq_file), 1 << 20)?;
    anyhow::ensure!(bytes == mbytes, "sizes differ: {bytes} vs {mbytes}");
    let requests = source.requests_served();
    let (_, cached_t) = read_all(&mnt.join(&seq_file), 1 << 20)?;
    let before = source.requests_served();
    let (small_bytes, small_t) = read_all(&mnt.join(&small_file), 8192)?;
    let small_requests = source.requests_served() - before;
    // 8 KiB writes over it (as Postgres writes pages back): into the overlay.
    let wf = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join(&small_file))?;
    let block = vec![7u8; names::BLOCK_SIZE as usize];
    let t = Instant::now();
    for off in (0..small_bytes).step_by(block.len()) {
        wf.write_all_at(&block, off)?;
    }
    let write_t = t.elapsed();
    drop(wf);

    // Single 8 KiB reads of cold pages, spread over the file.
    let f = File::open(mnt.join(&point_file))?;
    let nblocks = f.metadata()?.len() / names::BLOCK_SIZE;
    let mut page = vec![0u8; names::BLOCK_SIZE as usize];
    let mut lat: Vec<Duration> = Vec::new();
    let step = (nblocks / 200).max(1);
    for i in 0..nblocks.min(200) {
        let t = Instant::now();
        f.read_at(&mut page, i * step * names::BLOCK_SIZE)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: usize| lat[(lat.len() - 1) * p / 100];

    println!("pagefs read bench ({} MiB relation file)", bytes >> 20);
    println!(
        "  local copy, 1 MiB reads (page cache):   {:8.1} MB/s",
        mb_per_s(bytes, local_t)
    );
    println!(
        "  mount cold, 1 MiB reads:                {:8.1} MB/s  ({} source requests)",
        mb_per_s(bytes, lazy_t),
        requests
    );
    println!(
        "  mount again (kernel cache kept):        {:8.1} MB/s",
        mb_per_s(bytes, cached_t)
    );
    println!(
        "  mount cold, 8 KiB reads (as Postgres):  {:8.1} MB/s  ({} source requests)",
        mb_per_s(small_bytes, small_t),
        small_requests
    );
    println!(
        "  mount, 8 KiB writes into the overlay:   {:8.1} MB/s",
        mb_per_s(small_bytes, write_t)
    );
    println!(
        "  cold single-page read latency: p50 {:?}  p99 {:?}  max {:?} ({} reads)",
        pct(50),
        pct(99),
        lat[lat.len() - 1],
        lat.len()
    );
    drop(f);
    mounted.unmount(Duration::from_secs(5))?;

    // Postgres's own sequential scan (8 KiB reads, the kernel's read-ahead) of a table never
    // read, on a lazy Postgres and on a full copy.
    let settings = [("shared_buffers".to_string(), "16MB".to_string())];
    let local2 = orig.base_dir().join("slim2");
    copy_data_dir(orig.data_dir(), &local2, false)?;
    let mut mounted2 = None;
    let lazy = PgCluster::from_data_dir(
        |data| {
            std::fs::create_dir(data)?;
            mounted2 = Some(pagefs::mount(&Options::new(&local2, data), source.clone())?);
            Ok(())
        },
        &settings,
    )?;
    let copy = PgCluster::from_data_dir(
        |data| Ok(copy_data_dir(orig.data_dir(), data, true)?),
        &settings,
    )?;
    let scan = |c: &PgCluster, table: &str| -> Result<Duration> {
        c.psql("SELECT 1")?; // connection and catalog warm-up
        let t = Instant::now();
        c.psql(&format!("SELECT count(*) FROM {table}"))?;
        Ok(t.elapsed())
    };
    lazy.start()?;
    copy.start()?;
    for (table, what) in [
        ("pgscan", "setting hint bits"),
        ("pgscan_hinted", "hint bits set"),
    ] {
        let (lazy_scan, copy_scan) = (scan(&lazy, table)?, scan(&copy, table)?);
        println!(
            "  Postgres seq scan, {} MiB, {what:17}: lazy (cold) {:7.1} MB/s, full copy {:7.1} MB/s",
            pgscan_bytes >> 20,
            mb_per_s(pgscan_bytes, lazy_scan),
            mb_per_s(pgscan_bytes, copy_scan)
        );
    }
    lazy.stop(StopMode::Fast)?;
    if let Some(m) = mounted2 {
        m.unmount(Duration::from_secs(5))?;
    }
    Ok(())
}
