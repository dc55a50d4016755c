//! Shared helpers for the benchmarks.

pub mod branch_bench;
pub mod lazy_bench;
