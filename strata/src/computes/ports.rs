//! Which compute of the cluster owns which port of its compute range. A port that is free
//! now is not yet taken: Postgres binds it only seconds later, after the basebackup, so two
//! computes started at once (a group restore starts every member's in parallel, or two
//! `strata compute start`s race) would pick the same one. So a start claims its port with a
//! file `<dir>/computes/.ports/<port>` ("<pid> <compute name>"), chosen and written under a
//! lock on that directory.
//!
//! A claim is held while the compute's record names that port, or, before the record exists
//! (a start in progress), while the process that wrote it lives and for at most
//! [`START_CLAIM`]: a start that failed or was killed does not keep its port for long.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::{computes_dir, port_free, ComputeRecord};
use crate::cluster::config::COMPUTE_PORTS;

/// How long a claim without a compute record holds (longer than any compute start takes).
const START_CLAIM: Duration = Duration::from_secs(600);
/// How long a start waits for others to finish choosing their ports.
const LOCK_DEADLINE: Duration = Duration::from_secs(30);

fn claims_dir(dir: &Path) -> PathBuf {
    computes_dir(dir).join(".ports")
}

fn claim_file(dir: &Path, port: u16) -> PathBuf {
    claims_dir(dir).join(port.to_string())
}

/// A claim as written: who wrote it, for which compute, and when.
struct Claim {
    pid: u32,
    compute: String,
    age: Duration,
}

fn read_claim(dir: &Path, port: u16) -> Option<Claim> {
    let path = claim_file(dir, port);
    let text = fs::read_to_string(&path).ok()?;
    let (pid, compute) = text.trim().split_once(' ')?;
    let age = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Some(Claim {
        pid: pid.parse().ok()?,
        compute: compute.to_string(),
        age,
    })
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Claim {
    /// A start still in progress (its process lives, its time is not up).
    fn starting(&self) -> bool {
        self.age < START_CLAIM && process_alive(self.pid)
    }
}

/// Claims a free port of the cluster's compute range (from `base_port`, the configuration's
/// `compute_base_port`) for compute `name`: not used by any compute's record, not claimed by
/// a start in progress, and free on 127.0.0.1 now.
pub fn claim(dir: &Path, base_port: u16, name: &str) -> Result<u16> {
    let claims = claims_dir(dir);
    fs::create_dir_all(&claims).with_context(|| format!("creating {}", claims.display()))?;
    // Held only while ports are checked and one claim written (milliseconds).
    let _lock = crate::cluster::lock::ClusterLock::exclusive(
        &claims.join(".lock"),
        LOCK_DEADLINE,
        "another compute start to finish claiming its port",
    )?;
    let existing = ComputeRecord::list(dir)?;
    let range = base_port..base_port.saturating_add(COMPUTE_PORTS);
    for port in range.clone() {
        if existing.iter().any(|c| c.port == port) {
            continue;
        }
        if read_claim(dir, port).is_some_and(|c| c.starting()) {
            continue;
        }
        if !port_free(port) {
            continue;
        }
        let path = claim_file(dir, port);
        fs::write(&path, format!("{} {name}\n", std::process::id()))
            .with_context(|| format!("writing the port claim {}", path.display()))?;
        return Ok(port);
    }
    bail!(
        "no free port for the compute in {}..{} (claims in {})",
        range.start,
        range.end,
        claims.display()
    )
}

/// Whether compute `rec` is being started right now by a live process (its record is
/// written before its Postgres runs): such a compute is not a stopped one to forget.
pub fn being_started(dir: &Path, rec: &ComputeRecord) -> bool {
    read_claim(dir, rec.port).is_some_and(|c| c.compute == rec.name && c.starting())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_claims_get_distinct_ports() {
        let d = tempfile::tempdir().unwrap();
        // Nothing is bound in this test: a port is only claimed.
        let base = 29_000;
        let ports: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let dir = d.path();
                    s.spawn(move || claim(dir, base, &format!("c{i}")).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "ports claimed twice: {ports:?}"
        );
        // A claim of this live process for c3 marks c3 as being started, not another one.
        let p3 = ports[3];
        let rec = |name: &str| ComputeRecord {
            name: name.into(),
            branch: "main".into(),
            tenant_id: String::new(),
            timeline_id: String::new(),
            port: p3,
            read_only: false,
            lsn: "0/0".into(),
            expires_at: None,
            lazy: true,
        };
        assert!(being_started(d.path(), &rec("c3")));
        assert!(!being_started(d.path(), &rec("other")));
    }

    #[test]
    fn a_claim_of_a_dead_process_or_too_old_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let base = 29_200;
        let first = claim(d.path(), base, "a").unwrap();
        // pid 0 is never a process's.
        fs::write(claim_file(d.path(), first), "0 a\n").unwrap();
        assert_eq!(claim(d.path(), base, "b").unwrap(), first);
        let f = fs::File::options()
            .write(true)
            .open(claim_file(d.path(), first))
            .unwrap();
        f.set_modified(SystemTime::now() - 2 * START_CLAIM).unwrap();
        assert_eq!(claim(d.path(), base, "c").unwrap(), first);
    }
}
