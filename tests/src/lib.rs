//! Test harness: real Postgres 15 processes and workloads.
//!
//! - [`pg`]: `PgCluster`, a throw-away Postgres 15 cluster per test.
//! - [`pitr`]: Postgres's own point-in-time recovery, the oracle for past states.
//! - [`cluster`]: the `strata` command and Postgres clients against a Strata local cluster.
//! - [`workload`]: SQL that makes Postgres write (nearly) every WAL record type.
//! - [`index_workload`]: every index access method on one table, for benchmarks.
//! - [`waldump`]: running and parsing `pg_waldump` / `strata waldump`, and comparing them.
//! - [`redo_run`]: a short SQL workload on a fresh cluster, for one resource manager's redo.
//! - [`soak`]: the randomized fault soak (ledger, fault injector, report).
//! - [`walgen`]: small pgbench WAL samples for benchmarks and fuzz seeds.
//! - [`procs`]: safekeeper, pageserver and walproposer processes, binaries, ports, waits.

pub mod cluster;
pub mod index_workload;
pub mod os_user;
pub mod pg;
pub mod pitr;
pub mod procs;
pub mod redo_run;
pub mod soak;
pub mod waldump;
pub mod walgen;
pub mod workload;

pub use pg::{InitOptions, PgCluster, StopMode};
