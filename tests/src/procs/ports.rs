//! Loopback ports for servers that tests start, unique across every test process on the
//! machine: each port handed out is also locked (`flock`) in a file under
//! `/tmp/strata-test-ports/` for as long as the process that took it lives, so two test
//! processes (parallel `cargo test` runs) never get the same one; the kernel drops the lock
//! when the process exits, however it exits.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// The lock files of the ports this process took (kept open: closing drops the lock).
static TAKEN: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());

const LOCK_DIR: &str = "/tmp/strata-test-ports";

/// A loopback port free now and reserved for this process, among the test ports of
/// [`strata_daemon::ports`]: below the kernel's ephemeral range (a server restarted on it
/// later, as the kill/restart tests do, cannot find it taken by some client connection's
/// local port) and apart from the blocks `strata init` claims (a test's server cannot take a
/// port of a stopped cluster).
pub fn free_port() -> Result<u16> {
    let range = strata_daemon::ports::test_ports();
    let (lo, hi) = (range.start, range.end);
    if lo == hi {
        bail!(
            "no test ports: the kernel's ephemeral port range starts at {hi}, not above {lo} \
             (/proc/sys/net/ipv4/ip_local_port_range)"
        );
    }
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    // Other users' test runs share the directory.
    let _ = std::fs::set_permissions(LOCK_DIR, std::fs::Permissions::from_mode(0o1777));
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut state = seed();
    for _ in 0..1000 {
        let port = lo + (splitmix64(&mut state) % u64::from(hi - lo)) as u16;
        if taken.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let Some(lock) = lock_port(port)? else {
            continue; // another test process has it
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push((port, lock));
            return Ok(port);
        }
    }
    bail!("no free loopback port in {lo}..{hi} after 1000 tries")
}

/// The port's lock file, locked by this process; `None` if another process holds it.
fn lock_port(port: u16) -> Result<Option<File>> {
    let path = format!("{LOCK_DIR}/{port}");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(file))
}

/// Different in every process and every call: time, pid.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_handed_out_is_locked_against_other_takers() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b, "one process got the same port twice");
        let tests = strata_daemon::ports::test_ports();
        assert!(
            tests.contains(&a) && tests.contains(&b),
            "{a}, {b} not in {tests:?}"
        );
        assert!(!strata_daemon::ports::cluster_ports().contains(&a));
        // Another open of the lock file (as another test process would make) cannot lock it.
        assert!(lock_port(a).unwrap().is_none(), "port {a} is not locked");
        // And the port is still free to bind for the server it is meant for.
        TcpListener::bind(("127.0.0.1", a)).unwrap();
    }
}
