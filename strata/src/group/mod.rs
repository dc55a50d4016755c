//! Groups: tenants that are the servers of one sharded Postgres cluster, cut consistently
//! together (`strata group …`). See "Groups and consistent cuts" in `docs/architecture.md`.

pub mod cut;
pub mod restore;
pub mod store;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cluster::daemon::{Daemon, State};
use crate::names::Names;
use crate::output::Output;
use crate::target::format_time;
use store::{Group, GroupStore, Member};

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
    #[arg(value_parser = crate::names::new_branch_name)]
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
    #[arg(long = "as", value_parser = crate::names::new_branch_name)]
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
        GroupCommand::Create(a) => create(dir, a, out),
        GroupCommand::List => list(dir, out),
        GroupCommand::RestorePoint(RestorePointCommand::Create { name, point }) => {
            crate::names::validate(crate::names::Kind::Branch, &point)?;
            if point.starts_with(cut::AUTO_PREFIX) {
                bail!(
                    "names starting with {:?} are the automatic cutter's",
                    cut::AUTO_PREFIX
                );
            }
            let gs = GroupStore::open(dir)?;
            let g = gs.load(&name)?;
            let c = cut::take(&gs, &g, &point)?;
            let lsns: Vec<String> = c.lsns.iter().map(|(t, l)| format!("{t}={l}")).collect();
            out.result(
                &format!(
                    "cut {} of group {name} at {} (pause {:.1} ms): {}",
                    c.name,
                    format_time(c.time_us),
                    c.pause_ms,
                    lsns.join(" ")
                ),
                json!({"group": name, "name": c.name, "time": format_time(c.time_us),
                       "time_us": c.time_us, "lsns": c.lsns, "pause_ms": c.pause_ms}),
            );
            Ok(())
        }
        GroupCommand::RestorePoint(RestorePointCommand::List { name }) => {
            let gs = GroupStore::open(dir)?;
            let g = gs.load(&name)?;
            let cuts = gs.cuts(&g)?;
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
            let items: Vec<_> = cuts
                .iter()
                .map(|c| {
                    json!({"name": c.name, "time": format_time(c.time_us),
                                "time_us": c.time_us, "lsns": c.lsns, "pause_ms": c.pause_ms})
                })
                .collect();
            out.result(&lines.join("\n"), json!(items));
            Ok(())
        }
        GroupCommand::Branch(a) => {
            restore::branch(dir, &a.name, &a.at, &a.new_branch, a.naive, out)
        }
        GroupCommand::Query(a) => restore::query(dir, &a.name, &a.at, &a.sql, &a.database, out),
        GroupCommand::RunCutter { name } => run_cutter(dir, &name),
    }
}

/// `1s`, `500ms`, `2m`, `0` → a period (`None` for 0).
pub fn parse_every(s: &str) -> Result<Option<Duration>> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("--every {s:?}: give a period like 1s, 500ms or 2m (0: none)");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" | "" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

fn create(dir: &Path, a: CreateArgs, out: &Output) -> Result<()> {
    let every = parse_every(&a.every)?;
    let names = Names::load(dir)?;
    let mut members = Vec::new();
    for t in &a.tenants {
        if members.iter().any(|m: &Member| &m.tenant == t) {
            bail!("tenant {t:?} is listed twice");
        }
        let (tenant, tenant_id) = names.tenant(Some(t))?;
        let timeline_id = names.timeline(&tenant, &a.branch)?;
        members.push(Member {
            tenant,
            tenant_id,
            branch: a.branch.clone(),
            timeline_id,
        });
    }
    let g = Group {
        name: a.name.clone(),
        members,
        every_ms: every.map(|d| d.as_millis() as u64),
    };
    GroupStore::open(dir)?.create(&g)?;
    if every.is_some() {
        start_cutter(dir, &g)?;
    }
    out.result(
        &format!(
            "created group {} with members {}{}",
            g.name,
            a.tenants.join(", "),
            every.map_or(String::new(), |d| format!("; a cut every {d:?}"))
        ),
        json!({"group": g.name, "members": a.tenants, "every_ms": g.every_ms}),
    );
    Ok(())
}

fn list(dir: &Path, out: &Output) -> Result<()> {
    let mut lines = Vec::new();
    let mut items = Vec::new();
    let gs = GroupStore::open(dir)?;
    for g in gs.list()? {
        let cuts = gs.cuts(&g)?;
        let tenants: Vec<&str> = g.members.iter().map(|m| m.tenant.as_str()).collect();
        let cutter = match cutter_daemon(dir, &g.name).state()? {
            State::Running(_) => "running",
            State::Stopped => "stopped",
            State::Dead(_) => "dead",
        };
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

fn cutter_daemon(dir: &Path, name: &str) -> Daemon {
    Daemon::new(dir, &format!("group-{name}-cutter"))
}

const CUTTER_READY: &str = "cutter running";

fn start_cutter(dir: &Path, g: &Group) -> Result<()> {
    let d = cutter_daemon(dir, &g.name);
    if let State::Running(_) = d.state()? {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--dir")
        .arg(dir)
        .args(["group", "run-cutter", &g.name]);
    d.start(cmd, CUTTER_READY, Duration::from_secs(10))?;
    Ok(())
}

/// `strata start`: the cutter of every group that has one.
pub fn start_cutters(dir: &Path) -> Result<()> {
    for g in GroupStore::open(dir)?.list()? {
        if g.every_ms.is_some() {
            start_cutter(dir, &g).with_context(|| format!("the cutter of group {}", g.name))?;
            println!("started the cutter of group {}", g.name);
        }
    }
    Ok(())
}

/// `strata stop`: every cutter (before the computes, whose fences it would otherwise try).
/// Found by their pid files, so a stop works without the object store.
pub fn stop_cutters(dir: &Path) -> Result<()> {
    let run = dir.join("run");
    let entries = match std::fs::read_dir(&run) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", run.display())),
    };
    for e in entries {
        let file = e?.file_name().to_string_lossy().into_owned();
        let Some(name) = file
            .strip_prefix("group-")
            .and_then(|f| f.strip_suffix("-cutter.pid"))
        else {
            continue;
        };
        if cutter_daemon(dir, name).stop(Duration::from_secs(5))? {
            println!("stopped the cutter of group {name}");
        }
    }
    Ok(())
}

/// The cutter: a cut every period, named `auto-<unix ms>`; a failed cut is logged and the
/// next one tried on time.
fn run_cutter(dir: &Path, name: &str) -> Result<()> {
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    let every = Duration::from_millis(g.every_ms.context("the group has no --every")?);
    println!("{CUTTER_READY} for group {name}, a cut every {every:?}");
    let mut next = Instant::now() + every;
    let mut failing = false;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += every;
        if next < Instant::now() {
            next = Instant::now() + every;
        }
        let point = format!("{}{}", cut::AUTO_PREFIX, cut::unix_micros_now() / 1000);
        match cut::take(&gs, &g, &point) {
            Ok(c) => {
                if failing {
                    eprintln!(
                        "cuts succeed again: {} (pause {:.1} ms)",
                        c.name, c.pause_ms
                    );
                    failing = false;
                }
            }
            Err(e) => {
                // Said once per run of failures: a stopped member fails every period.
                if !failing {
                    eprintln!("cut {point} failed: {e:#}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_every("1s").unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_every("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_every("2m").unwrap(), Some(Duration::from_secs(120)));
        assert_eq!(parse_every("0").unwrap(), None);
        assert!(parse_every("1h").is_err());
        assert!(parse_every("x").is_err());
        assert!(parse_every("99999999999999999999s").is_err());
    }
}
