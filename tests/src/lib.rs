//! Test harness: real Postgres 15 processes and workloads.
