//! The whole WAL path with real processes: Postgres 15 → `compute walproposer` → a
//! `safekeeper` → the `pageserver` binary's walreceiver → layers → a basebackup → a second
//! Postgres started from it, which sees every committed row.
//!
//! Needs the `safekeeper` and `compute` binaries of this workspace built (`cargo build
//! --bins`); they are found in the target directory like the compute tests find theirs.

mod service_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use service_support::{start_from_tar, Pageserver};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::proto::pageserver as pb;
use walproto::Lsn;

const TENANT: &str = "abcdefabcdefabcdefabcdefabcdef01";
const TIMELINE: &str = "abcdefabcdefabcdefabcdefabcdef02";

/// The newest `<target>/{debug,release}/<name>`.
fn workspace_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .with_context(|| {
            format!(
                "no {name} binary in {}: run `cargo build --bins` first",
                target.display()
            )
        })
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log(dir: &Path, name: &str) -> Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(dir.join(name))?))
}

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
    let opts = InitOptions::default()
        .set("synchronous_standby_names", "strata")
        .set("synchronous_commit", "on")
        .set("wal_keep_size", "1GB")
        .set("max_wal_senders", "10")
        .set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    pg.start()?;

    // One safekeeper serving the replication protocol.
    let mut sk = Command::new(workspace_bin("safekeeper")?)
        .arg("--datadir")
        .arg(scratch.path().join("sk"))
        .args([
            "--listen-grpc",
            "127.0.0.1:0",
            "--id",
            "1",
            "--listen-pg",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(log(scratch.path(), "sk.log")?)
        .spawn()?;
    let mut lines = BufReader::new(sk.stdout.take().context("stdout")?).lines();
    let grpc = lines.next().context("safekeeper printed nothing")??;
    let repl = lines.next().context("safekeeper printed one line")??;
    let _sk = Proc(sk);
    let last_word = |l: &str| l.rsplit(' ').next().unwrap_or_default().to_string();
    let (sk_grpc, sk_pg) = (last_word(&grpc), last_word(&repl));

    // The walproposer streams Postgres's WAL to it (commits wait for it).
    let _wp = Proc(
        Command::new(workspace_bin("compute")?)
            .args(["walproposer", "--pg"])
            .arg(format!(
                "host={} port={} user=postgres",
                pg.socket_dir().display(),
                pg.port()
            ))
            .args([
                "--safekeepers",
                &sk_grpc,
                "--tenant",
                TENANT,
                "--timeline",
                TIMELINE,
            ])
            .stdout(Stdio::null())
            .stderr(log(scratch.path(), "wp.log")?)
            .spawn()?,
    );

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
