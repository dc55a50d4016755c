//! The process harness: one way to start, stop and kill the processes the tests run
//! (safekeepers, pageservers, the walproposer, Postgres through [`crate::pg`]), to find their
//! binaries, to pick their ports and to wait for them.
//!
//! - [`built_bin`]: a binary of this workspace (env override, then the running test's target).
//! - [`free_port`]: a loopback port no other test process on the machine gets.
//! - [`wait_for`] (blocking) and [`wait_until`] (async): a deadline and the name of what was
//!   awaited.
//! - [`Safekeeper`], [`Pageserver`], [`Walproposer`], [`S3Server`]: processes killed when
//!   dropped.
//! - [`read_wal`]: WAL bytes from segment files, to compare Postgres's with a safekeeper's.

mod bins;
mod pageserver;
mod ports;
mod s3;
mod safekeeper;
mod wait;
mod wal_files;
mod walproposer;

use std::path::Path;

use anyhow::{ensure, Result};

pub use bins::{bin_env_var, built_bin};
pub use pageserver::Pageserver;
pub use ports::free_port;
pub use s3::{find_s3s_fs, S3Server, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};
pub use safekeeper::{three_safekeepers, Safekeeper};
pub use wait::{wait_for, wait_until};
pub use wal_files::read_wal;
pub use walproposer::{walproposer_pg_options, walproposer_postgres, Walproposer};

/// The tenant the safekeeper and walproposer tests use.
pub const TENANT: &str = "0123456789abcdef0123456789abcdef";
/// The timeline the safekeeper and walproposer tests use.
pub const TIMELINE: &str = "fedcba9876543210fedcba9876543210";

/// `kill <sig> <pid>`.
fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// The last `n` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
