//! The branch-time benchmark (`branch_vs_pitr`): how long "branch at T, then the first query
//! on the branch" takes in Strata, side by side with Postgres's own point-in-time recovery
//! (restore a base backup, replay the WAL to the same LSN, promote, query).
//!
//! - [`pgprog`]: running Postgres 15 programs (psql, pgbench, pg_basebackup) against a
//!   server on 127.0.0.1, as the `postgres` OS user when we are root.
//! - [`strata_cli`]: the `strata` binary, driven through its CLI with `--json`.
//! - [`pitr`]: Postgres's own PITR from a base backup and a directory of WAL segments.
//! - [`report`]: the result table.

pub mod pgprog;
pub mod pitr;
pub mod report;
pub mod strata_cli;
