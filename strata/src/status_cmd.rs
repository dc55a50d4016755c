//! `strata status`: services, computes, and every branch's positions.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use walproto::proto::pageserver::{IngestStop, TimelineInfo};
use walproto::Lsn;

use crate::cluster::{self, daemon::State};
use crate::compute_cmd::ComputeRecord;
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::Output;

/// The `ingest_stopped` object of a branch in `--json`.
fn stop_json(s: &IngestStop) -> serde_json::Value {
    json!({
        "record_lsn": Lsn(s.record_lsn).to_string(),
        "record": s.record,
        "reason": s.reason,
        "since_unix_ms": s.since_unix_ms,
        "needs_restart": s.needs_restart,
    })
}

/// Lines under a branch saying why it does not follow its WAL, if it does not.
fn ingest_notes(t: &TimelineInfo) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = &t.ingest_stop {
        let resume = if s.needs_restart {
            "restart the pageserver to resume"
        } else {
            "upgrade and restart the pageserver (or resume ingest) to go on"
        };
        out.push(format!(
            "  INGEST STOPPED at {}: {} cannot be ingested: {}",
            Lsn(s.record_lsn),
            s.record,
            s.reason
        ));
        out.push(format!(
            "  reads up to {} work; the compute keeps committing and the safekeepers keep the \
             WAL; {resume}",
            Lsn(t.last_record_end)
        ));
    } else if !t.walreceiver_problem.is_empty() {
        out.push(format!("  not streaming: {}", t.walreceiver_problem));
    }
    out
}

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
                lines.extend(ingest_notes(&t));
                branches.push(json!({
                    "tenant": tenant, "branch": branch, "timeline_id": t.timeline_id,
                    "last_record_end": Lsn(t.last_record_end).to_string(),
                    "disk_consistent_lsn": Lsn(t.disk_consistent_lsn).to_string(),
                    "remote_consistent_lsn": Lsn(t.remote_consistent_lsn).to_string(),
                    "ingest_stopped": t.ingest_stop.as_ref().map(stop_json),
                    "walreceiver_problem":
                        Some(&t.walreceiver_problem).filter(|p| !p.is_empty()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_branch_says_so() {
        let mut t = TimelineInfo {
            last_record_end: 0x1000,
            ..Default::default()
        };
        assert!(ingest_notes(&t).is_empty());
        t.walreceiver_problem = "no safekeeper to stream from: sk: refused".into();
        assert_eq!(
            ingest_notes(&t),
            vec!["  not streaming: no safekeeper to stream from: sk: refused".to_string()]
        );
        t.ingest_stop = Some(IngestStop {
            record_lsn: 0x1000,
            record: "a custom resource manager 128 (info 0x00)".into(),
            reason: "records of custom resource manager 128 cannot be ingested".into(),
            since_unix_ms: 1,
            needs_restart: false,
        });
        let notes = ingest_notes(&t);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("INGEST STOPPED at 0/00001000: a custom resource manager 128"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("reads up to 0/00001000 work"),
            "{notes:?}"
        );
        let j = stop_json(t.ingest_stop.as_ref().unwrap());
        assert_eq!(j["record_lsn"], "0/00001000");
        assert_eq!(j["needs_restart"], false);
    }
}
