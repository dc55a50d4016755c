//! The read RPCs (RelSize, RelExists, DbSize, SlruSegment) of the real `pageserver` binary
//! against Postgres 15 itself.
//!
//! One Postgres runs a workload in steps; after each step the test notes the insert LSN and
//! what Postgres says at that moment (`pg_relation_size` of every fork of the workload's
//! relations). Its WAL is ingested into a timeline in-process (as the walreceiver feeds it)
//! and the binary serves it. Then, at each step's LSN:
//!
//! - RelSize equals `pg_relation_size(rel, fork) / 8192` measured at that moment, for the
//!   main forks of the tables and indexes (RelSize of a fork that does not exist: NOT_FOUND).
//! - RelExists is true for a table at every LSN after its creation and false before it.
//! - After the clean stop (a shutdown checkpoint writes everything), from the data directory:
//!   every relation file of the `postgres` database has the size RelSize gives its fork
//!   (main, VM and init forks exactly; FSM forks at most: the FSM is extended without WAL),
//!   and DbSize equals the sum of those RelSizes, i.e. `pg_database_size` minus the
//!   database's non-relation files (`PG_VERSION`, `pg_filenode.map`, `pg_internal.init`)
//!   minus the FSM blocks Postgres has and the WAL never described; both differences are
//!   printed. The CLOG segment `pg_xact/0000` is byte-identical to the file (commits,
//!   explicit aborts, subtransactions committed and rolled back), and so are the
//!   MultiXact offsets and members segments.
//! - A branch at an early step reads through to its parent: its RelSize there equals the
//!   parent's, and a table created after the branch point does not exist on it.
//! - Errors: an unknown tenant or timeline (NOT_FOUND), an LSN beyond the ingested WAL
//!   (OUT_OF_RANGE, naming the range), a bad fork or SLRU kind (INVALID_ARGUMENT), an unknown
//!   database or SLRU segment (NOT_FOUND), and, after GC, an LSN below the GC cutoff
//!   (OUT_OF_RANGE naming it).
//!
//! Relation drops: `dropped_table_does_not_exist_after_the_drop` at the end.

mod service_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pageserver::tenant::{TenantConf, TenantManager};
use service_support::{feed_wal, query_i64, Pageserver};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use tonic::transport::Channel;
use tonic::Code;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::Lsn;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const MAIN: &str = "11111111111111111111111111111111";
const BRANCH: &str = "22222222222222222222222222222222";

/// What Postgres said after one workload step.
#[derive(Debug)]
struct Step {
    name: &'static str,
    lsn: Lsn,
    /// relname → (relfilenode, main fork blocks) of the workload's relations existing then.
    sizes: BTreeMap<String, (u32, u32)>,
}

struct Workload {
    pg: PgCluster,
    base: PathBuf,
    start: Lsn,
    end: Lsn,
    db: u32,
    steps: Vec<Step>,
    db_size_pg: u64,
}

/// The workload's relations' filenodes and main-fork sizes (blocks) right now.
fn sizes(pg: &PgCluster) -> Result<BTreeMap<String, (u32, u32)>> {
    let out = pg.psql(
        "SELECT relname, pg_relation_filenode(oid), pg_relation_size(oid) / 8192 \
         FROM pg_class WHERE relname LIKE 'rr\\_%' ORDER BY relname",
    )?;
    let mut m = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        anyhow::ensure!(f.len() == 3, "unexpected row {line:?}");
        m.insert(f[0].to_string(), (f[1].parse()?, f[2].parse()?));
    }
    Ok(m)
}

fn step(pg: &PgCluster, name: &'static str, sql: &str) -> Result<Step> {
    pg.psql(sql)?;
    Ok(Step {
        name,
        lsn: pg.current_wal_insert_lsn()?,
        sizes: sizes(pg)?,
    })
}

fn workload() -> Result<Workload> {
    let opts = InitOptions::default().keep_all_wal().set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    let db = query_i64(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )? as u32;
    let mut steps = vec![Step {
        name: "start",
        lsn: pg.current_wal_insert_lsn()?,
        sizes: sizes(&pg)?,
    }];
    steps.push(step(
        &pg,
        "create a",
        "CREATE TABLE rr_a (id int PRIMARY KEY, v text);
         INSERT INTO rr_a SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
    )?);
    steps.push(step(
        &pg,
        "create b, grow a",
        "CREATE TABLE rr_b (id int, w text);
         INSERT INTO rr_b SELECT g, repeat('b', 200) FROM generate_series(1, 3000) g;
         CREATE INDEX rr_b_w ON rr_b (id);
         INSERT INTO rr_a SELECT g, md5(g::text) FROM generate_series(2001, 6000) g;",
    )?);
    // Aborts, subtransactions, multixacts (a share lock then an update in a subxact).
    steps.push(step(
        &pg,
        "xacts and vacuum",
        "BEGIN; INSERT INTO rr_b VALUES (-1, 'gone'); ROLLBACK;
         BEGIN; INSERT INTO rr_b VALUES (-2, 'kept');
           SAVEPOINT s1; INSERT INTO rr_b VALUES (-3, 'rolled back'); ROLLBACK TO s1;
           SAVEPOINT s2; INSERT INTO rr_b VALUES (-4, 'sub kept'); RELEASE s2;
         COMMIT;
         BEGIN; SELECT count(*) FROM (SELECT * FROM rr_a WHERE id <= 20 FOR SHARE) s;
           SAVEPOINT s3; UPDATE rr_a SET v = 'mx' WHERE id <= 20;
         COMMIT;
         BEGIN; SELECT count(*) FROM (SELECT * FROM rr_a WHERE id <= 40 FOR KEY SHARE) s;
           SAVEPOINT s4; UPDATE rr_a SET v = 'mx2' WHERE id <= 40;
         COMMIT;
         DELETE FROM rr_a WHERE id % 3 = 0;
         VACUUM rr_a;",
    )?);
    // The last step's commits are more than the tenant's 1 s PITR window after the others,
    // so GC at the end has history to cut.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    steps.push(step(
        &pg,
        "truncate b",
        "DELETE FROM rr_b WHERE id > 100 OR id < 0; VACUUM rr_b;",
    )?);
    let (before, after) = (&steps[steps.len() - 2], &steps[steps.len() - 1]);
    anyhow::ensure!(
        after.sizes["rr_b"].1 < before.sizes["rr_b"].1,
        "VACUUM did not truncate rr_b: {:?}",
        after.sizes
    );
    pg.psql("CHECKPOINT")?;
    let db_size_pg = query_i64(&pg, "SELECT pg_database_size('postgres')")? as u64;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    Ok(Workload {
        pg,
        base,
        start,
        end,
        db,
        steps,
        db_size_pg,
    })
}

fn rel_req(timeline: &str, lsn: Lsn, db: u32, rel: u32, fork: u32) -> pb::RelRequest {
    pb::RelRequest {
        tenant_id: TENANT.into(),
        timeline_id: timeline.into(),
        lsn: lsn.0,
        spcnode: 1663,
        dbnode: db,
        relnode: rel,
        forknum: fork,
    }
}

fn slru_req(timeline: &str, lsn: Lsn, kind: pb::SlruKind, segno: u32) -> pb::SlruSegmentRequest {
    pb::SlruSegmentRequest {
        tenant_id: TENANT.into(),
        timeline_id: timeline.into(),
        lsn: lsn.0,
        kind: kind as i32,
        segno,
    }
}

fn expect_status<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    words: &[&str],
) {
    let s = r.expect_err("expected an error status");
    assert_eq!(s.code(), code, "{s:?}");
    for w in words {
        assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
    }
    println!("{code:?}: {}", s.message());
}

async fn rel_size(
    c: &mut PageserverClient<Channel>,
    timeline: &str,
    lsn: Lsn,
    db: u32,
    rel: u32,
    fork: u32,
) -> Result<Option<u32>> {
    match c.rel_size(rel_req(timeline, lsn, db, rel, fork)).await {
        Ok(r) => Ok(Some(r.into_inner().nblocks)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

async fn rel_exists(
    c: &mut PageserverClient<Channel>,
    timeline: &str,
    lsn: Lsn,
    db: u32,
    rel: u32,
) -> Result<bool> {
    Ok(c.rel_exists(rel_req(timeline, lsn, db, rel, 0))
        .await?
        .into_inner()
        .exists)
}

/// The relation files of a database directory: (relfilenode, fork) → bytes (segments
/// summed), and the other files' bytes by name.
type RelFiles = BTreeMap<(u32, u32), u64>;

fn db_files(dir: &Path) -> Result<(RelFiles, BTreeMap<String, u64>)> {
    let mut rels = BTreeMap::new();
    let mut other = BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let len = e.metadata()?.len();
        let stem = name.split('.').next().unwrap_or("");
        let (node, fork) = match stem.split_once('_') {
            Some((n, "fsm")) => (n, 1),
            Some((n, "vm")) => (n, 2),
            Some((n, "init")) => (n, 3),
            Some(_) => ("", 0),
            None => (stem, 0),
        };
        match node.parse::<u32>() {
            Ok(n)
                if !node.is_empty()
                    && (name == stem || name[stem.len() + 1..].parse::<u32>().is_ok()) =>
            {
                *rels.entry((n, fork)).or_insert(0) += len
            }
            _ => {
                other.insert(name, len);
            }
        }
    }
    Ok((rels, other))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_rpcs_match_postgres() -> Result<()> {
    let w = workload()?;
    for s in &w.steps {
        println!("step {:?} at {}: {:?}", s.name, s.lsn, s.sizes);
    }
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    {
        let m = TenantManager::load(&data)?;
        let conf = TenantConf {
            pitr_interval: "1s".into(),
            ..TenantConf::default()
        };
        let t = m.create_tenant(Some(TENANT.parse()?), conf)?;
        let h = t.import_timeline(Some(MAIN.parse()?), &w.base, None, vec![])?;
        let n = feed_wal(&h, &w.pg.wal_dir(), w.start, w.end, 64 << 10)?;
        println!("ingested {n} records");
        assert!(m.flush_all().is_empty());
    }
    let ps = Pageserver::start_with(&data, &["--gc-interval", "0"])?;
    let mut c = ps.client().await?;
    let db = w.db;

    // RelSize and RelExists at each step, against Postgres at that moment.
    let all: BTreeMap<String, u32> = w
        .steps
        .iter()
        .flat_map(|s| s.sizes.iter().map(|(n, (node, _))| (n.clone(), *node)))
        .collect();
    let mut compared = 0;
    for s in &w.steps {
        for (name, &node) in &all {
            let got = rel_size(&mut c, MAIN, s.lsn, db, node, 0).await?;
            let want = s.sizes.get(name).map(|x| x.1);
            assert_eq!(
                got, want,
                "{name} ({node}) at step {:?} ({})",
                s.name, s.lsn
            );
            assert_eq!(
                rel_exists(&mut c, MAIN, s.lsn, db, node).await?,
                want.is_some(),
                "RelExists of {name} at step {:?}",
                s.name
            );
            compared += 1;
        }
    }
    println!("{compared} RelSize/RelExists pairs equal Postgres's sizes at their moment");
    assert!(compared >= 12, "too few comparisons: {compared}");
    // LSN 0 is the last record end.
    let last = w.steps.last().expect("steps");
    let a = last.sizes["rr_a"].0;
    let r = c
        .rel_size(rel_req(MAIN, Lsn(0), db, a, 0))
        .await?
        .into_inner();
    assert_eq!(Lsn(r.lsn), w.end);

    // The data directory after the shutdown checkpoint.
    let dbdir = w.pg.data_dir().join(format!("base/{db}"));
    let (files, other) = db_files(&dbdir)?;
    let mut sum = 0u64;
    let mut fsm_missing = 0u64;
    for (&(node, fork), &len) in &files {
        let got = rel_size(&mut c, MAIN, w.end, db, node, fork).await?;
        let got_bytes = got.unwrap_or(0) as u64 * 8192;
        if fork == 1 {
            assert!(
                got_bytes <= len,
                "FSM of {node}: {got_bytes} bytes in Strata, {len} on disk"
            );
            fsm_missing += len - got_bytes;
        } else {
            assert_eq!(
                got_bytes, len,
                "relation {node} fork {fork}: RelSize {got:?} blocks, the file has {len} bytes"
            );
        }
        sum += got_bytes;
    }
    let dbs = c
        .db_size(pb::DbSizeRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: w.end.0,
            spcnode: 1663,
            dbnode: db,
        })
        .await?
        .into_inner();
    let all_spc = c
        .db_size(pb::DbSizeRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: 0,
            spcnode: 0,
            dbnode: db,
        })
        .await?
        .into_inner();
    assert_eq!(all_spc.bytes, dbs.bytes);
    let other_bytes: u64 = other.values().sum();
    let disk: u64 = files.values().sum::<u64>() + other_bytes;
    println!(
        "DbSize {} bytes ({} forks); relation files on disk {} bytes in {} forks; \
         non-relation files {other:?} = {other_bytes} bytes; FSM blocks not in the WAL {fsm_missing} bytes; \
         pg_database_size after CHECKPOINT {}, files after the stop {disk}",
        dbs.bytes,
        dbs.forks,
        files.values().sum::<u64>(),
        files.len(),
        w.db_size_pg
    );
    assert_eq!(
        dbs.bytes, sum,
        "DbSize is the sum of the RelSizes of the forks on disk (no fork Postgres lacks)"
    );
    assert_eq!(dbs.bytes + fsm_missing + other_bytes, disk);

    // SLRU segments against the files.
    for (kind, path) in [
        (pb::SlruKind::Clog, "pg_xact/0000"),
        (pb::SlruKind::MultixactOffsets, "pg_multixact/offsets/0000"),
        (pb::SlruKind::MultixactMembers, "pg_multixact/members/0000"),
    ] {
        let file = std::fs::read(w.pg.data_dir().join(path))?;
        let got = c
            .slru_segment(slru_req(MAIN, w.end, kind, 0))
            .await?
            .into_inner();
        assert_eq!(got.data.len(), file.len(), "{path}: length");
        let differ = got.data.iter().zip(&file).position(|(a, b)| a != b);
        assert!(differ.is_none(), "{path} differs first at byte {differ:?}");
        println!("{path}: {} bytes identical", file.len());
    }
    // The CLOG holds commits and aborts of this workload.
    let clog = std::fs::read(w.pg.data_dir().join("pg_xact/0000"))?;
    let statuses: Vec<u8> = clog
        .iter()
        .flat_map(|b| (0..4).map(move |i| (b >> (2 * i)) & 3))
        .collect();
    let (commits, aborts) = (
        statuses.iter().filter(|s| **s == 1).count(),
        statuses.iter().filter(|s| **s == 2).count(),
    );
    println!("pg_xact/0000: {commits} committed, {aborts} aborted xids");
    assert!(
        commits > 10 && aborts >= 2,
        "{commits} commits, {aborts} aborts"
    );

    // A branch at the first step reads through its parent.
    let first = &w.steps[1];
    c.create_branch(pb::CreateBranchRequest {
        tenant_id: TENANT.into(),
        parent_timeline_id: MAIN.into(),
        timeline_id: BRANCH.into(),
        target: Some(pb::create_branch_request::Target::Lsn(first.lsn.0)),
        inclusive: true,
        safekeepers: vec![],
    })
    .await?;
    let a_node = first.sizes["rr_a"].0;
    assert_eq!(
        rel_size(&mut c, BRANCH, first.lsn, db, a_node, 0).await?,
        Some(first.sizes["rr_a"].1)
    );
    assert_eq!(
        rel_size(&mut c, BRANCH, Lsn(0), db, a_node, 0).await?,
        Some(first.sizes["rr_a"].1)
    );
    let b_node = all["rr_b"];
    assert!(!rel_exists(&mut c, BRANCH, Lsn(0), db, b_node).await?);
    let on_branch = c
        .db_size(pb::DbSizeRequest {
            tenant_id: TENANT.into(),
            timeline_id: BRANCH.into(),
            lsn: 0,
            spcnode: 1663,
            dbnode: db,
        })
        .await?
        .into_inner();
    let on_parent = c
        .db_size(pb::DbSizeRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: first.lsn.0,
            spcnode: 1663,
            dbnode: db,
        })
        .await?
        .into_inner();
    assert_eq!(on_branch.bytes, on_parent.bytes);
    let clog_branch = c
        .slru_segment(slru_req(BRANCH, Lsn(0), pb::SlruKind::Clog, 0))
        .await?
        .into_inner();
    let clog_parent = c
        .slru_segment(slru_req(MAIN, first.lsn, pb::SlruKind::Clog, 0))
        .await?
        .into_inner();
    assert_eq!(clog_branch.data, clog_parent.data);

    // Errors.
    let mut bad = rel_req(MAIN, w.end, db, a, 0);
    bad.tenant_id = "ffffffffffffffffffffffffffffffff".into();
    expect_status(c.rel_size(bad).await, Code::NotFound, &["ffffffff"]);
    let mut bad = rel_req(MAIN, w.end, db, a, 0);
    bad.timeline_id = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".into();
    expect_status(c.rel_exists(bad).await, Code::NotFound, &["eeeeeeee"]);
    expect_status(
        c.rel_size(rel_req(MAIN, Lsn(w.end.0 + 8), db, a, 0)).await,
        Code::OutOfRange,
        &["beyond", &format!("{}..={}", w.start, w.end)],
    );
    expect_status(
        c.rel_size(rel_req(MAIN, w.end, db, a, 7)).await,
        Code::InvalidArgument,
        &["fork 7"],
    );
    expect_status(
        c.rel_size(rel_req(MAIN, w.end, db, 999_999, 0)).await,
        Code::NotFound,
        &["999999", "does not exist"],
    );
    expect_status(
        c.db_size(pb::DbSizeRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: 0,
            spcnode: 1663,
            dbnode: 424242,
        })
        .await,
        Code::NotFound,
        &["database 424242"],
    );
    expect_status(
        c.slru_segment(slru_req(MAIN, w.end, pb::SlruKind::Clog, 0x77))
            .await,
        Code::NotFound,
        &["pg_xact/0077", "[0000]"],
    );
    let mut bad = slru_req(MAIN, w.end, pb::SlruKind::Clog, 0);
    bad.kind = 9;
    expect_status(
        c.slru_segment(bad).await,
        Code::InvalidArgument,
        &["kind 9"],
    );

    // After GC (a 1 s window; the branch is deleted first so it holds nothing back), reads
    // below the cutoff are refused.
    c.delete_timeline(pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: BRANCH.into(),
    })
    .await?;
    let g = c
        .gc(pb::GcRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
        })
        .await?
        .into_inner();
    let cutoff = Lsn(g.timelines[0].cutoff_lsn);
    println!("GC: {:?}", g.timelines[0]);
    assert!(
        cutoff > w.start,
        "the 1 s window should move the cutoff: {cutoff}"
    );
    expect_status(
        c.rel_size(rel_req(MAIN, w.start, db, 1259, 0)).await,
        Code::OutOfRange,
        &["GC cutoff", &cutoff.to_string()],
    );
    expect_status(
        c.slru_segment(slru_req(MAIN, w.start, pb::SlruKind::Clog, 0))
            .await,
        Code::OutOfRange,
        &["GC cutoff"],
    );
    // At and above the cutoff the answers stand.
    assert_eq!(
        rel_size(&mut c, MAIN, w.end, db, a, 0).await?,
        Some(last.sizes["rr_a"].1)
    );
    Ok(())
}

/// RelExists of a dropped table: true before the DROP commits, false after; RelSize after
/// the drop is NOT_FOUND. (Ingest applies the commit record's dropped relations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_table_does_not_exist_after_the_drop() -> Result<()> {
    let opts = InitOptions::default().keep_all_wal().set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    let db = query_i64(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )? as u32;
    pg.psql("CREATE TABLE rr_gone (id int); INSERT INTO rr_gone SELECT generate_series(1, 500);")?;
    let node = query_i64(&pg, "SELECT pg_relation_filenode('rr_gone')")? as u32;
    let before = pg.current_wal_insert_lsn()?;
    pg.psql("DROP TABLE rr_gone;")?;
    let after = pg.current_wal_insert_lsn()?;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    {
        let m = TenantManager::load(&data)?;
        let t = m.create_tenant(Some(TENANT.parse()?), TenantConf::default())?;
        let h = t.import_timeline(Some(MAIN.parse()?), &base, None, vec![])?;
        feed_wal(&h, &pg.wal_dir(), start, end, 64 << 10)?;
        assert!(m.flush_all().is_empty());
    }
    let ps = Pageserver::start_with(&data, &["--gc-interval", "0"])?;
    let mut c = ps.client().await?;
    assert!(rel_exists(&mut c, MAIN, before, db, node).await?);
    assert!(rel_size(&mut c, MAIN, before, db, node, 0).await?.is_some());
    assert!(
        !std::path::Path::new(&pg.data_dir().join(format!("base/{db}/{node}"))).exists(),
        "Postgres removed the file at the checkpoint"
    );
    assert!(
        !rel_exists(&mut c, MAIN, after, db, node).await?,
        "relation {node} still exists in Strata after DROP TABLE committed"
    );
    assert_eq!(rel_size(&mut c, MAIN, after, db, node, 0).await?, None);
    Ok(())
}
