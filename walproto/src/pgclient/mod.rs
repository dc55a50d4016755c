//! A small client of Postgres's frontend/backend protocol ([`conn`]) and, on top of it,
//! physical streaming replication ([`replication`]). The walproposer uses it to stream from
//! the compute's Postgres; the pageserver's walreceiver uses it to stream from safekeepers,
//! which speak the same protocol.

pub mod config;
pub mod conn;
pub mod replication;

pub use config::ConnConfig;
pub use conn::{PgConnection, PgError};
