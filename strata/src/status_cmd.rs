//! `strata status`: services, computes, and every branch's positions.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use walproto::Lsn;

use crate::cluster::{self, daemon::State};
use crate::compute_cmd::ComputeRecord;
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::Output;

pub fn run(dir: &Path, out: &Output) -> Result<ExitCode> {
    let cfg = cluster::ClusterConfig::load(dir)?;
    let mut all_up = true;
    let mut lines = Vec::new();
    let mut services = Vec::new();
    for (name, state) in cluster::status(dir)? {
        let (shown, pid) = match state {
            State::Running(pid) => (format!("running (pid {pid})"), Some(pid)),
            State::Stopped => ("stopped".to_string(), None),
            State::Dead(pid) => (
                format!(
                    "dead (pid {pid} is gone; see {}/logs/{name}.log)",
                    dir.display()
                ),
                None,
            ),
        };
        all_up &= pid.is_some();
        lines.push(format!("{name:<16} {shown}"));
        services.push(json!({"service": name, "state": shown, "pid": pid}));
    }
    let mut computes = Vec::new();
    for c in ComputeRecord::list(dir)? {
        let mode = if c.read_only {
            "read-only"
        } else {
            "read-write"
        };
        // `strata stop` stops computes but keeps their records: say which ones do not run.
        let running = crate::compute_cmd::node(dir, &cfg, &c.name)
            .map(|n| n.is_running())
            .unwrap_or(false);
        let shown = if running {
            format!("postgresql://postgres@127.0.0.1:{}/postgres", c.port)
        } else {
            format!("stopped (remove it with `strata compute stop {}`)", c.name)
        };
        lines.push(format!(
            "compute {:<10} branch {} at {} {mode}, {shown}",
            c.name, c.branch, c.lsn
        ));
        let mut v = serde_json::to_value(&c)?;
        v["running"] = json!(running);
        computes.push(v);
    }
    let names = Names::load(dir)?;
    let mut branches = Vec::new();
    if all_up && !names.tenants.is_empty() {
        let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
        for (tenant, tenant_id) in &names.tenants {
            for t in ps.list_timelines(tenant_id)? {
                let branch = names.branch_of(tenant, &t.timeline_id).unwrap_or("-");
                lines.push(format!(
                    "branch {tenant}/{branch:<12} ingested {:<12} durable {:<12} remote {}",
                    Lsn(t.last_record_end).to_string(),
                    Lsn(t.disk_consistent_lsn).to_string(),
                    Lsn(t.remote_consistent_lsn)
                ));
                branches.push(json!({
                    "tenant": tenant, "branch": branch, "timeline_id": t.timeline_id,
                    "last_record_end": Lsn(t.last_record_end).to_string(),
                    "disk_consistent_lsn": Lsn(t.disk_consistent_lsn).to_string(),
                    "remote_consistent_lsn": Lsn(t.remote_consistent_lsn).to_string(),
                }));
            }
        }
    }
    out.result(
        &lines.join("\n"),
        json!({"services": services, "computes": computes, "branches": branches}),
    );
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
