//! Postgres 15 programs against a server reachable on 127.0.0.1 with trust authentication
//! (a Strata compute, or a recovered copy of it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use strata_tests::os_user::{self, RunAs};
use walproto::Lsn;

/// Where the programs are and which OS user runs them.
#[derive(Clone, Debug)]
pub struct PgProgs {
    pub bin: PathBuf,
    pub run_as: Option<RunAs>,
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
        })
    }

    /// A command for `prog`, as the Postgres OS user when we are root, run in /tmp (which
    /// that user can always enter).
    pub fn command(&self, prog: &str) -> Command {
        let mut c = os_user::command_as(self.run_as, &self.bin.join(prog));
        c.current_dir("/tmp");
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
        let mut args = self.conn_args();
        args.extend(
            [
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ]
            .map(String::from),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.progs.run("psql", &refs)?.trim_end().to_string())
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
}
