//! Servers at the dataset's past point T, one way each ([`Kind`]), stopped and removed when
//! dropped.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::dataset::{Dataset, TENANT};
use super::kind::Kind;
use crate::branch_bench::pgprog::{PgProgs, Server};
use crate::branch_bench::pitr::{self, Recovered};
use crate::branch_bench::strata_cli::{ComputeStart, StrataCli};

/// How the strata at hand starts each kind.
#[derive(Clone, Copy, Debug)]
pub struct Starter {
    /// `strata compute start` knows `--full-copy` (so its default is the lazy compute);
    /// without it, its only compute is the full copy.
    pub has_full_copy_flag: bool,
    /// Longest a Postgres PITR may take.
    pub recovery_timeout: Duration,
}

/// A running server at T.
pub struct ServerAtT<'a> {
    pub server: Server,
    /// From the request until the server accepted connections at T.
    pub start_secs: f64,
    /// How that time split up: `strata compute start`'s breakdown, or the PITR's phases.
    pub detail: String,
    owner: Owner<'a>,
}

enum Owner<'a> {
    Strata { strata: &'a StrataCli, name: String },
    // Dropping the recovered cluster stops it and removes its directory.
    Pitr(#[allow(dead_code)] Recovered),
}

impl Drop for ServerAtT<'_> {
    fn drop(&mut self) {
        if let Owner::Strata { strata, name } = &self.owner {
            if let Err(e) = strata.compute_stop(name) {
                eprintln!("warning: strata compute stop {name}: {e:#}");
            }
        }
    }
}

impl Starter {
    /// A read-only server at T named `name` (Strata computes) of `kind`.
    pub fn read_only<'a>(
        &self,
        ds: &'a Dataset,
        progs: &PgProgs,
        kind: Kind,
        name: &str,
    ) -> Result<ServerAtT<'a>> {
        let t = ds.t.to_string();
        match kind {
            Kind::Lazy | Kind::FullCopy => self.strata(ds, progs, kind, "main", Some(&t), name),
            Kind::Pitr => self.pitr(ds, progs),
        }
    }

    /// A read-write compute on a new branch `branch` created at T (its creation not timed).
    pub fn read_write<'a>(
        &self,
        ds: &'a Dataset,
        progs: &PgProgs,
        kind: Kind,
        branch: &str,
    ) -> Result<ServerAtT<'a>> {
        if kind == Kind::Pitr {
            bail!("the read-write rounds compare Strata computes only");
        }
        let t = ds.t.to_string();
        let got = ds.strata.branch_create(TENANT, branch, "main", Some(&t))?;
        if got != t {
            bail!("branch {branch} is at {got}, not at T = {t}");
        }
        self.strata(ds, progs, kind, branch, None, branch)
    }

    fn strata<'a>(
        &self,
        ds: &'a Dataset,
        progs: &PgProgs,
        kind: Kind,
        branch: &str,
        at: Option<&str>,
        name: &str,
    ) -> Result<ServerAtT<'a>> {
        if kind == Kind::Lazy && !self.has_full_copy_flag {
            bail!(
                "this strata has no lazy computes (`strata compute start --help` lists no \
                 --full-copy); leave lazy out of --kinds"
            );
        }
        let t0 = Instant::now();
        let started = ds.strata.compute_start_with(&ComputeStart {
            tenant: TENANT,
            branch,
            at,
            name: Some(name),
            full_copy: kind == Kind::FullCopy && self.has_full_copy_flag,
        })?;
        Ok(ServerAtT {
            server: Server {
                progs: progs.clone(),
                port: started.port,
            },
            start_secs: t0.elapsed().as_secs_f64(),
            detail: started.breakdown,
            owner: Owner::Strata {
                strata: &ds.strata,
                name: name.to_string(),
            },
        })
    }

    fn pitr<'a>(&self, ds: &'a Dataset, progs: &PgProgs) -> Result<ServerAtT<'a>> {
        let t0 = Instant::now();
        let r = pitr::recover_to(&ds.anchor, &ds.wal_archive, ds.t, self.recovery_timeout)?;
        let start_secs = t0.elapsed().as_secs_f64();
        Ok(ServerAtT {
            server: Server {
                progs: progs.clone(),
                port: r.cluster.port(),
            },
            start_secs,
            detail: format!(
                "copy {:.2} s; replay to T and promotion {:.2} s",
                r.copy_secs, r.replay_secs
            ),
            owner: Owner::Pitr(r),
        })
    }
}
