//! What the cluster keeps about a compute: its record (`compute.toml`), where its files are,
//! and the names its processes run under.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use compute::node::{ComputeNode, PgPrograms};
use serde::{Deserialize, Serialize};

use crate::cluster::daemon::Daemon;
use crate::cluster::spec::write_atomically;
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
        Self::load_if_present(dir, name)?.with_context(|| {
            let p = compute_dir(dir, name).join(RECORD_FILE);
            format!("no compute named {name:?} ({} does not exist)", p.display())
        })
    }

    /// The record, or `None` when there is none (never made, or removed meanwhile).
    fn load_if_present(dir: &Path, name: &str) -> Result<Option<ComputeRecord>> {
        names::path_component(names::Kind::Compute, name)?;
        let p = compute_dir(dir, name).join(RECORD_FILE);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("no compute named {name:?} ({} unreadable)", p.display())
                })
            }
        };
        let rec = toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        Ok(Some(rec))
    }

    /// Whole or not at all: other commands list computes while this one writes its record.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let p = compute_dir(dir, &self.name).join(RECORD_FILE);
        write_atomically(&p, toml::to_string_pretty(self)?.as_bytes(), 0o644)
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
            // A compute stopped by another command while this one lists is not listed.
            if let Some(rec) = ComputeRecord::load_if_present(dir, &name)? {
                out.push(rec);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ComputeRecord {
        ComputeRecord {
            name: name.into(),
            branch: "main".into(),
            tenant_id: "t".into(),
            timeline_id: "tl".into(),
            port: 5432,
            read_only: false,
            lsn: "0/0".into(),
            expires_at: None,
            lazy: true,
        }
    }

    /// Parallel restores list computes while others write or remove their records: a listing
    /// sees each record whole or not at all (CI once saw an empty `compute.toml`).
    #[test]
    fn listing_while_others_store_and_remove_sees_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        record("steady").store(dir.path()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..300 {
                    let rec = record(&format!("c{}", i % 3));
                    rec.store(dir.path()).unwrap();
                    if i % 2 == 0 {
                        fs::remove_dir_all(compute_dir(dir.path(), &rec.name)).unwrap();
                    }
                }
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut listings = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || listings == 0 {
                let all = ComputeRecord::list(dir.path()).unwrap();
                assert!(all.iter().any(|r| r.name == "steady"), "{all:?}");
                listings += 1;
            }
        });
        let err = ComputeRecord::load(dir.path(), "absent").unwrap_err();
        assert!(
            format!("{err:#}").contains("no compute named \"absent\""),
            "{err:#}"
        );
    }
}
