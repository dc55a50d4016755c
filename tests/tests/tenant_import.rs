//! `strata tenant import --from <connstr>` of a running Postgres 15 that keeps taking writes:
//! pgbench runs against a vanilla Postgres (the harness's PgCluster) before, during and after
//! the import; once the writes stop and the pageserver has the source's WAL up to its current
//! position, `pg_dump` of a Strata read-only compute equals `pg_dump` of the source.
//!
//! And the source is never left unable to commit: it keeps committing across `strata stop` /
//! `strata start` and a compute start of another branch, and `strata tenant detach` hands it
//! back (with the cluster running or stopped) with every acknowledged commit readable in
//! Strata.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, StrataCli};
use strata_tests::pg::pg_bin_dir;
use strata_tests::{InitOptions, PgCluster};
use walproto::Lsn;

/// Waits until the pageserver has ingested the branch up to `lsn`.
fn wait_ingested(s: &StrataCli, branch: &str, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = s.json(&["status"])?;
        let at: Option<Lsn> = st["branches"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["branch"] == branch)
            .and_then(|b| b["last_record_end"].as_str()?.parse().ok());
        if at.is_some_and(|a| a >= lsn) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pageserver has {branch} only up to {at:?}, not {lsn}:\n{st:#}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `scenario` on a new cluster; on failure prints the tails of the cluster's logs.
fn on_cluster(prefix: &str, scenario: impl FnOnce(&StrataCli) -> Result<()>) -> Result<()> {
    on_new_cluster(prefix, |s| {
        let result = scenario(s);
        if result.is_err() {
            eprintln!("{}", logs(&s.dir));
        }
        result
    })
}

fn pg_dump(args: &[&str]) -> Result<String> {
    let out = Command::new(pg_bin_dir().join("pg_dump"))
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump 15.14+ prints a random \restrict key: leave it out so two dumps compare.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .map(|l| format!("{l}\n"))
        .collect())
}

fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(10)
        .map(|(x, y)| format!("strata: {x}\nsource: {y}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// pgbench against the source in short rounds until `stop`; returns the rounds run.
fn writer(sock: String, port: u16, stop: Arc<AtomicBool>) -> Result<u32> {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let out = Command::new(pg_bin_dir().join("pgbench"))
            .args(["-h", &sock, "-p", &port.to_string(), "-U", "postgres"])
            .args(["-c", "2", "-j", "1", "-T", "1", "-n", "postgres"])
            .output()?;
        ensure!(
            out.status.success(),
            "pgbench against the source: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        rounds += 1;
    }
    Ok(rounds)
}

#[test]
fn import_of_a_running_postgres_that_keeps_writing() -> Result<()> {
    on_cluster("strata-import-", scenario)
}

fn scenario(s: &StrataCli) -> Result<()> {
    s.run(&["start"])?;
    // Frequent checkpoints: the source would recycle the WAL the walproposer still needs if
    // the import's replication slot did not hold it.
    let src = PgCluster::init(
        &InitOptions::default()
            .set("checkpoint_timeout", "30s")
            .set("max_wal_size", "64MB")
            .set("min_wal_size", "32MB"),
    )?;
    src.start()?;
    src.pgbench(&["-i", "-q", "-s", "2"])?;
    let connstr = src.connstr("postgres");

    // Refused before anything is copied: synchronous_standby_names does not name Strata.
    let refused = s.run(&["tenant", "import", "--from", &connstr]);
    let msg = format!(
        "{:#}",
        refused.as_ref().err().context("import without sync")?
    );
    ensure!(
        msg.contains("synchronous_standby_names = 'strata'"),
        "the refusal names the setting: {msg}"
    );
    ensure!(
        src.psql("SELECT count(*) FROM pg_replication_slots")?
            .trim()
            == "0",
        "a refused import leaves no slot"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (sock, port, stop) = (
            src.socket_dir().display().to_string(),
            src.port(),
            stop.clone(),
        );
        std::thread::spawn(move || writer(sock, port, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    // The cluster's password on the source's postgres, for the checks' logins below.
    let imported = s.json(&[
        "tenant",
        "import",
        "--from",
        &connstr,
        "--configure-sync",
        "--set-source-password",
    ]);
    let imported = match imported {
        Ok(v) => v,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = w.join();
            return Err(e);
        }
    };
    eprintln!("imported: {imported}");
    ensure!(imported["tenant"] == "main", "{imported}");
    ensure!(
        src.psql("SHOW synchronous_standby_names")?.trim() == "strata",
        "--configure-sync set synchronous_standby_names"
    );
    // Writes continue after the import, now waiting for a safekeeper majority; DDL too.
    std::thread::sleep(Duration::from_secs(3));
    src.psql(
        "CREATE TABLE after_import(id int PRIMARY KEY, body text);
         INSERT INTO after_import SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CREATE INDEX ON after_import(body);",
    )?;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let rounds = w.join().expect("the writer thread")?;
    ensure!(rounds >= 3, "pgbench ran {rounds} rounds only");

    let status = s.json(&["status"])?;
    let computes = status["computes"].as_array().context("computes")?;
    ensure!(
        computes.iter().any(|c| c["name"] == "import-main"),
        "status lists the import's walproposer: {status}"
    );

    let source_dump = pg_dump(&[
        "-h",
        &src.socket_dir().display().to_string(),
        "-p",
        &src.port().to_string(),
    ])?;
    let target = src.current_wal_lsn()?;
    wait_ingested(s, "main", target)?;
    let c = s.json(&["compute", "start", "main", "--read-only", "--name", "check"])?;
    let port = c["port"].as_u64().context("port")? as u16;
    let strata_dump = strata_tests::cluster::pg_dump(port)?;
    s.run(&["compute", "stop", "check"])?;
    ensure!(
        source_dump.len() > 1000 && source_dump.contains("after_import"),
        "the source's dump is suspiciously small"
    );
    if strata_dump != source_dump {
        bail!(
            "Strata's compute differs from the source at {target} ({} vs {} bytes):\n{}",
            strata_dump.len(),
            source_dump.len(),
            first_difference(&strata_dump, &source_dump)
        );
    }
    eprintln!(
        "identical pg_dump at {target} ({} bytes, {rounds} pgbench rounds)",
        strata_dump.len()
    );

    // `strata stop` stops the import's walproposer with the rest.
    let pid = s.dir.join("run/compute-import-main-walproposer.pid");
    ensure!(pid.exists(), "the walproposer runs as a daemon");
    // The source stays the branch's only writer.
    let second = s.run(&["compute", "start", "main"]);
    ensure!(
        second.is_err(),
        "a Strata read-write compute on the imported branch was refused"
    );
    s.run(&["stop"])?;
    ensure!(
        !pid.exists(),
        "strata stop stopped the import's walproposer"
    );

    // `strata start` starts the walproposer again, from the source's slot; the source's
    // commits flow again.
    s.run(&["start"])?;
    ensure!(pid.exists(), "strata start started the walproposer");
    let again = s.json(&["tenant", "reconnect"])?;
    ensure!(
        again["started"] == false,
        "reconnect of a running import: {again}"
    );
    src.psql(
        "INSERT INTO after_import SELECT g, 'again' FROM generate_series(5001, 6000) g;
         UPDATE pgbench_accounts SET abalance = abalance - 7 WHERE aid % 10 = 0;",
    )?;
    let source_dump = pg_dump(&[
        "-h",
        &src.socket_dir().display().to_string(),
        "-p",
        &src.port().to_string(),
    ])?;
    let target = src.current_wal_lsn()?;
    wait_ingested(s, "main", target)?;
    let c = s.json(&[
        "compute",
        "start",
        "main",
        "--read-only",
        "--name",
        "check2",
    ])?;
    let port = c["port"].as_u64().context("port")? as u16;
    let strata_dump = strata_tests::cluster::pg_dump(port)?;
    s.run(&["compute", "stop", "check2"])?;
    ensure!(source_dump.contains("again"), "the dump has the new rows");
    if strata_dump != source_dump {
        bail!(
            "after the reconnect Strata differs from the source at {target}:\n{}",
            first_difference(&strata_dump, &source_dump)
        );
    }
    eprintln!("identical pg_dump after stop, start and reconnect at {target}");
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

/// A statement on the source in its own psql, which may wait (for a synchronous standby).
struct Pending {
    child: Child,
    sql: String,
}

impl Pending {
    fn start(src: &PgCluster, sql: &str) -> Result<Pending> {
        let child = src
            .command("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-h", &src.socket_dir().display().to_string()])
            .args(["-p", &src.port().to_string(), "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning psql")?;
        Ok(Pending {
            child,
            sql: sql.to_string(),
        })
    }

    fn waiting(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits for the statement to return, at most `timeout`; it must have succeeded.
    fn finish_within(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.waiting()? {
            if Instant::now() > deadline {
                bail!(
                    "the source's commit did not return within {timeout:?} (it waits for its \
                     synchronous standby): {}",
                    self.sql
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr)?;
        }
        let status = self.child.wait()?;
        ensure!(
            status.success() && !stderr.contains("synchronous replication"),
            "{} on the source: {status}: {stderr}",
            self.sql
        );
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A commit on the source that must return within `timeout`.
fn commit_within(src: &PgCluster, sql: &str, timeout: Duration) -> Result<()> {
    Pending::start(src, sql)?.finish_within(timeout)
}

const COMMIT_DEADLINE: Duration = Duration::from_secs(20);

const POSTGRES_HAS_A_PASSWORD: &str =
    "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'postgres'";

/// A source with a table `t` of 100 rows, imported as tenant `main` with --configure-sync
/// and --set-source-password (the checks log into computes with the cluster's password).
fn imported_source(s: &StrataCli) -> Result<PgCluster> {
    s.run(&["start"])?;
    let src = PgCluster::init(&InitOptions::default())?;
    src.start()?;
    src.psql(
        "CREATE TABLE t(id int PRIMARY KEY, note text);
         INSERT INTO t SELECT g, 'before import' FROM generate_series(1, 100) g;",
    )?;
    s.json(&[
        "tenant",
        "import",
        "--from",
        &src.connstr("postgres"),
        "--configure-sync",
        "--set-source-password",
    ])?;
    ensure!(
        src.psql(POSTGRES_HAS_A_PASSWORD)?.trim() == "t",
        "--set-source-password gave the source's postgres a password"
    );
    commit_within(
        &src,
        "INSERT INTO t SELECT g, 'imported' FROM generate_series(101, 200) g",
        COMMIT_DEADLINE,
    )?;
    Ok(src)
}

/// `SELECT sql` on a read-only compute of `main` at the latest committed LSN.
fn query_strata(s: &StrataCli, name: &str, sql: &str) -> Result<String> {
    let c = s.json(&["compute", "start", "main", "--read-only", "--name", name])?;
    let port = c["port"].as_u64().context("port")? as u16;
    let rows = psql(port, sql);
    s.run(&["compute", "stop", name])?;
    rows
}

/// `strata ARGS`; its stderr (warnings, progress) as well as its success.
fn strata_stderr(s: &StrataCli, args: &[&str]) -> Result<String> {
    let out = Command::new(&s.bin)
        .arg("--dir")
        .arg(&s.dir)
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "strata {args:?}: {stderr}");
    Ok(stderr)
}

fn sync_names(src: &PgCluster) -> Result<String> {
    Ok(src
        .psql("SHOW synchronous_standby_names")?
        .trim()
        .to_string())
}

fn slots(src: &PgCluster) -> Result<String> {
    Ok(src
        .psql("SELECT count(*) FROM pg_replication_slots")?
        .trim()
        .to_string())
}

/// Issue 17 item 7: a restart of the cluster and a compute start of another branch used to
/// forget the import (its record deleted as a stopped compute's), and every commit of the
/// source then waited for ever.
#[test]
fn imported_source_commits_across_a_cluster_restart() -> Result<()> {
    on_cluster("strata-import-restart-", |s| {
        let src = imported_source(s)?;
        let warned = strata_stderr(s, &["stop"])?;
        s.run(&["start"])?;
        s.run(&["branch", "create", "b1"])?;
        s.json(&["compute", "start", "b1"])?;
        commit_within(
            &src,
            "INSERT INTO t SELECT g, 'after restart' FROM generate_series(201, 300) g",
            COMMIT_DEADLINE,
        )?;
        let refused = s.run(&["compute", "stop", "import-main"]);
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("strata tenant detach main")),
            "compute stop of the import's walproposer is refused: {refused:?}"
        );
        wait_ingested(s, "main", src.current_wal_lsn()?)?;
        let rows = query_strata(s, "check", "SELECT count(*) FROM t")?;
        ensure!(rows == "300", "Strata has {rows} of the source's 300 rows");
        ensure!(
            warned.contains("tenant main streams the imported Postgres")
                && warned.contains(&src.connstr("postgres"))
                && warned.contains("strata tenant detach main"),
            "strata stop warns that the source's commits wait: {warned}"
        );
        Ok(())
    })
}

/// `strata tenant detach` with the cluster running: the source no longer names Strata, its
/// slot is gone, what it committed before is readable in Strata, and it commits with the
/// cluster stopped. A second detach does nothing.
#[test]
fn tenant_detach_hands_the_source_back() -> Result<()> {
    on_cluster("strata-import-detach-", |s| {
        let src = imported_source(s)?;
        let detached = s.json(&["tenant", "detach"])?;
        ensure!(
            detached["was_attached"] == true && detached["streamed_to"].is_string(),
            "{detached}"
        );
        ensure!(
            sync_names(&src)?.is_empty(),
            "synchronous_standby_names cleared"
        );
        ensure!(slots(&src)? == "0", "the import's slot is dropped");
        let again = s.json(&["tenant", "detach"])?;
        ensure!(again["was_attached"] == false, "detach again: {again}");
        let streamed_to = detached["streamed_to"].as_str().unwrap_or_default();
        wait_ingested(s, "main", streamed_to.parse()?)?;
        let rows = query_strata(s, "check", "SELECT count(*) FROM t")?;
        ensure!(
            rows == "200",
            "Strata has {rows} of the 200 rows committed before the detach"
        );
        let status = s.json(&["status"])?;
        ensure!(
            !status.to_string().contains("import-main"),
            "the walproposer is no longer listed: {status}"
        );
        s.run(&["stop"])?;
        commit_within(
            &src,
            "INSERT INTO t VALUES (1000, 'cluster stopped')",
            COMMIT_DEADLINE,
        )
    })
}

/// `strata tenant detach` with the cluster stopped: the commit the source was waiting with
/// returns, the setting and the slot are gone, and `strata start` does not reconnect.
#[test]
fn tenant_detach_with_the_cluster_stopped_releases_waiting_commits() -> Result<()> {
    on_cluster("strata-import-detach-stopped-", |s| {
        let src = imported_source(s)?;
        s.run(&["stop"])?;
        let mut waiting = Pending::start(&src, "INSERT INTO t VALUES (1000, 'waiting')")?;
        std::thread::sleep(Duration::from_secs(2));
        ensure!(
            waiting.waiting()?,
            "with the cluster stopped, the source's commit waits for Strata"
        );
        s.json(&["tenant", "detach", "main"])?;
        waiting.finish_within(COMMIT_DEADLINE)?;
        ensure!(
            sync_names(&src)?.is_empty(),
            "synchronous_standby_names cleared"
        );
        ensure!(slots(&src)? == "0", "the import's slot is dropped");
        commit_within(
            &src,
            "INSERT INTO t VALUES (1001, 'after')",
            COMMIT_DEADLINE,
        )?;
        s.run(&["start"])?;
        ensure!(
            !s.dir
                .join("run/compute-import-main-walproposer.pid")
                .exists(),
            "strata start does not reconnect a detached source"
        );
        let rows = query_strata(s, "check", "SELECT count(*) FROM t")?;
        ensure!(
            rows == "200",
            "Strata has {rows} of the 200 rows committed before the stop"
        );
        Ok(())
    })
}

/// Every role of the source with its password verifier, as one text.
fn source_roles(src: &PgCluster) -> Result<String> {
    src.psql("SELECT rolname || ':' || coalesce(rolpassword, '<none>') FROM pg_authid ORDER BY 1")
}

/// `SELECT sql` over TCP on the compute at `port` as `role` with `password`.
fn psql_as(port: u16, role: &str, password: &str, sql: &str) -> Result<String> {
    let out = Command::new(pg_bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            role,
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .output()?;
    ensure!(
        out.status.success(),
        "psql as {role}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A user's own Postgres is not changed behind their back: without `--set-source-password`
/// the import (with auth on) leaves every role of the source as it was, a password-less
/// `postgres` included, and the tenant's computes take the source's own roles and passwords.
#[test]
fn import_leaves_the_source_roles_alone() -> Result<()> {
    on_cluster("strata-import-roles-", |s| {
        s.run(&["start"])?;
        let src = PgCluster::init(&InitOptions::default())?;
        src.start()?;
        src.psql(
            "CREATE TABLE t(id int PRIMARY KEY);
             INSERT INTO t SELECT generate_series(1, 100);
             CREATE ROLE app LOGIN PASSWORD 'app-secret';
             GRANT SELECT ON t TO app;",
        )?;
        let before = source_roles(&src)?;
        ensure!(
            before.contains("postgres:<none>") && before.contains("app:SCRAM-SHA-256$"),
            "the source's roles: {before}"
        );
        let said = strata_stderr(
            s,
            &[
                "tenant",
                "import",
                "--from",
                &src.connstr("postgres"),
                "--configure-sync",
            ],
        )?;
        ensure!(
            said.contains("--set-source-password"),
            "the import says how to give postgres the cluster's password: {said}"
        );
        commit_within(&src, "INSERT INTO t VALUES (101)", COMMIT_DEADLINE)?;
        let after = source_roles(&src)?;
        ensure!(
            after == before,
            "the import changed the source's roles:\nbefore: {before}\nafter: {after}"
        );
        wait_ingested(s, "main", src.current_wal_lsn()?)?;
        let c = s.json(&["compute", "start", "main", "--read-only", "--name", "check"])?;
        let port = c["port"].as_u64().context("port")? as u16;
        let rows = psql_as(port, "app", "app-secret", "SELECT count(*) FROM t")?;
        ensure!(
            rows == "101",
            "the source's own role reads {rows} of 101 rows"
        );
        let password = std::fs::read_to_string(s.dir.join("auth/compute_password"))?;
        let refused = psql_as(port, "postgres", password.trim(), "SELECT 1");
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("password authentication failed")),
            "postgres has no password on this tenant, so the cluster's is refused: {refused:?}"
        );
        s.run(&["compute", "stop", "check"])?;
        Ok(())
    })
}
