//! `--json` for the commands that manage the cluster itself (`init`, `start`, `stop`) and
//! its computes (`compute stop`, `compute list`): what they print for people goes to stderr
//! then, and stdout carries one JSON value saying where things are.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use strata::cluster::{daemon::State, ClusterConfig};
use strata::computes::{self, ComputeRecord};
use strata::output::{stdout_to_stderr, Output};

/// Runs a command written for people; with `--json` its messages go to stderr.
pub fn quietly<T>(out: &Output, f: impl FnOnce() -> T) -> T {
    if out.json {
        stdout_to_stderr(f)
    } else {
        f()
    }
}

fn services_json(dir: &Path) -> Result<Vec<Value>> {
    Ok(strata::lifecycle::status(dir)?
        .into_iter()
        .map(|s| {
            let (state, pid) = match s.state {
                State::Running(pid) => ("running", Some(pid)),
                State::Stopped => ("stopped", None),
                State::Dead(pid) => ("dead", Some(pid)),
            };
            json!({"service": s.name, "state": state, "pid": pid})
        })
        .collect())
}

/// The cluster's addresses and its services' states, after `init`, `start` or `stop`.
pub fn cluster_result(dir: &Path, out: &Output) -> Result<()> {
    if !out.json {
        return Ok(());
    }
    let cfg = ClusterConfig::load(dir)?;
    let safekeepers: Vec<Value> = cfg
        .safekeepers
        .iter()
        .map(|s| json!({"id": s.id, "grpc_addr": s.grpc_addr(), "pg_addr": s.pg_addr()}))
        .collect();
    out.result(
        "",
        json!({
            "dir": dir.display().to_string(),
            "pageserver": {"grpc_addr": cfg.pageserver.grpc_addr()},
            "safekeepers": safekeepers,
            "remote_storage": cfg.remote_storage,
            "auth": cfg.auth,
            "tls_ca": cfg.tls.then(|| strata::tls_setup::ca_file(dir).display().to_string()),
            "services": services_json(dir)?,
        }),
    );
    Ok(())
}

/// `strata compute stop NAME`.
pub fn compute_stop(dir: &Path, name: &str, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let rec = ComputeRecord::load(dir, name)?;
    quietly(out, || computes::remove(dir, &cfg, name))?;
    out.result(
        &format!("stopped compute {name}"),
        json!({"name": name, "branch": rec.branch, "stopped": true}),
    );
    Ok(())
}

/// `strata compute list`: every compute's record and whether its Postgres and walproposer
/// run.
pub fn compute_list(dir: &Path, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for c in ComputeRecord::list(dir)? {
        let running = computes::node(dir, &cfg, &c.name)
            .map(|n| n.is_running())
            .unwrap_or(false);
        let wp_running = !c.read_only
            && matches!(
                computes::walproposer_daemon(dir, &c.name).state()?,
                State::Running(_)
            );
        let mode = if c.read_only {
            "read-only"
        } else {
            "read-write"
        };
        let state = match (running, c.read_only, wp_running) {
            (false, _, _) => "stopped",
            (true, false, false) => "running, walproposer down",
            (true, _, _) => "running",
        };
        lines.push(format!(
            "{:<16} {:<12} {mode:<10} port {:<5} from {:<12} {state}",
            c.name, c.branch, c.port, c.lsn
        ));
        let mut v = serde_json::to_value(&c)?;
        v["running"] = json!(running);
        v["walproposer_running"] = json!(wp_running);
        v["connstr"] = json!(format!(
            "postgresql://postgres@127.0.0.1:{}/postgres",
            c.port
        ));
        rows.push(v);
    }
    if lines.is_empty() {
        lines.push("no computes: strata compute start BRANCH".into());
    }
    out.result(&lines.join("\n"), json!(rows));
    Ok(())
}
