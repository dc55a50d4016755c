//! The PITR oracle: Postgres's own point-in-time recovery decides what a past moment looks
//! like. A Strata cluster (real binaries) runs a workload through a compute; at several LSNs,
//! a time and a restore point, `pg_dump` of a Strata compute started there must equal
//! `pg_dump` of a vanilla Postgres restored from a base backup of that compute and recovered
//! with `recovery_target_lsn` / `recovery_target_time` / `recovery_target_name` to the same
//! point, replaying the compute's own WAL.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{pg_dump, psql, scratch_dir, StrataCli};
use strata_tests::pg::pg_bin_dir;
use strata_tests::pitr::postgres_pitr;

/// The shared CLI driver, plus this test's own helpers.
struct Strata(StrataCli);

impl std::ops::Deref for Strata {
    type Target = StrataCli;
    fn deref(&self) -> &StrataCli {
        &self.0
    }
}

impl Strata {}

/// One moment to compare, as each side names it.
struct Point {
    label: String,
    /// What `strata compute start --at` gets.
    strata_at: String,
    /// The recovery settings that stop Postgres's recovery at the same moment.
    recovery: Vec<(String, String)>,
}

fn lsn_point(label: &str, lsn: &str) -> Point {
    Point {
        label: format!("{label} (LSN {lsn})"),
        strata_at: lsn.to_string(),
        // Strata's state at an LSN holds every record ending at or before it: Postgres's
        // recovery stopping before the first record starting at the LSN.
        recovery: vec![
            ("recovery_target_lsn".into(), lsn.to_string()),
            ("recovery_target_inclusive".into(), "off".into()),
        ],
    }
}

#[test]
fn strata_reads_the_past_exactly_as_postgres_recovery_does() -> Result<()> {
    let tmp = scratch_dir("strata-pitr-")?;
    let s = Strata(StrataCli::new(&tmp.path().join("cluster"))?);
    s.run(&["init"])?;
    let result = scenario(&s, tmp.path());
    let _ = s.run(&["stop"]);
    if result.is_err() && std::env::var_os("STRATA_KEEP_TMP").is_some() {
        eprintln!("STRATA_KEEP_TMP: keeping {}", tmp.keep().display());
    }
    result
}

fn scenario(s: &Strata, tmp: &Path) -> Result<()> {
    s.run(&["start"])?;
    s.run(&["tenant", "create", "oracle"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"].as_u64().context("port")? as u16;
    // Keep every WAL segment on the compute: Postgres's recovery replays them.
    psql(port, "ALTER SYSTEM SET wal_keep_size = '4GB'")?;
    psql(port, "SELECT pg_reload_conf()")?;

    let base = tmp.join("base");
    let st = Command::new(pg_bin_dir().join("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
        .envs(strata_tests::cluster::compute_auth_env(port))
        .arg("-D")
        .arg(&base)
        .args(["-Fp", "-X", "stream", "-c", "fast", "--no-sync"])
        .status()?;
    ensure!(st.success(), "pg_basebackup of the compute");

    let mut points = Vec::new();
    let pgbench = |args: &[&str]| -> Result<()> {
        let st = Command::new(pg_bin_dir().join("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
            .envs(strata_tests::cluster::compute_auth_env(port))
            .args(args)
            .arg("postgres")
            .output()?;
        ensure!(
            st.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        Ok(())
    };
    pgbench(&["-i", "-q", "-s", "1"])?;
    let lsn = psql(port, "SELECT pg_current_wal_insert_lsn()")?;
    points.push(lsn_point("after pgbench -i", &lsn));

    pgbench(&["-c", "4", "-j", "2", "-t", "300"])?;
    psql(
        port,
        "CREATE TABLE notes(id serial PRIMARY KEY, body text);
         INSERT INTO notes(body) SELECT repeat('n', g % 300) FROM generate_series(1, 3000) g;
         CREATE INDEX ON notes(body);",
    )?;
    let lsn = psql(port, "SELECT pg_current_wal_insert_lsn()")?;
    points.push(lsn_point("after pgbench and DDL", &lsn));

    psql(port, "SELECT pg_create_restore_point('oracle-point')")?;
    points.push(Point {
        label: "restore point oracle-point".into(),
        strata_at: "oracle-point".into(),
        recovery: vec![("recovery_target_name".into(), "oracle-point".into())],
    });
    psql(port, "DELETE FROM notes WHERE id % 3 = 0; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 500")?;
    let time = psql(
        port,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    )?;
    std::thread::sleep(Duration::from_millis(20));
    points.push(Point {
        label: format!("time {time}"),
        strata_at: format!("{time}+00"),
        recovery: vec![
            ("recovery_target_time".into(), format!("{time}+00")),
            ("recovery_target_inclusive".into(), "on".into()),
        ],
    });
    psql(port, "DROP TABLE notes")?;
    psql(port, "VACUUM pgbench_accounts")?;
    pgbench(&["-c", "2", "-t", "100"])?;
    let lsn = psql(port, "SELECT pg_current_wal_insert_lsn()")?;
    points.push(lsn_point("after DROP and VACUUM", &lsn));
    // Close the segment so Postgres's recovery finds every record in a complete file.
    psql(port, "SELECT pg_switch_wal()")?;
    psql(port, "CHECKPOINT")?;

    let wal_dir = s.dir.join("computes/main/data/pg_wal");
    for (i, p) in points.iter().enumerate() {
        let name = format!("oracle{i}");
        let c = s.json(&[
            "compute",
            "start",
            "main",
            "--at",
            &p.strata_at,
            "--name",
            &name,
        ])?;
        let port = c["port"].as_u64().context("port")? as u16;
        let strata_dump = pg_dump(port)?;
        s.run(&["compute", "stop", &name])?;
        let pg_dump = postgres_pitr(&base, &wal_dir, &p.label, &p.recovery)?;
        ensure!(
            strata_dump.len() > 1000,
            "{}: the dump is suspiciously small",
            p.label
        );
        if strata_dump != pg_dump {
            let diff: Vec<String> = strata_dump
                .lines()
                .zip(pg_dump.lines())
                .filter(|(a, b)| a != b)
                .take(10)
                .map(|(a, b)| format!("strata:   {a}\npostgres: {b}"))
                .collect();
            bail!(
                "{}: Strata's compute differs from Postgres's PITR ({} vs {} bytes):\n{}",
                p.label,
                strata_dump.len(),
                pg_dump.len(),
                diff.join("\n")
            );
        }
        eprintln!(
            "{}: identical pg_dump ({} bytes)",
            p.label,
            strata_dump.len()
        );
    }
    Ok(())
}
