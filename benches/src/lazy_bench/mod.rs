//! The lazy compute benchmark (`lazy_compute`): at several pgbench sizes, how long a server
//! at a past LSN takes to start and answer, lazy (`strata compute start --at T`) against a
//! full copy (`--full-copy`) against Postgres's own PITR; then query speed on a lazy compute
//! against a full-copy one. It shares the `branch_vs_pitr` modules ([`crate::branch_bench`]).
//!
//! - [`dataset`]: a cluster with a pgbench database, T in its past, main's answers at T, a
//!   base backup and the WAL for the PITR.
//! - [`at_t`]: a server at T of each [`kind::Kind`], stopped when dropped.
//! - [`start_time`]: start → first answer, rounds in rotating order.
//! - [`query_speed`]: `pgbench -S` cold and warm, a cold scan, read-write pgbench.
//! - [`report`]: the tables, medians and the goals.

pub mod at_t;
pub mod dataset;
pub mod kind;
pub mod query_speed;
pub mod report;
pub mod start_time;

use anyhow::Result;

use crate::branch_bench::machine;
use crate::branch_bench::pgprog::PgProgs;

/// What is done before every measured start.
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    /// Drop the OS page cache (needs root).
    pub drop_caches: bool,
    /// Stop when less than this many GB are free.
    pub min_free_gb: u64,
}

impl Conditions {
    /// Checks the free space, drops the page cache when asked, and returns the 1-minute load
    /// average.
    pub fn before_measurement(&self, ds: &dataset::Dataset) -> Result<f64> {
        machine::check_free_space(&ds.dir, self.min_free_gb)?;
        if self.drop_caches {
            machine::drop_caches()?;
        }
        machine::load_1min()
    }
}

/// What every measurement at one scale works with.
#[derive(Clone, Copy)]
pub struct Bench<'a> {
    pub ds: &'a dataset::Dataset,
    pub progs: &'a PgProgs,
    pub starter: &'a at_t::Starter,
    pub cond: &'a Conditions,
}

impl<'a> Bench<'a> {
    /// A read-only server at T of `kind` (named `name` if a compute), started after the
    /// [`Conditions`]; and the load average before.
    pub fn read_only(&self, kind: kind::Kind, name: &str) -> Result<(at_t::ServerAtT<'a>, f64)> {
        let load = self.cond.before_measurement(self.ds)?;
        let srv = self.starter.read_only(self.ds, self.progs, kind, name)?;
        Ok((srv, load))
    }

    /// A read-write compute of `kind` on a new branch at T, started after the
    /// [`Conditions`]; and the load average before.
    pub fn read_write(&self, kind: kind::Kind, branch: &str) -> Result<(at_t::ServerAtT<'a>, f64)> {
        let load = self.cond.before_measurement(self.ds)?;
        let srv = self.starter.read_write(self.ds, self.progs, kind, branch)?;
        Ok((srv, load))
    }
}
