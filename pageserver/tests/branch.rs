//! Branches against real Postgres 15 WAL, through the tenant manager.
//!
//! One Postgres writes a table, two commits with known times and a restore point, and stops
//! cleanly (the fork point F, the end of its shutdown checkpoint). Its data directory is
//! copied there. The original then continues (the parent's history); the copy is started
//! and writes something else (the child's history, a real divergent WAL from F on).
//!
//! The pageserver imports the initdb base, ingests the parent's WAL through the timeline
//! handle's WAL stream, branches at F, at the restore point and at a commit time, and then:
//! the branch at F reads exactly the parent's pages at F; after ingesting the child's WAL
//! it reads exactly what a timeline that ingested the child's whole WAL in a straight line
//! reads, before and after compaction and after a reload, and matches Postgres's own files;
//! the parent is untouched; bad branch points are refused with errors that say why.

mod service_support;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use layer_format::KeyKind;
use pageserver::redo::datadir::{compare_page, DataDirReport};
use pageserver::redo::store::PageStore;
use pageserver::tenant::branch::{lsn_for_time, restore_points};
use pageserver::tenant::{BranchTarget, TenantConf, TenantError, TenantManager};
use pageserver::timeline::boundary::Boundary;
use service_support::{all_pages, differing, feed_wal, query_i64, query_lsn};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::Lsn;

/// What the Postgres side produced.
struct History {
    pg: PgCluster,
    base: std::path::PathBuf,
    parent_wal: std::path::PathBuf,
    start: Lsn,
    /// The fork point: end of the shutdown checkpoint both histories share.
    fork: Lsn,
    parent_end: Lsn,
    child_end: Lsn,
    restore_point: Lsn,
    before_c1: Lsn,
    after_c1: Lsn,
    after_c2: Lsn,
    c1_time: i64,
    c2_time: i64,
}

fn cp(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(st.success(), "cp -a {} {}", from.display(), to.display());
    Ok(())
}

fn commit_time(pg: &PgCluster, id: i32) -> Result<i64> {
    query_i64(
        pg,
        &format!(
            "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint \
             FROM t WHERE id = {id}"
        ),
    )
}

fn make_history() -> Result<History> {
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
         INSERT INTO t SELECT g, 'base' FROM generate_series(1, 20000) g;",
    )?;
    let before_c1 = pg.current_wal_insert_lsn()?;
    pg.psql("INSERT INTO t VALUES (-1, 'c1');")?;
    let after_c1 = pg.current_wal_insert_lsn()?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    pg.psql("INSERT INTO t VALUES (-2, 'c2');")?;
    let after_c2 = pg.current_wal_insert_lsn()?;
    let (c1_time, c2_time) = (commit_time(&pg, -1)?, commit_time(&pg, -2)?);
    let restore_point = query_lsn(&pg, "SELECT pg_create_restore_point('before_fork')")?;
    pg.stop(StopMode::Fast)?;
    let fork = wal_end_after_clean_stop(&pg)?;
    let at_fork = pg.copy_data_dir("at_fork")?;

    // The parent's history.
    pg.start()?;
    pg.psql(
        "UPDATE t SET v = 'parent' WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 7 = 0;
         CREATE TABLE only_parent AS SELECT g FROM generate_series(1, 1000) g;",
    )?;
    pg.stop(StopMode::Fast)?;
    let parent_end = wal_end_after_clean_stop(&pg)?;
    let parent_wal = pg.base_dir().join("parent_wal");
    cp(&pg.wal_dir(), &parent_wal)?;

    // The child's history: the same server restarted from the copy taken at the fork.
    std::fs::remove_dir_all(pg.data_dir())?;
    cp(&at_fork, pg.data_dir())?;
    pg.start()?;
    pg.psql(
        "UPDATE t SET v = repeat('child', 20) WHERE id % 2 = 0;
         CREATE TABLE only_child AS SELECT g, md5(g::text) AS h FROM generate_series(1, 40000) g;
         CREATE INDEX ON only_child (h);
         VACUUM t;",
    )?;
    pg.stop(StopMode::Fast)?;
    let child_end = wal_end_after_clean_stop(&pg)?;
    Ok(History {
        pg,
        base,
        parent_wal,
        start,
        fork,
        parent_end,
        child_end,
        restore_point,
        before_c1,
        after_c1,
        after_c2,
        c1_time,
        c2_time,
    })
}

fn expect_err<T>(r: Result<T, TenantError>, what: &str, words: &[&str]) -> String {
    let msg = match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e.to_string(),
    };
    for w in words {
        assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
    }
    println!("{what}: {msg}");
    msg
}

/// The child's pages (at its tip) against Postgres's data files after the clean stop.
fn compare_with_postgres(
    h: &pageserver::tenant::TimelineHandle,
    pg: &PgCluster,
    lsn: Lsn,
) -> Result<DataDirReport> {
    let disk = PageStore::new(pg.data_dir());
    let mut rep = DataDirReport::default();
    h.read(|t| -> Result<()> {
        let dir = pageserver::ingest::reldir::RelDirectory::load(t, lsn)?;
        for (rel, fork, n) in dir.all_forks() {
            for b in 0..n {
                let key = layer_format::Key::rel_block(rel, fork, b);
                let Some(v) = t.get_page_version(key, lsn)? else {
                    continue;
                };
                let Some(rmid) = v.writer else {
                    rep.skipped += 1;
                    continue;
                };
                assert!(matches!(key.kind(), Some(KeyKind::RelBlock { .. })));
                compare_page(&mut rep, &disk, &(rel, fork, b), &v.page, rmid, false, 5)?;
            }
        }
        Ok(())
    })?;
    Ok(rep)
}

#[test]
fn branches_on_real_wal() -> Result<()> {
    let h = make_history()?;
    println!(
        "start {} fork {} parent end {} child end {} restore point {}",
        h.start, h.fork, h.parent_end, h.child_end, h.restore_point
    );
    ensure!(
        !h.fork.is_page_start(),
        "the fork point {} is a page start; the child's first record would not start there",
        h.fork
    );
    let data = tempfile::tempdir()?;
    let m = TenantManager::load(data.path())?;
    let conf = TenantConf {
        freeze_mib: 1,
        ..TenantConf::default()
    };
    let tenant = m.create_tenant(None, conf)?;
    let parent = tenant.import_timeline(None, &h.base, None, vec![])?;
    assert_eq!(parent.status().start_lsn, h.start);
    let n = feed_wal(&parent, &h.parent_wal, h.start, h.parent_end, 256 << 10)?;
    let ps = parent.status();
    println!("parent: {n} records, {ps:?}");
    assert_eq!(ps.last_record_end, h.parent_end);
    let pid = parent.timeline_id();
    let parent_tip_pages = parent.read(|t| all_pages(t, h.parent_end))?;

    // Branch points that do not exist are refused, saying what is allowed.
    let range = format!("{}..={}", h.start, h.parent_end);
    let lsn = |l: u64| BranchTarget::Lsn(Lsn(l));
    expect_err(
        tenant.create_branch(pid, None, &lsn(h.parent_end.0 + 8), vec![]),
        "beyond the end",
        &["beyond", &range],
    );
    expect_err(
        tenant.create_branch(pid, None, &lsn(h.start.0 - 8), vec![]),
        "below the start",
        &["below", &range],
    );
    // An unaligned LSN inside a record that lies within one page is refused (inside a record
    // that crosses a page it means that record's end, so which LSN is refused depends on the
    // WAL's layout). 4 bytes before the fork is inside the shutdown checkpoint record ending
    // there (114 bytes), and 4 bytes before the restore point inside its record (98 bytes):
    // within one page unless the page started less than a record's length before.
    let unaligned = [h.fork.0, h.restore_point.0]
        .into_iter()
        .find(|end| end % 8192 >= 256)
        .expect("the fork or the restore point lies 256 bytes or more into its WAL page")
        - 4;
    expect_err(
        tenant.create_branch(pid, None, &lsn(unaligned), vec![]),
        "unaligned",
        &["8-byte"],
    );
    let next_page = (h.fork.0 | 8191) + 1;
    // An LSN inside a page header denotes a record boundary, as recovery_target_lsn does:
    // the end of the record that continues onto the page, or the page start if none does.
    let in_header = Lsn(next_page + 8);
    let resolved = parent.read(|t| pageserver::timeline::boundary::resolve(t, in_header))?;
    match resolved {
        Boundary::InsideRecord { start, end, .. } => {
            assert!(start.0 < next_page && end.0 > next_page + 8, "{resolved:?}")
        }
        Boundary::InPageHeader { page, .. } => assert_eq!(page, Lsn(next_page)),
        Boundary::AsGiven(_) => panic!("{in_header} inside a page header taken as a boundary"),
    }
    println!(
        "inside a page header: {}",
        resolved.describe().unwrap_or_default()
    );
    expect_err(
        tenant.create_branch(
            pid,
            None,
            &BranchTarget::RestorePoint("nope".into()),
            vec![],
        ),
        "unknown restore point",
        &["nope", "before_fork"],
    );
    expect_err(
        tenant.create_branch(
            pid,
            None,
            &BranchTarget::Timestamp {
                unix_micros: 0,
                inclusive: true,
            },
            vec![],
        ),
        "a time before the first commit",
        &["first commit is at", "1970-01-01"],
    );
    // A bad id is refused where it enters, before it can name anything.
    expect_err(
        pageserver::tenant::ids::optional_timeline_id("XYZ"),
        "bad id",
        &["32 lowercase hex"],
    );
    expect_err(
        tenant.create_branch(pid, None, &BranchTarget::Tip, vec!["nohost".into()]),
        "bad safekeeper",
        &["host:port"],
    );

    // LSN for a time: inclusive ends with the commit at that time, exclusive before it.
    let name = "parent";
    let incl = parent.read(|t| lsn_for_time(t, name, h.c1_time, true))?;
    let excl = parent.read(|t| lsn_for_time(t, name, h.c1_time, false))?;
    let incl2 = parent.read(|t| lsn_for_time(t, name, h.c2_time, true))?;
    println!(
        "c1 at {}: inclusive {incl}, exclusive {excl}; c2 inclusive {incl2}",
        h.c1_time
    );
    assert!(h.before_c1 < incl && incl <= h.after_c1, "{incl}");
    assert!(excl <= h.before_c1, "{excl}");
    assert!(h.after_c1 < incl2 && incl2 <= h.after_c2, "{incl2}");
    let pts = parent.read(restore_points)?;
    assert_eq!(pts.len(), 1);
    assert_eq!(
        (pts[0].0.as_str(), pts[0].1),
        ("before_fork", h.restore_point)
    );

    // Branches at the fork point, the restore point and a commit time.
    let child = tenant.create_branch(pid, None, &lsn(h.fork.0), vec![])?;
    let rp_branch = tenant.create_branch(
        pid,
        None,
        &BranchTarget::RestorePoint("before_fork".into()),
        vec![],
    )?;
    let ts_branch = tenant.create_branch(
        pid,
        None,
        &BranchTarget::Timestamp {
            unix_micros: h.c1_time,
            inclusive: true,
        },
        vec![],
    )?;
    assert_eq!(rp_branch.status().start_lsn, h.restore_point);
    assert_eq!(ts_branch.status().start_lsn, incl);
    let cs = child.status();
    assert_eq!(cs.ancestor, Some((pid.to_string(), h.fork)));
    assert_eq!((cs.start_lsn, cs.last_record_end), (h.fork, h.fork));
    assert_eq!(cs.logical_size, {
        let s = parent.read(|t| pageserver::ingest::reldir::RelDirectory::load(t, h.fork))?;
        s.all_forks().iter().map(|f| f.2 as u64 * 8192).sum::<u64>()
    });

    // A branch reads its parent's pages as of its start.
    for (b, at) in [
        (&child, h.fork),
        (&rp_branch, h.restore_point),
        (&ts_branch, incl),
    ] {
        let theirs = parent.read(|t| all_pages(t, at))?;
        let ours = b.read(|t| all_pages(t, at))?;
        assert!(ours.len() > 300, "only {} pages", ours.len());
        let d = differing(&theirs, &ours);
        assert!(
            d.is_empty(),
            "branch at {at} differs from its parent: {:?}",
            &d[..d.len().min(5)]
        );
    }
    assert_eq!(child.read(restore_points)?, pts);
    let below = child.read(|t| t.get_page(parent_tip_pages[0].0, Lsn(h.fork.0 - 8)));
    let msg = below
        .expect_err("a read below the branch point")
        .to_string();
    assert!(
        msg.contains("ancestor") && msg.contains(&pid.to_string()),
        "{msg}"
    );

    // A WAL stream must continue where the timeline is, and carry WAL.
    let e = child.receive_wal(Lsn(h.fork.0 + 8), &[0; 8]).unwrap_err();
    assert!(e.to_string().contains("contiguous"), "{e}");
    let e = child.restart_wal_stream(h.start).unwrap_err();
    assert!(e.to_string().contains("ingest position"), "{e}");
    let e = child.receive_wal(h.fork, &[0xFF; 8192]).unwrap_err();
    assert!(e.to_string().contains("corrupt WAL"), "{e}");
    assert_eq!(child.wal_start_lsn(), h.fork);
    child.restart_wal_stream(h.fork)?;

    // Reads through a branch cost what reads of its parent cost (timed, not asserted).
    let t0 = std::time::Instant::now();
    let direct = parent.read(|t| all_pages(t, h.fork))?;
    let t1 = std::time::Instant::now();
    let through = child.read(|t| all_pages(t, h.fork))?;
    println!(
        "{} pages at the fork: parent {:?}, branch (child cache cold) {:?}",
        direct.len(),
        t1 - t0,
        t1.elapsed()
    );

    // The child's own WAL: the same pages as a straight-line timeline of that history.
    // Readers of the parent and of the child's branch point run meanwhile: ingest into the
    // child reads through the parent's lock, nothing deadlocks, and reads stay exact.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let n = std::thread::scope(|s| -> Result<usize> {
        let readers: Vec<_> = [(&parent, &direct), (&child, &through)]
            .into_iter()
            .map(|(tl, expect)| {
                let stop = &stop;
                s.spawn(move || -> Result<u64> {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for (key, page) in expect.iter().step_by(97) {
                            let got = tl.read(|t| t.get_page(*key, h.fork))?;
                            assert_eq!(got.map(|p| p.to_vec()).as_ref(), page.as_ref());
                            reads += 1;
                        }
                    }
                    Ok(reads)
                })
            })
            .collect();
        let n = feed_wal(&child, &h.pg.wal_dir(), h.fork, h.child_end, 128 << 10);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            let reads = r.join().expect("reader panicked")?;
            println!("concurrent reader: {reads} reads during the child's ingest");
            assert!(reads > 0);
        }
        n
    })?;
    println!("child: {n} records, {:?}", child.status());
    assert_eq!(child.status().last_record_end, h.child_end);
    let straight = tenant.import_timeline(None, &h.base, None, vec![])?;
    feed_wal(&straight, &h.pg.wal_dir(), h.start, h.child_end, 1 << 20)?;
    let check_child = |what: &str| -> Result<()> {
        for at in [h.fork, h.child_end] {
            let ours = child.read(|t| all_pages(t, at))?;
            let theirs = straight.read(|t| all_pages(t, at))?;
            let d = differing(&theirs, &ours);
            assert!(
                d.is_empty(),
                "{what}: child differs at {at}: {:?}",
                &d[..d.len().min(5)]
            );
        }
        Ok(())
    };
    check_child("after ingest")?;
    let rep = compare_with_postgres(&child, &h.pg, h.child_end)?;
    println!("child vs Postgres's files: {rep:?}");
    assert_eq!(rep.differing, 0, "{:?}", rep.problems);
    assert!(rep.equal > 500, "{rep:?}");
    // The parent is untouched, and the histories did diverge.
    let after = parent.read(|t| all_pages(t, h.parent_end))?;
    assert!(differing(&parent_tip_pages, &after).is_empty());
    let child_tip: std::collections::BTreeMap<_, _> = child
        .read(|t| all_pages(t, h.child_end))?
        .into_iter()
        .collect();
    let diverged = parent_tip_pages
        .iter()
        .filter(|(k, p)| child_tip.get(k).is_some_and(|c| c != p))
        .count();
    assert!(
        diverged > 50,
        "only {diverged} pages differ between parent and child"
    );

    // Compaction of the branch (its images must hold the keys it inherits).
    let report = child.compact()?;
    let stats = child.read(|t| t.layer_stats());
    println!("child compaction: {report:?}; {}", stats.summary());
    check_child("after compaction")?;

    // Reload: everything resumes at its durable state, branches attached to their parents.
    let statuses: Vec<_> = [&parent, &child, &rp_branch, &ts_branch]
        .iter()
        .map(|t| t.status())
        .collect();
    let (cid, tid) = (child.timeline_id(), ts_branch.timeline_id());
    assert!(m.flush_all().is_empty());
    drop((parent, child, rp_branch, ts_branch, straight, tenant));
    drop(m);
    let m = TenantManager::load(data.path())?;
    let tenant = m.tenants().pop().expect("one tenant");
    assert_eq!(tenant.timelines().len(), 5);
    assert!(tenant.broken_timelines().is_empty());
    for s in &statuses {
        let r = tenant.timeline(s.timeline_id)?.status();
        assert_eq!(
            (r.start_lsn, r.last_record_end, &r.ancestor),
            (s.start_lsn, s.last_record_end, &s.ancestor)
        );
    }
    let child = tenant.timeline(cid)?;
    let theirs = tenant.timeline(pid)?.read(|t| all_pages(t, h.fork))?;
    let ours = child.read(|t| all_pages(t, h.fork))?;
    assert!(differing(&theirs, &ours).is_empty(), "after reload");
    assert_eq!(
        child.read(|t| all_pages(t, h.child_end))?.len(),
        child_tip.len()
    );

    // Deletion: refused while branches exist, then gone for good.
    expect_err(
        tenant.delete_timeline(pid),
        "delete a parent",
        &["branches", &cid.to_string()],
    );
    tenant.delete_timeline(tid)?;
    expect_err(tenant.timeline(tid), "deleted timeline", &["no timeline"]);
    assert!(!data
        .path()
        .join("tenants")
        .join(tenant.id().to_string())
        .join("timelines")
        .join(tid.to_string())
        .exists());
    Ok(())
}
