//! The local cluster's model: its configuration (`strata.toml`), its background processes
//! and their supervisor. Starting and stopping the whole cluster is the lifecycle module's.
//!
//! A cluster directory holds everything:
//!
//! ```text
//! <dir>/strata.toml            ports, object store, Postgres binaries (written by init)
//! <dir>/auth/                  keys, tokens and the computes' password (see auth_setup)
//! <dir>/safekeeper-<id>/       each safekeeper's WAL and control files
//! <dir>/pageserver/            the pageserver's tenants, timelines and layer files
//! <dir>/remote/                the object store, when it is a local directory
//! <dir>/computes/<name>/       compute data directories
//! <dir>/run/*.pid, logs/*.log  the background services
//! <dir>/run/*.spec, *.state    what the supervisor restarts, and what it saw
//! ```

pub mod config;
pub mod daemon;
pub mod lock;
mod port_claims;
pub mod process;
pub mod spec;
pub mod supervisor;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use config::ClusterConfig;
use daemon::Daemon;

/// A new configuration for a cluster in `dir` with `n_safekeepers` safekeepers (odd), on a
/// block of loopback ports claimed for it on this machine (see `port_claims`).
pub fn new_config(
    dir: &Path,
    n_safekeepers: usize,
    remote: Option<String>,
    pg_bin: PathBuf,
) -> Result<ClusterConfig> {
    let ports = ClusterConfig::ports_needed(n_safekeepers)?;
    let base = port_claims::claim_port_block(dir, ports)?;
    Ok(ClusterConfig::on_ports(
        dir,
        base,
        n_safekeepers,
        remote,
        pg_bin,
    ))
}

/// The background process of safekeeper `id`.
pub fn safekeeper_daemon(dir: &Path, id: u64) -> Daemon {
    Daemon::new(dir, &format!("safekeeper-{id}"))
}

/// The directory holding the running `strata` binary, where its sibling binaries
/// (`safekeeper`, `pageserver`, `compute`) are built.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the strata binary")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("the strata binary has no parent directory")?;
    if !path.exists() {
        bail!(
            "{} not found next to strata ({}); build it with `cargo build --release --bins`",
            name,
            path.display()
        );
    }
    Ok(path)
}
