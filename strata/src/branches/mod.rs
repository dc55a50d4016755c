//! Branches of a tenant: creating one at a point of its parent's history, listing them, and
//! what a branch's history answers (its restore points, the LSN of a moment). Restoring a
//! branch in place is [`restore`]'s; deleting one is [`crate::delete`]'s.

pub mod restore;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use walproto::proto::pageserver as ps;
use walproto::Lsn;

use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::Output;
use crate::target::Target;

/// A branch to create.
#[derive(Debug)]
pub struct NewBranch<'a> {
    /// Checked by the caller (`names::validate`); refused if the tenant has it already.
    pub name: &'a str,
    /// The parent branch.
    pub from: &'a str,
    /// An LSN, a time or a restore point (see [`Target::parse`]); `None`: the parent's latest
    /// state.
    pub at: Option<&'a str>,
    /// With a time: leave out commits at exactly that time.
    pub exclusive: bool,
    /// `None`: the default tenant.
    pub tenant: Option<&'a str>,
}

/// A branch made by [`create`].
#[derive(Debug)]
pub struct Created {
    pub timeline_id: String,
    /// Where it starts in its parent's history.
    pub lsn: Lsn,
    pub seconds: f64,
}

/// Creates a branch (nothing is copied) and names it, under the names lock.
pub fn create(dir: &Path, b: &NewBranch, out: &Output) -> Result<Created> {
    let cfg = ClusterConfig::load(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    let (tenant, tenant_id) = names.tenant(b.tenant)?;
    let parent = names.timeline(&tenant, b.from)?;
    if names.timeline(&tenant, b.name).is_ok() {
        bail!("tenant {tenant:?} already has a branch named {:?}", b.name);
    }
    let target = b.at.map(Target::parse).transpose()?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let t0 = Instant::now();
    // Resolve the target against everything committed so far, not just what was ingested.
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &parent, false, out)?;
    let tl = ps.create_branch(
        &tenant_id,
        &parent,
        target.as_ref().map(crate::lsn::to_request_target),
        !b.exclusive,
        cfg.safekeeper_pg_addrs(),
    )?;
    names.add_branch(&tenant, b.name, &tl.timeline_id)?;
    names.store(dir, &names_lock)?;
    Ok(Created {
        timeline_id: tl.timeline_id,
        lsn: Lsn(tl.ancestor_lsn),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A tenant's timelines, as the pageserver lists them, with their branch names.
#[derive(Debug)]
pub struct Branches {
    pub tenant: String,
    pub tenant_id: String,
    pub timelines: Vec<Branch>,
}

#[derive(Debug)]
pub struct Branch {
    /// `None`: a timeline without a name (a restore that stopped before naming it).
    pub name: Option<String>,
    pub info: ps::TimelineInfo,
}

pub fn list(dir: &Path, tenant: Option<&str>) -> Result<Branches> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let timelines = ps
        .list_timelines(&tenant_id)?
        .into_iter()
        .map(|info| Branch {
            name: names
                .branch_of(&tenant, &info.timeline_id)
                .map(str::to_string),
            info,
        })
        .collect();
    Ok(Branches {
        tenant,
        tenant_id,
        timelines,
    })
}

/// The named restore points of a branch (`pg_create_restore_point`), once everything
/// committed so far is ingested.
pub fn restore_points(
    dir: &Path,
    branch: &str,
    tenant: Option<&str>,
    out: &Output,
) -> Result<Vec<ps::RestorePoint>> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let tl = names.timeline(&tenant, branch)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &tl, false, out)?;
    ps.restore_points(&tenant_id, &tl)
}

/// The LSN of a branch's state as of a time, and whether GC left it readable.
#[derive(Debug)]
pub struct LsnAt {
    pub time_us: i64,
    pub lsn: u64,
    pub gc_cutoff_lsn: u64,
}

impl LsnAt {
    /// Below the GC cutoff the state is garbage collected: it cannot be read.
    pub fn readable(&self) -> bool {
        self.lsn >= self.gc_cutoff_lsn
    }
}

/// The LSN after the last commit at or before `time` on `branch`.
pub fn lsn_at(
    dir: &Path,
    time: &str,
    branch: &str,
    tenant: Option<&str>,
    out: &Output,
) -> Result<LsnAt> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let tl = names.timeline(&tenant, branch)?;
    let time_us = match Target::parse(time)? {
        Target::Time(us) => us,
        _ => bail!("{time:?} is not a time like 2026-11-21 22:10:05+00"),
    };
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &tl, false, out)?;
    let lsn = ps.lsn_for_timestamp(&tenant_id, &tl, time_us, true)?;
    let gc_cutoff_lsn = ps.timeline_status(&tenant_id, &tl)?.gc_cutoff_lsn;
    Ok(LsnAt {
        time_us,
        lsn,
        gc_cutoff_lsn,
    })
}
