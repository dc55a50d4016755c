//! The cluster's Postgres-protocol proxy (`strata-proxy`, see the `proxy` crate): one
//! address for every tenant, branch and moment. `strata start` runs it as a supervised
//! service on the port in `strata.toml`'s `[proxy]` table; `strata status` shows its address
//! and the computes it started.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cluster::config::ProxyConfig;
use crate::cluster::daemon::{Daemon, State};

/// The proxy's service name (`run/proxy.pid`, `logs/proxy.log`).
pub const SERVICE: &str = "proxy";
const READY: &str = "strata-proxy listening on";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn daemon(dir: &Path) -> Daemon {
    Daemon::new(dir, SERVICE)
}

/// Starts the proxy unless it runs or the cluster has none.
pub fn start(dir: &Path, cfg: &crate::cluster::ClusterConfig) -> Result<()> {
    let Some(p) = &cfg.proxy else {
        println!("no proxy: strata.toml has no [proxy] port (a cluster made before the proxy)");
        return Ok(());
    };
    let d = daemon(dir);
    if let State::Running(pid) = d.state()? {
        println!("proxy already running (pid {pid})");
        return Ok(());
    }
    // The cluster's data path does not need the proxy: without its binary the rest starts,
    // and `strata status` reports the proxy as not running.
    let bin = match crate::cluster::sibling_binary("strata-proxy") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("warning: the proxy is not started: {e:#}");
            return Ok(());
        }
    };
    let strata = std::env::current_exe()?;
    let mut cmd = Command::new(bin);
    cmd.arg("--dir")
        .arg(dir)
        .args(["--listen", &p.addr()])
        .args(["--idle-stop-secs", &p.idle_stop_secs.to_string()])
        .args(["--ephemeral-idle-secs", &p.ephemeral_idle_secs.to_string()])
        .args(crate::tls_setup::proxy_args(dir, cfg))
        .env("STRATA_BIN", strata);
    let pid = d.start(cmd, READY, START_TIMEOUT)?;
    println!(
        "started proxy (pid {pid}) on {}: psql \"{}\" (roles: strata role create)",
        p.addr(),
        connection_string(dir, cfg, p, "postgres")
    );
    Ok(())
}

/// Stops the proxy (first of all: it would start computes meanwhile), then removes the time
/// travel computes it started; whether it ran.
pub fn stop(dir: &Path) -> Result<bool> {
    let ran = daemon(dir).stop(STOP_GRACE)?;
    remove_moment_computes(dir)?;
    Ok(ran)
}

/// A moment's compute is ephemeral: it goes with the proxy rather than stay as a stopped
/// record that `strata start` would not start again (the next connection at that moment
/// starts one). The proxy's read-write computes keep their records, like any compute.
fn remove_moment_computes(dir: &Path) -> Result<()> {
    let mut started = strata_proxy::computes::Started::load(dir);
    if started.computes.is_empty() {
        return Ok(());
    }
    let cfg = crate::cluster::ClusterConfig::load(dir)?;
    for name in started.computes.clone() {
        match crate::computes::ComputeRecord::load(dir, &name) {
            Ok(rec) if !rec.read_only => continue,
            Ok(_) => {
                crate::computes::remove(dir, &cfg, &name)?;
                println!("removed time travel compute {name}");
            }
            // Removed already (by hand, by a restore).
            Err(_) => {}
        }
        started.computes.remove(&name);
    }
    started.store(dir).with_context(|| {
        format!(
            "writing {}",
            strata_proxy::computes::started_file(dir).display()
        )
    })
}

/// The proxy's line in `strata status` and its `--json` object: its address and the computes
/// it started.
pub fn status(dir: &Path, cfg: &crate::cluster::ClusterConfig) -> (String, serde_json::Value) {
    let Some(p) = &cfg.proxy else {
        return (
            "proxy            off (no [proxy] port in strata.toml)".into(),
            json!(null),
        );
    };
    let started: Vec<String> = strata_proxy::computes::Started::load(dir)
        .computes
        .into_iter()
        .filter(|n| crate::computes::ComputeRecord::load(dir, n).is_ok())
        .collect();
    let which = if started.is_empty() {
        "none".to_string()
    } else {
        started.join(", ")
    };
    let ca = crate::tls_setup::proxy_ca(dir, cfg).map(|ca| ca.display().to_string());
    (
        format!(
            "proxy            {}; computes it started: {which}",
            connection_string(dir, cfg, p, "DB[@BRANCH[@AT]]")
        ),
        json!({"addr": p.addr(), "tls": ca.is_some(), "ca_file": ca,
               "idle_stop_secs": p.idle_stop_secs,
               "ephemeral_idle_secs": p.ephemeral_idle_secs, "started_computes": started}),
    )
}

/// How a client connects to `database` through the proxy: over TLS, checked against the
/// cluster's CA, when the proxy has a certificate.
fn connection_string(
    dir: &Path,
    cfg: &crate::cluster::ClusterConfig,
    p: &ProxyConfig,
    database: &str,
) -> String {
    let url = format!("postgresql://ROLE@{}/{database}", p.addr());
    match crate::tls_setup::proxy_ca(dir, cfg) {
        Some(ca) => format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
        None => url,
    }
}
