//! A pageserver SIGKILLed mid-ingest (real binaries, a real kill -9): a compute runs pgbench
//! and a writer that records every acknowledged commit; the pageserver is killed while it
//! ingests, `strata start` brings it back, and the writes go on the whole time (commits need
//! the safekeepers, not the pageserver). Once the writes stop, a new read-only compute at the
//! latest LSN holds every acknowledged commit and its `pg_dump` equals the running compute's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{pg_dump, pgbench, psql, scratch_dir, StrataCli};

/// The shared CLI driver, plus this test's own helpers.
struct Strata(StrataCli);

impl std::ops::Deref for Strata {
    type Target = StrataCli;
    fn deref(&self) -> &StrataCli {
        &self.0
    }
}

impl Strata {
    /// The pageserver's ingested LSN of a branch (None while it does not answer).
    fn ingested(&self, branch: &str) -> Option<String> {
        let st = self.json(&["status"]).ok()?;
        st["branches"]
            .as_array()?
            .iter()
            .find(|b| b["branch"] == branch)
            .and_then(|b| b["last_record_end"].as_str().map(str::to_string))
    }
}

/// pgbench rounds plus single-row commits whose acknowledgement is recorded, until `stop`.
/// Returns the acknowledged ids.
fn writer(port: u16, stop: Arc<AtomicBool>) -> Result<Vec<u32>> {
    let mut acked = Vec::new();
    let mut id = 0u32;
    while !stop.load(Ordering::Relaxed) {
        pgbench(port, &["-c", "2", "-j", "1", "-T", "1", "-n"])?;
        for _ in 0..10 {
            id += 1;
            psql(
                port,
                &format!("INSERT INTO acks VALUES ({id}, clock_timestamp())"),
            )?;
            acked.push(id);
        }
    }
    Ok(acked)
}

fn read_pid(path: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))
}

fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    // A zombie (not yet reaped) is gone too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn pageserver_kill_9_mid_ingest_loses_nothing() -> Result<()> {
    let tmp = scratch_dir("strata-pskill-")?;
    let s = Strata(StrataCli::new(&tmp.path().join("cluster"))?);
    s.run(&["init"])?;
    let result = scenario(&s);
    let _ = s.run(&["stop"]);
    if result.is_err() {
        eprintln!("{}", logs(&s.dir));
        if std::env::var_os("STRATA_KEEP_TMP").is_some() {
            eprintln!("STRATA_KEEP_TMP: keeping {}", tmp.keep().display());
        }
    }
    result
}

fn scenario(s: &Strata) -> Result<()> {
    s.run(&["start"])?;
    s.run(&["tenant", "create"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"].as_u64().context("port")? as u16;
    pgbench(port, &["-i", "-q", "-s", "2"])?;
    psql(
        port,
        "CREATE TABLE acks(id int PRIMARY KEY, at timestamptz)",
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let stop = stop.clone();
        std::thread::spawn(move || writer(port, stop))
    };
    let finish = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);

    let killed = (|| -> Result<(String, String)> {
        // Mid-ingest: the pageserver has taken some of the workload's WAL, more is coming.
        let first = s.ingested("main").context("the pageserver answers")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.ingested("main").as_deref() == Some(first.as_str()) {
            ensure!(Instant::now() < deadline, "the pageserver ingests nothing");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        let pid_file = s.dir.join("run/pageserver.pid");
        let pid = read_pid(&pid_file)?;
        let before = s.ingested("main").unwrap_or_default();
        // SAFETY: a plain kill(2) of the pageserver this test's cluster started.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGKILL) } == 0,
            "kill -9 {pid}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            ensure!(
                Instant::now() < deadline,
                "pageserver {pid} survived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("killed pageserver {pid} at ingested {before}");
        // The compute keeps committing while the pageserver is down.
        let acks_before = psql(port, "SELECT count(*) FROM acks")?;
        std::thread::sleep(Duration::from_secs(2));
        let acks_down = psql(port, "SELECT count(*) FROM acks")?;
        ensure!(
            acks_down.parse::<u64>()? > acks_before.parse::<u64>()?,
            "no commits while the pageserver was down ({acks_before} then {acks_down})"
        );
        s.run(&["start"])?;
        let new_pid = read_pid(&pid_file)?;
        ensure!(new_pid != pid, "strata start started a new pageserver");
        Ok((before, acks_down))
    })();
    let (before, acks_down) = match killed {
        Ok(v) => v,
        Err(e) => {
            finish(&stop);
            let _ = w.join();
            return Err(e);
        }
    };
    // Writes continue with the restarted pageserver ingesting again.
    std::thread::sleep(Duration::from_secs(3));
    finish(&stop);
    let acked = w.join().expect("the writer thread")?;
    ensure!(
        acked.len() as u64 > acks_down.parse::<u64>()?,
        "writes continued after the restart"
    );

    let running_dump = pg_dump(port)?;
    let r = s.json(&["compute", "start", "main", "--read-only", "--name", "check"])?;
    let check_port = r["port"].as_u64().context("port")? as u16;
    eprintln!(
        "read-only compute at {} (ingested before the kill: {before}), {} acknowledged commits",
        r["lsn"],
        acked.len()
    );
    let ids = psql(
        check_port,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM acks",
    )?;
    let have: Vec<u32> = ids
        .split(',')
        .filter(|x| !x.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let missing: Vec<&u32> = acked
        .iter()
        .filter(|i| have.binary_search(i).is_err())
        .collect();
    ensure!(
        missing.is_empty(),
        "acknowledged commits missing after the pageserver kill: {missing:?}"
    );
    let strata_dump = pg_dump(check_port)?;
    s.run(&["compute", "stop", "check"])?;
    ensure!(running_dump.len() > 1000, "the dump is suspiciously small");
    if strata_dump != running_dump {
        let diff: Vec<String> = strata_dump
            .lines()
            .zip(running_dump.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("new compute: {a}\nrunning:     {b}"))
            .collect();
        bail!(
            "the new compute differs from the running one ({} vs {} bytes):\n{}",
            strata_dump.len(),
            running_dump.len(),
            diff.join("\n")
        );
    }
    eprintln!("identical pg_dump ({} bytes)", strata_dump.len());
    Ok(())
}

fn logs(cluster: &Path) -> String {
    let mut s = String::new();
    if let Ok(entries) = std::fs::read_dir(cluster.join("logs")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {} ---\n", e.path().display()));
            s.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
            s.push('\n');
        }
    }
    s
}
