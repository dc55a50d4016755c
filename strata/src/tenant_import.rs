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
//! walproposer starts. From then on the source's commits wait for Strata, so the import is
//! cluster state, never scratch: its record (`imports/<tenant>.toml`) stays until `strata
//! tenant detach`, `strata start` starts its walproposer again, `strata stop` warns that the
//! source's commits wait until then, and `strata tenant detach` hands the source back. The
//! walproposer is shown as the compute `import-<tenant>` (status, the branch's one writer).
//!
//! Apart from the slot and, when asked, `synchronous_standby_names`, the source is not
//! changed: its roles keep their passwords (the tenant's computes take them), unless
//! `--set-source-password` gives a password-less `postgres` the cluster's compute password.

mod detach;
mod record;
mod source;
mod sync_names;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::PgPrograms;
use pageserver::import::backup_label::BackupLabel;
use walproto::pgclient::ConnConfig;
use walproto::Lsn;

use crate::cluster::daemon::State;
use crate::cluster::ClusterConfig;
use crate::computes::walproposer_daemon;
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::Output;
pub use detach::{detach, Detached};
pub use record::tenant_of_compute;
use record::ImportRecord;
use source::Source;

/// The application name the source's synchronous_standby_names must hold.
pub const APP_NAME: &str = "strata";

/// What `strata tenant import` was asked (its flags: the command's `ImportArgs`).
#[derive(Debug)]
pub struct ImportRequest {
    /// The source's libpq key=value connection string (a superuser).
    pub from: String,
    /// The tenant's name (default: "main" for the first tenant, else required).
    pub name: Option<String>,
    /// Set the source's synchronous_standby_names right before the walproposer starts.
    pub configure_sync: bool,
    /// Give a password-less `postgres` role of the source the cluster's compute password.
    pub set_source_password: bool,
}

/// A finished import, for the command to report.
pub struct Imported {
    /// The source's host, as its connection string gives it.
    pub host: String,
    pub tenant: String,
    pub tenant_id: String,
    pub timeline_id: String,
    pub backup_start: String,
    /// Where the new branch is readable from (the backup's end).
    pub readable_from: Lsn,
    /// The walproposer, shown as this compute.
    pub compute: String,
    pub slot: String,
    pub seconds: f64,
}

/// Imports the source as a new tenant (see the module's comment).
pub fn run(dir: &Path, args: &ImportRequest, out: &Output) -> Result<Imported> {
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
    if ImportRecord::load(dir, &name)?.is_some() {
        bail!("an import of tenant {name:?} is recorded already (strata tenant detach {name})");
    }
    let compute_name = record::compute_name(&name);
    if crate::computes::ComputeRecord::load(dir, &compute_name).is_ok() {
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
    let result = import_with_slot(dir, &cfg, &src, &name, &slot, &system_id, args, out);
    let (rec, end) = match result {
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
    Ok(Imported {
        host: conn.host,
        tenant: name,
        tenant_id: rec.tenant_id,
        timeline_id: rec.timeline_id,
        backup_start: rec.backup_start,
        readable_from: end,
        compute: compute_name,
        slot,
        seconds: t0.elapsed().as_secs_f64(),
    })
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
             walproposer did not start; fix the cause below, then run `strata tenant reconnect \
             {}` (or `strata tenant detach {}` to hand the source back)",
            self.tenant, self.slot, self.tenant, self.tenant
        )
    }
}

/// Copies and imports the source; returns its record and the LSN it is readable from.
#[allow(clippy::too_many_arguments)]
fn import_with_slot(
    dir: &Path,
    cfg: &ClusterConfig,
    src: &Source,
    name: &str,
    slot: &str,
    system_id: &str,
    args: &ImportRequest,
    out: &Output,
) -> Result<(ImportRecord, Lsn)> {
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
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    names.add_tenant(name, &tenant.tenant_id)?;
    names.add_branch(name, "main", &tl.timeline_id)?;
    names.store(dir, &names_lock)?;

    let rec = ImportRecord {
        tenant: name.to_string(),
        tenant_id: tenant.tenant_id.clone(),
        timeline_id: tl.timeline_id.clone(),
        connstr: src.connstr.clone(),
        slot: slot.to_string(),
        application_name: APP_NAME.into(),
        backup_start: start.to_string(),
        system_id: system_id.to_string(),
    };
    // Durable before the source's commits can wait for Strata.
    rec.store(dir)?;
    rec.compute_record()?.store(dir)?;

    let started = (|| {
        if args.configure_sync {
            out.step(&format!(
                "setting the source's synchronous_standby_names = '{APP_NAME}'"
            ));
            src.configure_sync()?;
        }
        out.step("starting the walproposer against the source");
        start_walproposer(dir, cfg, &rec)
    })();
    if started.is_ok() {
        if let Err(e) = source_password_step(dir, cfg, src, args.set_source_password, out) {
            eprintln!(
                "warning: computes of tenant {name} may not accept the cluster's compute \
                 password: {e:#}"
            );
        }
    }
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
    Ok((rec, Lsn(tl.last_record_end)))
}

/// Computes log in with the password in the tenant's own catalog, which comes from the
/// source: the source's roles and passwords work on its computes as they do on the source.
/// The source is the user's own database, so it is changed only when asked
/// (`--set-source-password`): then a `postgres` role without a password gets the cluster's
/// compute password, through the source's own WAL. Otherwise this only says what logs in.
fn source_password_step(
    dir: &Path,
    cfg: &ClusterConfig,
    src: &Source,
    set_password: bool,
    out: &Output,
) -> Result<()> {
    let Some(password) = crate::auth_setup::compute_password(dir, cfg)? else {
        return Ok(());
    };
    if src.query(compute::node::POSTGRES_HAS_NO_PASSWORD)? != "t" {
        out.step(
            "the source's postgres role has a password of its own: this tenant's computes \
             take that one, not the cluster's compute password",
        );
        return Ok(());
    }
    if !set_password {
        out.step(
            "the source's postgres role has no password and is left so: over TCP, this \
             tenant's computes take the source's own roles and passwords (postgres logs in \
             over the compute's Unix socket only); `--set-source-password` would give it the \
             cluster's compute password",
        );
        return Ok(());
    }
    src.query(&compute::node::set_password_sql(&password))?;
    out.step(
        "the source's postgres role had no password: it has the cluster's compute password \
         now (auth/compute_password, --set-source-password), for this tenant's computes",
    );
    Ok(())
}

fn start_walproposer(dir: &Path, cfg: &ClusterConfig, rec: &ImportRecord) -> Result<()> {
    let bin = crate::cluster::sibling_binary("compute")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("walproposer")
        .args(["--pg", &rec.connstr])
        .args(["--safekeepers", &cfg.safekeeper_grpc_addrs().join(",")])
        .args(["--tenant", &rec.tenant_id])
        .args(["--timeline", &rec.timeline_id])
        .args(["--slot", &rec.slot])
        .args(["--application-name", &rec.application_name])
        // The safekeepers' history of this timeline begins at the backup's start: all WAL
        // the pageserver ingested from the backup, and everything after it. (Used only when
        // no safekeeper has WAL of the timeline yet; a reconnect resumes where they are.)
        .args(["--start-lsn", &rec.backup_start()?.to_string()])
        // A group with this tenant as a member fences it (`strata group`).
        .args(crate::computes::walproposer_fence_args(
            dir,
            cfg,
            &rec.compute_name(),
        )?)
        .envs(cfg.service_env())
        .args(crate::auth_setup::walproposer_args(
            dir,
            cfg,
            &crate::computes::compute_dir(dir, &rec.compute_name()),
            &rec.tenant_id,
        )?)
        .args(crate::tls_setup::client_args(dir, cfg));
    walproposer_daemon(dir, &rec.compute_name()).start(
        cmd,
        "streaming from Postgres",
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// Starts the import's walproposer unless it runs; whether it started it. The compute
/// record that shows it is written again if something removed it.
fn ensure_streaming(dir: &Path, cfg: &ClusterConfig, rec: &ImportRecord) -> Result<bool> {
    let compute = rec.compute_record()?;
    if crate::computes::ComputeRecord::load(dir, &compute.name).is_err() {
        compute.store(dir)?;
    }
    if let State::Running(_) = walproposer_daemon(dir, &compute.name).state()? {
        return Ok(false);
    }
    start_walproposer(dir, cfg, rec)?;
    Ok(true)
}

/// What `strata tenant reconnect` did.
pub struct Reconnected {
    pub tenant: String,
    pub compute: String,
    pub slot: String,
    /// false: the walproposer ran already.
    pub started: bool,
}

/// `strata tenant reconnect`: starts an imported tenant's walproposer again (when it exited
/// because the source restarted, or after a failed start); the source's slot kept its WAL.
pub fn reconnect(dir: &Path, tenant: Option<&str>, out: &Output) -> Result<Reconnected> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, _) = names.tenant(tenant)?;
    let Some(rec) = ImportRecord::load(dir, &tenant)? else {
        bail!(
            "tenant {tenant} has no attached source: only tenants made by `strata tenant import` \
             (and not detached) reconnect"
        );
    };
    out.step(&format!("starting the walproposer of tenant {tenant}"));
    let started = ensure_streaming(dir, &cfg, &rec)?;
    Ok(Reconnected {
        tenant,
        compute: rec.compute_name(),
        slot: rec.slot,
        started,
    })
}

/// At the end of `strata start`: every attached import streams again, so its source's
/// commits (waiting for Strata since `strata stop`) go through. A source that cannot be
/// reached is reported, not fatal: the rest of the cluster serves its tenants.
pub fn reconnect_all(dir: &Path, cfg: &ClusterConfig, out: &Output) -> Result<()> {
    for rec in ImportRecord::list(dir)? {
        match ensure_streaming(dir, cfg, &rec) {
            Ok(true) => out.step(&format!(
                "reconnected the imported source of tenant {} (compute {})",
                rec.tenant,
                rec.compute_name()
            )),
            Ok(false) => {}
            Err(e) => eprintln!(
                "strata: warning: the imported source of tenant {} ({}) is not streaming, and \
                 its commits wait for Strata while its synchronous_standby_names names \
                 '{APP_NAME}': {e:#}\n  retry with `strata tenant reconnect {}`, or hand it \
                 back with `strata tenant detach {}`",
                rec.tenant, rec.connstr, rec.tenant, rec.tenant
            ),
        }
    }
    Ok(())
}

/// Before `strata stop`: says, for each attached import, that its source's commits will wait
/// until `strata start` (and how to stop without that).
pub fn warn_before_stop(dir: &Path) -> Result<()> {
    for rec in ImportRecord::list(dir)? {
        eprintln!(
            "strata: warning: tenant {} streams the imported Postgres \"{}\": once stopped, that \
             Postgres's commits wait (its synchronous_standby_names names '{APP_NAME}') until \
             `strata start` reconnects it; to stop without that, first hand it back with \
             `strata tenant detach {}`",
            rec.tenant, rec.connstr, rec.tenant
        );
    }
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
