//! The full workload: a few seconds of SQL that make Postgres 15 write (nearly) every WAL
//! record type, so that decoders are tested against everything a real server produces.
//!
//! Some record types only appear under specific conditions; each phase below says which
//! records it is for. The non-obvious ones:
//! - CLOG ZEROPAGE and MultiXact ZERO_OFF_PAGE / ZERO_MEM_PAGE are written only when an xid,
//!   multixact or member offset is the first of an SLRU page. Before the first start we use
//!   `pg_resetwal -x/-m/-O` to put all three just at (or one before) a page boundary.
//! - Heap TRUNCATE and Heap2 NEW_CID need `wal_level = logical`; Heap2 REWRITE additionally
//!   needs a logical replication slot and a rewrite (VACUUM FULL) of a catalog.
//! - FPI_FOR_HINT needs data checksums and a hint-bit-only change after a checkpoint.
//! - PARAMETER_CHANGE is written at start-up when WAL-relevant settings differ from the
//!   control file's (pg_resetwal resets them, and we restart with a new max_connections).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use walproto::Lsn;

use crate::pg::{PgCluster, StopMode};

/// xacts per CLOG page (BLCKSZ * 4 two-bit entries).
const CLOG_XACTS_PER_PAGE: u64 = 32768;
/// MultiXactIds per offsets page (BLCKSZ / 4).
const MULTIXACT_OFFSETS_PER_PAGE: u64 = 2048;
/// Members per members page (409 groups of 4 per 8 KiB page).
const MULTIXACT_MEMBERS_PER_PAGE: u64 = 1636;

/// Settings the workload needs (tests add their own, e.g. `wal_compression`).
pub fn workload_settings() -> Vec<(String, String)> {
    [
        ("wal_level", "logical"),
        ("max_prepared_transactions", "10"),
        ("track_commit_timestamp", "on"),
        // Keep every segment: the whole WAL is compared after the run.
        ("wal_keep_size", "100GB"),
        ("max_wal_size", "8GB"),
        ("checkpoint_timeout", "1h"),
        // Fewer background surprises; the workload runs VACUUM itself.
        ("autovacuum", "off"),
        // Does not change what is written to WAL, only when it is flushed to disk.
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("max_replication_slots", "4"),
        ("max_connections", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What the workload did: where its WAL starts and some LSNs along the way.
#[derive(Clone, Debug)]
pub struct WorkloadReport {
    /// The first record of the WAL: the checkpoint `pg_resetwal` wrote. Nothing earlier
    /// survives in `pg_wal`.
    pub start: Lsn,
    /// `pg_current_wal_insert_lsn()` after each phase, labelled with the phase name.
    pub marks: Vec<(String, Lsn)>,
    pub elapsed: Duration,
}

impl WorkloadReport {
    /// The LSN recorded after phase `label`.
    pub fn mark(&self, label: &str) -> Option<Lsn> {
        self.marks
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, lsn)| *lsn)
    }
}

/// Runs the full workload. The cluster must be stopped (ideally fresh from `initdb`) and
/// configured with [`workload_settings`]; it is left running afterwards, so the caller
/// decides how the WAL ends (a clean stop writes a shutdown checkpoint).
pub fn run_full_workload(pg: &PgCluster) -> Result<WorkloadReport> {
    let t0 = Instant::now();
    ensure!(
        !pg.is_running(),
        "run_full_workload needs a stopped cluster: it runs pg_resetwal first"
    );
    let start = put_slru_counters_on_page_boundaries(pg)?;
    pg.start()?;
    check_settings(pg)?;

    let mut marks = Vec::new();
    let mut mark = |label: &str| -> Result<()> {
        marks.push((label.to_string(), pg.current_wal_insert_lsn()?));
        Ok(())
    };
    mark("started")?;
    setup(pg)?;
    mark("setup")?;
    pgbench(pg)?;
    mark("pgbench")?;
    ddl_and_heap(pg)?;
    mark("ddl_and_heap")?;
    index_access_methods(pg)?;
    mark("index_access_methods")?;
    transactions(pg)?;
    mark("transactions")?;
    multixacts(pg)?;
    mark("multixacts")?;
    vacuum_and_rewrites(pg)?;
    mark("vacuum_and_rewrites")?;
    index_page_recycling(pg)?;
    mark("index_page_recycling")?;
    databases_and_tablespaces(pg)?;
    mark("databases_and_tablespaces")?;
    hint_bits(pg)?;
    mark("hint_bits")?;
    restart_with_parameter_change(pg)?;
    mark("restart")?;
    xlog_misc(pg)?;
    mark("xlog_misc")?;

    Ok(WorkloadReport {
        start,
        marks,
        elapsed: t0.elapsed(),
    })
}

/// Rounds `v` up to the next multiple of `m` that is at least `v`.
fn round_up(v: u64, m: u64) -> u64 {
    v.div_ceil(m) * m
}

/// `pg_resetwal` so that the next xid is the first of a CLOG page, the next multixact is
/// the last of an offsets page (Postgres 15.x minors differ in whether they zero the page of
/// multi or of multi + 1, so creating two multixacts covers both), and the next member offset
/// is the first of a members page. Returns the LSN of the checkpoint record pg_resetwal
/// writes, which begins the new WAL.
fn put_slru_counters_on_page_boundaries(pg: &PgCluster) -> Result<Lsn> {
    let cd = pg.controldata()?;
    let get = |k: &str| -> Result<u64> {
        let v = cd
            .get(k)
            .with_context(|| format!("pg_controldata lacks {k:?}"))?;
        // NextXID is printed as epoch:xid.
        let v = v.rsplit(':').next().unwrap_or(v);
        v.parse().with_context(|| format!("{k}: {v:?}"))
    };
    let xid = round_up(get("Latest checkpoint's NextXID")? + 1, CLOG_XACTS_PER_PAGE)
        .max(2 * CLOG_XACTS_PER_PAGE);
    let multi = round_up(
        get("Latest checkpoint's NextMultiXactId")? + 2,
        MULTIXACT_OFFSETS_PER_PAGE,
    ) - 1;
    let offset = round_up(
        get("Latest checkpoint's NextMultiOffset")? + 1,
        MULTIXACT_MEMBERS_PER_PAGE,
    );
    pg.pg_resetwal(&[
        "-x",
        &xid.to_string(),
        "-m",
        &format!("{multi},1"),
        "-O",
        &offset.to_string(),
    ])?;
    pg.latest_checkpoint()
}

fn check_settings(pg: &PgCluster) -> Result<()> {
    let out = pg.psql("SHOW wal_level; SHOW max_prepared_transactions;")?;
    let v: Vec<&str> = out.lines().collect();
    ensure!(
        v.first() == Some(&"logical"),
        "the workload needs wal_level = logical (use workload_settings()), got {v:?}"
    );
    ensure!(
        v.get(1).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) > 0,
        "the workload needs max_prepared_transactions > 0, got {v:?}"
    );
    Ok(())
}

/// Extensions, and a logical slot so that catalog rewrites log Heap2 REWRITE.
fn setup(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE EXTENSION bloom;
         CREATE EXTENSION dblink;
         SELECT 1 FROM pg_create_logical_replication_slot('strata_slot', 'test_decoding');",
    )?;
    Ok(())
}

/// pgbench: COPY (Heap2 MULTI_INSERT), btree builds (XLOG FPI), then 4 clients of
/// UPDATE/HOT_UPDATE/INSERT, btree inserts and splits, commits.
fn pgbench(pg: &PgCluster) -> Result<()> {
    pg.pgbench(&["-i", "-s", "1", "-q"])?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "2", "-n"])?;
    Ok(())
}

/// CREATE/ALTER/DROP TABLE (Storage CREATE, Standby LOCK), TOAST, COPY, ON CONFLICT
/// (Heap CONFIRM), TRUNCATE (Heap TRUNCATE), sequences (Sequence LOG), unlogged tables
/// (init forks), logical messages.
fn ddl_and_heap(pg: &PgCluster) -> Result<()> {
    let copy_rows: String = (1..=3000).map(|i| format!("{i}\tcopied {i}\n")).collect();
    let churn = "UPDATE churn SET v = v + 1;\n".repeat(30);
    pg.psql(&format!(
        "CREATE TABLE ddl_t (id int PRIMARY KEY, v text);
         ALTER TABLE ddl_t ADD COLUMN w int DEFAULT 7;
         ALTER TABLE ddl_t ALTER COLUMN v SET NOT NULL;
         INSERT INTO ddl_t SELECT g, 'v' || g FROM generate_series(1, 2000) g;
         CREATE INDEX ddl_t_v ON ddl_t (v);
         UPDATE ddl_t SET w = w + 1 WHERE id % 3 = 0;
         UPDATE ddl_t SET v = v || 'x' WHERE id % 5 = 0;
         DELETE FROM ddl_t WHERE id % 7 = 0;
         SELECT * FROM ddl_t WHERE id = 3 FOR UPDATE;
         DROP TABLE ddl_t;

         CREATE TABLE toasty (id int, big text);
         ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO toasty SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 40) g;
         UPDATE toasty SET big = big || 'y' WHERE id % 2 = 0;
         DELETE FROM toasty WHERE id % 4 = 0;

         CREATE TABLE copy_t (id int, t text);
         COPY copy_t FROM STDIN;
{copy_rows}\\.

         CREATE TABLE upsert (k int PRIMARY KEY, n int);
         INSERT INTO upsert SELECT g, 0 FROM generate_series(1, 100) g;
         INSERT INTO upsert VALUES (1000, 0) ON CONFLICT (k) DO NOTHING;
         INSERT INTO upsert SELECT g, 1 FROM generate_series(90, 110) g
             ON CONFLICT (k) DO UPDATE SET n = upsert.n + 1;

         TRUNCATE copy_t;
         INSERT INTO copy_t VALUES (1, 'after truncate');

         CREATE SEQUENCE seq;
         SELECT count(nextval('seq')) FROM generate_series(1, 500);
         CREATE TABLE with_serial (id bigserial PRIMARY KEY, t text);
         INSERT INTO with_serial (t) SELECT 's' FROM generate_series(1, 100);

         -- Non-HOT updates (v is indexed) of unchanged keys fill the primary key's leaf
         -- pages with dead versions until bottom-up deletion removes them (Btree DELETE).
         CREATE TABLE churn (id int PRIMARY KEY, v int);
         CREATE INDEX churn_v ON churn (v);
         INSERT INTO churn SELECT g, 0 FROM generate_series(1, 300) g;
{churn}
         CREATE UNLOGGED TABLE unlogged_t (id int PRIMARY KEY, t text);
         INSERT INTO unlogged_t SELECT g, 'u' FROM generate_series(1, 1000) g;
         CREATE INDEX unlogged_t_t ON unlogged_t USING hash (t);

         SELECT 1 FROM pg_logical_emit_message(true, 'strata', 'transactional message');
         SELECT 1 FROM pg_logical_emit_message(false, 'strata', 'non-transactional message');
        "
    ))?;
    Ok(())
}

/// Every index access method, with the indexes built on an empty table so that the rows
/// arrive through each AM's insert path (its own rmgr records, splits), then deletes and
/// VACUUM (its vacuum records), then more inserts. bloom uses Generic WAL records. Keys 0
/// and 1 of `arr` get thousands of rows each, which moves them into GIN posting trees.
fn index_access_methods(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE am (id int, arr int[], p point, t text, r int4range);
         CREATE INDEX am_btree ON am USING btree (id);
         CREATE INDEX am_hash ON am USING hash (id);
         CREATE INDEX am_gin ON am USING gin (arr);
         CREATE INDEX am_gin_direct ON am USING gin (arr) WITH (fastupdate = off);
         CREATE INDEX am_gist ON am USING gist (p);
         CREATE INDEX am_spgist ON am USING spgist (t);
         CREATE INDEX am_spgist_r ON am USING spgist (r);
         CREATE INDEX am_brin ON am USING brin (id) WITH (pages_per_range = 4);
         CREATE INDEX am_bloom ON am USING bloom (id);
         INSERT INTO am
             SELECT g, ARRAY[g % 2, g % 10 + 2, g], point(g % 100, g % 37), md5(g::text),
                    int4range(g, g + 10)
             FROM generate_series(1, 6000) g;
         SELECT brin_summarize_new_values('am_brin');
         DELETE FROM am WHERE id % 3 = 0;
         VACUUM am;
         INSERT INTO am
             SELECT g, ARRAY[g], point(g, g), 'again' || g, int4range(g, g + 1)
             FROM generate_series(6001, 7000) g;
         DELETE FROM am WHERE id > 1000;
         VACUUM am;
         -- An index built on existing rows: written as full-page images (XLOG FPI).
         CREATE INDEX am_gin_built ON am USING gin (arr);
         CREATE INDEX am_gist_built ON am USING gist (r);
         DROP INDEX am_gist_built;
         REINDEX INDEX am_hash;
         SELECT brin_desummarize_range('am_brin', 0);
         -- A one-page SP-GiST index: vacuuming its root leaf (SPGist VACUUM_ROOT).
         CREATE TABLE sp_small (t text);
         CREATE INDEX sp_small_t ON sp_small USING spgist (t);
         INSERT INTO sp_small VALUES ('a'), ('b'), ('c');
         DELETE FROM sp_small WHERE t <> 'a';
         VACUUM sp_small;",
    )?;
    Ok(())
}

/// Rarer index records: deleted btree and GiST pages recycled by later splits (Btree
/// REUSE_PAGE, Gist PAGE_REUSE), an emptied GIN posting-tree page (Gin DELETE_PAGE), and
/// a BRIN summary that outgrows its page (BRIN UPDATE). Runs after the logical slot is
/// dropped: index pages are recycled only past the all-databases xmin horizon, which the
/// slot's catalog xmin holds back.
fn index_page_recycling(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE recycle (id int, p point);
         CREATE INDEX recycle_id ON recycle (id);
         CREATE INDEX recycle_p ON recycle USING gist (p);
         INSERT INTO recycle SELECT g, point(g, g) FROM generate_series(1, 10000) g;
         DELETE FROM recycle WHERE id > 1000;
         VACUUM recycle;
         SELECT txid_current();
         SELECT txid_current();
         -- Deleted pages become reusable once no transaction can still see them.
         VACUUM recycle;
         INSERT INTO recycle SELECT g, point(g, g) FROM generate_series(10001, 15000) g;

         CREATE TABLE gin_big (id int, a int[]);
         CREATE INDEX gin_big_a ON gin_big USING gin (a) WITH (fastupdate = off);
         INSERT INTO gin_big SELECT g, ARRAY[1] FROM generate_series(1, 30000) g;
         DELETE FROM gin_big WHERE id BETWEEN 5000 AND 25000;
         VACUUM gin_big;

         CREATE TABLE brin_grow (id int, t text) WITH (fillfactor = 30);
         INSERT INTO brin_grow SELECT g, 'a' FROM generate_series(1, 3000) g;
         CREATE INDEX brin_grow_t ON brin_grow USING brin (t) WITH (pages_per_range = 1);
         UPDATE brin_grow SET t = repeat('z', 200) || id WHERE id % 50 = 0;",
    )?;
    Ok(())
}

/// Aborts, prepared transactions (PREPARE, COMMIT_PREPARED, ABORT_PREPARED), more than 64
/// subtransactions with xids in one transaction (ASSIGNMENT), savepoint rollbacks.
fn transactions(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE xact_t (id int, note text);
         BEGIN; INSERT INTO xact_t VALUES (1, 'rolled back'); ROLLBACK;
         BEGIN; INSERT INTO xact_t VALUES (2, 'prepared, committed');
         PREPARE TRANSACTION 'strata_commit';
         COMMIT PREPARED 'strata_commit';
         BEGIN; INSERT INTO xact_t VALUES (3, 'prepared, rolled back');
         PREPARE TRANSACTION 'strata_rollback';
         ROLLBACK PREPARED 'strata_rollback';
         BEGIN;
         INSERT INTO xact_t VALUES (4, 'savepoints');
         SAVEPOINT a; INSERT INTO xact_t VALUES (5, 'in a'); ROLLBACK TO SAVEPOINT a;
         SAVEPOINT b; INSERT INTO xact_t VALUES (6, 'in b'); RELEASE SAVEPOINT b;
         COMMIT;
         DO $$
         BEGIN
             FOR i IN 1..100 LOOP
                 BEGIN
                     INSERT INTO xact_t VALUES (100 + i, 'subxact');
                     IF i % 10 = 0 THEN RAISE EXCEPTION 'roll back this one'; END IF;
                 EXCEPTION WHEN raise_exception THEN NULL;
                 END;
             END LOOP;
         END $$;",
    )?;
    Ok(())
}

/// Two backends share-locking the same rows (the second through dblink) create
/// multixacts (MultiXact CREATE_ID, and ZERO_OFF_PAGE / ZERO_MEM_PAGE thanks to the
/// pg_resetwal boundaries). Each round uses new xids, so new member sets, so new multis.
fn multixacts(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE mx (id int PRIMARY KEY, v int);
         INSERT INTO mx SELECT g, 0 FROM generate_series(1, 10) g;",
    )?;
    share_lock_rounds(pg, 3)
}

/// `rounds` transactions in which two sessions share-lock the same rows of table `mx` (the
/// second through dblink, which needs `CREATE EXTENSION dblink`): each round locks one more
/// row, so each creates new multixacts.
pub fn share_lock_rounds(pg: &PgCluster, rounds: u32) -> Result<()> {
    let conn = pg.connstr("postgres");
    let mut sql = String::new();
    for round in 0..rounds {
        sql.push_str(&format!(
            "BEGIN;
             SELECT count(*) FROM (SELECT * FROM mx WHERE id <= {n} FOR SHARE) s;
             SELECT * FROM dblink('{conn}',
                 'SELECT count(*) FROM (SELECT * FROM mx WHERE id <= {n} FOR KEY SHARE) s')
                 AS t(c bigint);
             COMMIT;\n",
            n = round + 2
        ));
    }
    pg.psql(&sql)?;
    Ok(())
}

/// A base and the WAL of [`run_full_workload`] with `wal_consistency_checking = all` on top
/// of it: the data directory copied right after initdb (relation files that the workload's
/// `pg_resetwal` leaves valid), then the workload, then a clean stop. Returns the stopped
/// cluster (its `wal_dir()` holds the WAL), the base, and the workload's report.
pub fn consistency_checked_workload(
    base_name: &str,
) -> Result<(PgCluster, std::path::PathBuf, WorkloadReport)> {
    let mut opts = crate::pg::InitOptions::default();
    for (k, v) in workload_settings() {
        opts = opts.set(&k, &v);
    }
    // Data checksums are the harness default (FPI_FOR_HINT, XLogHintBitIsNeeded).
    let pg = PgCluster::init(&opts.set("wal_consistency_checking", "all"))?;
    let base = pg.copy_data_dir(base_name)?;
    let report = run_full_workload(&pg)?;
    pg.stop(StopMode::Fast)?;
    Ok((pg, base, report))
}

/// VACUUM (Heap2 PRUNE/VACUUM/VISIBLE), VACUUM FREEZE (FREEZE_PAGE), truncation of empty
/// trailing pages (Storage TRUNCATE), VACUUM FULL and CLUSTER (new relfilenodes, FPIs),
/// VACUUM FULL pg_class (RelMap UPDATE; Heap2 REWRITE with the logical slot, which is
/// dropped afterwards).
fn vacuum_and_rewrites(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE trunc_me AS SELECT g AS id, repeat('z', 100) AS pad
             FROM generate_series(1, 20000) g;
         DELETE FROM trunc_me;
         VACUUM trunc_me;
         VACUUM pgbench_history;
         VACUUM FREEZE pgbench_branches, pgbench_tellers, upsert;
         VACUUM FULL toasty;
         CREATE TABLE clu (id int, v text);
         INSERT INTO clu SELECT (g * 7919) % 3000, 'c' FROM generate_series(1, 3000) g;
         CREATE INDEX clu_id ON clu (id);
         CLUSTER clu USING clu_id;
         CREATE TABLE catalog_churn (a int);
         ALTER TABLE catalog_churn ADD COLUMN b int;
         DROP TABLE catalog_churn;
         VACUUM FULL pg_class;
         VACUUM ANALYZE xact_t;
         -- The slot's catalog xmin would keep deleted index pages from being recycled.
         SELECT 1 FROM pg_drop_replication_slot('strata_slot');",
    )?;
    Ok(())
}

/// CREATE DATABASE with both strategies (Database CREATE_WAL_LOG, CREATE_FILE_COPY; the
/// latter checkpoints), DROP DATABASE (Database DROP), and a tablespace (Tablespace
/// CREATE/DROP) with a table moved into it and back.
fn databases_and_tablespaces(pg: &PgCluster) -> Result<()> {
    let ts_dir = pg.make_postgres_dir("tablespace")?;
    pg.psql(&format!(
        "CREATE DATABASE db_wal_log STRATEGY wal_log;
         CREATE DATABASE db_file_copy STRATEGY file_copy;
         DROP DATABASE db_wal_log;
         DROP DATABASE db_file_copy;
         CREATE TABLESPACE strata_ts LOCATION '{}';
         CREATE TABLE in_ts (id int) TABLESPACE strata_ts;
         INSERT INTO in_ts SELECT generate_series(1, 1000);
         ALTER TABLE clu SET TABLESPACE strata_ts;
         ALTER TABLE clu SET TABLESPACE pg_default;
         DROP TABLE in_ts;
         DROP TABLESPACE strata_ts;",
        ts_dir.display()
    ))?;
    // A database with objects of its own, so its WAL carries its database oid.
    pg.psql("CREATE DATABASE other STRATEGY wal_log;")?;
    pg.psql_db(
        "other",
        "CREATE TABLE o (id int PRIMARY KEY); INSERT INTO o SELECT generate_series(1, 500);",
    )?;
    Ok(())
}

/// Rows committed before a checkpoint and first read after it: setting their hint bits is
/// the page's first change since the checkpoint, which with checksums means an
/// FPI_FOR_HINT.
fn hint_bits(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "CREATE TABLE hint_t AS SELECT g AS id FROM generate_series(1, 5000) g;
         CHECKPOINT;
         SELECT count(*) FROM hint_t;",
    )?;
    Ok(())
}

/// A clean restart (CHECKPOINT_SHUTDOWN) with a different max_connections
/// (PARAMETER_CHANGE); the first OID after start logs NEXTOID.
fn restart_with_parameter_change(pg: &PgCluster) -> Result<()> {
    pg.set_config(&[("max_connections".into(), "60".into())])?;
    pg.stop(StopMode::Fast)?;
    pg.start()?;
    pg.psql("CREATE TABLE after_restart (id int); INSERT INTO after_restart VALUES (1);")?;
    Ok(())
}

/// Restore point, online checkpoint, WAL switch, a non-exclusive base backup's start and
/// stop (BACKUP_END), replication origins (ReplicationOrigin SET, DROP), and dropping the
/// logical slot.
fn xlog_misc(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "SELECT 1 FROM pg_create_restore_point('strata_restore_point');
         SELECT 1 FROM pg_backup_start('strata', true);
         SELECT 1 FROM pg_backup_stop(false);
         SELECT 1 FROM pg_replication_origin_create('strata_origin');
         SELECT pg_replication_origin_advance('strata_origin', '0/1234');
         SELECT pg_replication_origin_drop('strata_origin');
         CHECKPOINT;
         SELECT 1 FROM pg_switch_wal();
         INSERT INTO after_restart VALUES (2);",
    )?;
    Ok(())
}

/// Turns the (stopped) cluster into a standby of its own WAL and promotes it: Postgres 15
/// writes XLOG END_OF_RECOVERY and continues on timeline 2. Returns the name of the first
/// timeline-2 segment. Kept out of [`run_full_workload`] because WAL spanning two
/// timelines cannot be read with one `pg_waldump -s/-e` call.
pub fn promote_in_place(pg: &PgCluster) -> Result<String> {
    ensure!(!pg.is_running(), "stop the cluster before promote_in_place");
    pg.make_standby_signal()?;
    pg.start()?;
    pg.promote()?;
    pg.psql("CREATE TABLE after_promote (id int); INSERT INTO after_promote VALUES (1);")?;
    pg.stop(StopMode::Fast)?;
    let mut tl2: Vec<String> = std::fs::read_dir(pg.wal_dir())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.starts_with("00000002"))
        .collect();
    tl2.sort();
    tl2.into_iter()
        .next()
        .context("no timeline-2 segment after promotion")
}
