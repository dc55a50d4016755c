//! The cluster's TLS. `strata init --listen ADDR` beyond loopback (or `--tls`) makes
//! `<dir>/tls/` with a CA and a certificate per service, valid for the gRPC host and
//! loopback; the services serve their gRPC ports with them, and every client of the cluster
//! (the CLI, walproposers, page filesystems, the safekeepers calling their peers) trusts the
//! CA and nothing else.
//!
//! ```text
//! <dir>/tls/ca.pem                          the CA certificate every client trusts
//! <dir>/tls/pageserver.pem, .key            the pageserver's certificate and key (0600)
//! <dir>/tls/safekeeper-<id>.pem, .key       each safekeeper's
//! ```
//!
//! The CA's key is not kept (see `strata_auth::ClusterCa`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use strata_auth::{ClientTls, ClusterCa, CA_CERT_FILE};

use crate::cluster::ClusterConfig;

const TLS_DIR: &str = "tls";

pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join(TLS_DIR)
}

pub fn ca_file(dir: &Path) -> PathBuf {
    tls_dir(dir).join(CA_CERT_FILE)
}

fn pageserver_name() -> String {
    "pageserver".into()
}

/// The Postgres-protocol proxy's certificate (clusters made before it have none).
const PROXY_NAME: &str = "proxy";

fn safekeeper_name(id: u64) -> String {
    format!("safekeeper-{id}")
}

/// Makes the CA and the services' certificates (`strata init`), each valid for the hosts
/// the gRPC ports listen on, `127.0.0.1` and `localhost`.
pub fn create(dir: &Path, cfg: &ClusterConfig) -> Result<()> {
    let tls = tls_dir(dir);
    fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
    crate::auth_setup::set_mode(&tls, 0o700)?;
    let mut hosts: Vec<String> = cfg.grpc_hosts().iter().map(|h| h.to_string()).collect();
    for local in ["127.0.0.1", "localhost"] {
        if !hosts.iter().any(|h| h == local) {
            hosts.push(local.into());
        }
    }
    let ca = ClusterCa::create(&tls, &format!("Strata cluster CA ({})", dir.display()))
        .with_context(|| format!("creating the cluster's CA in {}", tls.display()))?;
    let names = std::iter::once(pageserver_name())
        .chain(cfg.safekeepers.iter().map(|s| safekeeper_name(s.id)))
        .chain(std::iter::once(PROXY_NAME.to_string()));
    for name in names {
        ca.issue(&tls, &name, &hosts)
            .with_context(|| format!("creating the TLS certificate of {name}"))?;
    }
    crate::auth_setup::sync_dir(&tls)
}

/// `--tls-cert`, `--tls-key` of the service `name`; nothing without TLS.
fn identity_args(dir: &Path, cfg: &ClusterConfig, name: &str) -> Vec<String> {
    if !cfg.tls {
        return Vec::new();
    }
    let file = |ext: &str| {
        tls_dir(dir)
            .join(format!("{name}.{ext}"))
            .to_string_lossy()
            .into_owned()
    };
    vec![
        "--tls-cert".into(),
        file("pem"),
        "--tls-key".into(),
        file("key"),
    ]
}

/// The pageserver's TLS flags.
pub fn pageserver_args(dir: &Path, cfg: &ClusterConfig) -> Vec<String> {
    identity_args(dir, cfg, &pageserver_name())
}

/// The proxy's TLS flags: its certificate, if the cluster has TLS and one was made for it.
pub fn proxy_args(dir: &Path, cfg: &ClusterConfig) -> Vec<String> {
    match proxy_ca(dir, cfg) {
        Some(_) => identity_args(dir, cfg, PROXY_NAME),
        None => Vec::new(),
    }
}

/// The CA the proxy's clients check it against (`sslrootcert`), if the proxy has TLS.
pub fn proxy_ca(dir: &Path, cfg: &ClusterConfig) -> Option<PathBuf> {
    let has_cert = tls_dir(dir).join(format!("{PROXY_NAME}.pem")).exists();
    (cfg.tls && has_cert).then(|| ca_file(dir))
}

/// A safekeeper's TLS flags: its certificate, and the CA its peers are checked against.
pub fn safekeeper_args(dir: &Path, cfg: &ClusterConfig, id: u64) -> Vec<String> {
    let mut args = identity_args(dir, cfg, &safekeeper_name(id));
    args.extend(client_args(dir, cfg));
    args
}

/// `--tls-ca <dir>/tls/ca.pem` for a client of the services (walproposer, page filesystem);
/// nothing without TLS.
pub fn client_args(dir: &Path, cfg: &ClusterConfig) -> Vec<String> {
    if !cfg.tls {
        return Vec::new();
    }
    vec![
        "--tls-ca".into(),
        ca_file(dir).to_string_lossy().into_owned(),
    ]
}

/// What the CLI's gRPC clients trust: the CA of the cluster [`crate::auth_setup::use_cluster`]
/// chose, if its ports speak TLS.
pub fn cli_tls() -> Result<Option<ClientTls>> {
    let Some(dir) = crate::auth_setup::cli_cluster() else {
        return Ok(None);
    };
    let Ok(cfg) = ClusterConfig::load(&dir) else {
        return Ok(None);
    };
    if !cfg.tls {
        return Ok(None);
    }
    let ca = ca_file(&dir);
    ClientTls::from_ca_file(&ca)
        .map(Some)
        .with_context(|| format!("loading the cluster's CA {}", ca.display()))
}

/// The CLI's endpoint of the gRPC service at `addr`: over TLS when the cluster has it.
pub fn cli_endpoint(addr: &str) -> Result<(tonic::transport::Endpoint, Option<ClientTls>)> {
    let tls = cli_tls()?;
    let endpoint = strata_auth::endpoint(addr, tls.as_ref())?;
    Ok((endpoint, tls))
}
