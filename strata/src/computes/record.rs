//! What the cluster keeps about a compute: its record (`compute.toml`), where its files are,
//! and the names its processes run under.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use compute::node::{ComputeNode, PgPrograms};
use serde::{Deserialize, Serialize};

use crate::cluster::daemon::Daemon;
use crate::cluster::ClusterConfig;
use crate::names;

const RECORD_FILE: &str = "compute.toml";

/// What `strata compute start` recorded about a compute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComputeRecord {
    pub name: String,
    pub branch: String,
    pub tenant_id: String,
    pub timeline_id: String,
    pub port: u16,
    pub read_only: bool,
    /// The LSN the basebackup was taken at.
    pub lsn: String,
    /// Unix time after which a time-travel compute is stopped and removed.
    pub expires_at: Option<u64>,
    /// Its data directory is a page filesystem (`compute pagefs`) over a slim basebackup,
    /// not a full copy. Records written before lazy computes existed are full copies.
    #[serde(default)]
    pub lazy: bool,
}

pub fn computes_dir(dir: &Path) -> PathBuf {
    dir.join("computes")
}

pub fn compute_dir(dir: &Path, name: &str) -> PathBuf {
    computes_dir(dir).join(name)
}

/// The file holding the address of a compute walproposer's HTTP endpoint (with its fence).
pub fn control_file(dir: &Path, name: &str) -> PathBuf {
    compute_dir(dir, name).join("walproposer.addr")
}

pub fn walproposer_daemon(dir: &Path, name: &str) -> Daemon {
    Daemon::new(dir, &format!("compute-{name}-walproposer"))
}

impl ComputeRecord {
    pub fn load(dir: &Path, name: &str) -> Result<ComputeRecord> {
        names::path_component(names::Kind::Compute, name)?;
        let p = compute_dir(dir, name).join(RECORD_FILE);
        let text = fs::read_to_string(&p)
            .with_context(|| format!("no compute named {name:?} ({} unreadable)", p.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        let d = compute_dir(dir, &self.name);
        fs::create_dir_all(&d)?;
        let p = d.join(RECORD_FILE);
        fs::write(&p, toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// "lazy" or "full copy", as `status` and `compute start` say it.
    pub fn kind(&self) -> &'static str {
        if self.lazy {
            "lazy"
        } else {
            "full copy"
        }
    }

    pub fn list(dir: &Path) -> Result<Vec<ComputeRecord>> {
        let d = computes_dir(dir);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if compute_dir(dir, &name).join(RECORD_FILE).exists() {
                out.push(ComputeRecord::load(dir, &name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

pub fn node(dir: &Path, cfg: &ClusterConfig, name: &str) -> Result<ComputeNode> {
    let mut n = ComputeNode::new(PgPrograms::new(&cfg.pg_bin)?, &compute_dir(dir, name))?;
    // With the cluster's other logs, and kept when the compute is removed.
    n.log_file = log_file(dir, name);
    Ok(n)
}

/// `<dir>/logs/compute-<name>.log`: the compute's Postgres log (its page filesystem's is
/// `compute-<name>-pagefs.log` beside it).
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.join("logs").join(format!("compute-{name}.log"))
}

/// The supervisor's name for a compute's Postgres.
pub fn postgres_service(name: &str) -> String {
    format!("compute-{name}-postgres")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
