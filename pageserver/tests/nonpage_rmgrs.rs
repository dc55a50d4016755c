//! The non-page state of the remaining built-in resource managers, end to end against a real
//! PostgreSQL 15: commit timestamps (`track_commit_timestamp` switched on and off through
//! `XLOG/PARAMETER_CHANGE`, `CommitTs/ZEROPAGE` and `TRUNCATE`, commits with a replication
//! origin), replication origins (`ReplicationOrigin/SET`, `DROP`, commit progress) and
//! tablespaces (`Tablespace/CREATE`, `DROP`, tables and a database in a tablespace,
//! `ALTER TABLE .. SET TABLESPACE`).
//!
//! One server runs the workload; at quiet points the test records what the server answers.
//! Its WAL is ingested afterwards, and at each point a compute started from a basebackup at
//! that LSN must answer the same. The `pg_commit_ts` pages Strata keeps are compared with
//! Postgres's files byte for byte.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use layer_format::{Lsn, SlruKind};
use pageserver::basebackup::{basebackup_to_dir, BasebackupOptions, Mode};
use pageserver::import::import_datadir;
use pageserver::ingest::nonpage::commit_ts;
use pageserver::ingest::nonpage::origins::origins_at;
use pageserver::ingest::nonpage::read::{slru_page_at, slru_segments};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{Timeline, TimelineConf};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;

/// Record ends → record starts.
type Bounds = BTreeMap<Lsn, Lsn>;

fn settings() -> Vec<(String, String)> {
    vec![
        ("fsync".into(), "off".into()),
        ("max_replication_slots".into(), "10".into()),
        ("autovacuum".into(), "off".into()),
    ]
}

/// Queries whose answers a compute must reproduce; `None` where the query fails (commit
/// timestamps while the module is off).
const QUERIES: &[(&str, &str)] = &[
    (
        "postgres",
        "SELECT spcname FROM pg_tablespace ORDER BY spcname",
    ),
    (
        "postgres",
        "SELECT count(*), sum(id) FROM in_ts; SELECT count(*), sum(id) FROM moved;",
    ),
    ("db_in_ts", "SELECT count(*), sum(k) FROM t_db"),
    (
        "postgres",
        "SELECT external_id, remote_lsn FROM pg_replication_origin_status ORDER BY 1",
    ),
    (
        "postgres",
        "SELECT roname, pg_replication_origin_progress(roname, false) \
         FROM pg_replication_origin ORDER BY 1",
    ),
    (
        "postgres",
        "SELECT id, pg_xact_commit_timestamp(xmin), (pg_xact_commit_timestamp_origin(xmin)).roident \
         FROM ct ORDER BY id",
    ),
];

fn answers(pg: &PgCluster) -> Vec<Option<String>> {
    QUERIES
        .iter()
        .map(|(db, q)| pg.psql_db(db, q).ok())
        .collect()
}

struct Point {
    name: &'static str,
    insert_lsn: Lsn,
    answers: Vec<Option<String>>,
    /// Whether commit timestamps are on there.
    commit_ts: bool,
}

fn point(pg: &PgCluster, name: &'static str, commit_ts: bool) -> Result<Point> {
    Ok(Point {
        name,
        insert_lsn: pg.current_wal_insert_lsn()?,
        answers: answers(pg),
        commit_ts,
    })
}

/// Commits `n` transactions with one row each into `ct`, ids from `from`.
fn commits(pg: &PgCluster, from: u32, n: u32) -> Result<()> {
    pg.psql(&format!(
        "DO $$
         BEGIN
             FOR i IN {from}..{} LOOP
                 INSERT INTO ct VALUES (i);
                 COMMIT;
             END LOOP;
         END $$;",
        from + n - 1
    ))?;
    Ok(())
}

/// Compares every page of `pg_commit_ts` Strata has with Postgres's files; returns how many.
fn compare_commit_ts(tl: &Timeline, data: &Path, lsn: Lsn) -> Result<usize> {
    let mut n = 0;
    let segs = slru_segments(tl, SlruKind::CommitTs, lsn)?;
    let on_disk: Vec<String> = std::fs::read_dir(data)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for (segno, npages) in &segs {
        let path = data.join(format!("{segno:04X}"));
        let file = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        for blk in 0..*npages {
            // A page without history is zeroes, as in the basebackup.
            let page = slru_page_at(tl, SlruKind::CommitTs, *segno, blk, lsn)?
                .unwrap_or_else(|| Box::new([0u8; 8192]));
            let at = blk as usize * 8192;
            let pg_page = file
                .get(at..at + 8192)
                .context("Postgres's file is shorter")?;
            if pg_page != &page[..] {
                let first = pg_page.iter().zip(page.iter()).position(|(a, b)| a != b);
                anyhow::bail!("pg_commit_ts {segno:04X} page {blk} differs at byte {first:?}");
            }
            n += 1;
        }
    }
    let mut ours: Vec<String> = segs.keys().map(|s| format!("{s:04X}")).collect();
    let mut theirs = on_disk;
    ours.sort();
    theirs.sort();
    ensure!(
        ours == theirs,
        "segments: strata {ours:?}, postgres {theirs:?}"
    );
    Ok(n)
}

#[test]
fn commit_ts_origins_and_tablespaces_in_basebackups() -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut opts = InitOptions::default().keep_all_wal();
    for (k, v) in settings() {
        opts = opts.set(&k, &v);
    }
    let pg = PgCluster::init(&opts)?;
    // nextXid a few hundred xids before the end of pg_commit_ts's first segment (32 pages of
    // 819 xids), still on CLOG page 0: the workload crosses into segment 1, and a VACUUM
    // FREEZE can then truncate segment 0.
    pg.pg_resetwal(&["-x", "25900"])?;
    let base = pg.copy_data_dir("base")?;
    let scratch = tempfile::tempdir()?;
    let (tl, _) = import_datadir(
        &base,
        &scratch.path().join("tl"),
        TimelineConf::default(),
        None,
    )?;
    let start = tl.start_lsn();
    let ts_dirs: Vec<String> = ["ts1", "ts_empty", "ts_gone"]
        .iter()
        .map(|n| Ok(pg.make_postgres_dir(n)?.display().to_string()))
        .collect::<Result<_>>()?;

    let mut points = Vec::new();
    pg.start()?;
    // Tablespaces: one with a table, a moved table and a database, one left empty, one
    // dropped; replication origins created, advanced (forced back once) and dropped.
    pg.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}';
         CREATE TABLESPACE ts_empty LOCATION '{}';
         CREATE TABLESPACE ts_gone LOCATION '{}';
         CREATE TABLE in_ts (id int) TABLESPACE ts1;
         INSERT INTO in_ts SELECT generate_series(1, 1000);
         CREATE TABLE moved (id int);
         INSERT INTO moved SELECT generate_series(1, 500);
         ALTER TABLE moved SET TABLESPACE ts1;
         INSERT INTO moved VALUES (1000);
         DROP TABLESPACE ts_gone;
         CREATE DATABASE db_in_ts TABLESPACE ts1;
         CREATE TABLE ct (id int);
         SELECT pg_replication_origin_create('o1');
         SELECT pg_replication_origin_create('o2');
         SELECT pg_replication_origin_create('o3');
         SELECT pg_replication_origin_advance('o1', '0/1000');
         SELECT pg_replication_origin_advance('o2', '0/2000');
         SELECT pg_replication_origin_advance('o3', '0/3000');
         SELECT pg_replication_origin_drop('o2');",
        ts_dirs[0], ts_dirs[1], ts_dirs[2]
    ))?;
    pg.psql_db(
        "db_in_ts",
        "CREATE TABLE t_db (k int); INSERT INTO t_db SELECT generate_series(1, 300);",
    )?;
    commits(&pg, 1, 5)?;
    points.push(point(&pg, "off", false)?);

    // Commit timestamps on: a restart writes XLOG/PARAMETER_CHANGE.
    pg.set_config(&[("track_commit_timestamp".into(), "on".into())])?;
    pg.restart()?;
    // Across the end of pg_commit_ts page 31 and segment 0 (xid 26208).
    commits(&pg, 100, 400)?;
    // A tree with subtransactions, and a commit applied with origin o3's time and LSN.
    pg.psql(
        "BEGIN; INSERT INTO ct VALUES (600); SAVEPOINT a; INSERT INTO ct VALUES (601);
         SAVEPOINT b; INSERT INTO ct VALUES (602); RELEASE b; COMMIT;
         SELECT pg_replication_origin_session_setup('o3');
         BEGIN;
         SELECT pg_replication_origin_xact_setup('0/5000', '2020-02-03 04:05:06+00');
         INSERT INTO ct VALUES (700);
         COMMIT;
         SELECT pg_replication_origin_session_reset();
         SELECT pg_replication_origin_advance('o1', '0/800');
         SELECT pg_replication_origin_create('o4');
         SELECT pg_replication_origin_advance('o4', '0/4000');
         ALTER TABLE moved SET TABLESPACE pg_default;
         INSERT INTO in_ts VALUES (5000);",
    )?;
    points.push(point(&pg, "on", true)?);
    // The reverse move of `moved`, forced back progress of o1.
    pg.psql("SELECT pg_replication_origin_advance('o1', '0/1800');")?;

    // VACUUM FREEZE of every database moves the oldest xid past segment 0: CommitTs/TRUNCATE.
    pg.psql("ALTER DATABASE template0 ALLOW_CONNECTIONS true")?;
    for db in ["template0", "template1", "postgres", "db_in_ts"] {
        pg.psql_db(db, "VACUUM FREEZE")?;
    }
    commits(&pg, 800, 3)?;
    points.push(point(&pg, "truncated", true)?);
    // Postgres's pg_commit_ts at a clean stop, to compare with Strata's at the same LSN.
    pg.stop(StopMode::Fast)?;
    let files_at_stop = tempfile::tempdir()?;
    let cts_dir = files_at_stop.path().join("pg_commit_ts");
    std::fs::create_dir(&cts_dir)?;
    for e in std::fs::read_dir(pg.data_dir().join("pg_commit_ts"))? {
        let e = e?;
        std::fs::copy(e.path(), cts_dir.join(e.file_name()))?;
    }
    let mut wal_end_at_stop = Lsn::INVALID;
    {
        let mut r = WalDirReader::open(&pg.wal_dir(), start, None, None)?;
        while let Some(rec) = r.next_record()? {
            wal_end_at_stop = rec.end_lsn;
        }
    }

    // And off again: the next restart's PARAMETER_CHANGE drops them all.
    pg.set_config(&[("track_commit_timestamp".into(), "off".into())])?;
    pg.start()?;
    commits(&pg, 900, 2)?;
    points.push(point(&pg, "off again", false)?);
    pg.stop(StopMode::Fast)?;
    let workload_secs = t0.elapsed().as_secs_f64();

    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let mut bounds = Bounds::new();
    let mut r = WalDirReader::open(&pg.wal_dir(), start, None, None)?;
    while let Some(rec) = r.next_record()? {
        ing.ingest_record(&rec)
            .with_context(|| format!("ingesting the record at {}", rec.lsn))?;
        bounds.insert(rec.end_lsn, rec.lsn);
    }
    ing.timeline_mut().flush()?;
    let tl = ing.timeline();

    let pages = compare_commit_ts(tl, &cts_dir, wal_end_at_stop)?;
    println!("pg_commit_ts pages equal to Postgres's at {wal_end_at_stop}: {pages}");
    ensure!(pages >= 1, "the workload writes pg_commit_ts pages");
    ensure!(
        !slru_segments(tl, SlruKind::CommitTs, wal_end_at_stop)?.contains_key(&0),
        "segment 0 was truncated"
    );
    let cts_end = commit_ts::state_at(tl, tl.last_record_end())?;
    ensure!(!cts_end.active && cts_end.oldest == 0, "{cts_end:?}");
    ensure!(slru_segments(tl, SlruKind::CommitTs, tl.last_record_end())?.is_empty());
    println!(
        "replication origins at the end: {:?}",
        origins_at(tl, tl.last_record_end())?
    );

    for p in &points {
        let (&lsn, &prev) = bounds
            .range(..=p.insert_lsn)
            .next_back()
            .context("no record before the point")?;
        let mut o = BasebackupOptions::new(lsn, Mode::ReadWrite);
        o.prev_lsn = Some(prev);
        // pg_resetwal left wal_level minimal in the imported control file, and the
        // basebackup's postgresql.conf follows the imported control file's settings.
        let mut compute_settings = settings();
        compute_settings.push(("wal_level".into(), "replica".into()));
        let c = PgCluster::from_data_dir(
            |d| {
                basebackup_to_dir(tl, &o, d)?;
                Ok(())
            },
            &compute_settings,
        )?;
        c.start()?;
        let got = answers(&c);
        for (i, (db, q)) in QUERIES.iter().enumerate() {
            ensure!(
                got[i] == p.answers[i],
                "at {} ({lsn}), {db}: {q}\nprimary: {:?}\ncompute: {:?}",
                p.name,
                p.answers[i],
                got[i]
            );
        }
        if p.name == "on" {
            ensure!(
                p.answers[5]
                    .as_deref()
                    .is_some_and(|a| a.contains("700|2020-02-03")),
                "the origin's commit time is visible: {:?}",
                p.answers[5]
            );
        }
        // The compute keeps working: a table in the empty tablespace, a commit timestamp.
        c.psql("CREATE TABLE late (x int) TABLESPACE ts_empty; INSERT INTO late VALUES (1);")?;
        let ts = c.psql("INSERT INTO ct VALUES (-1); SELECT pg_xact_commit_timestamp(xmin) IS NOT NULL FROM ct WHERE id = -1");
        ensure!(
            ts.as_deref().ok().map(str::trim) == p.commit_ts.then_some("t"),
            "{}: a new commit's timestamp on the compute: {ts:?}",
            p.name
        );
        c.restart()?;
        ensure!(c.psql("SELECT count(*) FROM late")?.trim() == "1");
        println!("{}: compute at {lsn} answers as the primary did", p.name);
    }
    println!(
        "workload {workload_secs:.1}s, whole test {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
