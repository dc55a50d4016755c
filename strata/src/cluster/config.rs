//! The local cluster's configuration: `<cluster dir>/strata.toml`, written by `strata init` and
//! read by every other command. Ports are chosen once, at init, so connection strings stay the
//! same across restarts.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "strata.toml";

/// Every table refuses keys it does not know (so does `[proxy]`): a misspelt key must be an
/// error naming it and the file, not a default taken silently.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where the object store lives: a directory (the default, `<cluster dir>/remote`) or an
    /// `s3://bucket/prefix` URL (endpoint and keys from the AWS_* environment variables).
    pub remote_storage: String,
    /// PostgreSQL 15's programs.
    pub pg_bin: PathBuf,
    pub pageserver: PageserverConfig,
    pub safekeepers: Vec<SafekeeperConfig>,
    /// Computes get ports from here upwards.
    pub compute_base_port: u16,
    /// The Postgres-protocol proxy that `strata start` runs. Clusters made before the proxy
    /// existed have none, and run without it until a `[proxy]` table with a `port` is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// The services verify tokens and computes ask for a password (`<dir>/auth/`); false in
    /// clusters made with `strata init --no-auth`, and in those made before auth existed.
    #[serde(default)]
    pub auth: bool,
    /// The gRPC ports speak TLS with the certificates in `<dir>/tls/` (`strata init --listen`
    /// beyond loopback, or `--tls`); false in clusters made before TLS existed.
    #[serde(default)]
    pub tls: bool,
    /// The services record metrics and the pageserver and safekeepers serve `/metrics`; false
    /// in clusters made with `strata init --no-metrics` (for measuring what metrics cost).
    #[serde(default = "metrics_on")]
    pub metrics: bool,
}

/// Clusters made before the switch existed record metrics (if they have metrics ports).
fn metrics_on() -> bool {
    true
}

/// Where a gRPC port listens and is dialed when the config names no host.
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PageserverConfig {
    /// The address the gRPC port listens on and clients dial (`strata init --listen`);
    /// 127.0.0.1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_host: Option<IpAddr>,
    pub grpc_port: u16,
    /// HTTP port of `/metrics` and `/health/*` (`--metrics-listen`); none in clusters made
    /// before metrics existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SafekeeperConfig {
    pub id: u64,
    /// As the pageserver's `grpc_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_host: Option<IpAddr>,
    pub grpc_port: u16,
    /// The Postgres replication protocol (pageserver, pg_receivewal).
    pub pg_port: u16,
    /// HTTP port of `/metrics` and `/health/*` (`--metrics-listen`); none in clusters made
    /// before metrics existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
}

/// `host:port`, with IPv6 hosts in brackets.
fn host_port(host: Option<IpAddr>, port: u16) -> String {
    std::net::SocketAddr::new(host.unwrap_or(LOOPBACK), port).to_string()
}

impl SafekeeperConfig {
    pub fn grpc_addr(&self) -> String {
        host_port(self.grpc_host, self.grpc_port)
    }
    pub fn pg_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_port.map(|p| format!("127.0.0.1:{p}"))
    }
}

impl PageserverConfig {
    pub fn grpc_addr(&self) -> String {
        host_port(self.grpc_host, self.grpc_port)
    }
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_port.map(|p| format!("127.0.0.1:{p}"))
    }
}

/// `[proxy]` in `strata.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The address clients connect to (`strata init --listen`, like the gRPC ports);
    /// 127.0.0.1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// Where clients connect.
    pub port: u16,
    /// A read-write compute the proxy started stops after this long without connections.
    #[serde(default = "default_idle_stop_secs")]
    pub idle_stop_secs: u64,
    /// A time travel compute stops this long after its last connection closed.
    #[serde(default = "default_ephemeral_idle_secs")]
    pub ephemeral_idle_secs: u64,
}

fn default_idle_stop_secs() -> u64 {
    300
}

fn default_ephemeral_idle_secs() -> u64 {
    30
}

impl ProxyConfig {
    pub fn new(port: u16) -> ProxyConfig {
        ProxyConfig {
            host: None,
            port,
            idle_stop_secs: default_idle_stop_secs(),
            ephemeral_idle_secs: default_ephemeral_idle_secs(),
        }
    }

    pub fn addr(&self) -> String {
        host_port(self.host, self.port)
    }
}

impl ClusterConfig {
    /// How many consecutive ports a cluster with `n_safekeepers` safekeepers takes: the
    /// services' (the pageserver's gRPC and metrics, each safekeeper's gRPC, replication and
    /// metrics, the proxy), then the computes'. Refuses an even number of safekeepers.
    pub fn ports_needed(n_safekeepers: usize) -> Result<u16> {
        if n_safekeepers == 0 || n_safekeepers.is_multiple_of(2) {
            bail!("the number of safekeepers must be odd (1, 3, 5…) so a majority is well defined, got {n_safekeepers}");
        }
        u16::try_from(n_safekeepers)
            .ok()
            .and_then(|n| n.checked_mul(3)?.checked_add(3 + COMPUTE_PORTS))
            .with_context(|| format!("{n_safekeepers} safekeepers do not fit in the port range"))
    }

    /// A new configuration with `n_safekeepers` safekeepers (checked by [`Self::ports_needed`])
    /// on the block of ports from `base` (claimed by `cluster::new_config`).
    pub(super) fn on_ports(
        dir: &Path,
        base: u16,
        n_safekeepers: usize,
        remote: Option<String>,
        pg_bin: PathBuf,
    ) -> ClusterConfig {
        let services = service_ports(n_safekeepers);
        let mut next = base..base + services;
        let mut port = || next.next().expect("the block holds a port per service");
        let pageserver = PageserverConfig {
            grpc_host: None,
            grpc_port: port(),
            metrics_port: Some(port()),
        };
        let mut safekeepers = Vec::new();
        for i in 0..n_safekeepers {
            safekeepers.push(SafekeeperConfig {
                id: i as u64 + 1,
                grpc_host: None,
                grpc_port: port(),
                pg_port: port(),
                metrics_port: Some(port()),
            });
        }
        let proxy = Some(ProxyConfig::new(port()));
        let compute_base_port = base + services;
        let remote_storage =
            remote.unwrap_or_else(|| dir.join("remote").to_string_lossy().into_owned());
        ClusterConfig {
            remote_storage,
            pg_bin,
            pageserver,
            safekeepers,
            compute_base_port,
            proxy,
            auth: true,
            tls: false,
            metrics: true,
        }
    }

    /// Puts every gRPC port, and the proxy, on `host` (`strata init --listen`).
    pub fn set_grpc_host(&mut self, host: IpAddr) {
        let host = (host != LOOPBACK).then_some(host);
        self.pageserver.grpc_host = host;
        for sk in &mut self.safekeepers {
            sk.grpc_host = host;
        }
        if let Some(p) = &mut self.proxy {
            p.host = host;
        }
    }

    /// The hosts the gRPC ports listen on (what their certificates must name).
    pub fn grpc_hosts(&self) -> Vec<IpAddr> {
        let mut hosts: Vec<IpAddr> = std::iter::once(self.pageserver.grpc_host)
            .chain(self.safekeepers.iter().map(|s| s.grpc_host))
            .map(|h| h.unwrap_or(LOOPBACK))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// `strata init --no-metrics`: no metrics endpoints for the pageserver and safekeepers,
    /// and no recording anywhere ([`ClusterConfig::service_env`]).
    pub fn without_metrics(&mut self) {
        self.metrics = false;
        self.pageserver.metrics_port = None;
        for s in &mut self.safekeepers {
            s.metrics_port = None;
        }
    }

    /// The environment every service and walproposer of the cluster starts with:
    /// `STRATA_METRICS=off` when the cluster records no metrics (`strata_metrics::enabled`).
    pub fn service_env(&self) -> Vec<(&'static str, &'static str)> {
        if self.metrics {
            Vec::new()
        } else {
            vec![("STRATA_METRICS", "off")]
        }
    }

    pub fn load(dir: &Path) -> Result<ClusterConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no Strata cluster in {} (no {CONFIG_FILE}); run `strata init` first, or pass --dir",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        // Whole or not at all: every command reads it, and a reader must never see half.
        super::spec::write_atomically(&dir.join(CONFIG_FILE), text.as_bytes(), 0o644)
    }

    pub fn safekeeper_grpc_addrs(&self) -> Vec<String> {
        self.safekeepers.iter().map(|s| s.grpc_addr()).collect()
    }

    pub fn safekeeper_pg_addrs(&self) -> Vec<String> {
        self.safekeepers.iter().map(|s| s.pg_addr()).collect()
    }

    /// Every port the services listen on, and the computes' first port.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.pageserver.grpc_port, self.compute_base_port];
        ports.extend(self.pageserver.metrics_port);
        ports.extend(self.proxy.as_ref().map(|p| p.port));
        for s in &self.safekeepers {
            ports.extend([s.grpc_port, s.pg_port]);
            ports.extend(s.metrics_port);
        }
        ports
    }
}

/// Ports for computes, from `compute_base_port` up (`strata compute start` takes the first
/// free one among them).
pub const COMPUTE_PORTS: u16 = 100;

/// The services' ports of a cluster with `n_safekeepers` safekeepers ([`ClusterConfig::ports_needed`]
/// refuses a number whose ports do not fit).
fn service_ports(n_safekeepers: usize) -> u16 {
    let n = u16::try_from(n_safekeepers).unwrap_or(u16::MAX);
    n.saturating_mul(3).saturating_add(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_round_trips_and_ports_differ() {
        let dir = tempfile::tempdir().unwrap();
        let c = super::super::new_config(dir.path(), 3, None, "/usr/lib/postgresql/15/bin".into())
            .unwrap();
        c.store(dir.path()).unwrap();
        assert_eq!(ClusterConfig::load(dir.path()).unwrap(), c);
        let mut ports = c.ports();
        assert_eq!(
            ports.len(),
            2 + 1 + 1 + 3 * 3,
            "every service has a metrics port, and the proxy a port"
        );
        let n = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), n, "ports must be distinct");
        assert!(super::super::new_config(dir.path(), 2, None, "/x".into()).is_err());
        let range = strata_daemon::ports::cluster_ports();
        assert!(
            ports.iter().all(|p| range.contains(p)),
            "ports {ports:?} must lie in the cluster ports {range:?}, below the ephemeral range"
        );
    }

    #[test]
    fn a_config_from_before_metrics_loads_without_metrics_ports() {
        let dir = tempfile::tempdir().unwrap();
        let old = "remote_storage = \"/r\"\npg_bin = \"/b\"\ncompute_base_port = 20000\n\
                   [pageserver]\ngrpc_port = 19000\n\
                   [[safekeepers]]\nid = 1\ngrpc_port = 19001\npg_port = 19002\n";
        fs::write(dir.path().join(CONFIG_FILE), old).unwrap();
        let c = ClusterConfig::load(dir.path()).unwrap();
        assert_eq!(c.pageserver.metrics_addr(), None);
        assert_eq!(c.safekeepers[0].metrics_addr(), None);
        assert_eq!(c.proxy, None, "an old cluster runs without the proxy");
        assert!(!c.auth, "a cluster from before auth runs without it");
        assert!(!c.tls, "a cluster from before TLS runs without it");
        assert!(
            c.metrics,
            "a cluster from before the switch records metrics"
        );
        assert!(c.service_env().is_empty());
    }

    #[test]
    fn a_grpc_host_moves_every_grpc_address_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = super::super::new_config(dir.path(), 3, None, "/b".into()).unwrap();
        assert!(!c.tls, "TLS is off until init turns it on");
        assert_eq!(c.grpc_hosts(), vec![LOOPBACK]);
        c.set_grpc_host("fd00::2".parse().unwrap());
        let ps = c.pageserver.grpc_addr();
        assert_eq!(ps, format!("[fd00::2]:{}", c.pageserver.grpc_port));
        assert!(c
            .safekeeper_grpc_addrs()
            .iter()
            .all(|a| a.starts_with("[fd00::2]:")));
        assert!(
            c.safekeeper_pg_addrs()
                .iter()
                .all(|a| a.starts_with("127.0.0.1:")),
            "replication stays on loopback"
        );
        c.store(dir.path()).unwrap();
        assert_eq!(ClusterConfig::load(dir.path()).unwrap(), c);
        c.set_grpc_host(LOOPBACK);
        assert_eq!(
            c.pageserver.grpc_host, None,
            "loopback is the default, not stored"
        );
    }

    #[test]
    fn a_cluster_without_metrics_has_no_metrics_ports_and_turns_recording_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut c =
            super::super::new_config(dir.path(), 3, None, "/usr/lib/postgresql/15/bin".into())
                .unwrap();
        assert!(c.metrics && c.service_env().is_empty());
        c.without_metrics();
        c.store(dir.path()).unwrap();
        let c = ClusterConfig::load(dir.path()).unwrap();
        assert!(!c.metrics);
        assert_eq!(c.pageserver.metrics_addr(), None);
        assert!(c.safekeepers.iter().all(|s| s.metrics_addr().is_none()));
        assert_eq!(c.service_env(), vec![("STRATA_METRICS", "off")]);
    }

    #[test]
    fn an_unknown_key_in_any_table_is_refused_by_name_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = "remote_storage = \"/r\"\npg_bin = \"/b\"\ncompute_base_port = 20000\n\
                    [pageserver]\ngrpc_port = 19000\n\
                    [proxy]\nport = 19010\n\
                    [[safekeepers]]\nid = 1\ngrpc_port = 19001\npg_port = 19002\n";
        fs::write(dir.path().join(CONFIG_FILE), good).unwrap();
        ClusterConfig::load(dir.path()).expect("the same file without a typo loads");
        let typos = [
            ("compute_base_port = 20000", "compute_base_prot = 20000"),
            ("grpc_port = 19000", "grpc_port = 19000\nmetrics_prot = 1"),
            ("port = 19010", "port = 19010\nidle_stop = 5"),
            ("pg_port = 19002", "pg_port = 19002\ngrpc_hots = \"::1\""),
        ];
        for (from, to) in typos {
            let bad = good.replacen(from, to, 1);
            fs::write(dir.path().join(CONFIG_FILE), &bad).unwrap();
            let e = format!("{:#}", ClusterConfig::load(dir.path()).unwrap_err());
            let key = to.rsplit('\n').next().unwrap().split(' ').next().unwrap();
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
            let file = dir.path().join(CONFIG_FILE);
            assert!(e.contains(&file.display().to_string()), "{e}");
        }
    }

    #[test]
    fn missing_config_says_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let e = ClusterConfig::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("strata init"), "{e}");
    }
}
