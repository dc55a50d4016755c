//! Periodic GC in the real `pageserver` binary (`--gc-interval`).
//!
//! Postgres updates a table over and over (phase A), waits 3 s and updates it again (phase
//! B); the tenant keeps a 2 s PITR window, so its cutoff falls between the phases. The WAL
//! is ingested in-process into 1 MiB layers. The binary then starts with `--gc-interval 1s`
//! and, without any Gc call, the timeline's GC cutoff moves to the window's start and layer
//! files below it disappear (only files wholly below the cutoff; pages at and above it read
//! the same as before). Manual Gc calls meanwhile all succeed (GC of a tenant is serialized
//! by its lock; the periodic round skips a busy tenant). SIGTERM stops it cleanly. With
//! `--gc-interval 0` nothing is collected; a malformed interval is refused at start.

mod service_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use layer_format::LayerDesc;
use pageserver::tenant::{TenantConf, TenantManager};
use service_support::{feed_wal, query_i64, Pageserver};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::proto::pageserver as pb;
use walproto::Lsn;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const TL: &str = "11111111111111111111111111111111";

fn updates(pg: &PgCluster, rounds: usize, tag: &str) -> Result<()> {
    for i in 0..rounds {
        pg.psql(&format!(
            "UPDATE t SET v = '{tag}{i}' || repeat('x', {}) WHERE id % 4 = {};",
            20 + i % 7,
            i % 4
        ))?;
    }
    Ok(())
}

fn layer_files(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.parse::<LayerDesc>().is_ok() {
            out.insert(name);
        }
    }
    Ok(out)
}

fn tl_req() -> pb::TimelineRequest {
    pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TL.into(),
    }
}

fn page_req(lsn: Lsn, db: u32, rel: u32, blkno: u32) -> pb::GetPageRequest {
    pb::GetPageRequest {
        tenant_id: TENANT.into(),
        timeline_id: TL.into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_gc_removes_old_layers() -> Result<()> {
    let opts = InitOptions::default().keep_all_wal().set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'base' FROM generate_series(1, 20000) g;",
    )?;
    updates(&pg, 12, "a")?;
    let a_end = pg.current_wal_insert_lsn()?;
    std::thread::sleep(Duration::from_secs(3));
    let b_start = pg.current_wal_insert_lsn()?;
    updates(&pg, 4, "b")?;
    let db = query_i64(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )? as u32;
    let rel = query_i64(&pg, "SELECT pg_relation_filenode('t')")? as u32;
    let blocks = query_i64(&pg, "SELECT pg_relation_size('t') / 8192")? as u32;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;

    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    let (dir, pitr_lsn) = {
        let m = TenantManager::load(&data)?;
        let conf = TenantConf {
            pitr_interval: "2s".into(),
            freeze_mib: 1,
            ..TenantConf::default()
        };
        let t = m.create_tenant(Some(TENANT.parse()?), conf)?;
        let h = t.import_timeline(Some(TL.parse()?), &base, None, vec![])?;
        let n = feed_wal(&h, &pg.wal_dir(), start, end, 256 << 10)?;
        h.flush()?;
        let parts = t.gc_cutoff(&h)?;
        println!(
            "ingested {n} records; {:?}; cutoff would be {parts:?}",
            h.status()
        );
        assert!(
            a_end <= parts.pitr_lsn && parts.pitr_lsn <= b_start,
            "the 2 s window should start between the phases: {}",
            parts.pitr_lsn
        );
        assert_eq!(h.status().gc_cutoff_lsn, start);
        (h.dir().to_path_buf(), parts.pitr_lsn)
    };
    let before = layer_files(&dir)?;
    let below: BTreeSet<&String> = before
        .iter()
        .filter(|n| {
            n.parse::<LayerDesc>()
                .is_ok_and(|d| d.lsn_range.end <= pitr_lsn)
        })
        .collect();
    println!(
        "{} layer files, {} wholly below the cutoff {pitr_lsn}",
        before.len(),
        below.len()
    );
    ensure!(
        below.len() >= 3,
        "too few layers below the cutoff: {}",
        below.len()
    );

    let mut ps = Pageserver::start_with(&data, &["--gc-interval", "1s"])?;
    let mut c = ps.client().await?;
    let mut want = Vec::new();
    for b in (0..blocks).step_by(13) {
        want.push(
            c.get_page(page_req(end, db, rel, b))
                .await?
                .into_inner()
                .page,
        );
    }
    // No Gc call: the periodic GC moves the cutoff and removes layers.
    let t0 = Instant::now();
    let after = loop {
        let st = c.timeline_status(tl_req()).await?.into_inner();
        let files = layer_files(&dir)?;
        if Lsn(st.gc_cutoff_lsn) == pitr_lsn && files.len() < before.len() {
            println!(
                "after {:?}: cutoff {}, {} layer files",
                t0.elapsed(),
                Lsn(st.gc_cutoff_lsn),
                files.len()
            );
            break files;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "periodic GC did not run within 60 s: cutoff {}, {} layer files",
            Lsn(st.gc_cutoff_lsn),
            files.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let removed: Vec<&String> = before.difference(&after).collect();
    println!("removed {} layer files: {removed:?}", removed.len());
    for r in &removed {
        assert!(
            below.contains(r),
            "{r} was removed but is not below the cutoff {pitr_lsn}"
        );
    }
    // Pages at the end read the same; below the cutoff reads are refused.
    for (i, b) in (0..blocks).step_by(13).enumerate() {
        let got = c
            .get_page(page_req(end, db, rel, b))
            .await?
            .into_inner()
            .page;
        assert_eq!(got, want[i], "block {b} changed after GC");
    }
    let s = c
        .get_page(page_req(start, db, rel, 0))
        .await
        .expect_err("a read below the cutoff");
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");

    // Manual GC while the periodic one keeps running: each call succeeds.
    for _ in 0..5 {
        let g = c
            .gc(pb::GcRequest {
                tenant_id: TENANT.into(),
                timeline_id: String::new(),
            })
            .await?
            .into_inner();
        assert_eq!(Lsn(g.timelines[0].cutoff_lsn), pitr_lsn);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let st = ps.terminate()?;
    assert!(st.success(), "pageserver exit: {st}");
    let log = std::fs::read_to_string(data.with_extension("log"))?;
    assert!(log.contains("periodic GC started"), "log:\n{log}");
    assert!(log.contains("periodic GC removed history"), "log:\n{log}");
    assert!(log.contains("periodic GC stopped"), "log:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_interval_flag() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    // 0: off.
    let mut ps = Pageserver::start_with(&data, &["--gc-interval", "0"])?;
    let st = ps.terminate()?;
    assert!(st.success());
    let log = std::fs::read_to_string(data.with_extension("log"))?;
    assert!(!log.contains("periodic GC started"), "log:\n{log}");
    // Malformed: refused, naming the problem.
    for bad in ["10x", "m", "-5s"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pageserver"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", &format!("--gc-interval={bad}")])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: started");
        assert!(err.contains("--gc-interval"), "{bad}: {err}");
        println!("{bad}: {}", err.lines().next().unwrap_or(""));
    }
    Ok(())
}
