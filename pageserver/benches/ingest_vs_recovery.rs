//! WAL ingest throughput beside Postgres's own recovery of the same WAL, in one run.
//!
//! A throw-away Postgres 15 writes pgbench WAL (`pgbench -i -s $STRATA_BENCH_SCALE`, default
//! 40, then `$STRATA_BENCH_SECONDS`, default 60, with 4 clients) on top of a copied base. Then:
//! - **Strata**: the base is imported and all the WAL ingested into a timeline through the
//!   normal ingest path (with automatic compaction), flushed durably;
//! - **Postgres**: the same base is started as a standby over the same WAL in `pg_wal`, and
//!   timed until `pg_last_wal_replay_lsn()` reaches the end of the WAL.
//!
//! `cargo bench -p pageserver --bench ingest_vs_recovery` prints the table.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::TimelineConf;
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

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this is a load tool with a printed report.
    let scale = env_u64("STRATA_BENCH_SCALE", 40);
    let seconds = env_u64("STRATA_BENCH_SECONDS", 60);
    let pg = PgCluster::init(&InitOptions::default().keep_all_wal())?;
    let base = pg.copy_data_dir("base")?;
    pg.start()?;
    println!("writing WAL: pgbench -i -s {scale}, then {seconds} s with 4 clients");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string()])?;
    pg.stop(StopMode::Fast)?;
    let start = read_control(&base)?.checkpoint;
    let end = wal_end_after_clean_stop(&pg)?;
    let wal_mb = (end.0 - start.0) as f64 / 1e6;
    println!("WAL {start} .. {end}: {wal_mb:.0} MB");

    // Strata: import the base, ingest everything, flush.
    let dir = tempfile::tempdir_in(pg.base_dir())?;
    let t0 = Instant::now();
    let (tl, _) = import_datadir(&base, &dir.path().join("tl"), TimelineConf::default(), None)?;
    let import_secs = t0.elapsed().as_secs_f64();
    let mut ingest = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(&pg.wal_dir(), start, Some(end), None)?;
    let t1 = Instant::now();
    while let Some(rec) = reader.next_record()? {
        ingest.ingest_record(&rec)?;
    }
    ingest.timeline_mut().flush()?;
    let strata_secs = t1.elapsed().as_secs_f64();
    let records = ingest.stats().records;
    drop(ingest);

    // Postgres: the same base as a standby replaying the same WAL from pg_wal.
    let data = pg.data_dir().to_path_buf();
    let primary = pg.base_dir().join("primary-data");
    std::fs::rename(&data, &primary)?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&data)
        .status()?;
    ensure!(status.success(), "copying the base failed");
    for entry in std::fs::read_dir(data.join("pg_wal"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -a {}/pg_wal/0* {}/pg_wal/",
            primary.display(),
            data.display()
        ))
        .status()?;
    ensure!(status.success(), "copying the WAL failed");
    pg.make_standby_signal()?;
    let t2 = Instant::now();
    pg.start()?;
    loop {
        let replayed: Lsn = pg
            .psql("select pg_last_wal_replay_lsn()")?
            .trim()
            .parse()
            .context("pg_last_wal_replay_lsn")?;
        if replayed >= end {
            break;
        }
        ensure!(
            t2.elapsed() < Duration::from_secs(3600),
            "Postgres recovery did not reach {end} (at {replayed})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pg_secs = t2.elapsed().as_secs_f64();
    pg.stop(StopMode::Immediate)?;

    println!();
    println!("| replay of {wal_mb:.0} MB of pgbench WAL ({records} records) | seconds | MB/s | records/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| Postgres 15 recovery (standby from pg_wal, start to replay end) | {pg_secs:.2} | {:.0} | {:.0} |",
        wal_mb / pg_secs,
        records as f64 / pg_secs
    );
    println!(
        "| Strata ingest (decode, layers, compaction, flush; import of the base {import_secs:.2} s not included) | {strata_secs:.2} | {:.0} | {:.0} |",
        wal_mb / strata_secs,
        records as f64 / strata_secs
    );
    println!("Strata / Postgres: {:.1}x", pg_secs / strata_secs);
    Ok(())
}
