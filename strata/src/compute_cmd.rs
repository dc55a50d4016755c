//! Computes of the local cluster: each is a vanilla Postgres 15 in
//! `<cluster dir>/computes/<name>/`, started from a pageserver basebackup, plus (read-write
//! computes) a walproposer streaming its WAL to the safekeepers.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::{ComputeNode, ComputeSpec, PgPrograms};
use serde::{Deserialize, Serialize};
use walproto::proto::safekeeper as sk;
use walproto::Lsn;

use crate::cluster::daemon::Daemon;
use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::names::{self, Names};
use crate::output::{Output, Progress};
use crate::target::Target;

const RECORD_FILE: &str = "compute.toml";

/// What `strata compute start` recorded about a compute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComputeRecord {
    pub name: String,
    pub branch: String,
    pub tenant_id: String,
    pub timeline_id: String,
    pub port: u16,
    pub read_only: bool,
    /// The LSN the basebackup was taken at.
    pub lsn: String,
    /// Unix time after which a time-travel compute is stopped and removed.
    pub expires_at: Option<u64>,
    /// Its data directory is a page filesystem (`compute pagefs`) over a slim basebackup,
    /// not a full copy. Records written before lazy computes existed are full copies.
    #[serde(default)]
    pub lazy: bool,
}

pub fn computes_dir(dir: &Path) -> PathBuf {
    dir.join("computes")
}

pub fn compute_dir(dir: &Path, name: &str) -> PathBuf {
    computes_dir(dir).join(name)
}

/// The file holding the address of a compute walproposer's HTTP endpoint (with its fence).
pub fn control_file(dir: &Path, name: &str) -> PathBuf {
    compute_dir(dir, name).join("walproposer.addr")
}

pub fn walproposer_daemon(dir: &Path, name: &str) -> Daemon {
    Daemon::new(dir, &format!("compute-{name}-walproposer"))
}

impl ComputeRecord {
    pub fn load(dir: &Path, name: &str) -> Result<ComputeRecord> {
        names::path_component(names::Kind::Compute, name)?;
        let p = compute_dir(dir, name).join(RECORD_FILE);
        let text = fs::read_to_string(&p)
            .with_context(|| format!("no compute named {name:?} ({} unreadable)", p.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        let d = compute_dir(dir, &self.name);
        fs::create_dir_all(&d)?;
        let p = d.join(RECORD_FILE);
        fs::write(&p, toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// "lazy" or "full copy", as `status` and `compute start` say it.
    pub fn kind(&self) -> &'static str {
        if self.lazy {
            "lazy"
        } else {
            "full copy"
        }
    }

    pub fn list(dir: &Path) -> Result<Vec<ComputeRecord>> {
        let d = computes_dir(dir);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if compute_dir(dir, &name).join(RECORD_FILE).exists() {
                out.push(ComputeRecord::load(dir, &name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

pub fn node(dir: &Path, cfg: &ClusterConfig, name: &str) -> Result<ComputeNode> {
    let mut n = ComputeNode::new(PgPrograms::new(&cfg.pg_bin)?, &compute_dir(dir, name))?;
    // With the cluster's other logs, and kept when the compute is removed.
    n.log_file = log_file(dir, name);
    Ok(n)
}

/// `<dir>/logs/compute-<name>.log`: the compute's Postgres log (its page filesystem's is
/// `compute-<name>-pagefs.log` beside it).
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.join("logs").join(format!("compute-{name}.log"))
}

/// The supervisor's name for a compute's Postgres.
pub fn postgres_service(name: &str) -> String {
    format!("compute-{name}-postgres")
}

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
    let orphan = crate::lazy_compute::stop_postmaster_of(&n.data_dir, name)?;
    // The walproposer goes even if Postgres could not be stopped: nothing more would commit.
    let wp_ran = wp.stop(Duration::from_secs(10))?;
    // The page filesystem last: Postgres read from it until the end.
    let fs_ran = crate::lazy_compute::stop_pagefs(dir, name)?;
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
    /// The compute's own Postgres settings (see [`crate::compute_settings`]).
    pub settings: &'a [(String, String)],
}

pub fn start(dir: &Path, req: StartRequest, out: &Output) -> Result<ComputeRecord> {
    let t0 = Instant::now();
    if let Some(n) = &req.name {
        names::validate(names::Kind::Compute, n)?;
    }
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(req.tenant)?;
    let timeline_id = names.timeline(&tenant, req.branch)?;
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
    let port = crate::cluster::compute_ports::claim(dir, cfg.compute_base_port, &name)?;

    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    // Every target is resolved against all that is committed now: a time or restore point
    // after the pageserver's position would otherwise resolve to an older state.
    let latest =
        wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &timeline_id, !req.read_only, out)?;
    let lsn = match &req.at {
        Some(t) => crate::branch_cmd::resolve_lsn(&mut ps, &tenant_id, &timeline_id, t, true)?,
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
    crate::compute_settings::store(dir, &name, req.settings)?;
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
            crate::lazy_compute::supervise_pagefs(dir, &name)?;
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
            .and_then(|_| crate::lazy_compute::remove_compute_dir(dir, &name));
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
        let up = crate::lazy_compute::prepare(dir, cfg, ps, record, node, &spec)?;
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
    crate::compute_settings::apply(dir, &record.name, &node.data_dir)?;
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

/// What streaming a basebackup into a data directory took.
pub struct Streamed {
    /// From the request to the first tar byte (the pageserver's planning).
    first_byte: Duration,
    /// From the request to the last tar byte.
    last_byte: Duration,
    bytes: u64,
    /// Time the unpacker spent not waiting for bytes.
    unpack_busy: Duration,
    unpack: compute::node::unpack::UnpackReport,
}

/// Fetches the basebackup at `lsn` and unpacks it into the compute's data directory while it
/// arrives: the tar is never stored whole (a 1 GB database does not need 1 GB of scratch
/// first, and unpacking overlaps with the pageserver's page reconstruction).
pub(crate) fn stream_basebackup(
    ps: &mut Pageserver,
    node: &ComputeNode,
    tenant_id: &str,
    timeline_id: &str,
    lsn: Lsn,
    read_only: bool,
    without_relation_files: bool,
) -> Result<Streamed> {
    // Chunks in flight between the gRPC stream and the unpacker (256 KiB each).
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let unpacker = s.spawn(move || {
            let mut r = ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
                waited: Duration::ZERO,
            };
            let t = Instant::now();
            let res = node.unpack_basebackup(&mut r);
            // Whatever a complete tar left unread (its zero padding) is drained, so that the
            // sender never blocks on a full channel; after an error, dropping the reader
            // stops the sender.
            if res.is_ok() {
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            res.map(|rep| (t.elapsed().saturating_sub(r.waited), rep))
        });
        let mut w = ChunkWriter { tx: Some(tx) };
        let mut bar = Progress::new("basebackup");
        let mut total = 0;
        let mut first_byte = None;
        let req = walproto::proto::pageserver::BasebackupRequest {
            tenant_id: tenant_id.into(),
            timeline_id: timeline_id.into(),
            lsn: lsn.0,
            read_only,
            prev_lsn: 0,
            without_relation_files,
        };
        let fetched = ps.basebackup(req, &mut w, &mut |n| {
            first_byte.get_or_insert_with(|| t0.elapsed());
            total = n;
            bar.bytes(n)
        });
        let last_byte = t0.elapsed();
        bar.done(total);
        // The end of the stream: the unpacker sees EOF.
        drop(w);
        let unpacked = unpacker
            .join()
            .map_err(|_| anyhow::anyhow!("the basebackup unpacker panicked"))?;
        // The pageserver's error explains an unpacker that saw a broken stream; an unpacker
        // error explains a stream that stopped because nobody read it.
        match (fetched, unpacked) {
            (Ok(()), Ok((unpack_busy, unpack))) => Ok(Streamed {
                first_byte: first_byte.unwrap_or(last_byte),
                last_byte,
                bytes: total,
                unpack_busy,
                unpack,
            }),
            (Err(e), _) if !is_broken_pipe(&e) => Err(e),
            (_, Err(e)) => Err(e.context("unpacking the basebackup")),
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The sending half of the basebackup pipe: each write is one chunk.
struct ChunkWriter {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.is_empty() {
            return Ok(0);
        }
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the unpacker stopped");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(b.to_vec())
            .map_err(|_| gone())?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiving half: EOF once the writer is dropped.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// Time spent waiting for the next chunk.
    waited: Duration,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let t = Instant::now();
            let next = self.rx.recv();
            self.waited += t.elapsed();
            match next {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The application name Postgres waits for before a commit returns.
const STANDBY_NAME: &str = "strata";

pub(crate) fn start_walproposer(
    dir: &Path,
    cfg: &ClusterConfig,
    rec: &ComputeRecord,
    node: &ComputeNode,
    lsn: Lsn,
) -> Result<()> {
    let bin = crate::cluster::sibling_binary("compute")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("walproposer")
        .args(["--pg", &node.connstr(rec.port, "postgres")])
        .args(["--safekeepers", &cfg.safekeeper_grpc_addrs().join(",")])
        .args(["--tenant", &rec.tenant_id])
        .args(["--timeline", &rec.timeline_id])
        .args(["--application-name", STANDBY_NAME])
        // Used only when no safekeeper has WAL of this timeline yet: the new history begins
        // with the basebackup's checkpoint record.
        .args(["--start-lsn", &lsn.to_string()])
        // Where a group coordinator fences it (`strata group`).
        .args(crate::group::cut::walproposer_fence_args(
            dir, cfg, &rec.name,
        )?)
        .envs(cfg.service_env())
        .args(crate::auth_setup::walproposer_args(
            dir,
            cfg,
            &compute_dir(dir, &rec.name),
            &rec.tenant_id,
        )?)
        .args(crate::tls_setup::client_args(dir, cfg));
    walproposer_daemon(dir, &rec.name).start(
        cmd,
        "streaming from Postgres",
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// The LSN every committed record of the branch ends at, once the pageserver has ingested all
/// of it (a new read-write compute continues exactly there). A writer also needs a safekeeper
/// majority and no uncommitted tail.
///
/// A reader counts as committed what a majority of the safekeepers flushed in the newest term
/// ([`Committed::for_reader`]), not only what they were told is committed: the walproposer
/// acknowledges a commit to Postgres as soon as a majority flushed it, but tells the
/// safekeepers the new commit LSN only with its next message (up to its commit delay later),
/// and a read "as of now" right after a commit must see it. The pageserver receives WAL up to
/// the safekeepers' commit LSN, so the wait ends once the walproposer has sent it; with no
/// walproposer to send it (the compute is gone), the read settles for the marked commit LSN
/// after [`UNMARKED_COMMIT_GRACE`], and says so.
///
/// Never waits for WAL that cannot come: it fails at once when no safekeeper answers (what is
/// committed is unknown) or the pageserver reports its ingest of the branch stopped, and after
/// [`crate::mgmt::wait_limit`] otherwise, saying where the pageserver is, what it waited for
/// and what the pageserver's walreceiver reports.
pub fn wait_for_committed_wal(
    cfg: &ClusterConfig,
    ps: &mut Pageserver,
    tenant_id: &str,
    timeline_id: &str,
    for_writer: bool,
    out: &Output,
) -> Result<Lsn> {
    let limit = crate::mgmt::wait_limit()?;
    let mut known = committed_on_safekeepers(cfg, tenant_id, timeline_id, for_writer)?;
    let mut committed = if for_writer {
        known.marked
    } else {
        known.for_reader()
    };
    let started = Instant::now();
    let deadline = started + limit;
    let mut announced = false;
    let mut last_problem = String::new();
    loop {
        let st = ps.timeline_status(tenant_id, timeline_id)?;
        // Received up to the commit LSN: every complete committed record is ingested; a
        // commit LSN inside a record (after a quorum outage) is never reached until a writer
        // commits the rest, which a reader need not wait for.
        if st.last_record_end >= committed || (!for_writer && st.received_lsn >= committed) {
            return Ok(Lsn(st.last_record_end));
        }
        if let Some(why) = crate::mgmt::ingest_stopped(&st) {
            bail!("cannot reach the committed LSN {}: {why}", Lsn(committed));
        }
        if committed > known.marked && started.elapsed() > UNMARKED_COMMIT_GRACE {
            let now = committed_on_safekeepers(cfg, tenant_id, timeline_id, for_writer)?;
            if now.marked < committed {
                out.step(&format!(
                    "a majority of the safekeepers flushed WAL up to {}, but no walproposer \
                     marked it committed (the branch's compute is gone?): reading up to the \
                     commit LSN {}",
                    Lsn(committed),
                    Lsn(now.marked)
                ));
                known.marked = now.marked.max(known.marked);
                committed = known.marked;
            }
        }
        if !announced {
            out.step(&format!(
                "waiting up to {} s for the pageserver to ingest up to {} (at {})",
                limit.as_secs(),
                Lsn(committed),
                Lsn(st.last_record_end)
            ));
            announced = true;
        }
        if st.walreceiver_problem != last_problem && !st.walreceiver_problem.is_empty() {
            out.step(&format!(
                "the pageserver reports: {}",
                st.walreceiver_problem
            ));
        }
        last_problem = st.walreceiver_problem;
        if Instant::now() > deadline {
            let reason = if last_problem.is_empty() {
                "its walreceiver reports no problem (slow ingest? see logs/pageserver.log)"
                    .to_string()
            } else {
                format!("its walreceiver reports: {last_problem}")
            };
            bail!(
                "the pageserver is at {}, and the safekeepers committed up to {}: still behind \
                 after waiting {} s; {reason} (wait longer with {}=SECONDS)",
                Lsn(st.last_record_end),
                Lsn(committed),
                limit.as_secs(),
                crate::mgmt::WAIT_ENV
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a reader waits for a walproposer to mark as committed what a majority of the
/// safekeepers already flushed (it does within its commit delay, 20 ms, when it is running).
const UNMARKED_COMMIT_GRACE: Duration = Duration::from_secs(2);

/// What the safekeepers know of a branch's committed WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The highest commit LSN a safekeeper was told (0: none has WAL of the branch yet).
    pub(crate) marked: u64,
    /// The highest LSN a majority of all the safekeepers flushed in the newest term any of them
    /// holds WAL of (0: fewer than a majority answered with WAL of that term).
    majority_flushed: u64,
}

impl Committed {
    /// Everything a client may have seen committed: WAL flushed by a majority in one term is
    /// committed (any later proposer's election meets one of that majority and continues from
    /// its WAL), even before the safekeepers are told.
    fn for_reader(&self) -> u64 {
        self.marked.max(self.majority_flushed)
    }

    fn from_statuses(statuses: &[sk::TimelineStatusResponse], safekeepers: usize) -> Committed {
        let last_log_term = |s: &sk::TimelineStatusResponse| {
            s.term_history
                .as_ref()
                .and_then(|h| h.entries.last())
                .map_or(0, |e| e.term)
        };
        let marked = statuses.iter().map(|s| s.commit_lsn).max().unwrap_or(0);
        let newest = statuses.iter().map(last_log_term).max().unwrap_or(0);
        let mut flushed: Vec<u64> = statuses
            .iter()
            .filter(|s| last_log_term(s) == newest && newest > 0)
            .map(|s| s.flush_lsn)
            .collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        let majority = safekeepers / 2 + 1;
        Committed {
            marked,
            majority_flushed: flushed.get(majority - 1).copied().unwrap_or(0),
        }
    }
}

/// What the safekeepers know of the branch's committed WAL. Fails when none answers: then
/// nobody can tell what is committed, and a read "as of now" could silently miss acknowledged
/// commits.
pub(crate) fn committed_on_safekeepers(
    cfg: &ClusterConfig,
    tenant_id: &str,
    timeline_id: &str,
    for_writer: bool,
) -> Result<Committed> {
    let statuses =
        crate::mgmt::safekeeper_statuses(&cfg.safekeeper_grpc_addrs(), tenant_id, timeline_id);
    let mut answered = 0usize;
    let mut with_wal = Vec::new();
    let mut failures = Vec::new();
    for s in statuses {
        match s {
            Ok(s) => {
                answered += 1;
                with_wal.extend(s);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if answered == 0 {
        bail!(
            "no safekeeper reachable, so what is committed on this branch is unknown: {} \
             (`strata status`; `strata start` starts stopped ones)",
            failures.join("; ")
        );
    }
    if for_writer && answered.saturating_mul(2) <= cfg.safekeepers.len() {
        bail!(
            "only {answered} of {} safekeepers answer: a read-write compute needs a majority \
             ({}; `strata status`)",
            cfg.safekeepers.len(),
            failures.join("; ")
        );
    }
    let committed = Committed::from_statuses(&with_wal, cfg.safekeepers.len());
    let flush = with_wal.iter().map(|s| s.flush_lsn).max().unwrap_or(0);
    if for_writer && flush > committed.marked {
        bail!(
            "a safekeeper holds WAL up to {} beyond the commit LSN {} (a compute stopped uncleanly); \
             start a read-only compute, or branch at {}",
            Lsn(flush),
            Lsn(committed.marked),
            Lsn(committed.marked)
        );
    }
    Ok(committed)
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

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Forgets the computes whose Postgres and walproposer are both gone and not meant to run
/// (`strata stop`, a reboot): a compute's data directory is only a cache, so a stale record
/// must not hold its name, its port or its branch's single writer slot. A compute the
/// supervisor is restarting is kept.
fn forget_stopped_computes(dir: &Path, cfg: &ClusterConfig, out: &Output) -> Result<()> {
    for rec in ComputeRecord::list(dir)? {
        // An import's walproposer is not scratch: its source waits for it (`strata start`
        // starts it again; only `strata tenant detach` ends it).
        if crate::tenant_import::tenant_of_compute(dir, &rec.name).is_some() {
            continue;
        }
        if crate::cluster::compute_ports::being_started(dir, &rec) {
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
                &crate::lazy_compute::pagefs_daemon(dir, &rec.name).name,
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
    crate::lazy_compute::remove_compute_dir(dir, name)
}

/// Where removed computes' data directories wait to be reused (no compute.toml: not listed).
fn spare_dir(dir: &Path) -> PathBuf {
    computes_dir(dir).join(".spare")
}

/// Spare data directories kept at most.
const MAX_SPARES: usize = 2;

/// Moves a removed compute's data directory to the spares, its WAL and the server's own
/// leftovers removed (they would only take space). Creating files is the dearest part of
/// unpacking a basebackup on some file systems, and the next compute of the tenant has mostly
/// the same relation files: `ComputeNode::unpack_basebackup` overwrites them in place. Any
/// failure leaves the directory to be deleted with the compute.
fn keep_spare_data_dir(dir: &Path, data: &Path) {
    let spares = spare_dir(dir);
    if !data.is_dir() || fs::create_dir_all(&spares).is_err() {
        return;
    }
    let count = fs::read_dir(&spares)
        .map(|r| r.count())
        .unwrap_or(usize::MAX);
    if count >= MAX_SPARES {
        return;
    }
    if let Ok(segs) = fs::read_dir(data.join("pg_wal")) {
        for e in segs.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_file(data.join("postmaster.pid"));
    let target = spares.join(format!("{}-{}", std::process::id(), unix_now_nanos()));
    let _ = fs::rename(data, target);
}

/// Makes a spare data directory (if any) the new compute's `data`, to be overwritten by the
/// basebackup. Without one (or if the move fails), the data directory starts empty.
fn take_spare_data_dir(dir: &Path, data: &Path) {
    if data.exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(spare_dir(dir)) else {
        return;
    };
    for e in entries.flatten() {
        if fs::rename(e.path(), data).is_ok() {
            return;
        }
    }
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(terms: &[u64], flush: u64, commit: u64) -> sk::TimelineStatusResponse {
        sk::TimelineStatusResponse {
            flush_lsn: flush,
            commit_lsn: commit,
            term_history: Some(sk::TermHistory {
                entries: terms
                    .iter()
                    .map(|&term| sk::TermSwitch { term, start_lsn: 0 })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_reader_counts_what_a_majority_flushed_in_the_newest_term() {
        // The walproposer acknowledged 300 (two of three flushed it) but told nobody yet.
        let c = Committed::from_statuses(
            &[
                status(&[1, 2], 300, 200),
                status(&[1, 2], 350, 200),
                status(&[1, 2], 250, 200),
            ],
            3,
        );
        assert_eq!(c.marked, 200);
        assert_eq!(c.majority_flushed, 300);
        assert_eq!(c.for_reader(), 300);
    }

    #[test]
    fn flushes_of_an_older_term_or_of_a_minority_commit_nothing() {
        // Only one safekeeper holds WAL of term 3: a minority, whatever it flushed.
        let c = Committed::from_statuses(
            &[
                status(&[1, 3], 900, 200),
                status(&[1, 2], 800, 200),
                status(&[1, 2], 800, 200),
            ],
            3,
        );
        assert_eq!(c.majority_flushed, 0);
        assert_eq!(c.for_reader(), 200);
        // Two of three answered, one of them with WAL: no majority of the three.
        let c = Committed::from_statuses(&[status(&[1], 500, 100)], 3);
        assert_eq!(c.for_reader(), 100);
        // No safekeeper has WAL of the branch yet.
        assert_eq!(Committed::from_statuses(&[], 3).for_reader(), 0);
    }
}
