//! Which cluster owns which loopback ports on this machine. `strata init` picks a block of free
//! ports, but a port that is free now may belong to a cluster that is stopped, or to one being
//! initialized at the same moment (two inits racing took the same block once). So the ports are
//! cut into fixed slots, and a cluster claims its slots by creating one file per slot in a
//! machine-wide directory (`create_new`, atomic): two clusters never share a slot. A claim whose
//! cluster directory no longer holds a configuration using that slot is stale and is taken over.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::config::ClusterConfig;

/// Ports per slot: a cluster with three safekeepers and its computes (112 ports) fits one.
pub const SLOT_PORTS: u16 = 128;
/// Slot 0 begins here; the slots end below the test harness's ports (see
/// [`strata_daemon::ports`]).
const LOWEST: u16 = strata_daemon::ports::CLUSTER_PORTS_START;
/// A claim this young is never stale: its cluster may not have written its configuration yet.
const CLAIM_GRACE: Duration = Duration::from_secs(120);

/// The machine-wide claims directory (`$STRATA_PORT_CLAIMS`, else `<tmp>/strata-port-claims`).
fn claims_dir() -> PathBuf {
    std::env::var_os("STRATA_PORT_CLAIMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("strata-port-claims"))
}

/// How many slots a block of `n` ports may start at in `range`.
fn block_starts(range: &Range<u16>, n: u16) -> u16 {
    let slots_per_block = n.div_ceil(SLOT_PORTS).max(1);
    let slots = range.end.saturating_sub(LOWEST) / SLOT_PORTS;
    slots.saturating_sub(slots_per_block - 1)
}

/// The first port of `n` consecutive loopback ports, free now and claimed for the cluster in
/// `cluster_dir`, among the cluster ports of [`strata_daemon::ports`] (below the kernel's
/// ephemeral range, where a port could be taken meanwhile as the local port of an outgoing
/// connection, and apart from the test harness's ports). The search starts at a random slot
/// (clusters rarely contend) and wraps once.
pub fn claim_port_block(cluster_dir: &Path, n: u16) -> Result<u16> {
    claim_port_block_in(&claims_dir(), cluster_dir, n)
}

fn claim_port_block_in(dir: &Path, cluster_dir: &Path, n: u16) -> Result<u16> {
    let range = strata_daemon::ports::cluster_ports();
    let slots_per_block = n.div_ceil(SLOT_PORTS).max(1);
    let bases = block_starts(&range, n);
    if bases == 0 {
        bail!("no room for {n} ports in the cluster port range {range:?} (the ephemeral port range starts at {})", strata_daemon::ports::ephemeral_low());
    }
    ensure_shared_dir(dir)?;
    let owner = std::path::absolute(cluster_dir)
        .with_context(|| format!("resolving {}", cluster_dir.display()))?;
    let start = {
        use std::hash::{BuildHasher, RandomState};
        (RandomState::new().hash_one(std::process::id()) % u64::from(bases)) as u16
    };
    for i in 0..bases {
        let first_slot = (start + i) % bases;
        let base = LOWEST + first_slot * SLOT_PORTS;
        if !(base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            continue;
        }
        if claim_slots(dir, &owner, first_slot, slots_per_block)? {
            return Ok(base);
        }
    }
    bail!("could not find {n} consecutive free, unclaimed ports on 127.0.0.1 in {range:?} (claims in {})", dir.display())
}

/// Claims `count` slots from `first` for `owner`, all or none.
fn claim_slots(dir: &Path, owner: &Path, first: u16, count: u16) -> Result<bool> {
    let mut taken = Vec::new();
    for slot in first..first + count {
        if claim_slot(dir, owner, slot)? {
            taken.push(slot);
        } else {
            for s in taken {
                let _ = fs::remove_file(slot_file(dir, s));
            }
            return Ok(false);
        }
    }
    Ok(true)
}

fn slot_file(dir: &Path, slot: u16) -> PathBuf {
    dir.join(format!("slot-{slot}"))
}

fn claim_slot(dir: &Path, owner: &Path, slot: u16) -> Result<bool> {
    let path = slot_file(dir, slot);
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(owner.as_os_str().as_encoded_bytes())
                    .with_context(|| format!("writing the port claim {}", path.display()))?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !is_stale(&path, slot) {
                    return Ok(false);
                }
                // Another init may be taking over the same stale claim: only one of us
                // creates the new file.
                let _ = fs::remove_file(&path);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating the port claim {}", path.display()))
            }
        }
    }
    Ok(false)
}

/// A claim is stale when it is old enough and its cluster directory has no configuration whose
/// ports lie in the slot (the directory was removed, or re-initialized elsewhere).
fn is_stale(path: &Path, slot: u16) -> bool {
    let young = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < CLAIM_GRACE);
    if young {
        return false;
    }
    let Ok(owner) = fs::read_to_string(path) else {
        return false;
    };
    let Ok(cfg) = ClusterConfig::load(Path::new(&owner)) else {
        return true;
    };
    let slot_ports = LOWEST + slot * SLOT_PORTS..LOWEST + (slot + 1) * SLOT_PORTS;
    !cfg.ports().iter().any(|p| slot_ports.contains(p))
}

/// Creates the claims directory writable by every user (sticky, like /tmp), so clusters of
/// different users on one machine see each other's claims.
fn ensure_shared_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.is_dir() {
        return Ok(());
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))
            .with_context(|| format!("making {} shared", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_slot_is_not_claimed_again_until_its_cluster_is_gone() {
        let claims = tempfile::tempdir().unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert!(claim_slot(claims.path(), a.path(), 7).unwrap());
        assert!(
            !claim_slot(claims.path(), b.path(), 7).unwrap(),
            "a live claim is kept"
        );
        // Old, and its cluster directory holds no configuration: stale, taken over.
        let f = fs::File::options()
            .write(true)
            .open(slot_file(claims.path(), 7))
            .unwrap();
        f.set_modified(SystemTime::now() - 2 * CLAIM_GRACE).unwrap();
        assert!(claim_slot(claims.path(), b.path(), 7).unwrap());
        assert_eq!(
            fs::read_to_string(slot_file(claims.path(), 7)).unwrap(),
            b.path().to_str().unwrap()
        );
    }

    #[test]
    fn an_old_claim_of_a_cluster_using_the_slot_is_kept() {
        let claims = tempfile::tempdir().unwrap();
        let a = tempfile::tempdir().unwrap();
        let slot = 3;
        let mut cfg =
            super::super::new_config(a.path(), 1, None, "/usr/lib/postgresql/15/bin".into())
                .unwrap();
        cfg.pageserver.grpc_port = LOWEST + slot * SLOT_PORTS + 5;
        cfg.store(a.path()).unwrap();
        assert!(claim_slot(claims.path(), a.path(), slot).unwrap());
        let f = fs::File::options()
            .write(true)
            .open(slot_file(claims.path(), slot))
            .unwrap();
        f.set_modified(SystemTime::now() - 2 * CLAIM_GRACE).unwrap();
        assert!(!is_stale(&slot_file(claims.path(), slot), slot));
        // A slot none of its ports lie in (generate's own block is anywhere).
        let unused = (0..)
            .find(|s| {
                let ports = LOWEST + s * SLOT_PORTS..LOWEST + (s + 1) * SLOT_PORTS;
                !cfg.ports().iter().any(|p| ports.contains(p))
            })
            .unwrap();
        assert!(is_stale(&slot_file(claims.path(), slot), unused));
    }

    #[test]
    fn every_block_lies_in_the_cluster_ports_not_in_the_test_ports() {
        let range = strata_daemon::ports::cluster_ports();
        for n in [
            1,
            SLOT_PORTS - 1,
            SLOT_PORTS,
            SLOT_PORTS + 1,
            3 * SLOT_PORTS,
        ] {
            let starts = block_starts(&range, n);
            assert!(starts > 0, "no room for {n} ports in {range:?}");
            let last_port = LOWEST + (starts - 1) * SLOT_PORTS + (n - 1);
            assert!(
                range.contains(&LOWEST) && range.contains(&last_port),
                "{n}: {last_port}"
            );
            assert!(!strata_daemon::ports::test_ports().contains(&last_port));
            // Whole slots: the block's last slot ends inside the range.
            let slots_per_block = n.div_ceil(SLOT_PORTS);
            assert!(LOWEST + (starts - 1 + slots_per_block) * SLOT_PORTS <= range.end);
        }
        // The claimed block is in the range too.
        let cluster = tempfile::tempdir().unwrap();
        let claims = tempfile::tempdir().unwrap();
        let base = claim_port_block_in(claims.path(), cluster.path(), 112).unwrap();
        assert!(
            range.contains(&base) && range.contains(&(base + 111)),
            "{base}"
        );
    }

    #[test]
    fn a_block_of_several_slots_is_claimed_whole_or_not_at_all() {
        let claims = tempfile::tempdir().unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert!(claim_slot(claims.path(), a.path(), 11).unwrap());
        assert!(!claim_slots(claims.path(), b.path(), 10, 2).unwrap());
        assert!(
            !slot_file(claims.path(), 10).exists(),
            "the first slot is released when the second is taken"
        );
        assert!(claim_slots(claims.path(), b.path(), 12, 2).unwrap());
    }
}
