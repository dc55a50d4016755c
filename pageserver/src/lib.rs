//! The pageserver: WAL ingest into layer files, and pages at any LSN reconstructed in Rust.
//!
//! - [`timeline`]: one timeline's storage: the open layer, L0 delta and image layer files, the
//!   layer map, crash-safe metadata, and GetPage@LSN.
//! - [`ingest`]: decoded WAL records → (key, LSN, value) into a timeline.
//! - [`import`]: a cleanly shut down data directory → image layers.
//! - [`verify_redo`]: `strata verify-redo`: all of the above checked against Postgres's
//!   consistency-check images.
//! - [`redo`]: native redo of PostgreSQL 15 records.

pub mod import;
pub mod ingest;
pub mod redo;
pub mod timeline;
pub mod verify_redo;
