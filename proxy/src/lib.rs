//! The Postgres-protocol proxy (`strata-proxy`): one address for every tenant, branch and
//! moment of a local Strata cluster.
//!
//! A client connects with a normal connection string; the proxy answers the startup
//! (SSLRequest with 'S' and a TLS handshake when it has a certificate, else 'N';
//! GSSENCRequest with 'N'), reads the target from the startup
//! parameters ([`route`]), authenticates the client with SCRAM-SHA-256 against the roles it
//! knows ([`roles`], [`scram`]), finds or starts the compute of that branch or moment
//! ([`computes`], by running the `strata` command), logs into it as `postgres`
//! ([`backend`]), and then relays bytes both ways with no per-message work. Cancel requests
//! are forwarded to the compute that serves the session ([`cancel`]).

pub mod at;
pub mod backend;
pub mod cancel;
pub mod computes;
pub mod durable;
pub mod error;
pub mod names;
pub mod query;
pub mod roles;
pub mod route;
pub mod scram;
pub mod server;
pub mod session;
pub mod strata_cli;
pub mod wire;
