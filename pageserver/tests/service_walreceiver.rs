//! The whole WAL path with real processes: Postgres 15 → `compute walproposer` → a
//! `safekeeper` → the `pageserver` binary's walreceiver → layers → a basebackup → a second
//! Postgres started from it, which sees every committed row.
//!
//! Needs the `safekeeper` and `compute` binaries of this workspace built (`cargo build
//! --bins`); `strata_tests::procs` finds them in the target directory.

mod service_support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use service_support::{start_from_tar, Pageserver};
use strata_tests::procs::{walproposer_pg_options, Safekeeper, Walproposer};
use strata_tests::{PgCluster, StopMode};
use walproto::proto::pageserver as pb;
use walproto::Lsn;

const TENANT: &str = "abcdefabcdefabcdefabcdefabcdef01";
const TIMELINE: &str = "abcdefabcdefabcdefabcdefabcdef02";

/// Waits until the timeline has ingested WAL up to `target`.
async fn catch_up(
    c: &mut walproto::proto::pageserver::pageserver_client::PageserverClient<
        tonic::transport::Channel,
    >,
    req: &pb::TimelineRequest,
    target: Lsn,
    scratch: &Path,
) -> Result<pb::TimelineInfo> {
    let t0 = Instant::now();
    loop {
        let st = c.timeline_status(req.clone()).await?.into_inner();
        if Lsn(st.last_record_end) >= target {
            println!("reached {target} in {:?}", t0.elapsed());
            return Ok(st);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the pageserver reached only {} of {target} ({st:?}); logs in {}",
                Lsn(st.last_record_end),
                scratch.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_flows_from_postgres_through_a_safekeeper_into_the_pageserver() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let opts = walproposer_pg_options().set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    pg.start()?;

    // One safekeeper serving the replication protocol.
    let sk = Safekeeper::started_with_replication(scratch.path(), 1)?;
    let (sk_grpc, sk_pg) = (sk.addr(), sk.pg_addr());

    // The walproposer streams Postgres's WAL to it (commits wait for it).
    let _wp = Walproposer::start_for(
        &pg,
        &[sk_grpc],
        (TENANT, TIMELINE),
        &scratch.path().join("wp.log"),
        &[],
    )?;

    // The pageserver: the initdb base, streaming from the safekeeper.
    let data = scratch.path().join("ps");
    let ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;
    c.create_tenant(pb::CreateTenantRequest {
        tenant_id: TENANT.into(),
        config_toml: String::new(),
    })
    .await?;
    c.import_timeline(pb::ImportTimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        datadir: base.display().to_string(),
        lsn: 0,
        safekeepers: vec![sk_pg.clone()],
    })
    .await?;

    // A workload whose commits the safekeeper acknowledged.
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         UPDATE t SET v = 'changed' WHERE id % 10 = 0;
         DELETE FROM t WHERE id % 7 = 0;",
    )?;
    let target: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.trim().parse()?;

    // The pageserver catches up through its walreceiver.
    let req = pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
    };
    let st = catch_up(&mut c, &req, target, scratch.path()).await?;
    println!("caught up: {st:?}");

    // SIGKILL mid-stream, more commits while it is down, restart: it resumes from its durable
    // state and streams again.
    drop(c);
    let mut ps = ps;
    ps.kill9()?;
    pg.psql("INSERT INTO t SELECT g, 'while down' FROM generate_series(30001, 35000) g;")?;
    let expect = pg.psql("SELECT count(*), count(*) FILTER (WHERE v = 'changed') FROM t")?;
    let target: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.trim().parse()?;
    let ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;
    let st = catch_up(&mut c, &req, target, scratch.path()).await?;
    println!("caught up again after kill -9: {st:?}");

    // A basebackup of the tip, started as a new Postgres, has every committed row.
    let mut stream = c
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            lsn: 0,
            read_only: false,
            prev_lsn: 0,
            without_relation_files: false,
        })
        .await?
        .into_inner();
    let mut tar = Vec::new();
    while let Some(chunk) = stream.message().await? {
        tar.extend_from_slice(&chunk.data);
    }
    pg.stop(StopMode::Immediate)?;
    start_from_tar(&pg, &tar)?;
    let got = pg.psql("SELECT count(*), count(*) FILTER (WHERE v = 'changed') FROM t")?;
    assert_eq!(got, expect, "the basebackup's Postgres sees other rows");
    println!(
        "rows in a Postgres started from the pageserver: {}",
        got.trim()
    );
    pg.stop(StopMode::Fast)?;
    Ok(())
}
