//! The Strata cluster library: the local cluster's model and its operations, for the
//! `strata` command's files (`src/commands/`, `src/main.rs`) to call and print.
//!
//! It holds the cluster's configuration and processes (`cluster`), starting and stopping it
//! (`lifecycle`), the names of tenants and branches (`names`), the services' management
//! clients (`mgmt`), computes and their page filesystems (`computes`), LSN resolution
//! (`lsn`), branches (`branches`), deleting branches and tenants (`delete`), tenant imports,
//! groups and the proxy's process (`proxy`). The library takes plain values and returns what
//! it did; progress goes through [`output::Output`]. Flags and what a command prints as
//! its result are the command files' (see "Code layout" in `docs/architecture.md`).

pub mod auth_setup;
pub mod branches;
pub mod cluster;
pub mod computes;
pub mod delete;
pub mod group;
pub mod lifecycle;
pub mod lsn;
pub mod mgmt;
pub mod names;
pub mod output;
pub mod proxy;
pub mod target;
pub mod tenant_import;
pub mod tls_setup;
