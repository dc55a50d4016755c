//! `strata tenant create|list`: a new database is `initdb`, imported into the pageserver as
//! page images at its checkpoint LSN (initdb's bootstrap is not in the WAL), with a `main`
//! branch whose WAL the pageserver streams from the safekeepers.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use compute::node::PgPrograms;
use serde_json::json;
use walproto::Lsn;

use strata::cluster::ClusterConfig;
use strata::mgmt::Pageserver;
use strata::names::Names;
use strata::output::Output;

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant: initdb, import into the pageserver, a `main` branch.
    Create(CreateArgs),
    /// List the tenants.
    List,
    /// A tenant's configuration (tenant.toml on the pageserver): get, or set without a
    /// restart.
    #[command(subcommand)]
    Config(super::tenant_config::TenantConfigCommand),
    /// Delete a tenant: its computes stopped, every branch's data removed on the pageserver
    /// and in the object store.
    Delete(super::delete::TenantDeleteArgs),
    /// Import a running PostgreSQL 15 (pg_basebackup, then its WAL through a walproposer)
    /// as a tenant with a `main` branch; the source stays its writer.
    Import(super::tenant_import::ImportArgs),
    /// Start an imported tenant's walproposer again (`strata start` does it for every
    /// imported tenant; this is for a walproposer that could not start then).
    Reconnect(super::tenant_import::ReconnectArgs),
    /// Hand an imported source back: its synchronous_standby_names no longer names Strata,
    /// what it acknowledged is streamed, the walproposer and the slot go; the tenant stays
    /// readable in Strata with the history up to now. Works with the cluster stopped too.
    Detach(super::tenant_import::DetachArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The tenant's name (default: "main" for the first, else required): 1 to 63 letters,
    /// digits, '_' or '-'.
    #[arg(value_parser = strata::names::new_tenant_name)]
    pub name: Option<String>,
}

pub fn run(dir: &Path, cmd: TenantCommand, out: &Output) -> Result<()> {
    match cmd {
        TenantCommand::Create(a) => create(dir, a, out),
        TenantCommand::List => list(dir, out),
        TenantCommand::Config(c) => super::tenant_config::run(dir, c, out),
        TenantCommand::Delete(a) => super::delete::tenant_delete(dir, &a, out),
        TenantCommand::Import(a) => {
            // Before the source's whole pg_basebackup: the cluster must take it.
            cluster_takes_writes(&ClusterConfig::load(dir)?)?;
            super::tenant_import::import(dir, a, out)
        }
        TenantCommand::Reconnect(a) => super::tenant_import::reconnect(dir, a, out),
        TenantCommand::Detach(a) => super::tenant_import::detach(dir, a, out),
    }
}

/// Fails unless the pageserver answers and a majority of the safekeepers do: what a new
/// tenant's import and WAL need.
fn cluster_takes_writes(cfg: &ClusterConfig) -> Result<()> {
    Pageserver::connect(&cfg.pageserver.grpc_addr())?.list_tenants()?;
    // An id no timeline has: a safekeeper that is up answers "not found".
    let probe = "0".repeat(32);
    let answers = strata::mgmt::safekeeper_statuses(&cfg.safekeeper_grpc_addrs(), &probe, &probe);
    let total = answers.len();
    let failures: Vec<String> = answers
        .into_iter()
        .filter_map(|a| a.err().map(|e| format!("{e:#}")))
        .collect();
    let answered = total.saturating_sub(failures.len());
    if answered.saturating_mul(2) <= total {
        anyhow::bail!(
            "only {answered} of {total} safekeepers answer, and an imported tenant's WAL needs a \
             majority: {} (is the cluster started? `strata start`, `strata status`)",
            failures.join("; ")
        );
    }
    Ok(())
}

fn create(dir: &Path, args: CreateArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    let name = match args.name {
        Some(n) => n,
        None if names.tenants.is_empty() => "main".to_string(),
        None => anyhow::bail!("name the tenant: strata tenant create NAME"),
    };
    if names.tenants.contains_key(&name) {
        anyhow::bail!("a tenant named {name:?} exists already");
    }
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let t0 = Instant::now();
    let pg = PgPrograms::new(&cfg.pg_bin)?;
    let initdb_dir = dir.join("tmp").join(format!("initdb-{name}"));
    out.step(&format!("initdb for tenant {name}"));
    let password = strata::auth_setup::compute_password(dir, &cfg)?;
    pg.initdb(&initdb_dir, password.as_deref())
        .with_context(|| format!("initdb in {}", initdb_dir.display()))?;
    let tenant = ps.create_tenant()?;
    out.step("importing the new database into the pageserver");
    let tl = ps.import_timeline(
        &tenant.tenant_id,
        &initdb_dir.to_string_lossy(),
        cfg.safekeeper_pg_addrs(),
    )?;
    std::fs::remove_dir_all(&initdb_dir).ok();
    names.add_tenant(&name, &tenant.tenant_id)?;
    names.add_branch(&name, "main", &tl.timeline_id)?;
    names.store(dir, &names_lock)?;
    let lsn = Lsn(tl.last_record_end);
    out.result(
        &format!(
            "created tenant {name} ({}) with branch main ({}) at {lsn} in {:.1} s",
            tenant.tenant_id,
            tl.timeline_id,
            t0.elapsed().as_secs_f64()
        ),
        json!({
            "tenant": name,
            "tenant_id": tenant.tenant_id,
            "branch": "main",
            "timeline_id": tl.timeline_id,
            "lsn": lsn.to_string(),
            "seconds": t0.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}

fn list(dir: &Path, out: &Output) -> Result<()> {
    let names = Names::load(dir)?;
    let mut lines = Vec::new();
    let mut items = Vec::new();
    for (name, id) in &names.tenants {
        let default = names.default_tenant.as_deref() == Some(name.as_str());
        lines.push(format!(
            "{name}{} {id}",
            if default { " (default)" } else { "" }
        ));
        items.push(json!({"tenant": name, "tenant_id": id, "default": default}));
    }
    if lines.is_empty() {
        lines.push("no tenants: strata tenant create".into());
    }
    out.result(&lines.join("\n"), json!(items));
    Ok(())
}
