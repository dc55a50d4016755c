//! The cluster's lifecycle: `strata init`, `strata start`, `strata stop`, and the state of
//! its services for `strata status`. It starts and stops everything the cluster runs (the
//! safekeepers, the pageserver, computes, imports' walproposers, group cutters, the proxy),
//! so it sits above all of them; `crate::cluster` is only the model they share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cluster::daemon::{supervisor_daemon, Daemon, State};
use crate::cluster::{config, safekeeper_daemon, sibling_binary, spec, supervisor, ClusterConfig};

/// How `strata init` makes a cluster (its flags: `InitArgs` of the command).
#[derive(Debug)]
pub struct InitOptions {
    /// Number of safekeepers (odd).
    pub safekeepers: usize,
    /// Object store: a directory, or s3://bucket/prefix; `None`: `<dir>/remote`.
    pub remote_storage: Option<String>,
    /// Directory with PostgreSQL 15's programs.
    pub pg_bin: PathBuf,
    /// No authentication: services accept every caller, computes trust every client.
    pub no_auth: bool,
    /// The address the services' gRPC ports listen on and are dialed at.
    pub listen: Option<std::net::IpAddr>,
    /// TLS on the gRPC ports even on loopback (always on beyond it).
    pub tls: bool,
    /// No metrics endpoints, nothing recorded.
    pub no_metrics: bool,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(20);

pub fn init(dir: &Path, args: &InitOptions) -> Result<()> {
    if dir.join(config::CONFIG_FILE).exists() {
        bail!(
            "{} already holds a Strata cluster; `strata start` runs it (or remove the directory to start over)",
            dir.display()
        );
    }
    if !args.pg_bin.join("postgres").exists() {
        bail!(
            "no PostgreSQL 15 at {} (no `postgres` there); install postgresql-15 (scripts/setup.sh) or pass --pg-bin",
            args.pg_bin.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    // Stored absolute: every later command, wherever it runs, starts the same programs.
    let pg_bin = std::path::absolute(&args.pg_bin)
        .with_context(|| format!("resolving {}", args.pg_bin.display()))?;
    let mut cfg =
        crate::cluster::new_config(&dir, args.safekeepers, args.remote_storage.clone(), pg_bin)?;
    cfg.auth = !args.no_auth;
    if let Some(host) = args.listen {
        check_listen_host(host, cfg.auth)?;
        cfg.set_grpc_host(host);
    }
    cfg.tls = args.tls || cfg.grpc_hosts().iter().any(|h| !h.is_loopback());
    if args.no_metrics {
        cfg.without_metrics();
    }
    for sub in ["run", "logs", "computes", "pageserver"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    if cfg.auth {
        crate::auth_setup::create(&dir)?;
    }
    if cfg.tls {
        crate::tls_setup::create(&dir, &cfg)?;
    }
    if !cfg.remote_storage.contains("://") {
        fs::create_dir_all(&cfg.remote_storage).with_context(|| {
            format!("creating the object store directory {}", cfg.remote_storage)
        })?;
    }
    for sk in &cfg.safekeepers {
        fs::create_dir_all(safekeeper_dir(&dir, sk.id))?;
    }
    cfg.store(&dir)?;
    println!("initialized a Strata cluster in {}", dir.display());
    println!(
        "  {} safekeepers, a pageserver on {}, object store {}",
        cfg.safekeepers.len(),
        cfg.pageserver.grpc_addr(),
        cfg.remote_storage
    );
    if cfg.auth {
        println!(
            "  authentication on: keys and tokens in {}, computes' password in {}",
            crate::auth_setup::auth_dir(&dir).display(),
            crate::auth_setup::compute_password_file(&dir).display()
        );
    } else {
        println!("  authentication off (--no-auth): every local client is trusted");
    }
    if cfg.tls {
        println!(
            "  TLS on the gRPC ports: the CA every client trusts is {}",
            crate::tls_setup::ca_file(&dir).display()
        );
    }
    if !cfg.metrics {
        println!("  metrics off (--no-metrics): no /metrics endpoints, nothing recorded");
    }
    println!("next: strata start");
    Ok(())
}

/// `--listen` must be an address clients can dial, and beyond loopback the cluster keeps
/// its tokens (the services refuse to serve others without them).
fn check_listen_host(host: std::net::IpAddr, auth: bool) -> Result<()> {
    if host.is_unspecified() {
        bail!("--listen {host} listens everywhere but cannot be dialed: give this machine's address the others reach, e.g. 192.0.2.2");
    }
    if !auth && !host.is_loopback() {
        bail!("--listen {host} is not loopback: the cluster needs authentication there, leave out --no-auth");
    }
    Ok(())
}

fn safekeeper_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("safekeeper-{id}"))
}

fn services(dir: &Path, cfg: &ClusterConfig) -> Vec<Daemon> {
    let mut v: Vec<Daemon> = cfg
        .safekeepers
        .iter()
        .map(|s| safekeeper_daemon(dir, s.id))
        .collect();
    v.push(Daemon::new(dir, "pageserver"));
    if cfg.proxy.is_some() {
        v.push(crate::proxy::daemon(dir));
    }
    v
}

/// `--metrics-listen ADDR` for a service with a metrics port.
fn metrics_listen_arg(addr: Option<String>) -> Vec<String> {
    addr.map(|a| vec!["--metrics-listen".to_string(), a])
        .unwrap_or_default()
}

/// `, metrics on http://ADDR/metrics` for `strata start`'s lines.
fn metrics_note(addr: Option<String>) -> String {
    addr.map(|a| format!(", metrics on http://{a}/metrics"))
        .unwrap_or_default()
}

pub fn start(dir: &Path) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let safekeeper = sibling_binary("safekeeper")?;
    let pageserver = sibling_binary("pageserver")?;
    for sk in &cfg.safekeepers {
        let d = safekeeper_daemon(dir, sk.id);
        if let State::Running(pid) = d.state()? {
            println!("{} already running (pid {pid})", d.name);
            continue;
        }
        let mut cmd = Command::new(&safekeeper);
        cmd.arg("--data-dir")
            .arg(safekeeper_dir(dir, sk.id))
            .args(["--id", &sk.id.to_string()])
            .args(["--listen", &sk.grpc_addr()])
            .args(["--listen-pg", &sk.pg_addr()])
            .args(["--remote-storage", &cfg.remote_storage]);
        let peers: Vec<String> = cfg
            .safekeepers
            .iter()
            .filter(|p| p.id != sk.id)
            .map(|p| format!("{}={}", p.id, p.grpc_addr()))
            .collect();
        cmd.args(["--peers", &peers.join(",")]);
        cmd.args(metrics_listen_arg(sk.metrics_addr()));
        cmd.args(crate::auth_setup::safekeeper_args(dir, &cfg));
        cmd.args(crate::tls_setup::safekeeper_args(dir, &cfg, sk.id));
        cmd.envs(cfg.service_env());
        let pid = d.start(cmd, "serving replication on", START_TIMEOUT)?;
        println!(
            "started {} (pid {pid}) on {}{}",
            d.name,
            sk.grpc_addr(),
            metrics_note(sk.metrics_addr())
        );
    }
    let d = Daemon::new(dir, "pageserver");
    if let State::Running(pid) = d.state()? {
        println!("pageserver already running (pid {pid})");
    } else {
        let mut cmd = Command::new(&pageserver);
        cmd.arg("--data-dir")
            .arg(dir.join("pageserver"))
            .args(["--listen", &cfg.pageserver.grpc_addr()])
            .args(["--remote-storage", &cfg.remote_storage])
            .args(metrics_listen_arg(cfg.pageserver.metrics_addr()))
            .args(crate::auth_setup::pageserver_args(dir, &cfg))
            .args(crate::tls_setup::pageserver_args(dir, &cfg))
            .envs(cfg.service_env());
        let pid = d.start(cmd, "pageserver listening on", START_TIMEOUT)?;
        println!(
            "started pageserver (pid {pid}) on {}{}",
            cfg.pageserver.grpc_addr(),
            metrics_note(cfg.pageserver.metrics_addr())
        );
    }
    crate::tenant_import::reconnect_all(dir, &cfg, &crate::output::Output::new(false))?;
    crate::group::start_cutters(dir)?;
    crate::proxy::start(dir, &cfg)
}

/// Stops everything it can: computes (each bounded, see `computes::stop_one`), then the
/// pageserver and the safekeepers even if a compute could not be stopped, then the
/// supervisor. Fails at the end, naming what it could not stop.
pub fn stop(dir: &Path) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    crate::tenant_import::warn_before_stop(dir)?;
    let mut failed = Vec::new();
    // The proxy before the computes: it would start them again.
    match crate::proxy::stop(dir) {
        Ok(true) => println!("stopped proxy"),
        Ok(false) => {}
        Err(e) => failed.push(format!("proxy: {e:#}")),
    }
    if let Err(e) = crate::group::stop_cutters(dir) {
        failed.push(format!("{e:#}"));
    }
    // Computes first: they depend on the safekeepers for every commit.
    if let Err(e) = crate::computes::stop_all(dir, &cfg) {
        failed.push(format!("{e:#}"));
    }
    // The pageserver before the safekeepers it streams from.
    for d in services(dir, &cfg).iter().rev() {
        match d.stop(STOP_GRACE) {
            Ok(true) => println!("stopped {}", d.name),
            Ok(false) => {}
            Err(e) => failed.push(format!("{}: {e:#}", d.name)),
        }
    }
    let left = spec::supervised_names(dir)?;
    if left.is_empty() {
        supervisor::stop(dir)?;
    } else {
        failed.push(format!(
            "still supervised (restarted if they die): {}",
            left.join(", ")
        ));
    }
    if !failed.is_empty() {
        bail!("could not stop everything:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// One service as `strata status` shows it.
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub supervision: supervisor::Supervision,
}

/// The cluster's services, then its supervisor.
pub fn status(dir: &Path) -> Result<Vec<ServiceStatus>> {
    let cfg = ClusterConfig::load(dir)?;
    let mut all = services(dir, &cfg);
    all.push(supervisor_daemon(dir));
    all.into_iter()
        .map(|d| {
            Ok(ServiceStatus {
                state: d.state()?,
                supervision: supervisor::supervision(dir, &d.name),
                name: d.name,
            })
        })
        .collect()
}
