//! `strata tenant detach`: hands an imported source back without losing a commit. In order:
//! 1. the source's commits stop waiting for Strata (its synchronous_standby_names loses
//!    'strata' and keeps its other standbys): done first, and done even when the cluster is
//!    stopped, because a source whose standby never comes hangs every commit;
//! 2. if the cluster runs, everything the source acknowledged so far (its flush LSN) becomes
//!    committed on the safekeepers (bounded wait);
//! 3. the walproposer stops, the source's replication slot is dropped (it would keep the
//!    source's WAL for ever), and the import record goes.
//!
//! The tenant stays in Strata, readable with the source's history up to the detach. Each step
//! is skipped when already done, so a detach that failed half-way is finished by running it
//! again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::PgPrograms;
use walproto::Lsn;

use super::record::ImportRecord;
use super::source::{SlotState, Source};
use super::{ensure_streaming, sync_names, APP_NAME};
use crate::cluster::daemon::State;
use crate::cluster::ClusterConfig;
use crate::computes::{compute_dir, walproposer_daemon};
use crate::names::Names;
use crate::output::Output;

/// What `strata tenant detach` did.
pub struct Detached {
    pub tenant: String,
    /// false: the tenant had no attached source (nothing was done).
    pub was_attached: bool,
    /// The source's connection string and slot (empty when nothing was attached).
    pub connstr: String,
    pub slot: String,
    /// The source's synchronous_standby_names now.
    pub synchronous_standby_names: String,
    /// Everything the source acknowledged is in Strata up to here; `None`: only up to where
    /// it streamed before the cluster stopped.
    pub streamed_to: Option<Lsn>,
}

/// How long the safekeepers may take to commit what the source has flushed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the source's walsender may take to let go of the slot.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
const WALPROPOSER_STOP_GRACE: Duration = Duration::from_secs(10);

/// Hands the imported source of `tenant` back (see the module's comment).
pub fn detach(dir: &Path, tenant: Option<&str>, out: &Output) -> Result<Detached> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, _) = names.tenant(tenant)?;
    let Some(rec) = ImportRecord::load(dir, &tenant)? else {
        return Ok(Detached {
            tenant,
            was_attached: false,
            connstr: String::new(),
            slot: String::new(),
            synchronous_standby_names: String::new(),
            streamed_to: None,
        });
    };
    let pg = PgPrograms::new(&cfg.pg_bin)?;
    let src = Source {
        pg: &pg,
        connstr: rec.connstr.clone(),
    };

    out.step(&format!(
        "removing '{APP_NAME}' from the synchronous_standby_names of the source \"{}\"",
        rec.connstr
    ));
    let released = src.release_sync().with_context(|| {
        format!(
            "the source of tenant {tenant} keeps waiting for Strata: its \
             synchronous_standby_names could not be changed (the import stays attached)"
        )
    })?;
    let setting = match &released {
        Some(r) => {
            out.step(&format!(
                "synchronous_standby_names: '{}' -> '{}'",
                r.before, r.after
            ));
            r.after.clone()
        }
        None => src.query("SHOW synchronous_standby_names")?,
    };
    if let Some((was, now)) = released.as_ref().and_then(|r| r.lowered) {
        eprintln!(
            "strata: warning: the source's synchronous standby count was {was}, only {now} \
             standby names remain: lowered to {now} (synchronous_standby_names = '{setting}')"
        );
    }
    if sync_names::names_standby(&setting, APP_NAME)? {
        eprintln!(
            "strata: warning: the source's synchronous_standby_names = '{setting}' matches any \
             standby ('*'): its commits now wait for its other standbys"
        );
    }

    let streamed_to = stream_what_was_acknowledged(dir, &cfg, &rec, &src, out)?;

    let compute = rec.compute_name();
    out.step(&format!(
        "stopping the walproposer and dropping the source's slot {}",
        rec.slot
    ));
    walproposer_daemon(dir, &compute).stop(WALPROPOSER_STOP_GRACE)?;
    src.drop_slot_once_unused(&rec.slot, SLOT_RELEASE_TIMEOUT)?;
    let d = compute_dir(dir, &compute);
    if d.exists() {
        std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
    }
    ImportRecord::remove(dir, &tenant)?;

    Ok(Detached {
        tenant,
        was_attached: true,
        connstr: rec.connstr,
        slot: rec.slot,
        synchronous_standby_names: setting,
        streamed_to,
    })
}

/// With the cluster running, waits until the safekeepers have committed the source's WAL up
/// to its flush LSN (read after its commits stopped waiting for Strata, so it covers every
/// commit acknowledged so far); returns that LSN. With the cluster stopped, or the slot gone
/// (an earlier detach got that far), nothing more can stream: `None`.
fn stream_what_was_acknowledged(
    dir: &Path,
    cfg: &ClusterConfig,
    rec: &ImportRecord,
    src: &Source,
    out: &Output,
) -> Result<Option<Lsn>> {
    if src.slot_state(&rec.slot)? == SlotState::Absent {
        out.step("the source's slot is gone already: nothing more streams");
        return Ok(None);
    }
    let mut cluster_runs = false;
    for sk in &cfg.safekeepers {
        cluster_runs |= matches!(
            crate::cluster::safekeeper_daemon(dir, sk.id).state()?,
            State::Running(_)
        );
    }
    if !cluster_runs {
        out.step(
            "the cluster is stopped: Strata keeps the source's history up to where it streamed \
             before `strata stop`; later commits are only in the source",
        );
        return Ok(None);
    }
    let target = src.flush_lsn()?;
    if ensure_streaming(dir, cfg, rec)? {
        out.step("started the walproposer to stream the rest");
    }
    out.step(&format!(
        "waiting until the safekeepers have committed the source's WAL up to {target}"
    ));
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let statuses = crate::mgmt::safekeeper_statuses(
            &cfg.safekeeper_grpc_addrs(),
            &rec.tenant_id,
            &rec.timeline_id,
        );
        let answered = statuses.iter().filter(|s| s.is_ok()).count();
        let committed = Lsn(statuses
            .into_iter()
            .flatten()
            .flatten()
            .map(|s| s.commit_lsn)
            .max()
            .unwrap_or(0));
        if committed >= target {
            return Ok(Some(target));
        }
        if Instant::now() > deadline {
            bail!(
                "the safekeepers committed the source's WAL only up to {committed}, not its \
                 flush LSN {target}, within {CATCH_UP_TIMEOUT:?} ({answered} of {} safekeepers \
                 answer; see logs/{}.log). The source no longer waits for Strata; the \
                 walproposer and the slot {} stay. Run `strata tenant detach {}` again, or \
                 `strata stop` first to detach with what Strata has",
                cfg.safekeepers.len(),
                walproposer_daemon(dir, &rec.compute_name()).name,
                rec.slot,
                rec.tenant
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
