//! `strata branch create|list|delete|restore`, `strata restore-points` and `strata lsn-at`:
//! their flags, and what they print.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use walproto::Lsn;

use strata::branches::{self, restore::RestoreRequest, Branch, NewBranch};
use strata::output::{pg_lsn, Output};
use strata::target::format_time;

#[derive(Subcommand, Debug)]
pub enum BranchCommand {
    /// Create a branch of PARENT at a point in its history (nothing is copied).
    Create(CreateArgs),
    /// Show the tenant's branches as a tree.
    List(TenantArg),
    /// Delete a branch (without branches of its own): its computes are stopped, its data
    /// removed on the pageserver and in the object store.
    Delete(super::delete::BranchDeleteArgs),
    /// Restore a branch in place to a past moment: the branch keeps its name (connection
    /// strings reach the restored state) and what it was becomes `<BRANCH>_old_<time>`.
    Restore(RestoreArgs),
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
    #[arg(value_parser = strata::names::new_branch_name)]
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

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The branch to restore (any branch, root or not).
    pub branch: String,
    /// The moment: an LSN (0/3A41F10), a time (2026-11-21 22:10:05+00: the state after every
    /// commit at or before it), or a restore point name.
    #[arg(long)]
    pub at: String,
    /// With a time: leave out commits at exactly that time.
    #[arg(long)]
    pub exclusive: bool,
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct BranchArgs {
    #[arg(long, default_value = "main")]
    pub branch: String,
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsnAtArgs {
    /// A time like "2026-11-21 22:10:05+00" (UTC when no offset) or @<unix seconds>.
    pub time: String,
    #[command(flatten)]
    pub branch: BranchArgs,
}

pub fn run(dir: &Path, cmd: BranchCommand, out: &Output) -> Result<()> {
    match cmd {
        BranchCommand::Create(a) => create(dir, &a, out),
        BranchCommand::List(a) => list(dir, &a, out),
        BranchCommand::Delete(a) => super::delete::branch_delete(dir, &a, out),
        BranchCommand::Restore(a) => restore(dir, &a, out),
    }
}

pub fn create(dir: &Path, a: &CreateArgs, out: &Output) -> Result<()> {
    let made = branches::create(
        dir,
        &NewBranch {
            name: &a.name,
            from: &a.from,
            at: a.at.as_deref(),
            exclusive: a.exclusive,
            tenant: a.tenant.tenant.as_deref(),
        },
        out,
    )?;
    out.result(
        &format!(
            "created branch {} from {} at {} in {:.3} s",
            a.name, a.from, made.lsn, made.seconds
        ),
        json!({
            "branch": a.name, "timeline_id": made.timeline_id, "parent": a.from,
            "lsn": made.lsn.to_string(), "seconds": made.seconds,
        }),
    );
    Ok(())
}

fn list(dir: &Path, a: &TenantArg, out: &Output) -> Result<()> {
    let all = branches::list(dir, a.tenant.as_deref())?;
    let mut children: BTreeMap<&str, Vec<&Branch>> = BTreeMap::new();
    for b in &all.timelines {
        children
            .entry(&b.info.ancestor_timeline_id)
            .or_default()
            .push(b);
    }
    let mut lines = vec![format!("tenant {} ({})", all.tenant, all.tenant_id)];
    fn walk(
        id: &str,
        depth: usize,
        children: &BTreeMap<&str, Vec<&Branch>>,
        lines: &mut Vec<String>,
    ) {
        for b in children.get(id).into_iter().flatten() {
            let t = &b.info;
            let at = if t.ancestor_timeline_id.is_empty() {
                format!("from {}", Lsn(t.start_lsn))
            } else {
                format!("at {}", Lsn(t.ancestor_lsn))
            };
            let label = b
                .name
                .clone()
                .unwrap_or_else(|| format!("({})", t.timeline_id));
            lines.push(format!(
                "{}└─ {label} {at}, latest {}",
                "   ".repeat(depth),
                Lsn(t.last_record_end)
            ));
            walk(&t.timeline_id, depth + 1, children, lines);
        }
    }
    walk("", 0, &children, &mut lines);
    let items: Vec<_> = all
        .timelines
        .iter()
        .map(|b| {
            let t = &b.info;
            json!({
                "branch": b.name,
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

fn restore(dir: &Path, a: &RestoreArgs, out: &Output) -> Result<()> {
    let r = branches::restore::restore(
        dir,
        &RestoreRequest {
            branch: &a.branch,
            at: &a.at,
            exclusive: a.exclusive,
            tenant: a.tenant.as_deref(),
        },
        out,
    )?;
    let stopped_text = if r.computes_stopped.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (the proxy starts the branch's compute again on the next connection)",
            r.computes_stopped.join(", ")
        )
    };
    out.result(
        &format!(
            "restored branch {} of tenant {} to {} in {:.3} s; what it was is branch {}; \
             computes stopped: {stopped_text}",
            a.branch, r.tenant, r.lsn, r.seconds, r.backup_branch
        ),
        json!({
            "tenant": r.tenant, "branch": a.branch, "lsn": r.lsn.to_string(),
            "timeline_id": r.timeline_id,
            "backup_branch": r.backup_branch, "backup_timeline_id": r.backup_timeline_id,
            "computes_stopped": r.computes_stopped, "seconds": r.seconds,
        }),
    );
    Ok(())
}

/// `strata restore-points`: the named restore points of a branch.
pub fn restore_points(dir: &Path, a: &BranchArgs, out: &Output) -> Result<()> {
    let branch = &a.branch;
    let points = branches::restore_points(dir, branch, a.tenant.as_deref(), out)?;
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
pub fn lsn_at(dir: &Path, a: &LsnAtArgs, out: &Output) -> Result<()> {
    let branch = &a.branch.branch;
    let at = branches::lsn_at(dir, &a.time, branch, a.branch.tenant.as_deref(), out)?;
    let (lsn, cutoff) = (pg_lsn(at.lsn), pg_lsn(at.gc_cutoff_lsn));
    if !at.readable() {
        eprintln!(
            "strata: warning: {} is {lsn} on branch {branch}, below its GC cutoff {cutoff}: that \
             state is garbage collected and cannot be read; the oldest readable state is at \
             {cutoff}",
            format_time(at.time_us),
        );
    }
    out.result(
        &lsn,
        json!({"time": format_time(at.time_us), "lsn": lsn, "readable": at.readable(),
               "gc_cutoff_lsn": cutoff}),
    );
    Ok(())
}
