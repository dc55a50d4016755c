//! `strata group …`: the flags of the group commands, and what they print.

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use strata::group::{self, restore, store::Cut, NewGroup};
use strata::output::Output;
use strata::target::format_time;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group of tenants (each one server of a sharded cluster) and start its
    /// automatic cutter.
    Create(CreateArgs),
    /// List the groups, their members and cuts.
    List,
    /// Consistent cuts: every member's walproposer stops acknowledging commits, each one's
    /// quorum commit LSN is noted, acknowledgements resume.
    #[command(subcommand)]
    RestorePoint(RestorePointCommand),
    /// Restore every member at a cut (or, with --naive, at one wall-clock time) as a new
    /// branch with a compute, then settle in-doubt two-phase transactions.
    Branch(BranchArgs),
    /// Run one read-only query on every member as of a cut.
    Query(QueryArgs),
    /// The automatic cutter of a group (a supervised service started by `group create` and
    /// `strata start`).
    #[command(hide = true)]
    RunCutter { name: String },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(value_parser = strata::names::new_branch_name)]
    pub name: String,
    /// The member tenants, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tenants: Vec<String>,
    /// The branch of every member (default main).
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// How often the automatic cutter cuts, e.g. 1s, 500ms, 2m; 0 for no automatic cuts.
    #[arg(long, default_value = "1s")]
    pub every: String,
}

#[derive(Subcommand, Debug)]
pub enum RestorePointCommand {
    /// Take a cut named POINT now.
    Create { name: String, point: String },
    /// The group's cuts, oldest first.
    List { name: String },
}

#[derive(Args, Debug)]
pub struct BranchArgs {
    pub name: String,
    /// A cut's name, or a time (the latest cut at or before it).
    #[arg(long)]
    pub at: String,
    /// The new branch's name on every member.
    #[arg(long = "as", value_parser = strata::names::new_branch_name)]
    pub new_branch: String,
    /// Restore every member to the same wall-clock time independently, without a cut (for
    /// comparison: a distributed transaction may be committed on one member and not another).
    #[arg(long)]
    pub naive: bool,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    pub name: String,
    /// A cut's name, or a time (the latest cut at or before it).
    #[arg(long)]
    pub at: String,
    pub sql: String,
    #[arg(long, default_value = "postgres")]
    pub database: String,
}

pub fn run(dir: &Path, cmd: GroupCommand, out: &Output) -> Result<()> {
    match cmd {
        GroupCommand::Create(a) => create(dir, &a, out),
        GroupCommand::List => list(dir, out),
        GroupCommand::RestorePoint(RestorePointCommand::Create { name, point }) => {
            let c = group::take_cut(dir, &name, &point)?;
            let lsns: Vec<String> = c.lsns.iter().map(|(t, l)| format!("{t}={l}")).collect();
            out.result(
                &format!(
                    "cut {} of group {name} at {} (pause {:.1} ms): {}",
                    c.name,
                    format_time(c.time_us),
                    c.pause_ms,
                    lsns.join(" ")
                ),
                cut_json(&c, Some(&name)),
            );
            Ok(())
        }
        GroupCommand::RestorePoint(RestorePointCommand::List { name }) => {
            let cuts = group::cuts(dir, &name)?;
            let lines: Vec<String> = cuts
                .iter()
                .map(|c| {
                    let lsns: Vec<String> =
                        c.lsns.iter().map(|(t, l)| format!("{t}={l}")).collect();
                    format!(
                        "{:<28} {} {}",
                        c.name,
                        format_time(c.time_us),
                        lsns.join(" ")
                    )
                })
                .collect();
            let items: Vec<_> = cuts.iter().map(|c| cut_json(c, None)).collect();
            out.result(&lines.join("\n"), json!(items));
            Ok(())
        }
        GroupCommand::Branch(a) => branch(dir, &a, out),
        GroupCommand::Query(a) => query(dir, &a, out),
        GroupCommand::RunCutter { name } => group::run_cutter(dir, &name),
    }
}

/// A cut as JSON; with the group's name when it was just taken.
fn cut_json(c: &Cut, group: Option<&str>) -> serde_json::Value {
    let mut v = json!({"name": c.name, "time": format_time(c.time_us),
                       "time_us": c.time_us, "lsns": c.lsns, "pause_ms": c.pause_ms});
    if let Some(g) = group {
        v["group"] = json!(g);
    }
    v
}

fn create(dir: &Path, a: &CreateArgs, out: &Output) -> Result<()> {
    let g = group::create(
        dir,
        &NewGroup {
            name: &a.name,
            tenants: &a.tenants,
            branch: &a.branch,
            every: &a.every,
        },
    )?;
    out.result(
        &format!(
            "created group {} with members {}{}",
            g.name,
            a.tenants.join(", "),
            g.every_ms.map_or(String::new(), |ms| format!(
                "; a cut every {:?}",
                std::time::Duration::from_millis(ms)
            ))
        ),
        json!({"group": g.name, "members": a.tenants, "every_ms": g.every_ms}),
    );
    Ok(())
}

fn list(dir: &Path, out: &Output) -> Result<()> {
    let mut lines = Vec::new();
    let mut items = Vec::new();
    for l in group::list(dir)? {
        let (g, cuts, cutter) = (&l.group, &l.cuts, l.cutter);
        let tenants: Vec<&str> = g.members.iter().map(|m| m.tenant.as_str()).collect();
        lines.push(format!(
            "{:<16} members {:<30} every {:<8} cutter {cutter:<8} cuts {}{}",
            g.name,
            tenants.join(","),
            g.every_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            cuts.len(),
            cuts.last().map_or(String::new(), |c| format!(
                ", last {}",
                format_time(c.time_us)
            ))
        ));
        items.push(
            json!({"group": g.name, "members": g.members, "every_ms": g.every_ms,
                          "cutter": cutter, "cuts": cuts.len(),
                          "last_cut": cuts.last().map(|c| format_time(c.time_us))}),
        );
    }
    if lines.is_empty() {
        lines.push("no groups (strata group create NAME --tenants a,b,c)".into());
    }
    out.result(&lines.join("\n"), json!(items));
    Ok(())
}

fn branch(dir: &Path, a: &BranchArgs, out: &Output) -> Result<()> {
    let r = restore::branch(dir, &a.name, &a.at, &a.new_branch, a.naive, out)?;
    let mut lines = vec![format!(
        "group {} restored at {} as branch {}:",
        a.name, r.at, a.new_branch
    )];
    let mut members = Vec::new();
    for m in &r.members {
        let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", m.port);
        lines.push(format!(
            "  {:<16} compute {:<20} {url}",
            m.tenant, m.compute
        ));
        members.push(
            json!({"tenant": m.tenant, "compute": m.compute, "port": m.port, "connstr": url}),
        );
    }
    if r.settled.is_empty() {
        lines.push("no in-doubt transactions".into());
    }
    for s in &r.settled {
        lines.push(format!(
            "  {} {:?} on {} ({})",
            s.action, s.gid, s.tenant, s.why
        ));
    }
    out.result(
        &lines.join("\n"),
        json!({
            "group": a.name, "branch": a.new_branch, "at": r.at, "members": members,
            "settled": r.settled.iter().map(|s| json!({
                "tenant": s.tenant, "gid": s.gid, "action": s.action, "why": s.why,
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

fn query(dir: &Path, a: &QueryArgs, out: &Output) -> Result<()> {
    let q = restore::query(dir, &a.name, &a.at, &a.sql, &a.database)?;
    let mut lines = vec![format!("group {} at {}:", a.name, q.at)];
    let mut results = Vec::new();
    for m in &q.members {
        lines.push(format!("-- {} at {}", m.tenant, m.lsn));
        lines.push(m.output.trim_end().to_string());
        results.push(json!({"tenant": m.tenant, "lsn": m.lsn, "output": m.output}));
    }
    out.result(
        &lines.join("\n"),
        json!({"group": a.name, "at": q.at, "members": results}),
    );
    Ok(())
}
