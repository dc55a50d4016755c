//! Restoring a branch in place (`strata branch restore BRANCH --at …`). BRANCH becomes the state at that
//! moment under the same name, so a connection string (through the proxy) reaches the
//! restored state; what BRANCH was stays as a backup branch `<BRANCH>_old_<time>`.
//!
//! Nothing is copied: the restored state is a new timeline branched from the old one at the
//! target LSN, and the two names swap timelines. The order (see `docs/architecture.md`,
//! "Restore in place"):
//! 1. every input is checked (branch, moment, GC cutoff, backup name) before anything changes;
//! 2. the pageserver creates the new timeline (durable there; a crash after this leaves an
//!    unnamed timeline, listed as `(id)` by `branch list`, and the old names intact);
//! 3. under the cluster lock (`cluster::lock`: compute starts that resolved BRANCH finish
//!    first), `names.toml` is rewritten once, durably (temporary file, fsync, rename, directory
//!    fsync): BRANCH → new timeline and the backup name → old timeline in one step, so a crash
//!    leaves the old mapping or the new one, never a missing branch;
//! 4. still under the lock, the computes on the old timeline (now the backup) are stopped
//!    and removed: their clients reconnect, and the proxy, which reads `names.toml` at every
//!    connection, starts a compute on the restored state.
//!
//! Branches of the old timeline stay its children and so become the backup's; leases stay on
//! the timeline they were taken on (the backup's history), and the restored branch's branch
//! point keeps the backup's history at the target from GC.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use walproto::Lsn;

use crate::cluster::lock::ClusterLock;
use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::names::{self, Names};
use crate::output::Output;
use crate::target::{format_time, Target};

/// A branch to restore in place.
#[derive(Debug)]
pub struct RestoreRequest<'a> {
    /// Any branch, root or not.
    pub branch: &'a str,
    /// An LSN, a time or a restore point name (see [`Target::parse`]).
    pub at: &'a str,
    /// With a time: leave out commits at exactly that time.
    pub exclusive: bool,
    /// `None`: the default tenant.
    pub tenant: Option<&'a str>,
}

/// A branch restored in place: its new timeline, and the backup branch that keeps what it
/// was.
#[derive(Debug)]
pub struct Restored {
    pub tenant: String,
    pub lsn: Lsn,
    pub timeline_id: String,
    pub backup_branch: String,
    pub backup_timeline_id: String,
    /// The computes on what the branch was, stopped and removed.
    pub computes_stopped: Vec<String>,
    pub seconds: f64,
}

pub fn restore(dir: &Path, a: &RestoreRequest, out: &Output) -> Result<Restored> {
    let t0 = Instant::now();
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant)?;
    let old_timeline = names.timeline(&tenant, a.branch)?;
    let target = Target::parse(a.at)?;
    if let Target::Time(us) = target {
        if us > now_micros() {
            bail!(
                "{} is in the future: branch {} is at its latest state already",
                format_time(us),
                a.branch
            );
        }
    }
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    // Resolve against everything committed so far, not only what was ingested.
    let latest =
        crate::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &old_timeline, false, out)?;
    let lsn = crate::lsn::resolve_lsn(&mut ps, &tenant_id, &old_timeline, &target, !a.exclusive)?;
    check_readable(&mut ps, &tenant_id, &old_timeline, a.branch, lsn, latest)?;
    // Checked now so that a refused restore changes nothing; chosen again under the lock.
    backup_name(&names, &tenant, a.branch, &format_time(now_micros()))?;

    out.step(&format!(
        "creating the restored state of {} at {lsn}",
        a.branch
    ));
    let new_tl = ps.create_branch(
        &tenant_id,
        &old_timeline,
        Some(crate::lsn::to_request_target(&Target::Lsn(lsn))),
        true,
        cfg.safekeeper_pg_addrs(),
    )?;
    // Compute starts that resolved the name to the old timeline finish first and are stopped
    // below with the other old computes; later ones see the new name (`cluster::lock`).
    let _no_compute_start = ClusterLock::for_restore(dir)?;
    let (mut names, names_lock) = Names::load_for_change(dir)?;
    if names.timeline(&tenant, a.branch)? != old_timeline {
        bail!(
            "branch {} was moved meanwhile (another restore?): nothing renamed; the timeline \
             {} made for this restore is left unnamed",
            a.branch,
            new_tl.timeline_id
        );
    }
    let backup = backup_name(&names, &tenant, a.branch, &format_time(now_micros()))?;
    names.swap_in_restored(&tenant, a.branch, &new_tl.timeline_id, &backup)?;
    names.store(dir, &names_lock)?;

    let backup_branch = [(backup.clone(), old_timeline.clone())];
    let stopped = crate::delete::remove_computes(dir, &cfg, &tenant_id, Some(&backup_branch), out)?;
    drop(_no_compute_start);
    Ok(Restored {
        tenant,
        lsn,
        timeline_id: new_tl.timeline_id,
        backup_branch: backup,
        backup_timeline_id: old_timeline,
        computes_stopped: stopped,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Refuses a moment that cannot be restored: beyond the branch's latest state or below its
/// GC cutoff (that history is gone).
fn check_readable(
    ps: &mut Pageserver,
    tenant_id: &str,
    timeline_id: &str,
    branch: &str,
    lsn: Lsn,
    latest: Lsn,
) -> Result<()> {
    if lsn > latest {
        bail!("{lsn} is beyond the latest state of branch {branch} ({latest})");
    }
    let cutoff = Lsn(ps.timeline_status(tenant_id, timeline_id)?.gc_cutoff_lsn);
    if lsn < cutoff {
        bail!(
            "{lsn} is below the GC cutoff {cutoff} of branch {branch}: that state is garbage \
             collected; the oldest restorable state is at {cutoff}"
        );
    }
    Ok(())
}

/// `<branch>_old_<YYYYMMDDTHHMMSS>` (UTC) from `now` as [`format_time`] prints it, shortened
/// to the name limit and numbered if taken.
fn backup_name(names: &Names, tenant: &str, branch: &str, now: &str) -> Result<String> {
    let stamp: String = now
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect::<String>();
    let (date, clock) = stamp.split_at(stamp.len().min(8));
    let suffix = format!("_old_{date}T{clock}");
    for n in 1..100 {
        let numbered = if n == 1 {
            suffix.clone()
        } else {
            format!("{suffix}_{n}")
        };
        let room = names::MAX_NAME_LEN.saturating_sub(numbered.len());
        let stem: String = branch.chars().take(room).collect();
        let name = format!("{stem}{numbered}");
        names::validate(names::Kind::Branch, &name)?;
        if names.timeline(tenant, &name).is_err() {
            return Ok(name);
        }
    }
    bail!("no free backup name for branch {branch}: {branch}{suffix}_2 … _99 are all taken")
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_fit_and_do_not_collide() {
        let mut n = Names::default();
        n.add_tenant("shop", "aa").unwrap();
        n.add_branch("shop", "main", "t1").unwrap();
        let now = "2026-12-07 12:34:56.123456+00";
        let first = backup_name(&n, "shop", "main", now).unwrap();
        assert_eq!(first, "main_old_20261207T123456");
        n.add_branch("shop", &first, "t2").unwrap();
        assert_eq!(
            backup_name(&n, "shop", "main", now).unwrap(),
            "main_old_20261207T123456_2"
        );
        let long = "b".repeat(names::MAX_NAME_LEN);
        let name = backup_name(&n, "shop", &long, now).unwrap();
        assert_eq!(name.len(), names::MAX_NAME_LEN);
        assert!(name.ends_with("_old_20261207T123456"), "{name}");
    }
}
