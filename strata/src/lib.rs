//! The Strata cluster library: the local cluster's model and its operations, for the
//! `strata` command's files (`src/commands/`, `src/main.rs`) to call and print.
//!
//! It holds the cluster's configuration and processes (`cluster`), the names of tenants and
//! branches (`names`), the management clients of the services (`mgmt`), computes and their
//! page filesystems (`computes`), LSN resolution (`lsn`),
//! branches, tenant imports, groups and the proxy's lifecycle. Progress goes through
//! [`output::Output`]; what a command prints as its result is the command file's business.

pub mod auth_setup;
pub mod branch_cmd;
pub mod branch_restore;
pub mod cluster;
pub mod computes;
pub mod delete_cmd;
pub mod group;
pub mod lifecycle;
pub mod lsn;
pub mod mgmt;
pub mod names;
pub mod output;
pub mod proxy_cmd;
pub mod target;
pub mod tenant_import;
pub mod tls_setup;
