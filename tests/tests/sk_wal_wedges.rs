//! Issue 17, wedges 1 and 2, on a real cluster (`strata init/start`, three safekeepers, a
//! pageserver, a compute running Postgres 15):
//!
//! 1. `pg_switch_wal()`, a wait until the safekeepers removed the switched segment, then an
//!    `INSERT` must commit (it used to hang for ever: the removal deleted the writer's open
//!    `.partial` and every safekeeper's writer failed for good).
//! 2. Two of three safekeepers on a full 96 MiB tmpfs: commits stall (no error to the client),
//!    and resume by themselves once space is freed, with every acknowledged row present (they
//!    used to stay stalled until a restart: the writer's failure was sticky).
//!
//! Needs the binaries (`cargo build --bins -p strata -p safekeeper -p pageserver -p compute`);
//! the full-disk test needs permission to mount a tmpfs and skips loudly without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{compute_auth_env, on_new_cluster, psql, scratch_dir, StrataCli};
use strata_tests::pg::pg_bin_dir;

/// Runs one SQL command, failing if it has not finished within `limit` (psql is killed).
fn psql_within(port: u16, sql: &str, limit: Duration) -> Result<String> {
    let mut child = Command::new(pg_bin_dir().join("psql"))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-p", &port.to_string(), "-c", sql])
        .envs(compute_auth_env(port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let began = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{sql:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 200 ms until it holds; an error naming `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let began = Instant::now();
    while !cond()? {
        if began.elapsed() > limit {
            bail!("waited {limit:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The last lines of every log of the cluster, for a failure's message.
fn logs(cluster: &Path) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(cluster.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        s.push_str(&format!("--- {} ---\n", e.path().display()));
        s.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
        s.push('\n');
    }
    s
}

/// Each safekeeper's timeline directories (`safekeeper-<id>/<tenant>/<timeline>`).
fn timeline_dirs(cluster: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for id in 1..=3 {
        let sk = cluster.join(format!("safekeeper-{id}"));
        for tenant in std::fs::read_dir(&sk).into_iter().flatten().flatten() {
            for tl in std::fs::read_dir(tenant.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if tl.path().join("safekeeper.control").exists() {
                    v.push(tl.path());
                }
            }
        }
    }
    v
}

/// Whether `dir` holds segment `segno` of Postgres timeline 1, under either name.
fn has_segment(dir: &Path, segno: u64) -> bool {
    let name = format!("{:08X}{:08X}{:08X}", 1, segno >> 8, segno & 0xff);
    dir.join(&name).exists() || dir.join(format!("{name}.partial")).exists()
}

fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.split_once('/').context("an LSN is hi/lo")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

/// `strata init`, `setup` (before anything starts), `start`, a tenant and its main compute;
/// runs `scenario` with the compute's port and stops the cluster whatever happens.
fn on_cluster(
    prefix: &str,
    setup: impl FnOnce(&Path) -> Result<()>,
    scenario: impl FnOnce(&StrataCli, u16) -> Result<()>,
) -> Result<()> {
    on_new_cluster(prefix, |s| {
        let result = setup(&s.dir).and_then(|()| {
            s.run(&["start"])?;
            s.run(&["tenant", "create"])?;
            let c = s.json(&["compute", "start", "main"])?;
            let port = c["port"].as_u64().context("the compute's port")? as u16;
            scenario(s, port)
        });
        if result.is_err() {
            eprintln!("{}", logs(&s.dir));
        }
        result
    })
}

#[test]
fn insert_after_pg_switch_wal_and_removal_commits() -> Result<()> {
    on_cluster("strata-switch-", |_| Ok(()), switch_scenario)
}

fn switch_scenario(s: &StrataCli, port: u16) -> Result<()> {
    psql(port, "CREATE TABLE t(id int PRIMARY KEY)")?;
    psql(port, "INSERT INTO t SELECT generate_series(1, 1000)")?;
    // The end of the switch record, inside the segment it completes.
    let end = parse_lsn(&psql(port, "SELECT pg_switch_wal()")?)?;
    let switched = (end - 1) >> 24;
    // No writes now. The safekeepers' flush and commit LSNs sit on the next segment's first
    // byte; once the pageserver reports it durable the switched segment is removed.
    let dirs = timeline_dirs(&s.dir);
    ensure!(dirs.len() == 3, "three safekeeper timelines: {dirs:?}");
    wait_for(
        &format!(
            "every safekeeper to remove segment {switched:X}, the one pg_switch_wal completed"
        ),
        Duration::from_secs(60),
        || Ok(dirs.iter().all(|d| !has_segment(d, switched))),
    )?;
    // A little longer: the removal in the wedge happened a tick before the next write.
    std::thread::sleep(Duration::from_secs(2));
    psql_within(port, "INSERT INTO t VALUES (1001)", Duration::from_secs(20))
        .context("the INSERT after pg_switch_wal() and WAL removal must commit")?;
    // And the WAL goes on: another switch and more commits.
    psql_within(port, "SELECT pg_switch_wal()", Duration::from_secs(20))?;
    psql_within(
        port,
        "INSERT INTO t SELECT generate_series(1002, 2000)",
        Duration::from_secs(20),
    )?;
    let n = psql(port, "SELECT count(*) FROM t")?;
    ensure!(n == "2000", "rows after the switches: {n}");
    Ok(())
}

/// A tmpfs mounted for the test, unmounted (lazily, as daemons may still hold it) on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` (after a loud message) if this process may not mount.
    fn mount(dir: &Path, size: &str) -> Result<Option<SmallFs>> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            eprintln!(
                "\n!!!!!!!! SKIPPED: cannot mount a tmpfs ({}): the full-disk test needs \
                 root and permission to mount !!!!!!!!\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(SmallFs(dir.to_path_buf())))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file until the file system is full.
fn fill(path: &Path) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    for size in [64 << 10, 4096, 512] {
        while let Ok(n @ 1..) = f.write(&chunk[..size]) {
            written += n as u64;
        }
    }
    Ok(written)
}

#[test]
fn a_full_disk_under_two_safekeepers_stalls_commits_then_they_resume() -> Result<()> {
    let tmp = scratch_dir("strata-smalldisk-")?;
    let Some(fs) = SmallFs::mount(&tmp.path().join("small"), "96m")? else {
        return Ok(());
    };
    let small = fs.0.clone();
    let r = on_cluster(
        "strata-diskfull-",
        |cluster| {
            // Safekeepers 1 and 2 keep their data on the small file system.
            for id in [1, 2] {
                let link = cluster.join(format!("safekeeper-{id}"));
                let target = small.join(format!("safekeeper-{id}"));
                std::fs::create_dir_all(&target)?;
                std::fs::remove_dir(&link)?;
                std::os::unix::fs::symlink(&target, &link)?;
            }
            Ok(())
        },
        |s, port| full_disk_scenario(s, port, &small),
    );
    drop(fs);
    r
}

/// Commits of one row each, numbered; returns the acknowledged numbers. A commit that fails
/// is an error: a full disk may stall commits, never fail or lose them.
fn commit_rows(port: u16, stop: Arc<AtomicBool>, acked: Arc<AtomicU32>) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        psql_within(
            port,
            &format!("INSERT INTO acks VALUES ({id})"),
            Duration::from_secs(300),
        )?;
        ids.push(id);
        acked.store(id, Ordering::Relaxed);
    }
    Ok(ids)
}

/// About 2 MiB of WAL per commit (uncompressed TOAST), until `stop`.
fn load(port: u16, stop: Arc<AtomicBool>) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        psql_within(
            port,
            "INSERT INTO bulk(payload) SELECT string_agg(md5(random()::text), '') \
             FROM generate_series(1, 64000)",
            Duration::from_secs(300),
        )?;
    }
    Ok(())
}

fn full_disk_scenario(s: &StrataCli, port: u16, small: &Path) -> Result<()> {
    psql(port, "CREATE TABLE acks(id int PRIMARY KEY)")?;
    psql(port, "CREATE TABLE bulk(id serial, payload text)")?;
    psql(
        port,
        "ALTER TABLE bulk ALTER COLUMN payload SET STORAGE EXTERNAL",
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU32::new(0));
    let (rows_tx, rows_rx) = mpsc::channel();
    {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || rows_tx.send(commit_rows(port, stop, acked)));
    }
    let (load_tx, load_rx) = mpsc::channel();
    {
        let stop = stop.clone();
        std::thread::spawn(move || load_tx.send(load(port, stop)));
    }
    let result = stall_and_resume(s, small, &acked);
    stop.store(true, Ordering::Relaxed);
    // On failure the threads end when the cluster stops.
    result?;
    // Both finish the statement in flight: commits resumed.
    let rows = rows_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the committing thread did not finish within 60 s")?;
    let loaded = load_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the load thread did not finish within 60 s")?;
    let ids = rows.context("a commit failed instead of stalling")?;
    loaded.context("a load commit failed instead of stalling")?;
    let present: std::collections::HashSet<u32> = psql(port, "SELECT id FROM acks")?
        .lines()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    let lost: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged rows are missing: {lost:?}",
        lost.len(),
        ids.len()
    );
    eprintln!("{} acknowledged rows, all present", ids.len());
    Ok(())
}

/// Fills the small disk, waits for commits to stall, frees the space, waits for them to
/// resume.
fn stall_and_resume(s: &StrataCli, small: &Path, acked: &AtomicU32) -> Result<()> {
    wait_for("the first commits", Duration::from_secs(30), || {
        Ok(acked.load(Ordering::Relaxed) >= 5)
    })?;
    let filler = small.join("filler");
    let filled = fill(&filler)?;
    eprintln!("filled the small disk with {} MiB", filled >> 20);
    // Stalled: no commit for 5 s (the load needs the next segment, which has no room).
    let mut last = (acked.load(Ordering::Relaxed), Instant::now());
    wait_for(
        "commits to stall once two of three safekeepers' disk is full",
        Duration::from_secs(120),
        || {
            let now = acked.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            Ok(last.1.elapsed() > Duration::from_secs(5))
        },
    )?;
    let stalled_at = acked.load(Ordering::Relaxed);
    let full_errors = ["safekeeper-1", "safekeeper-2"]
        .iter()
        .filter(|sk| {
            std::fs::read_to_string(s.dir.join("logs").join(format!("{sk}.log")))
                .unwrap_or_default()
                .contains("No space left")
        })
        .count();
    eprintln!("commits stalled at row {stalled_at}; {full_errors} safekeepers logged ENOSPC");
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    wait_for(
        "commits to resume after the space was freed (no restart)",
        Duration::from_secs(60),
        || Ok(acked.load(Ordering::Relaxed) >= stalled_at + 5),
    )?;
    eprintln!(
        "commits resumed {:.1} s after the space was freed",
        freed.elapsed().as_secs_f64()
    );
    Ok(())
}
