//! Deleting a branch or a tenant (`strata branch delete`, `strata tenant delete`): the computes on what is deleted are
//! stopped and removed first, unexpired leases refuse the deletion unless `--force` (a lease
//! promised that history), then the pageserver deletes the data locally and in the object
//! store, the safekeepers forget the timelines (their WAL, control files and offloaded WAL),
//! and the names go last (a failure before leaves everything addressable).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::cluster::ClusterConfig;
use crate::computes::{self, ComputeRecord};
use crate::mgmt::Pageserver;
use crate::names::Names;
use crate::output::{pg_lsn, Output};
use walproto::proto::safekeeper as sk;

/// How long a safekeeper has to forget one timeline.
const SAFEKEEPER_DELETE: Duration = Duration::from_secs(30);

/// What the safekeepers did with the deleted timelines: one text per safekeeper and
/// timeline that failed (the deletion itself stands: the pageserver's data is gone).
#[derive(Debug)]
pub struct Forgotten {
    /// (safekeeper, timelines it held and removed).
    pub removed: Vec<(String, u64)>,
    pub failures: Vec<String>,
}

async fn delete_on_safekeeper(addr: &str, tenant_id: &str, timelines: &[String]) -> Result<u64> {
    let mut client = crate::mgmt::safekeeper_client(addr).await?;
    let mut removed = 0;
    for tl in timelines {
        let req = sk::DeleteTimelineRequest {
            tenant_id: tenant_id.into(),
            timeline_id: tl.clone(),
        };
        let r = tokio::time::timeout(SAFEKEEPER_DELETE, client.delete_timeline(req))
            .await
            .map_err(|_| {
                anyhow!(
                    "safekeeper {addr} did not delete timeline {tl} within {SAFEKEEPER_DELETE:?}"
                )
            })?
            .map_err(|s| anyhow!("safekeeper {addr}, timeline {tl}: {}", s.message()))?;
        removed += u64::from(r.into_inner().deleted);
    }
    Ok(removed)
}

/// Asks every safekeeper to forget `timelines` (after the pageserver stopped streaming them).
fn forget_on_safekeepers(cfg: &ClusterConfig, tenant_id: &str, timelines: &[String]) -> Forgotten {
    let mut done = Forgotten {
        removed: Vec::new(),
        failures: Vec::new(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            done.failures
                .push(format!("no runtime to ask the safekeepers: {e}"));
            return done;
        }
    };
    for addr in cfg.safekeeper_grpc_addrs() {
        match rt.block_on(delete_on_safekeeper(&addr, tenant_id, timelines)) {
            Ok(n) => done.removed.push((addr, n)),
            Err(e) => done.failures.push(format!(
                "{e:#} (its copy stays on disk until deleted by hand)"
            )),
        }
    }
    done
}

/// A branch deleted by [`branch_delete`].
#[derive(Debug)]
pub struct BranchDeleted {
    pub tenant: String,
    pub timeline_id: String,
    pub computes_removed: Vec<String>,
    /// The leases `force` overrode, as "branch at LSN (owner)".
    pub leases_dropped: Vec<String>,
    pub safekeepers: Forgotten,
}

/// A tenant deleted by [`tenant_delete`].
#[derive(Debug)]
pub struct TenantDeleted {
    pub tenant: String,
    pub tenant_id: String,
    pub timeline_ids: Vec<String>,
    pub remote_objects_deleted: u64,
    pub computes_removed: Vec<String>,
    pub leases_dropped: Vec<String>,
    pub safekeepers: Forgotten,
}

/// Unexpired leases of `timelines` as "branch at LSN" texts. A lazy compute's page filesystem
/// leases its start LSN as `compute:<name>`. The lease of a compute on what is deleted is the
/// compute's (stopped before the delete), not a user's, and so is one left behind by a
/// compute that no longer exists (its daemon killed before it could revoke): neither refuses
/// the deletion.
fn leases_of(
    dir: &Path,
    ps: &mut Pageserver,
    tenant_id: &str,
    timelines: &[(String, String)],
) -> Result<Vec<String>> {
    let computes = ComputeRecord::list(dir)?;
    let of_a_compute_going_or_gone = |owner: &str| {
        let Some(name) = crate::computes::lazy::lease_holder(owner) else {
            return false;
        };
        computes.iter().filter(|c| c.name == name).all(|c| {
            c.tenant_id == tenant_id && timelines.iter().any(|(_, tl)| *tl == c.timeline_id)
        })
    };
    let mut held = Vec::new();
    for (branch, tl) in timelines {
        for l in ps.list_leases(tenant_id, tl)? {
            if !of_a_compute_going_or_gone(&l.owner) {
                let owner = if l.owner.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", l.owner)
                };
                held.push(format!("{branch} at {}{owner}", pg_lsn(l.lsn)));
            }
        }
    }
    Ok(held)
}

/// Stops and removes the computes on `timelines` (all of the tenant's if `None`); their names.
pub(crate) fn remove_computes(
    dir: &Path,
    cfg: &ClusterConfig,
    tenant_id: &str,
    timelines: Option<&[(String, String)]>,
    out: &Output,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for c in ComputeRecord::list(dir)? {
        let on_it = c.tenant_id == tenant_id
            && timelines.is_none_or(|t| t.iter().any(|(_, id)| *id == c.timeline_id));
        if on_it {
            out.step(&format!(
                "stopping compute {} (branch {})",
                c.name, c.branch
            ));
            computes::remove(dir, cfg, &c.name)?;
            removed.push(c.name);
        }
    }
    Ok(removed)
}

fn refuse_leases(what: &str, held: &[String], force: bool) -> Result<()> {
    if !held.is_empty() && !force {
        bail!(
            "{what} has unexpired leases ({}): revoke them with `strata lease revoke LSN --branch \
             B [--owner O]`, or delete anyway with --force",
            held.join(", ")
        );
    }
    Ok(())
}

/// Deletes branch `name` (it must have no branches of its own); `force`: even if leases keep
/// points of it.
pub fn branch_delete(
    dir: &Path,
    name: &str,
    tenant: Option<&str>,
    force: bool,
    out: &Output,
) -> Result<BranchDeleted> {
    let cfg = ClusterConfig::load(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    let (tenant, tenant_id) = names.tenant(tenant)?;
    let timeline = names.timeline(&tenant, name)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    // Branches of it would lose their history: the pageserver refuses, say so before
    // stopping anything.
    let children: Vec<String> = ps
        .list_timelines(&tenant_id)?
        .iter()
        .filter(|t| t.ancestor_timeline_id == timeline)
        .map(|t| {
            names
                .branch_of(&tenant, &t.timeline_id)
                .unwrap_or(&t.timeline_id)
                .to_string()
        })
        .collect();
    if !children.is_empty() {
        bail!(
            "branch {name} has branches of its own ({}): delete them first",
            children.join(", ")
        );
    }
    let this = [(name.to_string(), timeline.clone())];
    let held = leases_of(dir, &mut ps, &tenant_id, &this)?;
    refuse_leases(&format!("branch {name}"), &held, force)?;
    let computes = remove_computes(dir, &cfg, &tenant_id, Some(&this), out)?;
    ps.delete_timeline(&tenant_id, &timeline)?;
    let safekeepers = forget_on_safekeepers(&cfg, &tenant_id, std::slice::from_ref(&timeline));
    names.remove_branch(&tenant, name);
    names.store(dir, &names_lock)?;
    Ok(BranchDeleted {
        tenant,
        timeline_id: timeline,
        computes_removed: computes,
        leases_dropped: held,
        safekeepers,
    })
}

/// Deletes tenant `name` with every branch and compute; `force`: even if leases keep points
/// of its branches.
pub fn tenant_delete(dir: &Path, name: &str, force: bool, out: &Output) -> Result<TenantDeleted> {
    let cfg = ClusterConfig::load(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    let (tenant, tenant_id) = names.tenant(Some(name))?;
    let branches: Vec<(String, String)> = names
        .branches
        .get(&tenant)
        .map(|b| b.iter().map(|(n, id)| (n.clone(), id.clone())).collect())
        .unwrap_or_default();
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let held = leases_of(dir, &mut ps, &tenant_id, &branches)?;
    refuse_leases(&format!("tenant {tenant}"), &held, force)?;
    let computes = remove_computes(dir, &cfg, &tenant_id, None, out)?;
    out.step(&format!(
        "deleting tenant {tenant} on the pageserver and in the object store"
    ));
    let r = ps.delete_tenant(&tenant_id)?;
    let safekeepers = forget_on_safekeepers(&cfg, &tenant_id, &r.timeline_ids);
    names.remove_tenant(&tenant);
    names.store(dir, &names_lock)?;
    Ok(TenantDeleted {
        tenant,
        tenant_id,
        timeline_ids: r.timeline_ids,
        remote_objects_deleted: r.remote_objects_deleted,
        computes_removed: computes,
        leases_dropped: held,
        safekeepers,
    })
}
