//! Which loopback ports Strata picks for itself, split on purpose between the two pickers so
//! that neither can hand out a port the other one owns:
//!
//! - `strata init` claims blocks of [`cluster_ports`] (128-port slots, one claim file each in
//!   `$STRATA_PORT_CLAIMS`; the claim lasts as long as the cluster's configuration).
//! - The test harness takes single [`test_ports`] (a `flock` each in
//!   `/tmp/strata-test-ports`; the lock lasts as long as the test process).
//!
//! The two schemes keep different books (a claim outlives its process, a lock must not), so
//! the ranges are disjoint instead: a test's Postgres can never land in a stopped cluster's
//! block and keep it from restarting. Both lie below the kernel's ephemeral range, from which
//! outgoing connections take their local ports (a server restarted on such a port could find
//! it taken).

use std::ops::Range;

/// The lowest port either picker hands out (below it live well-known services).
pub const CLUSTER_PORTS_START: u16 = 10_000;
/// Where clusters' ports end and tests' begin: 117 slots of 128 ports for clusters, about
/// 7,700 single ports for tests with the usual ephemeral range (from 32768).
pub const TEST_PORTS_START: u16 = 25_000;

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
pub fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
}

/// The ports `strata init` claims blocks in (empty if the ephemeral range starts lower).
pub fn cluster_ports() -> Range<u16> {
    CLUSTER_PORTS_START..TEST_PORTS_START.min(ephemeral_low())
}

/// The ports the test harness takes (empty if the ephemeral range starts at or below
/// [`TEST_PORTS_START`]).
pub fn test_ports() -> Range<u16> {
    TEST_PORTS_START..ephemeral_low().max(TEST_PORTS_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_and_test_ports_are_disjoint_and_below_the_ephemeral_range() {
        let (clusters, tests, eph) = (cluster_ports(), test_ports(), ephemeral_low());
        assert!(
            clusters.end <= tests.start,
            "{clusters:?} overlaps {tests:?}"
        );
        assert!(
            clusters.start >= 1024 && clusters.end <= eph,
            "{clusters:?}"
        );
        assert!(tests.end <= eph.max(TEST_PORTS_START), "{tests:?}");
        // With this machine's usual ephemeral range both have room.
        if eph >= 32768 {
            assert!(clusters.len() >= 100 * 128, "{clusters:?}");
            assert!(tests.len() >= 5_000, "{tests:?}");
        }
    }
}
