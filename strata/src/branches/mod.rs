//! `strata branch create|list`, and resolving `--at` targets to LSNs.

pub mod restore;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use walproto::proto::pageserver as ps;
use walproto::Lsn;

use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::{pg_lsn, Output};
use crate::target::{format_time, Target};

#[derive(Subcommand, Debug)]
pub enum BranchCommand {
    /// Create a branch of PARENT at a point in its history (nothing is copied).
    Create(CreateArgs),
    /// Show the tenant's branches as a tree.
    List(TenantArg),
    /// Delete a branch (without branches of its own): its computes are stopped, its data
    /// removed on the pageserver and in the object store.
    Delete(crate::delete::BranchDeleteArgs),
    /// Restore a branch in place to a past moment: the branch keeps its name (connection
    /// strings reach the restored state) and what it was becomes `<BRANCH>_old_<time>`.
    Restore(restore::RestoreArgs),
}

#[derive(Args, Debug)]
pub struct TenantArg {
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The new branch's name: 1 to 63 letters, digits, '_' or '-'.
    #[arg(value_parser = crate::names::new_branch_name)]
    pub name: String,
    /// The branch to start from.
    #[arg(long, default_value = "main")]
    pub from: String,
    /// Where: an LSN (0/3A41F10), a time (2026-11-21 22:10:05+00: the state after every commit
    /// at or before it), or a restore point name. Default: the parent's latest state.
    #[arg(long)]
    pub at: Option<String>,
    /// With a time: leave out commits at exactly that time (like
    /// recovery_target_inclusive = off).
    #[arg(long)]
    pub exclusive: bool,
    #[command(flatten)]
    pub tenant: TenantArg,
}

pub fn run(dir: &Path, cmd: BranchCommand, out: &Output) -> Result<()> {
    match cmd {
        BranchCommand::Create(a) => create(dir, a, out),
        BranchCommand::List(a) => list(dir, a, out),
        BranchCommand::Delete(a) => crate::delete::branch_delete(dir, a, out),
        BranchCommand::Restore(a) => restore::restore(dir, a, out),
    }
}

fn create(dir: &Path, a: CreateArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant.tenant.as_deref())?;
    let parent = names.timeline(&tenant, &a.from)?;
    if names.timeline(&tenant, &a.name).is_ok() {
        bail!("tenant {tenant:?} already has a branch named {:?}", a.name);
    }
    let target = a.at.as_deref().map(Target::parse).transpose()?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let t0 = Instant::now();
    // Resolve the target against everything committed so far, not just what was ingested.
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &parent, false, out)?;
    let tl = ps.create_branch(
        &tenant_id,
        &parent,
        target.as_ref().map(crate::lsn::to_request_target),
        !a.exclusive,
        cfg.safekeeper_pg_addrs(),
    )?;
    names.add_branch(&tenant, &a.name, &tl.timeline_id)?;
    names.store(dir, &names_lock)?;
    let lsn = Lsn(tl.ancestor_lsn);
    out.result(
        &format!(
            "created branch {} from {} at {lsn} in {:.3} s",
            a.name,
            a.from,
            t0.elapsed().as_secs_f64()
        ),
        json!({
            "branch": a.name, "timeline_id": tl.timeline_id, "parent": a.from,
            "lsn": lsn.to_string(), "seconds": t0.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}

fn list(dir: &Path, a: TenantArg, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant.as_deref())?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let timelines = ps.list_timelines(&tenant_id)?;
    let mut children: BTreeMap<String, Vec<&ps::TimelineInfo>> = BTreeMap::new();
    for t in &timelines {
        children
            .entry(t.ancestor_timeline_id.clone())
            .or_default()
            .push(t);
    }
    let label = |t: &ps::TimelineInfo| -> String {
        names
            .branch_of(&tenant, &t.timeline_id)
            .map(str::to_string)
            .unwrap_or_else(|| format!("({})", t.timeline_id))
    };
    let mut lines = vec![format!("tenant {tenant} ({tenant_id})")];
    fn walk(
        id: &str,
        depth: usize,
        children: &BTreeMap<String, Vec<&ps::TimelineInfo>>,
        label: &dyn Fn(&ps::TimelineInfo) -> String,
        lines: &mut Vec<String>,
    ) {
        for t in children.get(id).into_iter().flatten() {
            let at = if t.ancestor_timeline_id.is_empty() {
                format!("from {}", Lsn(t.start_lsn))
            } else {
                format!("at {}", Lsn(t.ancestor_lsn))
            };
            lines.push(format!(
                "{}└─ {} {at}, latest {}",
                "   ".repeat(depth),
                label(t),
                Lsn(t.last_record_end)
            ));
            walk(&t.timeline_id, depth + 1, children, label, lines);
        }
    }
    walk("", 0, &children, &label, &mut lines);
    let items: Vec<_> = timelines
        .iter()
        .map(|t| {
            json!({
                "branch": names.branch_of(&tenant, &t.timeline_id),
                "timeline_id": t.timeline_id,
                "parent_timeline_id": t.ancestor_timeline_id,
                "branch_lsn": Lsn(t.ancestor_lsn).to_string(),
                "latest_lsn": Lsn(t.last_record_end).to_string(),
            })
        })
        .collect();
    out.result(&lines.join("\n"), json!(items));
    Ok(())
}

/// `strata restore-points`: the named restore points of a branch.
pub fn restore_points(dir: &Path, branch: &str, tenant: Option<&str>, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let tl = names.timeline(&tenant, branch)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &tl, false, out)?;
    let points = ps.restore_points(&tenant_id, &tl)?;
    let mut lines = Vec::new();
    for p in &points {
        lines.push(format!(
            "{:<24} {:<14} {}",
            p.name,
            pg_lsn(p.lsn),
            format_time(p.timestamp_micros)
        ));
    }
    if lines.is_empty() {
        lines.push(format!(
            "no restore points on {branch}: create one in SQL with SELECT pg_create_restore_point('name')"
        ));
    }
    let items: Vec<_> = points
        .iter()
        .map(|p| json!({"name": p.name, "lsn": pg_lsn(p.lsn), "time": format_time(p.timestamp_micros)}))
        .collect();
    out.result(&lines.join("\n"), json!(items));
    Ok(())
}

/// `strata lsn-at TIME`: the LSN of the state as of that time (after the last commit at or
/// before it).
pub fn lsn_at(
    dir: &Path,
    time: &str,
    branch: &str,
    tenant: Option<&str>,
    out: &Output,
) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let tl = names.timeline(&tenant, branch)?;
    let us = match Target::parse(time)? {
        Target::Time(us) => us,
        _ => bail!("{time:?} is not a time like 2026-11-21 22:10:05+00"),
    };
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &tl, false, out)?;
    let lsn = ps.lsn_for_timestamp(&tenant_id, &tl, us, true)?;
    // GC removed the history below its cutoff: the state there is gone.
    let cutoff = ps.timeline_status(&tenant_id, &tl)?.gc_cutoff_lsn;
    let readable = lsn >= cutoff;
    if !readable {
        eprintln!(
            "strata: warning: {} is {} on branch {branch}, below its GC cutoff {}: that state is \
             garbage collected and cannot be read; the oldest readable state is at {}",
            format_time(us),
            pg_lsn(lsn),
            pg_lsn(cutoff),
            pg_lsn(cutoff)
        );
    }
    out.result(
        &pg_lsn(lsn),
        json!({"time": format_time(us), "lsn": pg_lsn(lsn), "readable": readable,
               "gc_cutoff_lsn": pg_lsn(cutoff)}),
    );
    Ok(())
}
