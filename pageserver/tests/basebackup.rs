//! Import and basebackup against real PostgreSQL 15: initdb → import; a workload on the
//! original server, its WAL ingested; at quiet points a basebackup (read-write and read-only)
//! that a vanilla Postgres starts from, whose `pg_dump` equals the original's at that point.
//! The read-write compute accepts writes and restarts cleanly, and its WAL (which begins with
//! the generated checkpoint) continues the timeline.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use layer_format::Lsn;
use layer_format::SlruKind;
use pageserver::basebackup::{
    basebackup_tar, basebackup_to_dir, record_ending_at, BasebackupOptions, Mode,
};
use pageserver::import::import_datadir;
use pageserver::ingest::nonpage::counters::XID_STRIDE;
use pageserver::ingest::nonpage::read::{
    checkpoint_state_at, prepared_xacts, relmap_at, slru_page_at, slru_segments,
};
use pageserver::ingest::reldir::RelDirectory;
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::{Timeline, TimelineConf};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;

/// Record ends → record starts, of everything ingested.
type Bounds = BTreeMap<Lsn, Lsn>;

/// Ingests the WAL in `wal_dir` from `from` (records already ingested are skipped).
fn ingest_wal(ing: &mut WalIngest, wal_dir: &Path, from: Lsn, bounds: &mut Bounds) -> Result<()> {
    let mut r = WalDirReader::open(wal_dir, from, None, None)?;
    while let Some(rec) = r.next_record()? {
        ing.ingest_record(&rec)
            .with_context(|| format!("ingesting the record at {}", rec.lsn))?;
        bounds.insert(rec.end_lsn, rec.lsn);
    }
    Ok(())
}

/// The end of the last record before insert position `p` (a quiet server's).
fn boundary(bounds: &Bounds, p: Lsn) -> Result<(Lsn, Lsn)> {
    let (end, start) = bounds
        .range(..=p)
        .next_back()
        .context("no record before the point")?;
    Ok((*end, *start))
}

const DBS: [&str; 3] = ["postgres", "db2", "db3"];

fn dumps(pg: &PgCluster) -> Result<Vec<String>> {
    DBS.iter()
        .map(|db| pg.pg_dump(db, &["--no-unlogged-table-data"]))
        .collect()
}

fn prepared(pg: &PgCluster) -> Result<String> {
    pg.psql("SELECT gid FROM pg_prepared_xacts ORDER BY gid")
}

/// What the original looked like at a quiet point.
struct Point {
    insert_lsn: Lsn,
    dumps: Vec<String>,
    prepared: String,
}

fn point(pg: &PgCluster) -> Result<Point> {
    let insert_lsn = pg.current_wal_insert_lsn()?;
    Ok(Point {
        insert_lsn,
        dumps: dumps(pg)?,
        prepared: prepared(pg)?,
    })
}

fn settings() -> Vec<(String, String)> {
    vec![
        ("max_prepared_transactions".into(), "5".into()),
        ("fsync".into(), "off".into()),
        // The computes' WAL is read back from pg_wal.
        ("wal_keep_size".into(), "1GB".into()),
    ]
}

/// `pg_dump` of every database equal; for a primary also the prepared transactions (a hot
/// standby does not list them in `pg_prepared_xacts`).
fn check_same(pg: &PgCluster, p: &Point, what: &str) -> Result<()> {
    let got = dumps(pg)?;
    for (i, db) in DBS.iter().enumerate() {
        if got[i] != p.dumps[i] {
            let diff: Vec<String> = diff_lines(&p.dumps[i], &got[i]);
            anyhow::bail!("{what}: pg_dump of {db} differs:\n{}", diff.join("\n"));
        }
    }
    let standby = pg.psql("SELECT pg_is_in_recovery()")?.trim() == "t";
    ensure!(
        standby || prepared(pg)? == p.prepared,
        "{what}: prepared transactions differ"
    );
    Ok(())
}

fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = Vec::new();
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i), lb.get(i));
        if x != y {
            out.push(format!("line {i}: original {x:?} / basebackup {y:?}"));
            if out.len() > 10 {
                break;
            }
        }
    }
    out
}

/// Starts a vanilla Postgres on a basebackup written by `fill`.
fn start_from(fill: impl FnOnce(&Path) -> Result<()>) -> Result<PgCluster> {
    let pg = PgCluster::from_data_dir(fill, &settings())?;
    pg.start()?;
    Ok(pg)
}

#[test]
fn basebackups_match_postgres_and_computes_continue_the_timeline() -> Result<()> {
    let mut opts = InitOptions::default().keep_all_wal();
    for (k, v) in settings() {
        opts = opts.set(&k, &v);
    }
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("initdb-base")?;
    let scratch = tempfile::tempdir()?;
    let (tl, rep) = import_datadir(
        &base,
        &scratch.path().join("tl"),
        TimelineConf::default(),
        None,
    )?;
    println!(
        "import: {} forks, {} blocks, {} SLRU pages, {} relmaps at {} (prev {})",
        rep.forks, rep.blocks, rep.slru_pages, rep.relmaps, rep.lsn, rep.prev_lsn
    );
    ensure!(
        rep.prev_lsn != Lsn::INVALID,
        "initdb's WAL names the record before"
    );
    let start = tl.start_lsn();
    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let mut bounds = Bounds::new();

    // A basebackup straight from the import, before any WAL.
    {
        let c = start_from(|d| {
            basebackup_to_dir(
                ing.timeline(),
                &BasebackupOptions::new(start, Mode::ReadWrite),
                d,
            )?;
            Ok(())
        })?;
        ensure!(c.psql("SELECT count(*) FROM pg_database")?.trim() == "3");
    }

    pg.start()?;
    pg.pgbench(&["-i", "-s", "1", "-q"])?;
    pg.psql(
        "CREATE DATABASE db2;
         CREATE TABLE items (id int PRIMARY KEY, name text, tags text[]);
         INSERT INTO items SELECT g, 'item ' || g, ARRAY['a', 'b'] FROM generate_series(1, 5000) g;
         CREATE INDEX items_name ON items (name);
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v text);
         INSERT INTO scratch SELECT g, 'x' FROM generate_series(1, 1000) g;
         BEGIN; INSERT INTO items VALUES (-1, 'prepared one'); PREPARE TRANSACTION 'p1';",
    )?;
    pg.psql_db(
        "db2",
        "CREATE TABLE t2 (k int, v text); INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
    )?;
    // FILE_COPY copies the template's directory, pg_filenode.map included, with no RelMap
    // record in the WAL.
    pg.psql("CREATE DATABASE db3 STRATEGY FILE_COPY")?;
    pg.psql_db(
        "db3",
        "CREATE TABLE t4 AS SELECT g AS k, md5(g::text) AS v FROM generate_series(1, 500) g;",
    )?;
    let p1 = point(&pg)?;

    pg.pgbench(&["-t", "300", "-c", "2", "-n"])?;
    pg.psql(
        "COMMIT PREPARED 'p1';
         ALTER TABLE items ADD COLUMN price numeric DEFAULT 1.5;
         UPDATE items SET price = id * 2 WHERE id % 3 = 0;
         DELETE FROM items WHERE id % 7 = 0;
         VACUUM items;
         TRUNCATE pgbench_history;
         VACUUM FULL pg_class;
         BEGIN; UPDATE items SET name = 'prepared two' WHERE id = 1; PREPARE TRANSACTION 'p2';",
    )?;
    pg.psql_db(
        "db2",
        "DROP TABLE t2; CREATE TABLE t3 AS SELECT g AS k FROM generate_series(1, 300) g;",
    )?;
    let p2 = point(&pg)?;
    pg.stop(StopMode::Fast)?;
    ingest_wal(&mut ing, &pg.wal_dir(), start, &mut bounds)?;
    ing.timeline_mut().flush()?;
    let tl = ing.timeline();

    for (name, p) in [("p1", &p1), ("p2", &p2)] {
        let (lsn, prev) = boundary(&bounds, p.insert_lsn)?;
        ensure!(
            record_ending_at(&pg.wal_dir(), lsn)? == prev,
            "record_ending_at at {lsn}"
        );
        let mut o = BasebackupOptions::new(lsn, Mode::ReadWrite);
        o.prev_lsn = Some(prev);
        // Read-write, written as a directory.
        let rw = start_from(|d| {
            let t0 = std::time::Instant::now();
            let r = basebackup_to_dir(tl, &o, d)?;
            println!(
                "{name} at {lsn}: {} files, {} bytes, {} relation pages, {} SLRU pages, checkpoint {}..{} in {:?}",
                r.files, r.bytes, r.rel_pages, r.slru_pages, r.checkpoint_lsn, r.checkpoint_end, t0.elapsed()
            );
            Ok(())
        })?;
        check_same(&rw, p, &format!("read-write at {name}"))?;
        ensure!(rw.psql("SELECT pg_is_in_recovery()")?.trim() == "f");
        // The branch takes writes and restarts cleanly.
        rw.psql("CREATE TABLE branch_only (x int); INSERT INTO branch_only SELECT generate_series(1, 100);")?;
        rw.pgbench(&["-t", "50", "-n"])?;
        rw.restart()?;
        ensure!(rw.psql("SELECT count(*) FROM branch_only")?.trim() == "100");
        ensure!(
            rw.psql("SELECT count(*) FROM scratch")?.trim() == "0",
            "unlogged reset"
        );
        drop(rw);

        // Read-only, through a tar that the real tar extracts.
        o.mode = Mode::ReadOnly;
        let ro = start_from(|d| {
            let tar = d.with_extension("tar");
            basebackup_tar(tl, &o, std::fs::File::create(&tar)?)?;
            std::fs::create_dir(d)?;
            let st = std::process::Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(d)
                .status()?;
            ensure!(st.success(), "tar -x failed");
            Ok(())
        })?;
        ensure!(ro.psql("SELECT pg_is_in_recovery()")?.trim() == "t");
        check_same(&ro, p, &format!("read-only at {name}"))?;
        let err = ro.psql("INSERT INTO items VALUES (-5, 'no')").unwrap_err();
        ensure!(format!("{err:#}").contains("read-only"), "{err:#}");
    }

    // A compute at the tip continues the timeline: its WAL starts with the generated
    // checkpoint, whose xl_prev names the timeline's last record.
    let tip = tl.last_record_end();
    let c = start_from(|d| {
        basebackup_to_dir(tl, &BasebackupOptions::new(tip, Mode::ReadWrite), d)?;
        Ok(())
    })?;
    c.psql(
        "COMMIT PREPARED 'p2'; CREATE TABLE after_tip AS SELECT g FROM generate_series(1, 500) g;",
    )?;
    c.pgbench(&["-t", "100", "-n"])?;
    c.psql_db("db2", "INSERT INTO t3 VALUES (-1)")?;
    let p3 = point(&c)?;
    c.stop(StopMode::Fast)?;
    ingest_wal(&mut ing, &c.wal_dir(), tip, &mut bounds)?;
    let tl = ing.timeline();
    ensure!(tl.last_record_end() > tip);
    let again = start_from(|d| {
        basebackup_to_dir(
            tl,
            &BasebackupOptions::new(tl.last_record_end(), Mode::ReadWrite),
            d,
        )?;
        Ok(())
    })?;
    check_same(&again, &p3, "compute after the compute")?;
    drop(again);

    // Ingest after an import holds what ingest from earlier holds: the compute's stopped
    // data directory imported at its shutdown checkpoint, then more WAL into both timelines.
    let stopped = c.copy_data_dir("stopped")?;
    let (tl2, rep2) = import_datadir(
        &stopped,
        &scratch.path().join("tl2"),
        TimelineConf::default(),
        None,
    )?;
    ensure!(
        rep2.lsn == ing.timeline().last_record_lsn(),
        "imported at the shutdown checkpoint"
    );
    compare_state(ing.timeline(), &tl2, rep2.lsn, false)?;
    c.start()?;
    c.pgbench(&["-t", "100", "-n"])?;
    c.psql(
        "CREATE TABLE later AS SELECT g FROM generate_series(1, 1000) g;
         BEGIN; INSERT INTO later VALUES (0); PREPARE TRANSACTION 'p3';",
    )?;
    c.stop(StopMode::Fast)?;
    let mut ing2 = WalIngest::new(tl2, IngestConf::default())?;
    ingest_wal(&mut ing, &c.wal_dir(), rep2.lsn, &mut bounds)?;
    ingest_wal(&mut ing2, &c.wal_dir(), rep2.lsn, &mut bounds)?;
    let end = ing.timeline().last_record_end();
    ensure!(ing2.timeline().last_record_end() == end);
    compare_state(ing.timeline(), ing2.timeline(), end, true)?;
    Ok(())
}

/// The non-page state and the relation directory of two timelines at `lsn` are equal. With
/// `exact`, the counters are equal too; without, `a`'s come from the WAL just before a
/// shutdown checkpoint and `b`'s from the control file: the WAL's nextOid is the last
/// XLOG/NEXTOID's, which reserves OIDs ahead of the control file's, and ingest stores nextXid
/// rounded up to a multiple of `XID_STRIDE` (never below the control file's, less than a stride
/// above).
fn compare_state(a: &Timeline, b: &Timeline, lsn: Lsn, exact: bool) -> Result<()> {
    let (mut ca, mut cb) = (
        checkpoint_state_at(a, lsn)?.context("no counters")?,
        checkpoint_state_at(b, lsn)?.context("no counters")?,
    );
    if !exact {
        ca.next_oid = 0;
        cb.next_oid = 0;
        ensure!(
            ca.next_xid >= cb.next_xid && ca.next_xid - cb.next_xid < XID_STRIDE,
            "nextXid at {lsn}: {} from the WAL, {} in the control file",
            ca.next_xid,
            cb.next_xid
        );
        ca.next_xid = cb.next_xid;
    }
    ensure!(ca == cb, "checkpoint counters at {lsn}: {ca:?} vs {cb:?}");
    ensure!(
        prepared_xacts(a, lsn)? == prepared_xacts(b, lsn)?,
        "prepared at {lsn}"
    );
    let mut pages = 0;
    for kind in [
        SlruKind::Clog,
        SlruKind::MultiXactOffsets,
        SlruKind::MultiXactMembers,
    ] {
        let segs = slru_segments(a, kind, lsn)?;
        ensure!(
            segs == slru_segments(b, kind, lsn)?,
            "{kind:?} segments at {lsn}"
        );
        for (seg, n) in segs {
            for blk in 0..n {
                let (pa, pb) = (
                    slru_page_at(a, kind, seg, blk, lsn)?,
                    slru_page_at(b, kind, seg, blk, lsn)?,
                );
                ensure!(pa == pb, "{kind:?} segment {seg} page {blk} at {lsn}");
                pages += 1;
            }
        }
    }
    let (da, db) = (RelDirectory::load(a, lsn)?, RelDirectory::load(b, lsn)?);
    // Main and init forks: FSM and VM files may hold pages no WAL record names.
    let forks = |d: &RelDirectory| -> Vec<_> {
        d.all_forks()
            .into_iter()
            .filter(|f| f.1 == 0 || f.1 == 3)
            .collect()
    };
    let (fa, fb) = (forks(&da), forks(&db));
    let differing: Vec<_> = fa.iter().filter(|f| !fb.contains(f)).take(5).collect();
    ensure!(
        fa.len() == fb.len() && differing.is_empty(),
        "forks at {lsn}: {differing:?}"
    );
    for (spc, dbid) in fa
        .iter()
        .map(|f| (f.0.spc, f.0.db))
        .collect::<std::collections::BTreeSet<_>>()
    {
        ensure!(
            relmap_at(a, spc, dbid, lsn)? == relmap_at(b, spc, dbid, lsn)?,
            "relmap {spc}/{dbid}"
        );
    }
    println!(
        "state at {lsn} equal: {} forks, {pages} SLRU pages",
        fa.len()
    );
    Ok(())
}
