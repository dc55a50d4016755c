//! Shared helpers for the benchmarks.

pub mod branch_bench;
