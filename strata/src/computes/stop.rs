//! Stopping computes: one (Postgres, its walproposer, its page filesystem, in that order),
//! all of them, the ones that stopped on their own, and the ones whose time ran out.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use compute::node::ComputeNode;
use walproto::Lsn;

use super::record::{
    compute_dir, node, postgres_service, unix_now, walproposer_daemon, ComputeRecord,
};
use super::spares::keep_spare_data_dir;
use crate::cluster::ClusterConfig;
use crate::names;
use crate::output::Output;

/// How long a compute's fast shutdown may take. Its shutdown checkpoint is a commit like any
/// other: without a safekeeper majority it never returns, and stopping must go on.
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Stops one compute: Postgres first (its commits need the walproposer until the end), then
/// the walproposer; neither is restarted by the supervisor afterwards. A Postgres whose
/// fast shutdown does not finish in time (its shutdown checkpoint cannot be committed) is
/// stopped immediately, with a warning saying so.
pub fn stop_one(dir: &Path, cfg: &ClusterConfig, name: &str) -> Result<bool> {
    crate::cluster::spec::forget(dir, &postgres_service(name))?;
    let n = node(dir, cfg, name)?;
    let was_running = n.is_running();
    let pg_stopped = if was_running {
        stop_postgres_bounded(&n, name)
    } else {
        Ok(false)
    };
    let wp = walproposer_daemon(dir, name);
    if pg_stopped.as_ref().is_ok_and(|checkpointed| *checkpointed)
        && matches!(wp.state()?, crate::cluster::daemon::State::Running(_))
    {
        match (ComputeRecord::load(dir, name), shutdown_checkpoint(&n)) {
            (Ok(rec), Ok(ckpt)) => wait_for_commit_past(cfg, &rec, ckpt),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("warning: not waiting for the final commit of compute {name}: {e:#}")
            }
        }
    }
    // A postmaster on a page filesystem that died is invisible to pg_ctl (its lock file is
    // unreadable): it is found by its command line and stopped immediately.
    let orphan = crate::computes::lazy::stop_postmaster_of(&n.data_dir, name)?;
    // The walproposer goes even if Postgres could not be stopped: nothing more would commit.
    let wp_ran = wp.stop(Duration::from_secs(10))?;
    // The page filesystem last: Postgres read from it until the end.
    let fs_ran = crate::computes::lazy::stop_pagefs(dir, name)?;
    pg_stopped?;
    Ok(was_running || orphan || wp_ran || fs_ran)
}

/// `pg_ctl stop -m fast` for at most [`FAST_SHUTDOWN_TIMEOUT`], then `-m immediate`. Returns
/// whether the fast shutdown (with its checkpoint) finished.
fn stop_postgres_bounded(n: &ComputeNode, name: &str) -> Result<bool> {
    let d = n.data_dir.display().to_string();
    let secs = FAST_SHUTDOWN_TIMEOUT.as_secs().to_string();
    let fast = n.pg.run(
        "pg_ctl",
        &["stop", "-w", "-t", &secs, "-m", "fast", "-D", &d],
    );
    let Err(fast) = fast else {
        return Ok(true);
    };
    eprintln!(
        "warning: compute {name} could not checkpoint: its fast shutdown did not finish within \
         {FAST_SHUTDOWN_TIMEOUT:?} (its shutdown checkpoint must be committed by a safekeeper \
         majority; are the safekeepers up? `strata status`); stopping it immediately: its WAL \
         after the last commit is not on the safekeepers ({})",
        fast.to_string().lines().next().unwrap_or_default()
    );
    n.pg.run(
        "pg_ctl",
        &["stop", "-w", "-t", "30", "-m", "immediate", "-D", &d],
    )
    .with_context(|| format!("stopping compute {name} immediately"))?;
    Ok(false)
}

/// Where the stopped compute's shutdown checkpoint record starts (`pg_controldata`).
fn shutdown_checkpoint(n: &ComputeNode) -> Result<Lsn> {
    let out =
        n.pg.run("pg_controldata", &["-D", &n.data_dir.display().to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
        .context("pg_controldata printed no checkpoint location")?;
    line.trim()
        .parse::<Lsn>()
        .map_err(|e| anyhow::anyhow!("pg_controldata: {e}"))
}

/// A stopped compute's last record is its shutdown checkpoint; the walproposer tells the
/// safekeepers the commit LSN covering it only with its next message. Wait for that before
/// stopping the walproposer, or the branch would end in uncommitted WAL and the next compute
/// could not start there.
fn wait_for_commit_past(cfg: &ClusterConfig, rec: &ComputeRecord, ckpt: Lsn) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let committed = crate::mgmt::safekeeper_statuses(
            &cfg.safekeeper_grpc_addrs(),
            &rec.tenant_id,
            &rec.timeline_id,
        )
        .into_iter()
        .flatten()
        .flatten()
        .map(|s| s.commit_lsn)
        .max()
        .unwrap_or(0);
        if committed > ckpt.0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "warning: the safekeepers did not learn that compute {}'s shutdown checkpoint ({ckpt}) \
         is committed within 10 s",
        rec.name
    );
}

/// Stops every compute, going on past one that cannot be stopped; fails at the end naming
/// each such compute.
pub fn stop_all(dir: &Path, cfg: &ClusterConfig) -> Result<()> {
    let mut failed = Vec::new();
    for rec in ComputeRecord::list(dir)? {
        match stop_one(dir, cfg, &rec.name) {
            Ok(true) => println!("stopped compute {}", rec.name),
            Ok(false) => {}
            Err(e) => failed.push(format!("compute {}: {e:#}", rec.name)),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n  "));
    }
    Ok(())
}

/// Forgets the computes whose Postgres and walproposer are both gone and not meant to run
/// (`strata stop`, a reboot): a compute's data directory is only a cache, so a stale record
/// must not hold its name, its port or its branch's single writer slot. A compute the
/// supervisor is restarting is kept.
pub(super) fn forget_stopped_computes(dir: &Path, cfg: &ClusterConfig, out: &Output) -> Result<()> {
    for rec in ComputeRecord::list(dir)? {
        // An import's walproposer is not scratch: its source waits for it (`strata start`
        // starts it again; only `strata tenant detach` ends it).
        if crate::tenant_import::tenant_of_compute(dir, &rec.name).is_some() {
            continue;
        }
        if crate::computes::ports::being_started(dir, &rec) {
            continue;
        }
        let pg_running = node(dir, cfg, &rec.name).is_ok_and(|n| n.is_running());
        let wp = walproposer_daemon(dir, &rec.name);
        let wp_running = matches!(wp.state()?, crate::cluster::daemon::State::Running(_));
        // A lazy compute being recreated has only its page filesystem's spec for a while.
        let supervised = crate::cluster::spec::is_supervised(dir, &postgres_service(&rec.name))
            || crate::cluster::spec::is_supervised(dir, &wp.name)
            || crate::cluster::spec::is_supervised(
                dir,
                &crate::computes::lazy::pagefs_daemon(dir, &rec.name).name,
            );
        if !pg_running && !wp_running && !supervised {
            out.step(&format!(
                "forgetting compute {} (branch {}): it is not running",
                rec.name, rec.branch
            ));
            remove(dir, cfg, &rec.name)?;
        }
    }
    Ok(())
}

/// Stops and forgets a compute (its data directory is scratch: everything is in Strata). Its
/// data directory is kept as a spare for the next compute (see [`take_spare_data_dir`]).
pub fn remove(dir: &Path, cfg: &ClusterConfig, name: &str) -> Result<()> {
    // Never the computes directory itself or a path outside it.
    names::path_component(names::Kind::Compute, name)?;
    if let Some(tenant) = crate::tenant_import::tenant_of_compute(dir, name) {
        bail!(
            "compute {name} streams the imported source of tenant {tenant}, whose commits wait \
             for it: hand the source back with `strata tenant detach {tenant}`"
        );
    }
    stop_one(dir, cfg, name)?;
    let lazy = ComputeRecord::load(dir, name).is_ok_and(|r| r.lazy);
    // A lazy compute's `data` is an (unmounted) mount point, not a data directory to reuse.
    if !lazy {
        keep_spare_data_dir(dir, &compute_dir(dir, name).join("data"));
    }
    crate::computes::lazy::remove_compute_dir(dir, name)
}

/// Removes time-travel computes whose TTL has passed.
pub fn reap_expired(dir: &Path, cfg: &ClusterConfig) -> Result<()> {
    let now = unix_now();
    for c in ComputeRecord::list(dir)? {
        if c.expires_at.is_some_and(|t| t <= now) {
            remove(dir, cfg, &c.name)?;
            eprintln!("removed time-travel compute {} (its TTL passed)", c.name);
        }
    }
    Ok(())
}
