//! Talking to the compute's Postgres: a small client of the frontend/backend protocol
//! ([`conn`]) and, on top of it, physical streaming replication ([`replication`]).

pub mod config;
pub mod conn;
pub mod replication;

pub use config::ConnConfig;
pub use conn::{PgConnection, PgError};
