//! `strata gc [--branch B] [--tenant T]`: garbage collection on the pageserver; prints, per
//! branch, the cutoff (and what set it) and the layers and bytes removed.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use walproto::proto::pageserver as ps;
use walproto::Lsn;

use strata::cluster::ClusterConfig;
use strata::mgmt::Pageserver;
use strata::names::Names;
use strata::output::{pg_lsn, Output};

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only this branch (default: every branch of the tenant).
    #[arg(long)]
    pub branch: Option<String>,
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

fn lsns(v: &[u64]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|l| Lsn(*l).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One branch's result as a line of text.
fn describe(name: &str, g: &ps::TimelineGcResult) -> String {
    let cut = if g.image_lsn == 0 {
        "nothing below it could go yet".to_string()
    } else {
        format!(
            "history cut at {} (wrote {} image layers, {} bytes)",
            Lsn(g.image_lsn),
            g.image_layers_written,
            g.image_bytes_written
        )
    };
    format!(
        "{name}: cutoff {} (PITR window from {}, branch points: {}, leases: {}); {cut}; \
         removed {} layers, {} bytes; {} older layers kept",
        Lsn(g.cutoff_lsn),
        Lsn(g.pitr_lsn),
        lsns(&g.branch_points),
        lsns(&g.lease_lsns),
        g.layers_removed,
        g.bytes_removed,
        g.layers_kept_below
    )
}

pub fn run(dir: &Path, a: GcArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant.as_deref())?;
    let timeline = a
        .branch
        .as_deref()
        .map(|b| names.timeline(&tenant, b))
        .transpose()?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let res = ps.gc(&tenant_id, timeline.as_deref())?;
    let mut lines = Vec::new();
    let mut values = Vec::new();
    for g in &res.timelines {
        let name = names
            .branch_of(&tenant, &g.timeline_id)
            .unwrap_or(&g.timeline_id)
            .to_string();
        lines.push(describe(&name, g));
        values.push(json!({
            "branch": name,
            "timeline_id": g.timeline_id,
            "cutoff_lsn": Lsn(g.cutoff_lsn).to_string(),
            "pitr_lsn": Lsn(g.pitr_lsn).to_string(),
            "branch_points": g.branch_points.iter().map(|l| Lsn(*l).to_string()).collect::<Vec<_>>(),
            "lease_lsns": g.lease_lsns.iter().map(|l| Lsn(*l).to_string()).collect::<Vec<_>>(),
            "image_lsn": Lsn(g.image_lsn).to_string(),
            "image_layers_written": g.image_layers_written,
            "image_bytes_written": g.image_bytes_written,
            "layers_removed": g.layers_removed,
            "bytes_removed": g.bytes_removed,
            "layers_kept_below": g.layers_kept_below,
        }));
    }
    let removed: u64 = res.timelines.iter().map(|g| g.bytes_removed).sum();
    let layers: u32 = res.timelines.iter().map(|g| g.layers_removed).sum();
    lines.push(format!("total: removed {layers} layers, {removed} bytes"));
    out.result(
        &lines.join("\n"),
        json!({"tenant": tenant, "timelines": values, "layers_removed": layers, "bytes_removed": removed}),
    );
    Ok(())
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: Option<LeaseCommand>,
    /// The point to keep readable: an LSN, a time or a restore point name.
    pub at: Option<String>,
    /// How long: <n>s, <n>m, <n>h or <n>d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    #[arg(long, default_value = "main")]
    pub branch: String,
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum LeaseCommand {
    /// The unexpired leases of a branch (default: of every branch of the tenant).
    List {
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// End a lease on an LSN now: GC no longer keeps that point for it. Without --owner the
    /// lease without an owner (a user's); a compute's (`compute:<name>`) only with --owner.
    Revoke {
        /// The leased LSN (as `strata lease list` prints it).
        lsn: walproto::Lsn,
        /// The lease of this owner (as `strata lease list` prints it).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long, default_value = "main")]
        branch: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `<n><unit>` (s, m, h, d) in seconds.
fn parse_ttl(s: &str) -> Result<u64> {
    let bad = || anyhow::anyhow!("TTL {s:?}: expected a number and a unit (s, m, h, d), e.g. 1h");
    let unit = s.chars().last().ok_or_else(bad)?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

/// `strata lease AT [--ttl 1h] [--branch B]`: keeps a point of a branch readable (GC keeps
/// its history) until the lease expires; `strata lease list|revoke`.
pub fn lease(dir: &Path, a: LeaseArgs, out: &Output) -> Result<()> {
    match a.command {
        Some(LeaseCommand::List { branch, tenant }) => {
            return lease_list(dir, branch.as_deref(), tenant.as_deref(), out)
        }
        Some(LeaseCommand::Revoke {
            lsn,
            owner,
            branch,
            tenant,
        }) => {
            let owner = owner.unwrap_or_default();
            return lease_revoke(dir, lsn, &owner, &branch, tenant.as_deref(), out);
        }
        None => {}
    }
    let Some(at) = a.at.as_deref() else {
        bail!("give the point to lease (an LSN, a time or a restore point), or `lease list`");
    };
    let ttl = parse_ttl(&a.ttl)?;
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant.as_deref())?;
    let timeline = names.timeline(&tenant, &a.branch)?;
    let target = strata::target::Target::parse(at)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let lsn = strata::lsn::resolve_lsn(&mut ps, &tenant_id, &timeline, &target, true)?;
    // Below the branch's start there is no history of it at all, GC or not.
    let st = ps.timeline_status(&tenant_id, &timeline)?;
    if lsn.0 < st.start_lsn {
        bail!(
            "{} is below the start of branch {} ({}): its history begins there; a lease can be \
             taken at {}..={}",
            pg_lsn(lsn.0),
            a.branch,
            pg_lsn(st.start_lsn),
            pg_lsn(st.gc_cutoff_lsn.max(st.start_lsn)),
            pg_lsn(st.last_record_end)
        );
    }
    let r = ps.create_lease(&tenant_id, &timeline, lsn.0, ttl)?;
    let expires = strata::target::format_time(r.expires_unix_ms as i64 * 1000);
    out.result(
        &format!("lease on {} at {} until {expires}", a.branch, pg_lsn(lsn.0)),
        json!({"branch": a.branch, "lsn": pg_lsn(lsn.0), "expires_unix_ms": r.expires_unix_ms}),
    );
    Ok(())
}

/// One lease as a row; its owner `user` when it has none.
fn lease_row(branch: &str, l: &ps::LeaseInfo) -> (String, serde_json::Value) {
    let expires = strata::target::format_time((l.expires_unix_ms as i64).saturating_mul(1000));
    let owner = if l.owner.is_empty() { "user" } else { &l.owner };
    (
        format!(
            "{branch:<16} {:<14} {owner:<20} until {expires}",
            pg_lsn(l.lsn)
        ),
        json!({"branch": branch, "lsn": pg_lsn(l.lsn), "owner": l.owner,
               "expires_unix_ms": l.expires_unix_ms}),
    )
}

fn lease_list(dir: &Path, branch: Option<&str>, tenant: Option<&str>, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let branches: Vec<String> = match branch {
        Some(b) => vec![b.to_string()],
        None => names
            .branches
            .get(&tenant)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let (mut lines, mut rows) = (Vec::new(), Vec::new());
    for b in &branches {
        let timeline = names.timeline(&tenant, b)?;
        for l in ps.list_leases(&tenant_id, &timeline)? {
            let (line, row) = lease_row(b, &l);
            lines.push(line);
            rows.push(row);
        }
    }
    if lines.is_empty() {
        lines.push("no leases: strata lease AT --ttl 1h".into());
    }
    out.result(&lines.join("\n"), json!(rows));
    Ok(())
}

/// Revokes `owner`'s lease (empty: the one without an owner) on `lsn`.
fn lease_revoke(
    dir: &Path,
    lsn: walproto::Lsn,
    owner: &str,
    branch: &str,
    tenant: Option<&str>,
    out: &Output,
) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let timeline = names.timeline(&tenant, branch)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let left = ps.revoke_lease(&tenant_id, &timeline, lsn.0, owner)?;
    let rows: Vec<serde_json::Value> = left.iter().map(|l| lease_row(branch, l).1).collect();
    let whose = if owner.is_empty() {
        String::new()
    } else {
        format!(" of {owner}")
    };
    out.result(
        &format!(
            "revoked the lease{whose} on {branch} at {}; {} lease(s) left on {branch}",
            pg_lsn(lsn.0),
            left.len()
        ),
        json!({"branch": branch, "revoked": pg_lsn(lsn.0), "owner": owner, "leases": rows}),
    );
    Ok(())
}
