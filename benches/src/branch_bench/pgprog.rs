//! Postgres 15 programs against a server reachable on 127.0.0.1 with trust authentication
//! (a Strata compute, or a recovered copy of it), or with a password ([`PgProgs::with_password`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strata_tests::os_user::{self, RunAs};
use walproto::Lsn;

/// Where the programs are and which OS user runs them.
#[derive(Clone, Debug)]
pub struct PgProgs {
    pub bin: PathBuf,
    pub run_as: Option<RunAs>,
    /// `PGPASSWORD` for every program (a compute of a cluster with auth); none: trust.
    pub password: Option<String>,
}

impl PgProgs {
    pub fn new(bin: &Path) -> Result<PgProgs> {
        if !bin.join("psql").exists() {
            bail!(
                "no PostgreSQL 15 programs in {} (no psql there); install postgresql-15 or pass --pg-bin",
                bin.display()
            );
        }
        Ok(PgProgs {
            bin: bin.to_path_buf(),
            run_as: os_user::postgres_user()?,
            password: None,
        })
    }

    /// The same programs logging in with `password` (`PGPASSWORD`).
    pub fn with_password(&self, password: Option<String>) -> PgProgs {
        PgProgs {
            password,
            ..self.clone()
        }
    }

    /// A command for `prog`, as the Postgres OS user when we are root, run in /tmp (which
    /// that user can always enter).
    pub fn command(&self, prog: &str) -> Command {
        let mut c = os_user::command_as(self.run_as, &self.bin.join(prog));
        c.current_dir("/tmp");
        if let Some(p) = &self.password {
            c.env("PGPASSWORD", p);
        }
        c
    }

    /// Runs `prog args`, failing with its output when it fails; returns stdout.
    pub fn run(&self, prog: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.join(prog).display()))?;
        if !out.status.success() {
            bail!(
                "{prog} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Gives a file or directory to the Postgres OS user (no-op when not root).
    pub fn give(&self, p: &Path) -> Result<()> {
        os_user::give_to(self.run_as, p)
    }
}

/// One server: database `postgres` on 127.0.0.1:`port`, user postgres.
#[derive(Clone, Debug)]
pub struct Server {
    pub progs: PgProgs,
    pub port: u16,
}

impl Server {
    fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// One SQL command through `psql -X -At`; the output without the trailing newline.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let args = self.psql_args(&[sql]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.progs.run("psql", &refs)?.trim_end().to_string())
    }

    /// One SQL command on a new connection, timed: the whole psql run (start, connection,
    /// query) by our clock, and the query alone by psql's `\timing`.
    pub fn sql_timed(&self, sql: &str) -> Result<TimedSql> {
        let args = self.psql_args(&["\\timing on", sql]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let out = self.progs.run("psql", &refs)?;
        let wall = t0.elapsed();
        let (output, query_ms) = split_timing(&out)?;
        Ok(TimedSql {
            output,
            wall,
            query_ms,
        })
    }

    /// `psql` arguments running `commands` in order (`-c` each) on database postgres.
    fn psql_args(&self, commands: &[&str]) -> Vec<String> {
        let mut args = self.conn_args();
        args.extend(
            ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres"].map(String::from),
        );
        for c in commands {
            args.push("-c".into());
            args.push(c.to_string());
        }
        args
    }

    pub fn lsn(&self, sql: &str) -> Result<Lsn> {
        let s = self.sql(sql)?;
        s.parse()
            .map_err(|e| anyhow::anyhow!("{sql:?} returned {s:?}, not an LSN: {e}"))
    }

    /// `pgbench <args> postgres`; returns its output.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut all = self.conn_args();
        all.extend(args.iter().map(|s| s.to_string()));
        all.push("postgres".into());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.progs.run("pgbench", &refs)
    }

    /// `pg_basebackup -Fp -X stream -c fast` into `dest` (which must not exist, in a
    /// directory the Postgres user may write).
    pub fn pg_basebackup(&self, dest: &Path) -> Result<()> {
        let mut all = self.conn_args();
        let d = dest.display().to_string();
        all.extend(["-D", &d, "-Fp", "-X", "stream", "-c", "fast", "--no-sync"].map(String::from));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.progs.run("pg_basebackup", &refs)?;
        Ok(())
    }
}

/// A query's answer and how long it took.
#[derive(Clone, Debug)]
pub struct TimedSql {
    /// What psql printed, without the timing line and the trailing newline.
    pub output: String,
    /// From starting psql to its exit: process start, connection (a new backend), query.
    pub wall: Duration,
    /// The query alone as psql's `\timing` measured it (sent to result received).
    pub query_ms: f64,
}

/// Splits psql's output into the query's rows and its `Time: 1.234 ms` line (the last one).
pub fn split_timing(out: &str) -> Result<(String, f64)> {
    let mut rows = Vec::new();
    let mut ms = None;
    for line in out.lines() {
        match line.strip_prefix("Time: ") {
            Some(t) => {
                let num = t.split_whitespace().next().unwrap_or_default();
                ms = Some(
                    num.parse::<f64>()
                        .map_err(|e| anyhow::anyhow!("psql printed {line:?}: {e}"))?,
                );
            }
            None => rows.push(line),
        }
    }
    let ms = ms.with_context(|| format!("psql printed no Time: line: {out:?}"))?;
    Ok((rows.join("\n"), ms))
}

/// What one pgbench run reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgbenchResult {
    /// `tps = … (without initial connection time)`.
    pub tps: f64,
    /// `number of transactions actually processed: N`.
    pub transactions: u64,
}

/// Reads pgbench's summary.
pub fn parse_pgbench(out: &str) -> Result<PgbenchResult> {
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("pgbench printed no tps line: {out}"))?;
    let transactions = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(['/', ' ']).next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("pgbench printed no transaction count: {out}"))?;
    Ok(PgbenchResult { tps, transactions })
}

/// The backup's start LSN, from the `START WAL LOCATION: 0/2000028 (file …)` line of its
/// backup_label.
pub fn backup_start_lsn(backup_dir: &Path) -> Result<Lsn> {
    let p = backup_dir.join("backup_label");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    parse_backup_label(&text).with_context(|| format!("in {}", p.display()))
}

pub fn parse_backup_label(text: &str) -> Result<Lsn> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
        .context("no START WAL LOCATION line")?;
    let lsn = line
        .split_whitespace()
        .next()
        .context("START WAL LOCATION is empty")?;
    lsn.parse()
        .map_err(|e| anyhow::anyhow!("START WAL LOCATION {lsn:?} is not an LSN: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_backup_label() {
        let t = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
                 CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\n";
        assert_eq!(parse_backup_label(t).unwrap(), Lsn(0x5000028));
        assert!(parse_backup_label("CHECKPOINT LOCATION: 0/5000060\n").is_err());
        assert!(parse_backup_label("START WAL LOCATION: nonsense (file x)\n").is_err());
    }

    #[test]
    fn splits_psql_timing() {
        let (rows, ms) = split_timing("42\nTime: 0.512 ms\n").unwrap();
        assert_eq!((rows.as_str(), ms), ("42", 0.512));
        let (rows, ms) = split_timing("3000000|17\nTime: 1523.250 ms (00:01.523)\n").unwrap();
        assert_eq!((rows.as_str(), ms), ("3000000|17", 1523.25));
        assert!(split_timing("42\n").is_err());
    }

    #[test]
    fn reads_pgbench_summary() {
        let out = "transaction type: <builtin: select only>\nscaling factor: 10\n\
                   number of transactions actually processed: 81234\n\
                   latency average = 0.246 ms\n\
                   initial connection time = 3.117 ms\n\
                   tps = 8123.456789 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(out).unwrap(),
            PgbenchResult {
                tps: 8123.456789,
                transactions: 81234
            }
        );
        assert!(parse_pgbench("nothing").is_err());
    }
}
