//! `--json` for the commands that manage the cluster itself (`init`, `start`, `stop`) and
//! its computes (`compute stop`, `compute list`): what they print for people goes to stderr
//! then, and stdout carries one JSON value saying where things are.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use strata::cluster::{daemon::State, ClusterConfig};
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
