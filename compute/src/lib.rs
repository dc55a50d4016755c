//! The compute side of Strata: the walproposer, which streams WAL from an unmodified
//! Postgres 15 as a physical replication client and replicates it to the safekeepers, and the
//! compute lifecycle.

pub mod pg;
pub mod walproposer;
