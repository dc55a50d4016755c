//! The compute side of Strata: the walproposer, which streams WAL from an unmodified
//! Postgres 15 as a physical replication client and replicates it to the safekeepers, and the
//! compute lifecycle.

/// The Postgres protocol client now lives in walproto (the pageserver streams with it too).
pub use walproto::pgclient as pg;
pub mod node;
pub mod pagefs;
pub mod walproposer;
