//! The user's Postgres, reached with its own programs (psql, pg_basebackup). Every psql has a
//! connect timeout and a statement timeout: a source that does not answer is an error that
//! says so, never a hang.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::os_user::command_as;
use compute::node::PgPrograms;
use walproto::Lsn;

use super::sync_names::{self, Without};
use super::APP_NAME;

/// How long one statement on the source may take.
const STATEMENT_TIMEOUT: &str = "30s";
/// How long a connection to the source may take, in seconds.
const CONNECT_TIMEOUT_SECS: &str = "10";
/// How long a reload of the source's configuration may take to show in new sessions.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Source<'a> {
    pub pg: &'a PgPrograms,
    pub connstr: String,
}

/// What releasing the source's synchronous standby setting did.
pub struct Released {
    pub before: String,
    pub after: String,
    /// A quorum or priority count lowered to the standbys that remain: (was, now).
    pub lowered: Option<(u32, u32)>,
}

/// A slot on the source, if it exists: whether a walsender streams from it.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotState {
    Absent,
    Inactive,
    Active { pid: String },
}

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Source<'_> {
    fn psql(&self, connstr: &str, sql: &str) -> Result<String> {
        let prog = self.pg.bin.join("psql");
        let out = command_as(self.pg.run_as, &prog)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                connstr,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)
            .env(
                "PGOPTIONS",
                format!("-c statement_timeout={STATEMENT_TIMEOUT}"),
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", prog.display()))?;
        if !out.status.success() {
            bail!(
                "on the source Postgres: {sql}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn query(&self, sql: &str) -> Result<String> {
        self.psql(&self.connstr, sql)
    }

    /// Checks that the source can be imported and streamed; returns its system id.
    pub fn check(&self, configure_sync: bool) -> Result<String> {
        let row = self.query(
            "SELECT current_setting('server_version_num') || '|' || current_setting('wal_level') \
             || '|' || current_setting('synchronous_commit') || '|' || \
             current_setting('synchronous_standby_names') || '|' || \
             current_setting('max_wal_senders') || '|' || \
             (SELECT count(*) FROM pg_replication_slots) || '|' || \
             current_setting('max_replication_slots') || '|' || \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
        )?;
        let f: Vec<&str> = row.split('|').collect();
        if f.len() != 8 {
            bail!("unexpected answer from the source Postgres: {row:?}");
        }
        let version: u32 = f[0].parse().unwrap_or(0);
        if !(150000..160000).contains(&version) {
            bail!(
                "the source runs PostgreSQL server_version_num {}, Strata imports PostgreSQL 15",
                f[0]
            );
        }
        if !matches!(f[1], "replica" | "logical") {
            bail!(
                "the source has wal_level = {}: set wal_level = replica in its postgresql.conf \
                 and restart it",
                f[1]
            );
        }
        if !matches!(f[2], "on" | "remote_write") {
            bail!(
                "the source has synchronous_commit = {}: commits would not wait for the \
                 safekeepers; run on it: ALTER SYSTEM SET synchronous_commit = on; SELECT \
                 pg_reload_conf();",
                f[2]
            );
        }
        let named = sync_names::names_standby(f[3], APP_NAME)?;
        if !named && !configure_sync {
            bail!(
                "the source's synchronous_standby_names = '{}' does not name the walproposer, so \
                 its commits would not be durable in Strata. Either pass --configure-sync (strata \
                 sets it once the walproposer starts), or run on the source:\n  ALTER SYSTEM SET \
                 synchronous_standby_names = '{APP_NAME}';\n  SELECT pg_reload_conf();\n(commits \
                 then wait until the walproposer runs)",
                f[3]
            );
        }
        let senders: u32 = f[4].parse().unwrap_or(0);
        if senders < 2 {
            bail!("the source has max_wal_senders = {senders}: the backup and the walproposer need 2; raise it and restart");
        }
        let (used, max): (u32, u32) = (f[5].parse().unwrap_or(0), f[6].parse().unwrap_or(0));
        if used >= max {
            bail!("the source has no free replication slot ({used} of max_replication_slots = {max} used)");
        }
        if !matches!(f[7], "t" | "true") {
            bail!("connect to the source as a superuser (the import creates a replication slot and may change settings)");
        }
        let ident = self
            .psql(&format!("{} replication=true", self.connstr), "IDENTIFY_SYSTEM")
            .context("a replication connection to the source (pg_hba.conf must allow `replication` for this user)")?;
        let system_id = ident.split('|').next().unwrap_or_default().to_string();
        if system_id.is_empty() {
            bail!("IDENTIFY_SYSTEM on the source answered {ident:?}");
        }
        Ok(system_id)
    }

    pub fn create_slot(&self, slot: &str) -> Result<()> {
        if self.slot_state(slot)? != SlotState::Absent {
            bail!(
                "the source has a replication slot {slot} already (an earlier import?); if \
                 nothing uses it, drop it: SELECT pg_drop_replication_slot('{slot}');"
            );
        }
        // Reserved now: the source keeps its WAL from before the backup's start on.
        self.query(&format!(
            "SELECT pg_create_physical_replication_slot({}, true)",
            literal(slot)
        ))?;
        Ok(())
    }

    pub fn slot_state(&self, slot: &str) -> Result<SlotState> {
        let row = self.query(&format!(
            "SELECT active || '|' || coalesce(active_pid::text, '') FROM pg_replication_slots \
             WHERE slot_name = {}",
            literal(slot)
        ))?;
        Ok(match row.split_once('|') {
            None => SlotState::Absent,
            Some(("true", pid)) => SlotState::Active { pid: pid.into() },
            Some(_) => SlotState::Inactive,
        })
    }

    pub fn drop_slot(&self, slot: &str) -> Result<()> {
        self.query(&format!(
            "SELECT pg_drop_replication_slot({})",
            literal(slot)
        ))?;
        Ok(())
    }

    /// Drops `slot` once no walsender uses it (a stopped walproposer's walsender exits when it
    /// notices the closed connection); absent already is fine.
    pub fn drop_slot_once_unused(&self, slot: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.slot_state(slot)? {
                SlotState::Absent => return Ok(()),
                SlotState::Inactive => return self.drop_slot(slot),
                SlotState::Active { pid } if Instant::now() > deadline => bail!(
                    "the source's replication slot {slot} is still in use by its walsender (pid \
                     {pid}) {timeout:?} after the walproposer stopped; it keeps the source's WAL \
                     until dropped: SELECT pg_drop_replication_slot('{slot}');"
                ),
                SlotState::Active { .. } => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The end of the WAL the source has flushed: every commit it acknowledged ends there or
    /// before.
    pub fn flush_lsn(&self) -> Result<Lsn> {
        let text = self.query("SELECT pg_current_wal_flush_lsn()")?;
        text.parse().map_err(|e| {
            anyhow::anyhow!("the source's pg_current_wal_flush_lsn() = {text:?}: {e:?}")
        })
    }

    /// `pg_basebackup -Fp -X stream -c fast -P` into `dest` (progress on stderr).
    pub fn basebackup(&self, dest: &Path) -> Result<PathBuf> {
        self.pg.make_dir(dest)?;
        let prog = self.pg.bin.join("pg_basebackup");
        let d = dest.to_string_lossy().into_owned();
        let status = command_as(self.pg.run_as, &prog)
            .args([
                "-d",
                &self.connstr,
                "-D",
                &d,
                "-Fp",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            // The copy is transient: the pageserver makes what it imports durable.
            .args(["-P", "--no-sync"])
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {}", prog.display()))?;
        if !status.success() {
            bail!("pg_basebackup of the source into {d} failed ({status}); see its messages above");
        }
        Ok(dest.to_path_buf())
    }

    /// ALTER SYSTEM SET synchronous_standby_names = `value`, reload, and wait until new
    /// sessions see it.
    fn set_sync_names(&self, value: &str) -> Result<()> {
        self.query(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            literal(value)
        ))?;
        self.query("SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            let now = self.query("SHOW synchronous_standby_names")?;
            if now == value {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the source shows synchronous_standby_names = '{now}', not '{value}', \
                     {RELOAD_TIMEOUT:?} after pg_reload_conf()"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes the source's commits wait for the walproposer.
    pub fn configure_sync(&self) -> Result<()> {
        self.set_sync_names(APP_NAME)
    }

    /// Makes the source's commits stop waiting for the walproposer, keeping its other
    /// synchronous standbys; `None` if its setting did not name Strata.
    pub fn release_sync(&self) -> Result<Option<Released>> {
        let before = self.query("SHOW synchronous_standby_names")?;
        match sync_names::without(&before, APP_NAME)? {
            Without::Unchanged => Ok(None),
            Without::Changed { value, lowered } => {
                self.set_sync_names(&value)?;
                Ok(Some(Released {
                    before,
                    after: value,
                    lowered,
                }))
            }
        }
    }
}
