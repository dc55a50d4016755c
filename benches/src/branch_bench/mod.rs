//! The branch-time benchmark (`branch_vs_pitr`): how long "branch at T, then the first query
//! on the branch" takes in Strata, side by side with Postgres's own point-in-time recovery
//! (restore a base backup, replay the WAL to the same LSN, promote, query).
//!
//! - [`pgprog`]: running Postgres 15 programs (psql, pgbench, pg_basebackup) against a
//!   server on 127.0.0.1, as the `postgres` OS user when we are root.
//! - [`strata_cli`]: the `strata` binary, driven through its CLI with `--json`.
//! - [`pitr`]: Postgres's own PITR from a base backup and a directory of WAL segments.
//! - [`report`]: the result table.
//! - [`machine`]: free space, cores, load, and dropping the OS page cache.
//! - [`tool_args`]: the options every benchmark program has.

pub mod machine;
pub mod pgprog;
pub mod pitr;
pub mod report;
pub mod strata_cli;
pub mod tool_args;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

/// Runs one step of a benchmark, printing its name and its time on stderr.
pub fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("… {what}");
    let t0 = Instant::now();
    let r = f().with_context(|| what.to_string())?;
    eprintln!("  {what}: {:.2} s", t0.elapsed().as_secs_f64());
    Ok(r)
}

/// Writes `bulk.sql` into `dir`: a pgbench script updating 1,000 consecutive accounts of a
/// scale-`scale` database per transaction (readable by the Postgres OS user); its path.
pub fn bulk_update_script(dir: &Path, scale: u32) -> Result<PathBuf> {
    let script = dir.join("bulk.sql");
    std::fs::write(
        &script,
        format!(
            "\\set aid random(1, {} - 999)\n\
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN :aid AND :aid + 999;\n",
            100_000u64 * u64::from(scale)
        ),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    Ok(script)
}
