//! `strata tenant import --from <connstr>` of a running Postgres 15 that keeps taking writes:
//! pgbench runs against a vanilla Postgres (the harness's PgCluster) before, during and after
//! the import; once the writes stop and the pageserver has the source's WAL up to its current
//! position, `pg_dump` of a Strata read-only compute equals `pg_dump` of the source.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{scratch_dir, StrataCli};
use strata_tests::pg::pg_bin_dir;
use strata_tests::{InitOptions, PgCluster};
use walproto::Lsn;

/// The shared CLI driver, plus this test's own helpers.
struct Strata(StrataCli);

impl std::ops::Deref for Strata {
    type Target = StrataCli;
    fn deref(&self) -> &StrataCli {
        &self.0
    }
}

impl Strata {
    /// Waits until the pageserver has ingested the branch up to `lsn`.
    fn wait_ingested(&self, branch: &str, lsn: Lsn) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = self.json(&["status"])?;
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
    let tmp = scratch_dir("strata-import-")?;
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
    let imported = s.json(&["tenant", "import", "--from", &connstr, "--configure-sync"]);
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
    s.wait_ingested("main", target)?;
    let c = s.json(&["compute", "start", "main", "--read-only", "--name", "check"])?;
    let port = c["port"].as_u64().context("port")? as u16;
    let strata_dump = pg_dump(&["-h", "127.0.0.1", "-p", &port.to_string()])?;
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

    // After a restart of the cluster the walproposer resumes from the source's slot; the
    // source's commits flow again.
    s.run(&["start"])?;
    s.run(&["tenant", "reconnect"])?;
    ensure!(pid.exists(), "tenant reconnect started the walproposer");
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
    s.wait_ingested("main", target)?;
    let c = s.json(&[
        "compute",
        "start",
        "main",
        "--read-only",
        "--name",
        "check2",
    ])?;
    let port = c["port"].as_u64().context("port")? as u16;
    let strata_dump = pg_dump(&["-h", "127.0.0.1", "-p", &port.to_string()])?;
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
