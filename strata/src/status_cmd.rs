//! `strata status`: services, computes, and every branch's positions.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use walproto::proto::pageserver::{IngestStop, TimelineInfo};
use walproto::Lsn;

use crate::cluster::supervisor::{supervision, Supervision};
use crate::cluster::{self, daemon::State};
use crate::compute_cmd::{self, ComputeRecord};
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

fn node_log(dir: &Path, name: &str) -> String {
    compute_cmd::compute_dir(dir, name)
        .join("postgres.log")
        .display()
        .to_string()
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

/// ", restarted 2 times (last: killed by signal 9 (SIGKILL))" for a service the supervisor
/// restarted, else nothing.
fn restarts_note(s: &Supervision) -> String {
    if s.state.restarts == 0 {
        return String::new();
    }
    format!(
        ", restarted {} time{}{}",
        s.state.restarts,
        if s.state.restarts == 1 { "" } else { "s" },
        s.state
            .last_exit
            .as_ref()
            .map(|e| format!(" (last exit: {e})"))
            .unwrap_or_default()
    )
}

/// The `--json` object of a service's supervision.
fn supervision_json(s: &Supervision) -> serde_json::Value {
    json!({
        "supervised": s.supervised,
        "restarts": s.state.restarts,
        "last_exit": s.state.last_exit,
        "last_error": s.state.last_error,
        "last_restart_unix_ms": s.state.last_restart_unix_ms,
        "next_restart_unix_ms": s.state.next_restart_unix_ms,
    })
}

/// How a service that should be running but is not is shown.
fn down_note(s: &Supervision, log: &str) -> String {
    if s.supervised {
        let last = s.state.last_exit.as_deref().unwrap_or("it exited");
        format!("down ({last}); the supervisor restarts it (see {log})")
    } else {
        format!("dead (see {log})")
    }
}

pub fn run(dir: &Path, out: &Output) -> Result<ExitCode> {
    let cfg = cluster::ClusterConfig::load(dir)?;
    let mut all_up = true;
    let mut lines = Vec::new();
    let mut services = Vec::new();
    for svc in cluster::status(dir)? {
        let name = &svc.name;
        let log = format!("{}/logs/{name}.log", dir.display());
        let (shown, pid) = match svc.state {
            State::Running(pid) => (format!("running (pid {pid})"), Some(pid)),
            State::Stopped if svc.supervision.supervised => {
                (down_note(&svc.supervision, &log), None)
            }
            State::Stopped => ("stopped".to_string(), None),
            State::Dead(pid) => (
                format!("pid {pid} is gone: {}", down_note(&svc.supervision, &log)),
                None,
            ),
        };
        // The supervisor is not a service of the data path: `strata` restarts it.
        if name != cluster::supervisor::SUPERVISOR {
            all_up &= pid.is_some();
        }
        lines.push(format!(
            "{name:<16} {shown}{}",
            restarts_note(&svc.supervision)
        ));
        let mut v = json!({"service": name, "state": shown, "pid": pid});
        v["supervision"] = supervision_json(&svc.supervision);
        v["restarts"] = json!(svc.supervision.state.restarts);
        v["last_error"] = json!(svc.supervision.state.last_error);
        services.push(v);
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
        let pg = supervision(dir, &compute_cmd::postgres_service(&c.name));
        let wp_daemon = compute_cmd::walproposer_daemon(dir, &c.name);
        let wp = supervision(dir, &wp_daemon.name);
        let wp_running = matches!(wp_daemon.state()?, State::Running(_));
        let shown = if running {
            format!("postgresql://postgres@127.0.0.1:{}/postgres", c.port)
        } else if pg.supervised {
            format!("Postgres {}", down_note(&pg, &node_log(dir, &c.name)))
        } else {
            format!("stopped (remove it with `strata compute stop {}`)", c.name)
        };
        let mut parts = vec![shown + &restarts_note(&pg)];
        // A writer commits only through its walproposer: say when it is not there.
        if !c.read_only && (wp.supervised || wp_running) {
            parts.push(if wp_running {
                format!("walproposer running{}", restarts_note(&wp))
            } else {
                format!(
                    "walproposer {}{}",
                    down_note(&wp, &wp_daemon.log_file.display().to_string()),
                    restarts_note(&wp)
                )
            });
        }
        lines.push(format!(
            "compute {:<10} branch {} at {} {mode} ({}), {}",
            c.name,
            c.branch,
            c.lsn,
            c.kind(),
            parts.join("; ")
        ));
        let mut v = serde_json::to_value(&c)?;
        v["running"] = json!(running);
        v["postgres"] = supervision_json(&pg);
        v["walproposer"] = supervision_json(&wp);
        v["walproposer"]["running"] = json!(wp_running);
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
