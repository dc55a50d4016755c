//! Starting a compute: name, port and LSN chosen, its data directory made ready (lazy or a
//! full copy), Postgres started and supervised, and a writer's walproposer.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::{ComputeNode, ComputeSpec};
use walproto::Lsn;

use super::basebackup::{stream_basebackup, Streamed};
use super::record::{compute_dir, node, postgres_service, unix_now, ComputeRecord};
use super::spares::take_spare_data_dir;
use super::stop::{forget_stopped_computes, stop_one};
use super::walproposer::{start_walproposer, STANDBY_NAME};
use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::names::{self, Names};
use crate::output::Output;
use crate::target::Target;

/// How `strata compute start` was asked to run.
pub struct StartRequest<'a> {
    pub branch: &'a str,
    pub tenant: Option<&'a str>,
    pub at: Option<Target>,
    pub read_only: bool,
    pub name: Option<String>,
    /// For time-travel computes: stop and remove after this many seconds.
    pub ttl_secs: Option<u64>,
    /// Stream every page into a local data directory (the behaviour before lazy computes)
    /// instead of mounting a page filesystem that fetches pages on first read.
    pub full_copy: bool,
    /// The compute's own Postgres settings (see [`crate::computes::settings`]).
    pub settings: &'a [(String, String)],
}

pub fn start(dir: &Path, req: StartRequest, out: &Output) -> Result<ComputeRecord> {
    let t0 = Instant::now();
    if let Some(n) = &req.name {
        names::validate(names::Kind::Compute, n)?;
    }
    let cfg = ClusterConfig::load(dir)?;
    // Held until the compute runs: no restore moves the name meanwhile (cluster::lock).
    let _no_restore = crate::cluster::lock::ClusterLock::for_compute_start(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(req.tenant)?;
    let timeline_id = names.timeline(&tenant, req.branch)?;
    crate::cluster::lock::pause_at("compute-start-resolved")?;
    if req.at.is_some() && !req.read_only {
        bail!(
            "a compute at a past point is read-only (add --read-only); to write from there, branch \
             first: strata branch create NAME --from {} --at …",
            req.branch
        );
    }
    forget_stopped_computes(dir, &cfg, out)?;
    let existing = ComputeRecord::list(dir)?;
    if !req.read_only {
        if let Some(c) = existing
            .iter()
            .find(|c| c.timeline_id == timeline_id && !c.read_only)
        {
            bail!(
                "branch {} already has a read-write compute ({}, port {}); one writer per branch \
                 (stop it with `strata compute stop {}`)",
                req.branch,
                c.name,
                c.port,
                c.name
            );
        }
    }
    let name = match req.name {
        Some(n) => n,
        None => {
            let n = unused_name(&existing, req.branch);
            if let Err(e) = names::validate(names::Kind::Compute, &n) {
                bail!(
                    "{e} (a compute is named after its branch unless --name NAME says otherwise)"
                );
            }
            n
        }
    };
    if existing.iter().any(|c| c.name == name) {
        bail!("a compute named {name:?} exists; stop it first (strata compute stop {name})");
    }
    let port = crate::computes::ports::claim(dir, cfg.compute_base_port, &name)?;

    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    // Every target is resolved against all that is committed now: a time or restore point
    // after the pageserver's position would otherwise resolve to an older state.
    let latest = crate::lsn::wait_for_committed_wal(
        &cfg,
        &mut ps,
        &tenant_id,
        &timeline_id,
        !req.read_only,
        out,
    )?;
    let lsn = match &req.at {
        Some(t) => crate::lsn::resolve_lsn(&mut ps, &tenant_id, &timeline_id, t, true)?,
        None => latest,
    };
    let resolved = t0.elapsed();
    let mut record = ComputeRecord {
        name: name.clone(),
        branch: req.branch.to_string(),
        tenant_id: tenant_id.clone(),
        timeline_id: timeline_id.clone(),
        port,
        read_only: req.read_only,
        lsn: lsn.to_string(),
        expires_at: req.ttl_secs.map(|s| unix_now() + s),
        lazy: !req.full_copy,
    };
    let node = node(dir, &cfg, &name)?;
    fs::create_dir_all(compute_dir(dir, &name))?;
    crate::computes::settings::store(dir, &name, req.settings)?;
    let mut times = StartTimes {
        resolved,
        ..StartTimes::default()
    };
    let started = (|| -> Result<()> {
        prepare_data_dir(dir, &cfg, &mut ps, &mut record, &node, &mut times, t0, out)?;
        record.store(dir)?;
        out.step(&format!("starting Postgres on port {port}"));
        node.start()
            .with_context(|| format!("compute {name} (its log: {})", node.log_file.display()))?;
        crate::cluster::supervisor::watch_postgres(
            dir,
            &postgres_service(&name),
            &cfg.pg_bin,
            &node,
        )?;
        if record.lazy {
            crate::computes::lazy::supervise_pagefs(dir, &name)?;
        }
        times.pg_started = t0.elapsed();
        if !req.read_only {
            out.step("starting the walproposer");
            start_walproposer(dir, &cfg, &record, &node, lsn)?;
            set_compute_password(dir, &cfg, &record, &node, out)?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        // A compute that did not start is not kept: its directory is scratch, and nothing of
        // it stays mounted.
        let _ = crate::cluster::spec::forget(dir, &postgres_service(&name));
        let _ = node.stop(true);
        let cleaned = stop_one(dir, &cfg, &name)
            .and_then(|_| crate::computes::lazy::remove_compute_dir(dir, &name));
        if let Err(c) = cleaned {
            return Err(e.context(format!("and cleaning up the failed start failed: {c:#}")));
        }
        return Err(e);
    }
    times.done = t0.elapsed();
    // One line, on stderr, that tools (benches/branch_vs_pitr) pick up.
    eprintln!("compute start breakdown: {}", times.breakdown(record.lazy));
    Ok(record)
}

/// When each part of `compute start` ended (since the command began), for its breakdown.
#[derive(Default)]
struct StartTimes {
    resolved: Duration,
    basebackup: Duration,
    configured: Duration,
    /// A lazy compute's page filesystem answers (the same as `configured` for a full copy).
    mounted: Duration,
    pg_started: Duration,
    done: Duration,
    streamed: Option<Streamed>,
}

impl StartTimes {
    fn breakdown(&self, lazy: bool) -> String {
        let secs = |d: Duration| d.as_secs_f64();
        let bb = match &self.streamed {
            Some(bb) => format!(
                "first byte after {:.2} s, last byte after {:.2} s, {:.1} MiB, unpacking busy \
                 {:.2} s, {} files of which {} reused, {} leftovers removed",
                secs(bb.first_byte),
                secs(bb.last_byte),
                bb.bytes as f64 / (1u64 << 20) as f64,
                secs(bb.unpack_busy),
                bb.unpack.files,
                bb.unpack.reused_files,
                bb.unpack.removed,
            ),
            None => "not taken".into(),
        };
        let (kind, mount) = if lazy {
            (
                "lazy: slim basebackup",
                format!(
                    "; mount {:.2} s",
                    secs(self.mounted.saturating_sub(self.configured))
                ),
            )
        } else {
            ("basebackup", String::new())
        };
        format!(
            "resolve target {:.2} s; {kind} {:.2} s (generation, transfer and unpack streamed \
             together: {bb}); configure {:.2} s{mount}; Postgres start {:.2} s; walproposer \
             {:.2} s; total {:.2} s",
            secs(self.resolved),
            secs(self.basebackup.saturating_sub(self.resolved)),
            secs(self.configured.saturating_sub(self.basebackup)),
            secs(self.pg_started.saturating_sub(self.mounted)),
            secs(self.done.saturating_sub(self.pg_started)),
            secs(self.done)
        )
    }
}

/// Makes the compute's data directory ready for Postgres: a full copy streamed into it, or
/// (lazy) a slim basebackup in `local/` and the page filesystem mounted over `data/`.
#[allow(clippy::too_many_arguments)]
fn prepare_data_dir(
    dir: &Path,
    cfg: &ClusterConfig,
    ps: &mut Pageserver,
    record: &mut ComputeRecord,
    node: &ComputeNode,
    times: &mut StartTimes,
    t0: Instant,
    out: &Output,
) -> Result<()> {
    let lsn: Lsn = record
        .lsn
        .parse()
        .map_err(|e| anyhow::anyhow!("the compute's LSN: {e}"))?;
    let spec = compute_spec(cfg, record);
    if record.lazy {
        out.step(&format!(
            "slim basebackup of {} at {lsn} (no relation pages)",
            record.branch
        ));
        let up = crate::computes::lazy::prepare(dir, cfg, ps, record, node, &spec)?;
        times.basebackup = times.resolved + up.basebackup;
        times.configured = times.basebackup + up.configure;
        times.mounted = t0.elapsed();
        times.streamed = Some(up.streamed);
        return Ok(());
    }
    out.step(&format!("basebackup of {} at {lsn}", record.branch));
    take_spare_data_dir(dir, &node.data_dir);
    let bb = stream_basebackup(
        ps,
        node,
        &record.tenant_id,
        &record.timeline_id,
        lsn,
        record.read_only,
        false,
    )?;
    times.basebackup = t0.elapsed();
    node.configure(&spec)?;
    crate::computes::settings::apply(dir, &record.name, &node.data_dir)?;
    times.configured = t0.elapsed();
    times.mounted = times.configured;
    times.streamed = Some(bb);
    Ok(())
}

/// How a compute's Postgres runs, from its record.
pub(crate) fn compute_spec(cfg: &ClusterConfig, record: &ComputeRecord) -> ComputeSpec {
    ComputeSpec {
        port: record.port,
        read_only: record.read_only,
        standby_name: STANDBY_NAME.into(),
        password_auth: cfg.auth,
    }
}

/// At a writer's first start on a tenant whose `postgres` role has no password (one made
/// before auth, an imported database that trusted its clients), gives it the cluster's.
fn set_compute_password(
    dir: &Path,
    cfg: &ClusterConfig,
    record: &ComputeRecord,
    node: &ComputeNode,
    out: &Output,
) -> Result<()> {
    let Some(password) = crate::auth_setup::compute_password(dir, cfg)? else {
        return Ok(());
    };
    if node.set_password_if_none(record.port, &password)? {
        out.step("the postgres role had no password: it has the cluster's now");
    }
    Ok(())
}

fn unused_name(existing: &[ComputeRecord], branch: &str) -> String {
    (0..)
        .map(|i| {
            if i == 0 {
                branch.to_string()
            } else {
                format!("{branch}-{i}")
            }
        })
        .find(|n| existing.iter().all(|c| &c.name != n))
        .expect("an unused name exists")
}

pub(crate) fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}
