//! The pageserver: WAL ingest into layer files, and pages at any LSN reconstructed in Rust.

pub mod redo;
