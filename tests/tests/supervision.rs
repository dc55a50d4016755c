//! Supervision of a real local cluster (issue 17, items 3 and 11): every long-running process
//! (safekeepers, pageserver, a compute's Postgres and walproposer) is restarted by itself after
//! a SIGKILL, and `strata status` counts it; a deliberate `strata compute stop` or `strata
//! stop` is not undone; `strata stop` during a quorum outage stops everything within a
//! deadline and names the compute that could not checkpoint.

use std::fs::File;
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strata_tests::cluster::{on_new_cluster, read_pid, wait_for, StrataCli};
use strata_tests::pg::pg_bin_dir;

/// What a command printed, once it finished.
struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` and waits at most `timeout` for it (then kills it and fails, naming `what`).
fn run_within(mut cmd: Command, what: &str, timeout: Duration) -> Result<Finished> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &mut File| -> Result<String> {
        let mut s = String::new();
        f.rewind()?;
        f.read_to_string(&mut s)?;
        Ok(s)
    };
    Ok(Finished {
        success: status.success(),
        stdout: read(&mut out)?,
        stderr: read(&mut err)?,
    })
}

/// One SQL statement over TCP that must succeed within `timeout`. Connection failures (a
/// Postgres being restarted) are retried until then; a statement that blocks (a commit
/// waiting for the safekeepers) is killed at the deadline.
fn psql_within(port: u16, sql: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut cmd = Command::new(pg_bin_dir().join("psql"));
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &port.to_string(), "-c", sql])
            .envs(strata_tests::cluster::compute_auth_env(port));
        let what = format!("psql {sql:?} on port {port}");
        let f = run_within(cmd, &what, left)?;
        if f.success {
            return Ok(f.stdout.trim().to_string());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} failed until the deadline ({timeout:?}): {}",
                f.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn service_pid(s: &StrataCli, name: &str) -> Result<i32> {
    read_pid(&s.dir.join("run").join(format!("{name}.pid")))
}

fn postmaster_pid(s: &StrataCli, compute: &str) -> Result<i32> {
    read_pid(
        &s.dir
            .join("computes")
            .join(compute)
            .join("data/postmaster.pid"),
    )
}

/// `strata --json status`, whatever its exit code (3 while a service is down).
fn status(s: &StrataCli) -> Result<serde_json::Value> {
    let mut cmd = Command::new(&s.bin);
    cmd.arg("--dir").arg(&s.dir).args(["--json", "status"]);
    let f = run_within(cmd, "strata status", Duration::from_secs(30))?;
    serde_json::from_str(&f.stdout)
        .with_context(|| format!("strata status printed no JSON: {}{}", f.stdout, f.stderr))
}

fn service_restarts(st: &serde_json::Value, name: &str) -> Option<u64> {
    st["services"]
        .as_array()?
        .iter()
        .find(|v| v["service"] == name)?["restarts"]
        .as_u64()
}

fn compute_restarts(st: &serde_json::Value, compute: &str, part: &str) -> Option<u64> {
    st["computes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == compute)?[part]["restarts"]
        .as_u64()
}

/// A new pid for `name` that is alive, after `old` was killed.
fn wait_restarted(s: &StrataCli, name: &str, old: i32, timeout: Duration) -> Result<i32> {
    wait_for(
        &format!("{name} to be restarted (killed pid {old})"),
        timeout,
        || {
            let pid = service_pid(s, name)?;
            Ok((pid != old && alive(pid)).then_some(pid))
        },
    )
}

fn start_writer(s: &StrataCli) -> Result<u16> {
    s.run(&["start"])?;
    s.run(&["tenant", "create", "sup"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"]
        .as_u64()
        .context("compute start printed no port")? as u16;
    psql_within(port, "CREATE TABLE t (id int)", Duration::from_secs(15))?;
    psql_within(port, "INSERT INTO t VALUES (0)", Duration::from_secs(15))?;
    Ok(port)
}

const COMMIT_DEADLINE: Duration = Duration::from_secs(15);

#[test]
fn killed_services_come_back_by_themselves_and_stops_are_not_undone() -> Result<()> {
    on_new_cluster("strata-supervision-", |s| {
        let port = start_writer(s)?;

        // The walproposer: without it nothing commits.
        let t = Instant::now();
        let wp = "compute-main-walproposer";
        let old = service_pid(s, wp)?;
        kill(old, libc::SIGKILL);
        psql_within(port, "INSERT INTO t VALUES (1)", COMMIT_DEADLINE)
            .context("a commit after the walproposer was killed")?;
        println!(
            "walproposer SIGKILLed: a commit returned after {:?}",
            t.elapsed()
        );
        wait_restarted(s, wp, old, Duration::from_secs(5))?;
        let st = status(s)?;
        let restarts = compute_restarts(&st, "main", "walproposer");
        if restarts != Some(1) {
            bail!("status shows {restarts:?} walproposer restarts, not 1: {st:#}");
        }

        // A safekeeper and the pageserver at once.
        let t = Instant::now();
        let (sk, ps) = (
            service_pid(s, "safekeeper-1")?,
            service_pid(s, "pageserver")?,
        );
        kill(sk, libc::SIGKILL);
        kill(ps, libc::SIGKILL);
        wait_restarted(s, "safekeeper-1", sk, Duration::from_secs(10))?;
        wait_restarted(s, "pageserver", ps, Duration::from_secs(10))?;
        psql_within(port, "INSERT INTO t VALUES (2)", COMMIT_DEADLINE)?;
        let st = wait_for(
            "status to show every service up",
            Duration::from_secs(30),
            || {
                let st = status(s)?;
                let up = st["services"]
                    .as_array()
                    .is_some_and(|v| v.iter().all(|svc| !svc["pid"].is_null()));
                Ok(up.then_some(st))
            },
        )?;
        println!(
            "safekeeper-1 and pageserver SIGKILLed: all up after {:?}",
            t.elapsed()
        );
        for name in ["safekeeper-1", "pageserver"] {
            let n = service_restarts(&st, name);
            if n != Some(1) {
                bail!("status shows {n:?} restarts of {name}, not 1: {st:#}");
            }
        }
        let last_error = st["services"][0]["last_error"].as_str().unwrap_or_default();
        if !last_error.contains("SIGKILL") && !last_error.contains("gone") {
            bail!("safekeeper-1's last error does not say how it ended: {last_error:?}");
        }

        // The compute's postmaster.
        let t = Instant::now();
        let pm = postmaster_pid(s, "main")?;
        kill(pm, libc::SIGKILL);
        psql_within(port, "INSERT INTO t VALUES (3)", Duration::from_secs(30))
            .context("a commit after the postmaster was killed")?;
        println!(
            "postmaster SIGKILLed: a commit returned after {:?}",
            t.elapsed()
        );
        let count = psql_within(port, "SELECT count(*) FROM t", COMMIT_DEADLINE)?;
        if count != "4" {
            bail!("expected the 4 committed rows, found {count}");
        }
        let st = status(s)?;
        if compute_restarts(&st, "main", "postgres") < Some(1) {
            bail!("status shows no Postgres restart: {st:#}");
        }

        // A deliberate stop of the compute is not undone.
        let (pm, wp_pid) = (postmaster_pid(s, "main")?, service_pid(s, wp)?);
        s.run(&["compute", "stop", "main"])?;
        std::thread::sleep(Duration::from_secs(2));
        if alive(pm) || alive(wp_pid) {
            bail!("compute stop left postmaster {pm} or walproposer {wp_pid} running");
        }
        for f in [
            s.dir.join("computes/main"),
            s.dir.join("run").join(format!("{wp}.pid")),
        ] {
            if f.exists() {
                bail!("{} is back 2 s after `compute stop`", f.display());
            }
        }

        // Nor is `strata stop`.
        let pids: Vec<i32> = [
            "safekeeper-1",
            "safekeeper-2",
            "safekeeper-3",
            "pageserver",
            "supervisor",
        ]
        .iter()
        .map(|n| service_pid(s, n))
        .collect::<Result<_>>()?;
        s.run(&["stop"])?;
        std::thread::sleep(Duration::from_secs(2));
        let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
        if !left.is_empty() {
            bail!("processes {left:?} still run 2 s after `strata stop`");
        }
        let restarted: Vec<_> = std::fs::read_dir(s.dir.join("run"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pid"))
            .collect();
        if !restarted.is_empty() {
            bail!("pid files {restarted:?} are back after `strata stop`");
        }
        Ok(())
    })
}

#[test]
fn stop_during_a_quorum_outage_stops_everything_and_names_the_compute() -> Result<()> {
    on_new_cluster("strata-stop-outage-", |s| {
        start_writer(s)?;
        let names = [
            "safekeeper-1",
            "safekeeper-2",
            "safekeeper-3",
            "pageserver",
            "compute-main-walproposer",
        ];
        let mut pids: Vec<(String, i32)> = names
            .iter()
            .map(|n| Ok((n.to_string(), service_pid(s, n)?)))
            .collect::<Result<_>>()?;
        pids.push(("postmaster".into(), postmaster_pid(s, "main")?));
        // (Before supervision there was no supervisor.)
        if let Ok(p) = service_pid(s, "supervisor") {
            pids.push(("supervisor".into(), p));
        }
        let stopped = [pids[0].1, pids[1].1];
        for p in stopped {
            kill(p, libc::SIGSTOP);
        }
        let t = Instant::now();
        let mut cmd = Command::new(&s.bin);
        cmd.arg("--dir").arg(&s.dir).arg("stop");
        let res = run_within(
            cmd,
            "strata stop with 2 of 3 safekeepers stopped",
            Duration::from_secs(50),
        );
        // Whatever happened, nothing of this test stays frozen.
        for p in stopped {
            kill(p, libc::SIGCONT);
        }
        let f = res?;
        println!(
            "strata stop took {:?} (success {}):\n{}{}",
            t.elapsed(),
            f.success,
            f.stdout,
            f.stderr
        );
        let said = format!("{}{}", f.stdout, f.stderr);
        if !said.contains("compute main could not checkpoint") {
            bail!("strata stop did not say that compute main could not checkpoint:\n{said}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
        if !left.is_empty() {
            bail!("still running after strata stop: {left:?}\n{said}");
        }
        if !f.success {
            bail!("strata stop stopped everything but failed:\n{said}");
        }
        Ok(())
    })
}
