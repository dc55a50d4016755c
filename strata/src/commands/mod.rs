//! The command files: each parses its arguments, calls the library and prints the result.

pub mod basebackup;
pub mod branch;
pub mod check;
pub mod cluster_args;
pub mod cluster_json;
pub mod compute;
pub mod delete;
pub mod demo;
pub mod gc;
pub mod group;
pub mod query;
pub mod role;
pub mod status;
pub mod status_branch;
pub mod tenant;
pub mod tenant_config;
pub mod tenant_import;
pub mod token;
pub mod verify_redo;
pub mod waldump;
