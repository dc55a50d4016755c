//! The pageserver: WAL ingest into layer files, and pages at any LSN reconstructed in Rust.
//!
//! - [`timeline`]: one timeline's storage: the open layer, L0 delta and image layer files, the
//!   layer map, crash-safe metadata, and GetPage@LSN.
//! - [`ingest`]: decoded WAL records → (key, LSN, value) into a timeline.
//! - [`import`]: a cleanly shut down data directory or a `pg_basebackup` → a timeline, with
//!   every page and the non-page state a basebackup needs.
//! - [`basebackup`]: a data directory (tar or directory) at an LSN that vanilla Postgres
//!   starts from.
//! - [`verify_redo`]: `strata verify-redo`: all of the above checked against Postgres's
//!   consistency-check images.
//! - [`redo`]: native redo of PostgreSQL 15 records.
//! - [`walreceiver`]: streaming committed WAL from the safekeepers.
//! - [`tenant`]: tenants and timelines on disk, branches, the shared timeline handle.
//! - [`service`]: the management and read gRPC service.
//! - [`remote`]: layer files and a manifest per timeline in an object store; restore.

pub mod basebackup;
pub mod durable;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod redo;
pub mod remote;
pub mod service;
pub mod tenant;
pub mod timeline;
pub mod verify_redo;
pub mod walreceiver;
