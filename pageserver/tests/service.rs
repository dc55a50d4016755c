//! The real `pageserver` binary over gRPC: tenants, import of an initdb'd data directory,
//! branches at a restore point, a time and the tip, GetPage on parent and branches, errors
//! that say what is possible, SIGKILL and restart, SIGTERM, and bad command lines.
//!
//! WAL of a small Postgres workload is ingested into the pageserver's data directory
//! in-process (through the timeline handle's WAL stream, as the walreceiver feeds it) while
//! the binary is down; the binary then serves what was ingested.

mod service_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use pageserver::tenant::TenantManager;
use service_support::{feed_wal, query_i64, query_lsn, start_from_tar, Pageserver};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use tonic::transport::Channel;
use tonic::Code;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::Lsn;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const PARENT: &str = "11111111111111111111111111111111";
const AT_RP: &str = "22222222222222222222222222222222";
const AT_TIME: &str = "33333333333333333333333333333333";
const AT_TIP: &str = "44444444444444444444444444444444";

/// What the Postgres side produced.
struct Workload {
    pg: PgCluster,
    base: PathBuf,
    start: Lsn,
    end: Lsn,
    restore_point: Lsn,
    commit_time: i64,
    before_commit: Lsn,
    after_commit: Lsn,
    db: u32,
    rel: u32,
    blocks: u32,
}

fn workload() -> Result<Workload> {
    let opts = InitOptions::default()
        .keep_all_wal()
        .set("fsync", "off")
        .set("track_commit_timestamp", "on");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
    )?;
    let restore_point = query_lsn(&pg, "SELECT pg_create_restore_point('rp1')")?;
    let before_commit = pg.current_wal_insert_lsn()?;
    pg.psql("UPDATE t SET v = 'later' WHERE id <= 100;")?;
    let after_commit = pg.current_wal_insert_lsn()?;
    let commit_time = query_i64(
        &pg,
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint \
         FROM t WHERE id = 1",
    )?;
    let db = query_i64(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )? as u32;
    let rel = query_i64(&pg, "SELECT pg_relation_filenode('t')")? as u32;
    let blocks = query_i64(&pg, "SELECT pg_relation_size('t') / 8192")? as u32;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    Ok(Workload {
        pg,
        base,
        start,
        end,
        restore_point,
        commit_time,
        before_commit,
        after_commit,
        db,
        rel,
        blocks,
    })
}

fn tl(timeline: &str) -> pb::TimelineRequest {
    pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: timeline.into(),
    }
}

fn page_req(timeline: &str, lsn: Lsn, db: u32, rel: u32, blkno: u32) -> pb::GetPageRequest {
    pb::GetPageRequest {
        tenant_id: TENANT.into(),
        timeline_id: timeline.into(),
        lsn: lsn.0,
        target: Some(pb::get_page_request::Target::RelBlock(pb::RelBlock {
            spc: 1663,
            db,
            rel,
            fork: 0,
            blkno,
        })),
    }
}

/// The status of a failed call, checked for its code and words.
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

async fn page(
    c: &mut PageserverClient<Channel>,
    r: pb::GetPageRequest,
) -> Result<pb::GetPageResponse> {
    Ok(c.get_page(r).await?.into_inner())
}

async fn pages(
    c: &mut PageserverClient<Channel>,
    timeline: &str,
    lsn: Lsn,
    w: &Workload,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::new();
    for b in 0..w.blocks {
        let p = page(c, page_req(timeline, lsn, w.db, w.rel, b)).await?;
        out.push(p.exists.then_some(p.page));
    }
    // The table's first blocks exist at every LSN the test reads (later ones may not yet).
    assert!(
        out[..3].iter().all(|p| p.is_some()),
        "t missing on {timeline} at {lsn}"
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pageserver_binary() -> Result<()> {
    let w = workload()?;
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    let mut ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;

    // Tenants.
    let t = c
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
            config_toml: "freeze_mib = 4\npitr_interval = \"1d\"\n".into(),
        })
        .await?
        .into_inner();
    assert!(
        t.config_toml.contains("freeze_mib = 4"),
        "{}",
        t.config_toml
    );
    expect_status(
        c.create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
            config_toml: String::new(),
        })
        .await,
        Code::AlreadyExists,
        &[TENANT],
    );
    expect_status(
        c.create_tenant(pb::CreateTenantRequest {
            tenant_id: String::new(),
            config_toml: "freeze = 1".into(),
        })
        .await,
        Code::InvalidArgument,
        &["unknown field"],
    );
    let list = c
        .list_tenants(pb::ListTenantsRequest {})
        .await?
        .into_inner();
    assert_eq!(list.tenants.len(), 1);

    // Import.
    let import = |timeline: &str, datadir: &Path, tenant: &str| pb::ImportTimelineRequest {
        tenant_id: tenant.into(),
        timeline_id: timeline.into(),
        datadir: datadir.display().to_string(),
        lsn: 0,
        safekeepers: vec![],
    };
    let info = c
        .import_timeline(import(PARENT, &w.base, TENANT))
        .await?
        .into_inner();
    assert_eq!(Lsn(info.start_lsn), w.start);
    assert!(info.logical_size > 1 << 20, "{info:?}");
    expect_status(
        c.import_timeline(import(AT_RP, &scratch.path().join("nowhere"), TENANT))
            .await,
        Code::InvalidArgument,
        &["nowhere"],
    );
    expect_status(
        c.import_timeline(import(AT_RP, &w.base, "ffffffffffffffffffffffffffffffff"))
            .await,
        Code::NotFound,
        &["no tenant"],
    );
    // An imported page is the data file's block.
    let file = std::fs::read(w.base.join(format!("base/{}/1259", w.db)))?;
    let p = page(&mut c, page_req(PARENT, Lsn(0), w.db, 1259, 0)).await?;
    assert!(p.exists);
    assert_eq!(&p.page[..], &file[..8192]);
    assert!(
        !page(&mut c, page_req(PARENT, Lsn(0), w.db, 1259, 1_000_000))
            .await?
            .exists
    );
    expect_status(
        c.lsn_for_timestamp(pb::LsnForTimestampRequest {
            tenant_id: TENANT.into(),
            timeline_id: PARENT.into(),
            timestamp_micros: w.commit_time,
            inclusive: true,
        })
        .await,
        Code::OutOfRange,
        &["no commits yet"],
    );

    // Kill -9, ingest the workload's WAL into the data directory, restart.
    ps.kill9()?;
    {
        let m = TenantManager::load(&data)?;
        let h = m.timeline(TENANT.parse()?, PARENT.parse()?)?;
        feed_wal(&h, &w.pg.wal_dir(), w.start, w.end, 64 << 10)?;
        assert!(m.flush_all().is_empty());
    }
    let mut ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;
    let st = c.timeline_status(tl(PARENT)).await?.into_inner();
    assert_eq!(
        (Lsn(st.last_record_end), Lsn(st.disk_consistent_lsn)),
        (w.end, w.end)
    );

    // Restore points and times.
    let rps = c
        .list_restore_points(tl(PARENT))
        .await?
        .into_inner()
        .restore_points;
    assert_eq!(rps.len(), 1);
    assert_eq!(
        (rps[0].name.as_str(), Lsn(rps[0].lsn)),
        ("rp1", w.restore_point)
    );
    let at_time = c
        .lsn_for_timestamp(pb::LsnForTimestampRequest {
            tenant_id: TENANT.into(),
            timeline_id: PARENT.into(),
            timestamp_micros: w.commit_time,
            inclusive: true,
        })
        .await?
        .into_inner()
        .lsn;
    assert!(w.before_commit.0 < at_time && at_time <= w.after_commit.0);

    // Branches.
    use pb::create_branch_request::Target;
    let branch = |id: &str, target: Option<Target>, sks: Vec<String>| pb::CreateBranchRequest {
        tenant_id: TENANT.into(),
        parent_timeline_id: PARENT.into(),
        timeline_id: id.into(),
        target,
        inclusive: true,
        safekeepers: sks,
    };
    let b1 = c
        .create_branch(branch(
            AT_RP,
            Some(Target::RestorePoint("rp1".into())),
            vec![],
        ))
        .await?
        .into_inner();
    assert_eq!(
        (Lsn(b1.start_lsn), b1.ancestor_timeline_id.as_str()),
        (w.restore_point, PARENT)
    );
    let b2 = c
        .create_branch(branch(
            AT_TIME,
            Some(Target::TimestampMicros(w.commit_time)),
            vec![],
        ))
        .await?
        .into_inner();
    assert_eq!(b2.start_lsn, at_time);
    // A safekeeper nobody listens on: the walreceiver keeps trying, the branch works.
    let b3 = c
        .create_branch(branch(AT_TIP, None, vec!["127.0.0.1:1".into()]))
        .await?
        .into_inner();
    assert_eq!(Lsn(b3.start_lsn), w.end);
    assert_eq!(b3.safekeepers, vec!["127.0.0.1:1".to_string()]);
    expect_status(
        c.create_branch(branch("", Some(Target::Lsn(w.end.0 + 8)), vec![]))
            .await,
        Code::OutOfRange,
        &["beyond", &format!("{}..={}", w.start, w.end)],
    );
    expect_status(
        c.create_branch(branch("", Some(Target::RestorePoint("rp2".into())), vec![]))
            .await,
        Code::NotFound,
        &["rp2", "rp1"],
    );
    expect_status(
        c.create_branch(branch(AT_RP, None, vec![])).await,
        Code::AlreadyExists,
        &[AT_RP],
    );

    // GetPage: a branch reads its parent's pages as of the branch point.
    let parent_at_rp = pages(&mut c, PARENT, w.restore_point, &w).await?;
    assert_eq!(
        pages(&mut c, AT_RP, w.restore_point, &w).await?,
        parent_at_rp
    );
    assert_eq!(
        pages(&mut c, AT_TIME, Lsn(at_time), &w).await?,
        pages(&mut c, PARENT, Lsn(at_time), &w).await?
    );
    let parent_tip = pages(&mut c, PARENT, w.end, &w).await?;
    assert_eq!(pages(&mut c, AT_TIP, Lsn(0), &w).await?, parent_tip);
    assert_ne!(parent_tip, parent_at_rp, "the UPDATE changed nothing");
    expect_status(
        c.get_page(page_req(PARENT, Lsn(w.end.0 + 8), w.db, w.rel, 0))
            .await,
        Code::OutOfRange,
        &["beyond", &format!("{}..={}", w.start, w.end)],
    );
    expect_status(
        c.get_page(page_req(AT_RP, Lsn(w.restore_point.0 - 8), w.db, w.rel, 0))
            .await,
        Code::OutOfRange,
        &["below", PARENT],
    );
    expect_status(
        c.get_page(pb::GetPageRequest {
            tenant_id: TENANT.into(),
            timeline_id: PARENT.into(),
            lsn: 0,
            target: Some(pb::get_page_request::Target::Key(vec![1, 2, 3])),
        })
        .await,
        Code::InvalidArgument,
        &["18 bytes"],
    );
    // Forks are 0..=3 (main, fsm, vm, init); a key for fork 7 would name no Postgres file.
    let mut bad_fork = page_req(PARENT, Lsn(0), w.db, w.rel, 0);
    if let Some(pb::get_page_request::Target::RelBlock(b)) = bad_fork.target.as_mut() {
        b.fork = 7;
    }
    expect_status(
        c.get_page(bad_fork).await,
        Code::InvalidArgument,
        &["fork 7", "0 main"],
    );
    expect_status(
        c.timeline_status(tl("nope")).await,
        Code::InvalidArgument,
        &["timeline id"],
    );
    expect_status(
        c.timeline_status(tl("55555555555555555555555555555555"))
            .await,
        Code::NotFound,
        &["no timeline"],
    );
    expect_status(
        c.set_safekeepers(pb::SetSafekeepersRequest {
            tenant_id: TENANT.into(),
            timeline_id: AT_TIP.into(),
            safekeepers: vec!["nohost".into()],
        })
        .await,
        Code::InvalidArgument,
        &["host:port"],
    );

    // The tree, compaction, basebackup, deletion.
    let tree = c
        .list_timelines(pb::ListTimelinesRequest {
            tenant_id: TENANT.into(),
        })
        .await?
        .into_inner()
        .timelines;
    let ids: Vec<&str> = tree.iter().map(|t| t.timeline_id.as_str()).collect();
    assert_eq!(ids, [PARENT, AT_RP, AT_TIME, AT_TIP]);
    let summary = c.compact(tl(PARENT)).await?.into_inner().summary;
    println!("compact: {summary}");
    let mut stream = c
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT.into(),
            timeline_id: AT_RP.into(),
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
    println!("basebackup of the branch at its start: {} bytes", tar.len());
    assert!(tar.len() > 1 << 20 && tar.len() % 512 == 0);
    assert!(tar.windows(17).any(|x| x == b"global/pg_control"));
    // A vanilla Postgres started from it sees the table as of the restore point.
    start_from_tar(&w.pg, &tar)?;
    let rows =
        w.pg.psql("SELECT count(*), count(*) FILTER (WHERE v = 'later') FROM t")?;
    assert_eq!(
        rows.trim(),
        "3000|0",
        "the branch at rp1 shows later changes"
    );
    w.pg.stop(StopMode::Fast)?;
    expect_status(
        c.delete_timeline(tl(PARENT)).await,
        Code::FailedPrecondition,
        &["branches"],
    );
    c.delete_timeline(tl(AT_TIME)).await?;

    // SIGKILL and restart (now with remote storage): the same timelines, the same pages.
    let before = c.timeline_status(tl(AT_RP)).await?.into_inner();
    ps.kill9()?;
    let remote = scratch.path().join("remote");
    let mut ps = Pageserver::start_with(&data, &["--remote-storage", remote.to_str().unwrap()])?;
    let mut c = ps.client().await?;
    let tree = c
        .list_timelines(pb::ListTimelinesRequest {
            tenant_id: TENANT.into(),
        })
        .await?
        .into_inner()
        .timelines;
    let ids: Vec<&str> = tree.iter().map(|t| t.timeline_id.as_str()).collect();
    assert_eq!(ids, [PARENT, AT_RP, AT_TIP]);
    let after = c.timeline_status(tl(AT_RP)).await?.into_inner();
    assert_eq!(
        (
            after.start_lsn,
            after.last_record_end,
            &after.ancestor_timeline_id
        ),
        (
            before.start_lsn,
            before.last_record_end,
            &before.ancestor_timeline_id
        )
    );
    assert_eq!(
        pages(&mut c, AT_RP, w.restore_point, &w).await?,
        parent_at_rp
    );

    // GetPage over gRPC, one request at a time on one connection (printed, not asserted).
    let t0 = std::time::Instant::now();
    let n = 2000;
    for i in 0..n {
        let b = i % w.blocks;
        page(&mut c, page_req(AT_RP, w.restore_point, w.db, w.rel, b)).await?;
    }
    println!(
        "GetPage through a branch over gRPC: {n} sequential requests, {:?} each",
        t0.elapsed() / n
    );

    // The uploader publishes what the object store holds.
    let t0 = std::time::Instant::now();
    loop {
        let st = c.timeline_status(tl(PARENT)).await?.into_inner();
        if st.remote_consistent_lsn != 0 && st.remote_consistent_lsn == st.disk_consistent_lsn {
            break;
        }
        assert!(t0.elapsed().as_secs() < 60, "nothing uploaded: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let manifest = remote.join(format!("t/{TENANT}/{AT_RP}/manifest"));
    let text = std::fs::read_to_string(&manifest)?;
    assert!(text.contains(&format!("ancestor {PARENT}")), "{text}");

    // SIGTERM: a clean stop.
    let st = ps.terminate()?;
    assert!(st.success(), "{st}");
    let log = std::fs::read_to_string(data.with_extension("log"))?;
    assert!(log.contains("pageserver stopped"), "{log}");
    Ok(())
}

#[test]
fn bad_command_lines() -> Result<()> {
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_pageserver"))
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, err) = run(&["--listen", "127.0.0.1:0"])?;
    assert!(!ok && err.contains("--data-dir"), "{err}");
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("ps.toml");
    std::fs::write(
        &conf,
        "data_dir = \"/tmp/x\"\nlisten_addr = \"127.0.0.1:0\"\n",
    )?;
    let (ok, err) = run(&["--config", conf.to_str().unwrap()])?;
    assert!(!ok && err.contains("listen_addr"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let data = dir.path().join("d");
    let (ok, err) = run(&["--data-dir", data.to_str().unwrap(), "--listen", &addr])?;
    assert!(
        !ok && err.contains("binding") && err.contains(&addr),
        "{err}"
    );
    // A damaged tenant config is refused at start, naming the file.
    let tenant = data.join("tenants").join(TENANT);
    std::fs::create_dir_all(tenant.join("timelines"))?;
    std::fs::write(tenant.join("tenant.toml"), "freeze_mib = \"lots\"\n")?;
    let (ok, err) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])?;
    assert!(
        !ok && err.contains("tenant.toml") && err.contains("freeze_mib"),
        "{err}"
    );
    Ok(())
}
