//! `strata tenant import --from <connstr>`: an existing, running PostgreSQL 15 becomes a
//! tenant. A physical replication slot is created first (it holds the source's WAL from
//! before the backup's start until the walproposer has streamed it), then `pg_basebackup -X
//! stream` copies the source into the cluster directory, the pageserver imports that copy (the
//! import LSN is the backup's start; the timeline is readable from the backup's end) as the
//! tenant's `main` branch, and a walproposer streams the source's WAL from the backup's start
//! on to the safekeepers, from which the pageserver keeps ingesting.
//!
//! The source stays the writer of `main`. Its commits are quorum-durable only when its
//! `synchronous_standby_names` names the walproposer: the import checks that before it copies
//! anything, or with `--configure-sync` sets it (ALTER SYSTEM, reload) just before the
//! walproposer starts. The walproposer is recorded as the compute `import-<tenant>`, so
//! `strata status` shows it and `strata stop` / `strata compute stop` stop it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use compute::node::os_user::command_as;
use compute::node::PgPrograms;
use pageserver::import::backup_label::BackupLabel;
use serde::{Deserialize, Serialize};
use serde_json::json;
use walproto::pgclient::ConnConfig;
use walproto::Lsn;

use crate::cluster::ClusterConfig;
use crate::compute_cmd::{compute_dir, walproposer_daemon, ComputeRecord};
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::Output;

/// The application name the source's synchronous_standby_names must hold.
pub const APP_NAME: &str = "strata";

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The running PostgreSQL 15 to import, as a libpq key=value connection string of a
    /// superuser (e.g. "host=/var/run/postgresql port=5432 user=postgres").
    #[arg(long, value_name = "CONNSTR")]
    pub from: String,
    /// The tenant's name (default: "main" for the first tenant, else required).
    #[arg(long)]
    pub name: Option<String>,
    /// Set the source's synchronous_standby_names to the walproposer (ALTER SYSTEM and
    /// pg_reload_conf) right before the walproposer starts; without it the import requires
    /// the setting to be in place already.
    #[arg(long)]
    pub configure_sync: bool,
}

/// What the import recorded about its source, next to the compute record.
#[derive(Debug, Serialize, Deserialize)]
pub struct SourceRecord {
    pub connstr: String,
    pub slot: String,
    pub application_name: String,
    pub backup_start: String,
    pub system_id: String,
}

const SOURCE_FILE: &str = "source.toml";

pub fn run(dir: &Path, args: ImportArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None if names.tenants.is_empty() => "main".to_string(),
        None => bail!("name the tenant: strata tenant import --from … --name NAME"),
    };
    if names.tenants.contains_key(&name) {
        bail!("a tenant named {name:?} exists already");
    }
    let compute_name = format!("import-{name}");
    if ComputeRecord::load(dir, &compute_name).is_ok() {
        bail!(
            "a compute named {compute_name:?} exists already (strata compute stop {compute_name})"
        );
    }
    let conn = ConnConfig::parse(&args.from).with_context(|| {
        format!(
            "--from {:?}: give a key=value connection string (host, port, user, dbname, password)",
            args.from
        )
    })?;
    let pg = PgPrograms::new(&cfg.pg_bin)?;
    let src = Source {
        pg: &pg,
        connstr: args.from.clone(),
    };
    let t0 = Instant::now();

    out.step(&format!(
        "checking the source Postgres ({}:{})",
        conn.host, conn.port
    ));
    let system_id = src.check(args.configure_sync)?;
    let slot = slot_name(&name);
    src.create_slot(&slot)?;
    // From here on a failure drops the slot again, so it holds no WAL for nothing.
    let result = import_with_slot(
        dir,
        &cfg,
        &src,
        &name,
        &compute_name,
        &slot,
        &system_id,
        &args,
        out,
    );
    let (tenant_id, timeline_id, start, end) = match result {
        Ok(v) => v,
        Err(e) if e.downcast_ref::<NotStreaming>().is_some() => return Err(e),
        Err(e) => {
            let _ = fs::remove_dir_all(backup_dir(dir, &name));
            if let Err(d) = src.drop_slot(&slot) {
                eprintln!("strata: warning: dropping replication slot {slot}: {d:#}");
            }
            return Err(e);
        }
    };
    out.result(
        &format!(
            "imported {} as tenant {name} ({tenant_id}) with branch main ({timeline_id}): backup \
             from {start}, readable from {end}; the walproposer streams the source's WAL to the \
             safekeepers (compute {compute_name}) in {:.1} s",
            conn.host,
            t0.elapsed().as_secs_f64()
        ),
        json!({
            "tenant": name,
            "tenant_id": tenant_id,
            "branch": "main",
            "timeline_id": timeline_id,
            "backup_start": start.to_string(),
            "lsn": end.to_string(),
            "compute": compute_name,
            "slot": slot,
            "seconds": t0.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}

/// The import is done but its walproposer did not start (the slot stays).
#[derive(Debug)]
struct NotStreaming {
    tenant: String,
    slot: String,
}

impl std::fmt::Display for NotStreaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {} is imported and the source's replication slot {} keeps its WAL, but the \
             walproposer did not start; fix the cause below, then run `strata tenant reconnect {}`",
            self.tenant, self.slot, self.tenant
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn import_with_slot(
    dir: &Path,
    cfg: &ClusterConfig,
    src: &Source,
    name: &str,
    compute_name: &str,
    slot: &str,
    system_id: &str,
    args: &ImportArgs,
    out: &Output,
) -> Result<(String, String, Lsn, Lsn)> {
    let backup_dir = backup_dir(dir, name);
    out.step(&format!(
        "pg_basebackup of the source into {}",
        backup_dir.display()
    ));
    src.basebackup(&backup_dir)?;
    let label_path = backup_dir.join("backup_label");
    let label_text = fs::read_to_string(&label_path)
        .with_context(|| format!("reading {}", label_path.display()))?;
    let label = BackupLabel::parse(&label_text)
        .map_err(|r| anyhow::anyhow!("{}: {r}", label_path.display()))?;
    let start = label.start;

    out.step("importing the backup into the pageserver");
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let tenant = ps.create_tenant()?;
    let tl = ps.import_timeline(
        &tenant.tenant_id,
        &backup_dir.to_string_lossy(),
        cfg.safekeeper_pg_addrs(),
    )?;
    fs::remove_dir_all(&backup_dir).ok();
    let mut names = Names::load(dir)?;
    names.add_tenant(name, &tenant.tenant_id)?;
    names.add_branch(name, "main", &tl.timeline_id)?;
    names.store(dir)?;

    let record = ComputeRecord {
        name: compute_name.to_string(),
        branch: "main".into(),
        tenant_id: tenant.tenant_id.clone(),
        timeline_id: tl.timeline_id.clone(),
        port: ConnConfig::parse(&src.connstr)?.port,
        read_only: false,
        lsn: start.to_string(),
        expires_at: None,
    };
    record.store(dir)?;
    let source = SourceRecord {
        connstr: src.connstr.clone(),
        slot: slot.to_string(),
        application_name: APP_NAME.into(),
        backup_start: start.to_string(),
        system_id: system_id.to_string(),
    };
    let p = compute_dir(dir, compute_name).join(SOURCE_FILE);
    fs::write(&p, toml::to_string_pretty(&source)?)
        .with_context(|| format!("writing {}", p.display()))?;

    let started = (|| {
        if args.configure_sync {
            out.step(&format!(
                "setting the source's synchronous_standby_names = '{APP_NAME}'"
            ));
            src.configure_sync()?;
        }
        out.step("starting the walproposer against the source");
        start_walproposer(dir, cfg, &record, &src.connstr, slot, start)
    })();
    if let Err(e) = started {
        // The tenant, the records and the slot stay: `strata tenant reconnect` retries.
        return Err(e.context(NotStreaming {
            tenant: name.to_string(),
            slot: slot.to_string(),
        }));
    }
    if !args.configure_sync {
        eprintln!(
            "note: the source's commits wait for a safekeeper majority because its \
             synchronous_standby_names names '{APP_NAME}'"
        );
    }
    Ok((
        tenant.tenant_id,
        tl.timeline_id,
        start,
        Lsn(tl.last_record_end),
    ))
}

fn start_walproposer(
    dir: &Path,
    cfg: &ClusterConfig,
    rec: &ComputeRecord,
    connstr: &str,
    slot: &str,
    start: Lsn,
) -> Result<()> {
    let bin = crate::cluster::sibling_binary("compute")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("walproposer")
        .args(["--pg", connstr])
        .args(["--safekeepers", &cfg.safekeeper_grpc_addrs().join(",")])
        .args(["--tenant", &rec.tenant_id])
        .args(["--timeline", &rec.timeline_id])
        .args(["--slot", slot])
        .args(["--application-name", APP_NAME])
        // The safekeepers' history of this timeline begins at the backup's start: all WAL
        // the pageserver ingested from the backup, and everything after it. (Used only when
        // no safekeeper has WAL of the timeline yet; a reconnect resumes where they are.)
        .args(["--start-lsn", &start.to_string()]);
    walproposer_daemon(dir, &rec.name).start(
        cmd,
        "streaming from Postgres",
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReconnectArgs {
    /// The imported tenant (default: the default tenant).
    pub name: Option<String>,
}

/// `strata tenant reconnect`: starts an imported tenant's walproposer again (after `strata
/// stop`, or when it exited because the source restarted); the source's slot kept its WAL.
pub fn reconnect(dir: &Path, args: ReconnectArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, _) = names.tenant(args.name.as_deref())?;
    let compute_name = format!("import-{tenant}");
    let p = compute_dir(dir, &compute_name).join(SOURCE_FILE);
    let text = fs::read_to_string(&p).with_context(|| {
        format!(
            "tenant {tenant} has no imported source ({} unreadable): only tenants made by \
             `strata tenant import` reconnect",
            p.display()
        )
    })?;
    let source: SourceRecord =
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let record = ComputeRecord::load(dir, &compute_name)?;
    let daemon = walproposer_daemon(dir, &compute_name);
    if let crate::cluster::daemon::State::Running(pid) = daemon.state()? {
        bail!("the walproposer of tenant {tenant} runs already (pid {pid})");
    }
    let start: Lsn = source
        .backup_start
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: backup_start: {e:?}", p.display()))?;
    out.step(&format!("starting the walproposer of tenant {tenant}"));
    start_walproposer(dir, &cfg, &record, &source.connstr, &source.slot, start)?;
    out.result(
        &format!("tenant {tenant}: the walproposer streams the source's WAL again (compute {compute_name})"),
        json!({"tenant": tenant, "compute": compute_name, "slot": source.slot}),
    );
    Ok(())
}

/// Where pg_basebackup writes the source's copy (removed once imported).
fn backup_dir(dir: &Path, tenant: &str) -> PathBuf {
    dir.join("tmp").join(format!("import-{tenant}"))
}

/// A slot name from a tenant name: lower case letters, digits and underscores.
fn slot_name(tenant: &str) -> String {
    let clean: String = tenant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut s = format!("strata_{clean}");
    s.truncate(63);
    s
}

/// The user's Postgres, reached with its programs (psql, pg_basebackup).
struct Source<'a> {
    pg: &'a PgPrograms,
    connstr: String,
}

impl Source<'_> {
    fn psql(&self, connstr: &str, sql: &str) -> Result<String> {
        let out = self
            .pg
            .run(
                "psql",
                &[
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    connstr,
                    "-c",
                    sql,
                ],
            )
            .with_context(|| format!("on the source Postgres: {sql}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn query(&self, sql: &str) -> Result<String> {
        self.psql(&self.connstr, sql)
    }

    /// Checks that the source can be imported and streamed; returns its system id.
    fn check(&self, configure_sync: bool) -> Result<String> {
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
        let named = f[3]
            .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
            .any(|n| n.trim_matches('"') == APP_NAME || n == "*");
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

    fn create_slot(&self, slot: &str) -> Result<()> {
        let n = self.query(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))?;
        if n != "0" {
            bail!(
                "the source has a replication slot {slot} already (an earlier import?); if \
                 nothing uses it, drop it: SELECT pg_drop_replication_slot('{slot}');"
            );
        }
        // Reserved now: the source keeps its WAL from before the backup's start on.
        self.query(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ))?;
        Ok(())
    }

    fn drop_slot(&self, slot: &str) -> Result<()> {
        self.query(&format!("SELECT pg_drop_replication_slot('{slot}')"))?;
        Ok(())
    }

    /// `pg_basebackup -Fp -X stream -c fast -P` into `dest` (progress on stderr).
    fn basebackup(&self, dest: &Path) -> Result<PathBuf> {
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

    /// ALTER SYSTEM SET synchronous_standby_names, reload, and wait until new sessions see it.
    fn configure_sync(&self) -> Result<()> {
        self.query(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{APP_NAME}'"
        ))?;
        self.query("SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.query("SHOW synchronous_standby_names")? == APP_NAME {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the source does not show synchronous_standby_names = '{APP_NAME}' 10 s after pg_reload_conf()");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot_name;

    #[test]
    fn slot_names_are_valid_postgres_slot_names() {
        assert_eq!(slot_name("main"), "strata_main");
        assert_eq!(slot_name("Shop-EU.1"), "strata_shop_eu_1");
        let long = slot_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert!(long
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
