//! Shared helpers for the benchmarks.

pub mod auth_bench;
pub mod branch_bench;
pub mod lazy_bench;
