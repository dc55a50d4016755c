//! Retention and GC against real Postgres 15 WAL, through the tenant manager.
//!
//! One Postgres writes a table and updates it over and over (phase A), waits 3 s, and updates
//! it again (phase B). The tenant keeps a 2 s PITR window, so its cutoff falls between the
//! phases. The pageserver ingests the WAL with 1 MiB layers (many layers, automatic
//! compaction), then GC runs under a branch point below the window, a lease below the window,
//! and finally only the window (with a branch and a lease inside it). Every time: every
//! relation page at LSNs at or above the cutoff reads the same before and after; reads,
//! branches and leases below the cutoff are refused with an error naming it; the cutoff and
//! the leases survive a reload; and GC stopped at each crash point (failpoints) leaves a
//! timeline that reloads and reads the same.

mod service_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use layer_format::Key;
use pageserver::tenant::{BranchTarget, TenantConf, TenantError, TenantManager, TimelineHandle};
use pageserver::timeline::FailPoint;
use service_support::{all_pages, differing, feed_wal};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::ids::{TenantId, TimelineId};
use walproto::Lsn;

type Pages = Vec<(Key, Option<Vec<u8>>)>;

struct History {
    _pg: PgCluster,
    base: std::path::PathBuf,
    wal: std::path::PathBuf,
    start: Lsn,
    /// Inside phase A, early (a branch point below the window).
    early: Lsn,
    /// Later in phase A (a lease below the window).
    mid_a: Lsn,
    /// End of phase A / start of phase B.
    a_end: Lsn,
    b_start: Lsn,
    /// Inside phase B (a branch and a lease inside the window).
    b_mid: Lsn,
    end: Lsn,
}

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

fn make_history() -> Result<History> {
    let opts = InitOptions::default()
        .keep_all_wal()
        .set("fsync", "off")
        .set("autovacuum", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'base' FROM generate_series(1, 20000) g;",
    )?;
    let early = pg.current_wal_insert_lsn()?;
    updates(&pg, 6, "a")?;
    let mid_a = pg.current_wal_insert_lsn()?;
    updates(&pg, 6, "b")?;
    let a_end = pg.current_wal_insert_lsn()?;
    std::thread::sleep(Duration::from_secs(3));
    let b_start = pg.current_wal_insert_lsn()?;
    updates(&pg, 2, "c")?;
    let b_mid = pg.current_wal_insert_lsn()?;
    updates(&pg, 2, "d")?;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    Ok(History {
        wal: pg.wal_dir(),
        _pg: pg,
        base,
        start,
        early,
        mid_a,
        a_end,
        b_start,
        b_mid,
        end,
    })
}

fn expect_err<T>(r: Result<T, TenantError>, what: &str, words: &[&str]) {
    let msg = match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e.to_string(),
    };
    for w in words {
        assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
    }
    println!("{what}: {msg}");
}

fn pages(h: &TimelineHandle, lsn: Lsn) -> Result<Pages> {
    h.read(|t| all_pages(t, lsn))
}

fn layer_bytes(dir: &Path) -> Result<(usize, u64)> {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".delta") || name.ends_with(".image") {
            n += 1;
            bytes += e.metadata()?.len();
        }
    }
    Ok((n, bytes))
}

/// The pages at each LSN read the same as `before`.
fn same_pages(h: &TimelineHandle, before: &[(Lsn, Pages)], what: &str) -> Result<()> {
    for (lsn, want) in before {
        let got = pages(h, *lsn)?;
        ensure!(got.len() > 100, "{what}: only {} pages at {lsn}", got.len());
        let d = differing(want, &got);
        ensure!(
            d.is_empty(),
            "{what}: {} pages at {lsn} differ: {:?}",
            d.len(),
            &d[..d.len().min(5)]
        );
    }
    Ok(())
}

#[test]
fn gc_on_real_wal() -> Result<()> {
    let h = make_history()?;
    println!(
        "start {} early {} mid_a {} a_end {} b_start {} b_mid {} end {}",
        h.start, h.early, h.mid_a, h.a_end, h.b_start, h.b_mid, h.end
    );
    let data = tempfile::tempdir()?;
    let conf = TenantConf {
        pitr_interval: "2s".into(),
        freeze_mib: 1,
        ..TenantConf::default()
    };
    let (tid, pid) = {
        let m = TenantManager::load(data.path())?;
        let tenant = m.create_tenant(None, conf)?;
        let parent = tenant.import_timeline(None, &h.base, None, vec![])?;
        let n = feed_wal(&parent, &h.wal, h.start, h.end, 256 << 10)?;
        parent.flush()?;
        println!("ingested {n} records; {:?}", parent.status());
        (tenant.id(), parent.timeline_id())
    };
    let m = TenantManager::load(data.path())?;
    let tenant = m.tenant(tid)?;
    let parent = tenant.timeline(pid)?;
    let dir = parent.dir().to_path_buf();
    assert_eq!(parent.status().gc_cutoff_lsn, h.start);

    // The PITR window alone would cut between the phases.
    let parts = tenant.gc_cutoff(&parent)?;
    println!("cutoff parts with no branches or leases: {parts:?}");
    assert!(
        h.a_end <= parts.pitr_lsn && parts.pitr_lsn <= h.b_start,
        "the 2 s window should start between the phases: {}",
        parts.pitr_lsn
    );
    let pitr_lsn = parts.pitr_lsn;

    let lsns = [h.early, h.mid_a, h.a_end, pitr_lsn, h.b_mid, h.end];
    let before: Vec<(Lsn, Pages)> = lsns
        .iter()
        .map(|&l| Ok((l, pages(&parent, l)?)))
        .collect::<Result<_>>()?;
    let (n0, b0) = layer_bytes(&dir)?;
    println!("before GC: {n0} layer files, {b0} bytes");

    // 1. A branch below the window holds the cutoff at its branch point.
    let old_branch = tenant.create_branch(pid, None, &BranchTarget::Lsn(h.early), vec![])?;
    let ob_pages = pages(&old_branch, h.early)?;
    let r = tenant.gc(Some(pid))?;
    println!("GC with a branch at {}: {:?}", h.early, r[0]);
    assert_eq!(r[0].parts.branch_points, vec![h.early]);
    assert_eq!(r[0].report.cutoff_lsn, h.early);
    assert_eq!(parent.status().gc_cutoff_lsn, h.early);
    same_pages(&parent, &before, "after GC at the old branch point")?;
    same_pages(&old_branch, &[(h.early, ob_pages)], "the old branch")?;

    // 2. A lease below the window (short) holds it at the lease.
    tenant.delete_timeline(old_branch.timeline_id())?;
    drop(old_branch);
    expect_err(
        parent.create_lease(h.start, Duration::from_secs(60)),
        "a lease below the cutoff",
        &[
            "GC cutoff",
            &h.early.to_string(),
            &format!("{}..=", h.early),
        ],
    );
    expect_err(
        parent.create_lease(h.mid_a, Duration::ZERO),
        "a lease without a TTL",
        &["TTL"],
    );
    parent.create_lease(h.mid_a, Duration::from_secs(2))?;
    let r = tenant.gc(Some(pid))?;
    println!("GC with a lease at {}: {:?}", h.mid_a, r[0]);
    assert_eq!(r[0].parts.leases, vec![h.mid_a]);
    assert_eq!(r[0].report.cutoff_lsn, h.mid_a);
    same_pages(&parent, &before[1..], "after GC at the lease")?;

    // 3. The lease expires; a lease and a branch inside the window do not hold the cutoff.
    std::thread::sleep(Duration::from_millis(2500));
    let new_branch = tenant.create_branch(pid, None, &BranchTarget::Lsn(h.b_mid), vec![])?;
    let nb_pages = pages(&new_branch, h.b_mid)?;
    let expires = parent.create_lease(h.b_mid, Duration::from_secs(3600))?;
    assert!(expires > pageserver::tenant::gc::now_unix_ms());
    let parts = tenant.gc_cutoff(&parent)?;
    assert_eq!(parts.cutoff, pitr_lsn, "{parts:?}");
    assert_eq!(parts.leases, vec![h.b_mid]);

    // A lease is one (LSN, owner): a compute's lease on the same LSN is another one, listed
    // with its owner, renewed in place, and revoked only by naming its owner.
    let owners_at = |lsn: Lsn| {
        let mut o: Vec<String> = parent
            .list_leases()
            .into_iter()
            .filter(|l| l.lsn == lsn)
            .map(|l| l.owner)
            .collect();
        o.sort();
        o
    };
    parent.create_owned_lease(h.b_mid, Duration::from_secs(3600), "compute:c1")?;
    parent.create_owned_lease(h.b_mid, Duration::from_secs(3600), "compute:c1")?;
    assert_eq!(owners_at(h.b_mid), ["", "compute:c1"]);
    expect_err(
        parent.revoke_owned_lease(h.b_mid, "compute:c2"),
        "another owner's revoke",
        &["no lease of", "compute:c2"],
    );
    expect_err(
        parent.create_owned_lease(h.b_mid, Duration::from_secs(60), "bad\nowner"),
        "an owner with a newline",
        &["owner"],
    );
    parent.revoke_owned_lease(h.b_mid, "compute:c1")?;
    assert_eq!(owners_at(h.b_mid), [""]);

    // GC stopped after writing its images (before the metadata lists them), then a
    // reload: the unlisted images are removed, the cutoff is unchanged, pages read the same.
    let cur = parent.status().gc_cutoff_lsn;
    let e = parent.with_ingest(|w| w.timeline_mut().gc_with(pitr_lsn, FailPoint::AfterNewFiles));
    assert!(e.is_err(), "the failpoint stops GC");
    drop((parent, new_branch, tenant, m));
    {
        let m = TenantManager::load(data.path())?;
        let p = m.timeline(tid, pid)?;
        assert_eq!(p.status().gc_cutoff_lsn, cur);
        same_pages(&p, &before[1..], "reloaded after AfterNewFiles")?;
        let listed = p.read(|t| t.layer_descs().len());
        assert_eq!(layer_bytes(&dir)?.0, listed, "unlisted layer files remain");
    }
    after_crash(&data, tid, pid, &h, &before, pitr_lsn, &nb_pages, n0, b0)
}

/// The rest of the test, on freshly loaded managers.
#[allow(clippy::too_many_arguments)]
fn after_crash(
    data: &tempfile::TempDir,
    tid: TenantId,
    pid: TimelineId,
    h: &History,
    before: &[(Lsn, Pages)],
    pitr_lsn: Lsn,
    nb_pages: &Pages,
    n0: usize,
    b0: u64,
) -> Result<()> {
    // The second crash point: metadata stored, old files not yet deleted.
    {
        let m = TenantManager::load(data.path())?;
        let p = m.timeline(tid, pid)?;
        let e = p.with_ingest(|w| w.timeline_mut().gc_with(pitr_lsn, FailPoint::AfterMetadata));
        assert!(e.is_err(), "the failpoint stops GC");
    }
    let m = TenantManager::load(data.path())?;
    let tenant = m.tenant(tid)?;
    let parent = tenant.timeline(pid)?;
    let dir = parent.dir().to_path_buf();
    assert_eq!(parent.status().gc_cutoff_lsn, pitr_lsn);
    let listed = parent.read(|t| t.layer_descs().len());
    assert_eq!(layer_bytes(&dir)?.0, listed, "unlisted layer files remain");
    same_pages(&parent, &before[3..], "reloaded after AfterMetadata")?;

    // The lease survived the reloads; a full GC now cuts at the window.
    assert_eq!(parent.active_leases(), vec![h.b_mid]);
    let r = tenant.gc(None)?;
    for g in &r {
        println!("GC of {}: {:?}", g.timeline_id, g.report);
    }
    let pr = r.iter().find(|g| g.timeline_id == pid).expect("the parent");
    assert_eq!(pr.report.cutoff_lsn, pitr_lsn);
    same_pages(&parent, &before[3..], "after GC at the window")?;
    let child = tenant
        .timelines()
        .into_iter()
        .find(|t| t.timeline_id() != pid)
        .expect("the branch");
    same_pages(
        &child,
        &[(h.b_mid, nb_pages.clone())],
        "the branch inside the window",
    )?;
    let (n1, b1) = layer_bytes(&dir)?;
    println!("after GC: {n1} layer files, {b1} bytes (before: {n0} files, {b0} bytes)");
    let removed: usize = r.iter().map(|g| g.report.layers_removed).sum();
    let removed_bytes: u64 = r.iter().map(|g| g.report.bytes_removed).sum();
    // Earlier runs (the failpoint runs) removed some too; over all, history went away.
    assert!(n1 < n0, "GC removed no layer files: {n0} -> {n1}");
    assert!(b1 < b0, "GC freed no bytes: {b0} -> {b1}");
    println!("this run removed {removed} layers, {removed_bytes} bytes");

    // Below the cutoff: reads, branches and leases are refused, naming it.
    let key = before[0].1[0].0;
    let msg = parent
        .read(|t| t.get_page(key, h.early))
        .expect_err("a read below the cutoff")
        .to_string();
    assert!(
        msg.contains("GC cutoff") && msg.contains(&pitr_lsn.to_string()),
        "{msg}"
    );
    println!("read below the cutoff: {msg}");
    let range = format!("{pitr_lsn}..={}", h.end);
    expect_err(
        tenant.create_branch(pid, None, &BranchTarget::Lsn(h.mid_a), vec![]),
        "a branch below the cutoff",
        &["GC cutoff", &range],
    );
    expect_err(
        parent.create_lease(h.mid_a, Duration::from_secs(60)),
        "a lease below the cutoff",
        &["GC cutoff", &range],
    );
    // A second GC with nothing new to cut removes nothing.
    let r2 = tenant.gc(Some(pid))?;
    assert_eq!(r2[0].report.layers_removed, 0, "{:?}", r2[0].report);
    assert_eq!(r2[0].report.image_layers_written, 0, "{:?}", r2[0].report);

    // And after a reload everything holds.
    drop((parent, child, tenant, m));
    let m = TenantManager::load(data.path())?;
    let p = m.timeline(tid, pid)?;
    assert_eq!(p.status().gc_cutoff_lsn, pitr_lsn);
    same_pages(&p, &before[3..], "reloaded after GC")?;
    Ok(())
}
