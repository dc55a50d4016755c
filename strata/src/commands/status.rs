//! `strata status`: services, computes, and every branch's positions.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use walproto::proto::pageserver::{IngestStop, TimelineInfo};
use walproto::Lsn;

use super::status_branch::{BranchHealth, SafekeeperView};
use strata::cluster::supervisor::{supervision, Supervision};
use strata::cluster::{self, daemon::State};
use strata::computes::{self, ComputeRecord};
use strata::mgmt::{safekeeper_statuses, Pageserver};
use strata::names::Names;
use strata::output::{pg_lsn, Output};

/// The `ingest_stopped` object of a branch in `--json`.
fn stop_json(s: &IngestStop) -> serde_json::Value {
    json!({
        "record_lsn": pg_lsn(s.record_lsn),
        "record": s.record,
        "reason": s.reason,
        "since_unix_ms": s.since_unix_ms,
        "needs_restart": s.needs_restart,
    })
}

fn node_log(dir: &Path, name: &str) -> String {
    computes::log_file(dir, name).display().to_string()
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

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Refresh every SECS seconds (default 2) until interrupted; with --json, one JSON value
    /// per line and refresh.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
}

/// Exit code of a status that found a problem (a service down, a branch not following its
/// WAL, a compute without its walproposer).
const PROBLEM_EXIT: u8 = 3;

pub fn run(dir: &Path, args: &StatusArgs, out: &Output) -> Result<ExitCode> {
    let Some(secs) = args.watch else {
        return once(dir, out);
    };
    let every = std::time::Duration::from_secs(secs.max(1));
    let clear = !out.json && std::io::stdout().is_terminal();
    loop {
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        if let Err(e) = once(dir, out) {
            eprintln!("strata: error: {e:#}");
        }
        std::thread::sleep(every);
    }
}

/// Lets a wedged compute fail its LSN query instead of hanging `status`.
fn bound_compute_queries() {
    std::env::set_var("PGCONNECT_TIMEOUT", "3");
    std::env::set_var("PGOPTIONS", "-c statement_timeout=3000");
}

/// A running compute's WAL position: where its Postgres has flushed WAL (a writer) or
/// replayed it (a read-only one).
fn compute_lsn(dir: &Path, cfg: &cluster::ClusterConfig, c: &ComputeRecord) -> Result<u64> {
    let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
               ELSE pg_current_wal_flush_lsn() END";
    let text = computes::node(dir, cfg, &c.name)?.psql(c.port, "postgres", sql)?;
    let lsn: Lsn = text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("compute {} printed {text:?} as its LSN: {e}", c.name))?;
    Ok(lsn.0)
}

/// How long committed WAL may wait unstreamed before it is a problem: longer than the
/// walreceiver's longest pause between two connection attempts (5 s).
const UNSTREAMED_GRACE: std::time::Duration = std::time::Duration::from_secs(7);

/// A branch assessed; if committed WAL waits unstreamed, asked again until it streams or
/// ingest moves, for [`UNSTREAMED_GRACE`] at most (a walreceiver between two attempts reports
/// the last attempt's problem meanwhile).
fn assess_settled(
    ps: &mut Pageserver,
    cfg: &cluster::ClusterConfig,
    mut t: TimelineInfo,
) -> Result<(TimelineInfo, BranchHealth)> {
    let deadline = std::time::Instant::now() + UNSTREAMED_GRACE;
    let first_end = t.last_record_end;
    let assess = |t: &TimelineInfo| {
        let answers =
            safekeeper_statuses(&cfg.safekeeper_grpc_addrs(), &t.tenant_id, &t.timeline_id);
        BranchHealth::assess(t, &SafekeeperView::from_answers(answers))
    };
    loop {
        let mut h = assess(&t);
        if h.unstreamed && t.last_record_end > first_end {
            // Ingest moved meanwhile: it streams, the problem is the last attempt's.
            h.problems.retain(|p| !p.starts_with("not streaming"));
            h.unstreamed = false;
        }
        if !h.unstreamed || std::time::Instant::now() > deadline {
            return Ok((t, h));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        t = ps.timeline_status(&t.tenant_id, &t.timeline_id)?;
    }
}

/// Every branch of every tenant, assessed; a failure to ask the pageserver is a problem.
fn branches(
    dir: &Path,
    cfg: &cluster::ClusterConfig,
    problems: &mut Vec<String>,
) -> Result<Vec<(String, String, TimelineInfo, BranchHealth)>> {
    let names = Names::load(dir)?;
    let mut found = Vec::new();
    if names.tenants.is_empty() {
        return Ok(found);
    }
    let mut ps = match Pageserver::connect(&cfg.pageserver.grpc_addr()) {
        Ok(ps) => ps,
        Err(e) => {
            problems.push(format!("branches unknown: {e:#}"));
            return Ok(found);
        }
    };
    for (tenant, tenant_id) in &names.tenants {
        let timelines = match ps.list_timelines(tenant_id) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("tenant {tenant}: {e:#}"));
                continue;
            }
        };
        for t in timelines {
            let branch = names
                .branch_of(tenant, &t.timeline_id)
                .unwrap_or("-")
                .to_string();
            let (t, h) = assess_settled(&mut ps, cfg, t)?;
            problems.extend(
                h.problems
                    .iter()
                    .map(|p| format!("branch {tenant}/{branch}: {p}")),
            );
            found.push((tenant.clone(), branch, t, h));
        }
    }
    Ok(found)
}

fn once(dir: &Path, out: &Output) -> Result<ExitCode> {
    let cfg = cluster::ClusterConfig::load(dir)?;
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    if !cfg.auth {
        lines.push(
            "auth: off (a cluster made with --no-auth or before auth existed): every local \
             client is trusted"
                .to_string(),
        );
    }
    if !cfg.metrics {
        lines.push("metrics: off (a cluster made with --no-metrics)".to_string());
    }
    let mut services = Vec::new();
    let mut pageserver_up = false;
    for svc in strata::lifecycle::status(dir)? {
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
        if name != cluster::daemon::SUPERVISOR && pid.is_none() {
            problems.push(format!("{name} is not running: {shown}"));
        }
        pageserver_up |= name == "pageserver" && pid.is_some();
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
    let (proxy_line, proxy) = strata::proxy::status(dir, &cfg);
    lines.push(proxy_line);
    let branch_rows = if pageserver_up {
        branches(dir, &cfg, &mut problems)?
    } else {
        Vec::new()
    };
    bound_compute_queries();
    let mut computes = Vec::new();
    for c in ComputeRecord::list(dir)? {
        let commit = branch_rows
            .iter()
            .find(|(_, _, t, _)| t.timeline_id == c.timeline_id)
            .and_then(|(_, _, _, h)| h.commit_lsn);
        let (line, v) = compute_row(dir, &cfg, &c, commit, &mut problems)?;
        lines.push(line);
        computes.push(v);
    }
    let mut branches = Vec::new();
    for (tenant, branch, t, h) in &branch_rows {
        lines.push(format!("branch {tenant}/{branch}: {}", h.positions_text()));
        lines.extend(h.problems.iter().map(|p| format!("  {p}")));
        lines.extend(h.notes.iter().map(|n| format!("  {n}")));
        let mut v = json!({
            "tenant": tenant, "branch": branch, "timeline_id": t.timeline_id,
            "ingest_stopped": t.ingest_stop.as_ref().map(stop_json),
            "walreceiver_problem": Some(&t.walreceiver_problem).filter(|p| !p.is_empty()),
        });
        if let (Some(o), serde_json::Value::Object(pos)) = (v.as_object_mut(), h.json()) {
            o.extend(pos);
        }
        branches.push(v);
    }
    if problems.is_empty() {
        lines.push("healthy".to_string());
    } else {
        lines.push(format!("{} PROBLEM(S):", problems.len()));
        lines.extend(problems.iter().map(|p| format!("  - {p}")));
    }
    out.result(
        &lines.join("\n"),
        json!({
            "healthy": problems.is_empty(), "problems": problems, "auth": cfg.auth,
            "metrics": cfg.metrics,
            "services": services, "computes": computes, "branches": branches,
            "proxy": proxy,
        }),
    );
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(PROBLEM_EXIT)
    })
}

/// One compute's line and `--json` object; a supervised Postgres that is down, or a running
/// writer without its walproposer, is a problem.
fn compute_row(
    dir: &Path,
    cfg: &cluster::ClusterConfig,
    c: &ComputeRecord,
    commit: Option<u64>,
    problems: &mut Vec<String>,
) -> Result<(String, serde_json::Value)> {
    let mode = if c.read_only {
        "read-only"
    } else {
        "read-write"
    };
    // `strata stop` stops computes but keeps their records: say which ones do not run.
    let running = computes::node(dir, cfg, &c.name)
        .map(|n| n.is_running())
        .unwrap_or(false);
    let pg = supervision(dir, &computes::postgres_service(&c.name));
    let wp_daemon = computes::walproposer_daemon(dir, &c.name);
    let wp = supervision(dir, &wp_daemon.name);
    let wp_running = matches!(wp_daemon.state()?, State::Running(_));
    let shown = if running {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", c.port)
    } else if pg.supervised {
        let down = format!("Postgres {}", down_note(&pg, &node_log(dir, &c.name)));
        problems.push(format!("compute {}: {down}", c.name));
        down
    } else {
        format!("stopped (remove it with `strata compute stop {}`)", c.name)
    };
    let mut parts = vec![shown + &restarts_note(&pg)];
    let lsn = if running {
        match compute_lsn(dir, cfg, c) {
            Ok(l) => Some(l),
            Err(e) => {
                problems.push(format!("compute {}: its LSN is unknown: {e:#}", c.name));
                None
            }
        }
    } else {
        None
    };
    if let Some(l) = lsn {
        // A writer's WAL beyond the commit LSN waits for a safekeeper majority.
        let uncommitted = commit.filter(|_| !c.read_only).map(|k| l.saturating_sub(k));
        parts.push(match uncommitted {
            Some(n) if n > 0 => format!("at {} ({n} B not yet committed)", pg_lsn(l)),
            _ => format!("at {}", pg_lsn(l)),
        });
    }
    // A writer commits only through its walproposer: say when it is not there.
    if !c.read_only && (wp.supervised || wp_running || running) {
        parts.push(if wp_running {
            format!("walproposer running{}", restarts_note(&wp))
        } else {
            let down = format!(
                "walproposer {}",
                down_note(&wp, &wp_daemon.log_file.display().to_string())
            );
            if running || wp.supervised {
                problems.push(format!("compute {}: {down}", c.name));
            }
            down + &restarts_note(&wp)
        });
    }
    let line = format!(
        "compute {:<10} branch {} from {} {mode} ({}), {}",
        c.name,
        c.branch,
        c.lsn,
        c.kind(),
        parts.join("; ")
    );
    let mut v = serde_json::to_value(c)?;
    v["running"] = json!(running);
    v["current_lsn"] = json!(lsn.map(pg_lsn));
    v["postgres"] = supervision_json(&pg);
    v["walproposer"] = supervision_json(&wp);
    v["walproposer"]["running"] = json!(wp_running);
    Ok((line, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_in_json() {
        let s = IngestStop {
            record_lsn: 0x1000,
            record: "a custom resource manager 128 (info 0x00)".into(),
            reason: "records of custom resource manager 128 cannot be ingested".into(),
            since_unix_ms: 1,
            needs_restart: false,
        };
        let j = stop_json(&s);
        assert_eq!(j["record_lsn"], "0/1000");
        assert_eq!(j["needs_restart"], false);
    }
}
