//! The `strata.pageserver.v1.Pageserver` gRPC service (`walproto/proto/pageserver.proto`):
//! tenants, timelines, branches, LSN for a time, restore points, compaction, GetPage, the
//! other reads at an LSN ([`reads`]: relation size and existence, database size, SLRU
//! segments), basebackup (full or slim) and the lazy compute's reads ([`pages`]: ListRelations,
//! GetPages) and GC (on request, and periodically: [`background`]), over the
//! [`TenantManager`]. Every request's disk work runs on tokio's blocking pool; errors become
//! statuses whose message says what is possible ([`convert::to_status`]).

mod auth;
pub mod background;
mod config;
pub mod convert;
mod lifecycle;
pub mod pages;
pub mod reads;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use layer_format::{Key, KeyKind, Lsn, SlruKind, KEY_SIZE};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;
use walproto::proto::pageserver as pb;
use walproto::record::RelFileNode;

use crate::basebackup::{basebackup_tar, BasebackupError, BasebackupOptions, Mode};
use crate::remote::RemoteStorage;
use crate::tenant::ids::{check_timeline_id, optional_tenant_id, optional_timeline_id};
use crate::tenant::{branch, BranchTarget, TenantConf, TenantError, TenantManager, TimelineHandle};
pub use auth::{needed_scope, Rpc};
use background::Background;
use convert::{tenant_info, tenant_of, timeline_info, timeline_of, timeline_tree, to_status};

/// The service: shared by every connection.
#[derive(Clone)]
pub struct PageserverService {
    manager: Arc<TenantManager>,
    background: Arc<Background>,
    auth: ServiceAuth,
}

/// The service's side of authentication ([`auth`]).
#[derive(Clone, Default)]
pub struct ServiceAuth {
    /// Checks every call's token; none: auth off, every call allowed.
    pub verifier: Option<Arc<strata_auth::TokenVerifier>>,
    /// The token the walreceivers give the safekeepers (as the replication password).
    pub safekeeper_token: Option<String>,
}

/// Runs blocking tenant work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TenantError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
        .map_err(to_status)
}

fn lsn_or(lsn: u64, default: Lsn) -> Lsn {
    if lsn == 0 {
        default
    } else {
        Lsn(lsn)
    }
}

/// Checks that `lsn` is readable on the timeline: `[start or GC cutoff, last record end]`.
fn check_read_lsn(h: &TimelineHandle, lsn: Lsn) -> Result<(), TenantError> {
    let (start, end, anc, cutoff) = h.read(|t| {
        (
            t.start_lsn(),
            t.last_record_end(),
            t.ancestor_link().map(|(id, _)| id.to_string()),
            t.gc_cutoff_lsn(),
        )
    });
    let name = format!("{}/{}", h.tenant_id(), h.timeline_id());
    if lsn > end {
        // It will not get there by waiting: say why.
        if let Some(stop) = h.ingest_stop() {
            return Err(TenantError::FailedPrecondition(format!(
                "LSN {lsn} is beyond timeline {name}'s last record end {end}, and the timeline \
                 takes no WAL: {}; readable: {start}..={end}",
                stop.describe()
            )));
        }
        let received = h.wal_progress().received;
        if lsn <= received {
            // Waiting cannot help until a writer commits the rest of that record.
            return Err(TenantError::OutOfRange(format!(
                "LSN {lsn} is beyond timeline {name}'s last record end {end}: the WAL received \
                 up to {received} ends inside the record starting at {end}, whose rest is not \
                 committed; the latest state is at {end}; readable: {start}..={end}"
            )));
        }
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is beyond timeline {name}'s last record end {end}; readable: {start}..={end}"
        )));
    }
    if lsn < cutoff && cutoff > start {
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is below timeline {name}'s GC cutoff {cutoff}: older history is garbage \
             collected; readable: {cutoff}..={end}"
        )));
    }
    if lsn < start {
        let older = anc.map_or(String::new(), |a| {
            format!("; older history is on its ancestor {a}")
        });
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is below timeline {name}'s start {start}; readable: {start}..={end}{older}"
        )));
    }
    Ok(())
}

/// The state a request's LSN denotes (0: the last record end), checked to be readable: an LSN
/// inside a record means the state after it, as in Postgres's recovery. The basebackup and a
/// lazy compute's reads (ListRelations, GetPages) resolve it alike.
fn resolved_read_lsn(h: &TimelineHandle, lsn: u64, what: &str) -> Result<Lsn, TenantError> {
    let lsn = lsn_or(lsn, h.read(|t| t.last_record_end()));
    check_read_lsn(h, lsn)?;
    let resolved = h
        .read(|t| crate::timeline::boundary::resolve(t, lsn))
        .map_err(TenantError::timeline(format!(
            "resolving {lsn} on {}/{}",
            h.tenant_id(),
            h.timeline_id()
        )))?;
    match resolved.describe() {
        // Said once per compute start; per GetPages request it would flood the log.
        Some(why) if what == "basebackup" => {
            info!(tenant = %h.tenant_id(), timeline = %h.timeline_id(), "{what}: {why}")
        }
        Some(why) => {
            tracing::debug!(tenant = %h.tenant_id(), timeline = %h.timeline_id(), "{what}: {why}")
        }
        None => {}
    }
    Ok(resolved.lsn())
}

fn rel_of(r: &pb::RelRequest) -> RelFileNode {
    RelFileNode {
        spc: r.spcnode,
        db: r.dbnode,
        rel: r.relnode,
    }
}

/// A fork number from a request (0..=3).
fn fork_of(fork: u32) -> Result<u8, Status> {
    u8::try_from(fork).ok().filter(|f| *f <= 3).ok_or_else(|| {
        Status::invalid_argument(format!(
            "fork {fork} is not a fork number (0 main, 1 fsm, 2 vm, 3 init)"
        ))
    })
}

/// Runs `f` on the timeline at the request's LSN (0: the last record end), after checking
/// that the LSN is readable; returns its result and the LSN read.
async fn read_at<T: Send + 'static>(
    h: Arc<TimelineHandle>,
    lsn: u64,
    f: impl FnOnce(&crate::timeline::Timeline, Lsn) -> Result<T, TenantError> + Send + 'static,
) -> Result<(T, Lsn), Status> {
    blocking(move || {
        let lsn = lsn_or(lsn, h.read(|t| t.last_record_end()));
        check_read_lsn(&h, lsn)?;
        let v = h.read(|t| f(t, lsn))?;
        Ok((v, lsn))
    })
    .await
}

type BasebackupStream = Pin<Box<dyn Stream<Item = Result<pb::BasebackupChunk, Status>> + Send>>;
type GetPagesStream = Pin<Box<dyn Stream<Item = Result<pb::GetPagesResponse, Status>> + Send>>;

/// Tar chunks sent on the basebackup stream.
const CHUNK: usize = 256 * 1024;

/// A `Write` that sends what it is given as stream chunks (from a blocking thread); fails
/// once the client is gone, which ends the basebackup.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<pb::BasebackupChunk, Status>>,
}

/// How long a basebackup waits for its client to take the next chunk. The tar is written under
/// the timeline's read lock, which ingest waits for: a client that stops reading (stopped,
/// hung) must not stall the timeline for longer than this.
const STALLED_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl ChunkWriter {
    /// Hands the buffered bytes to the gRPC stream (called on a blocking thread of the runtime).
    fn send(&mut self) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        use tokio::sync::mpsc::error::TrySendError;
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let chunk = match self.tx.try_send(Ok(pb::BasebackupChunk { data })) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => {
                return Err(Error::new(ErrorKind::BrokenPipe, "client gone"))
            }
            Err(TrySendError::Full(chunk)) => chunk,
        };
        let sent = tokio::runtime::Handle::current().block_on(tokio::time::timeout(
            STALLED_CLIENT_TIMEOUT,
            self.tx.send(chunk),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::new(ErrorKind::BrokenPipe, "client gone")),
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "the client took no data for {} s (the basebackup holds the timeline's read \
                     lock, which ingest waits for)",
                    STALLED_CLIENT_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Chunks stay below gRPC's default message limit whatever the writer hands over.
        let n = b.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PageserverService {
    /// Loads the data directory's tenants and starts their timelines' background work (call
    /// inside a tokio runtime).
    pub fn start(manager: Arc<TenantManager>, remote: Option<RemoteStorage>) -> Self {
        Self::start_with_auth(manager, remote, ServiceAuth::default())
    }

    /// [`PageserverService::start`] with tokens checked and sent as `auth` says.
    pub fn start_with_auth(
        manager: Arc<TenantManager>,
        remote: Option<RemoteStorage>,
        auth: ServiceAuth,
    ) -> Self {
        let background = Arc::new(Background::new(remote, auth.safekeeper_token.clone()));
        for t in manager.tenants() {
            for h in t.timelines() {
                background.start_timeline(&h);
            }
        }
        PageserverService {
            manager,
            background,
            auth,
        }
    }

    pub fn manager(&self) -> &Arc<TenantManager> {
        &self.manager
    }

    pub fn into_server(self) -> pb::pageserver_server::PageserverServer<Self> {
        pb::pageserver_server::PageserverServer::new(self)
    }

    /// Runs GC of every tenant every `interval` from now on (zero: never); see
    /// [`background`]. Call inside a tokio runtime.
    pub fn start_periodic_gc(&self, interval: std::time::Duration) {
        self.background.start_gc(self.manager.clone(), interval);
    }

    /// A clean stop: no more GC or WAL, everything ingested flushed, a last upload.
    pub async fn shutdown(&self) {
        self.background.stop_gc().await;
        self.background.stop_walreceivers().await;
        let m = self.manager.clone();
        let errs = tokio::task::spawn_blocking(move || m.flush_all())
            .await
            .unwrap_or_default();
        info!(failures = errs.len(), "timelines flushed");
        self.background.shutdown_uploaders().await;
    }

    /// A timeline's status, computed off the async threads (it takes the timeline's locks).
    async fn status(h: Arc<TimelineHandle>) -> Result<pb::TimelineInfo, Status> {
        blocking(move || Ok(timeline_info(h.status()))).await
    }

    async fn handle(
        &self,
        tenant: String,
        timeline: String,
    ) -> Result<Arc<TimelineHandle>, Status> {
        // In-memory lookups only: no need for the blocking pool.
        timeline_of(&self.manager, &tenant, &timeline).map_err(to_status)
    }
}

#[tonic::async_trait]
impl pb::pageserver_server::Pageserver for PageserverService {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantInfo>, Status> {
        self.authorize(&req, Rpc::CreateTenant, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let conf = if r.config_toml.trim().is_empty() {
            TenantConf::default()
        } else {
            TenantConf::parse(&r.config_toml, "in the request").map_err(to_status)?
        };
        let id = optional_tenant_id(&r.tenant_id).map_err(to_status)?;
        let m = self.manager.clone();
        let t = blocking(move || m.create_tenant(id, conf)).await?;
        Ok(Response::new(tenant_info(&t)))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.authorize(&req, Rpc::ListTenants, "")?;
        let tenants = self
            .manager
            .tenants()
            .iter()
            .map(|t| tenant_info(t))
            .collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn import_timeline(
        &self,
        req: Request<pb::ImportTimelineRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::ImportTimeline, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        if r.datadir.is_empty() {
            return Err(Status::invalid_argument(
                "datadir is empty: give the path of a cleanly shut down data directory on the pageserver's host",
            ));
        }
        let m = self.manager.clone();
        let h = blocking(move || {
            let t = tenant_of(&m, &r.tenant_id)?;
            let lsn = (r.lsn != 0).then_some(Lsn(r.lsn));
            t.import_timeline(
                optional_timeline_id(&r.timeline_id)?,
                &PathBuf::from(&r.datadir),
                lsn,
                r.safekeepers,
            )
        })
        .await?;
        self.background.start_timeline(&h);
        Ok(Response::new(Self::status(h).await?))
    }

    async fn create_branch(
        &self,
        req: Request<pb::CreateBranchRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::CreateBranch, &req.get_ref().tenant_id)?;
        if !req.get_ref().safekeepers.is_empty() {
            // Where a timeline streams WAL from is an operator's choice, as in SetSafekeepers.
            self.authorize_admin(&req, "naming a new branch's safekeepers")?;
        }
        use pb::create_branch_request::Target;
        let r = req.into_inner();
        let target = match r.target {
            None => BranchTarget::Tip,
            Some(Target::Lsn(l)) => BranchTarget::Lsn(Lsn(l)),
            Some(Target::TimestampMicros(t)) => BranchTarget::Timestamp {
                unix_micros: t,
                inclusive: r.inclusive,
            },
            Some(Target::RestorePoint(n)) => BranchTarget::RestorePoint(n),
        };
        let m = self.manager.clone();
        let h = blocking(move || {
            let t = tenant_of(&m, &r.tenant_id)?;
            t.create_branch(
                check_timeline_id(&r.parent_timeline_id)?,
                optional_timeline_id(&r.timeline_id)?,
                &target,
                r.safekeepers,
            )
        })
        .await?;
        self.background.start_timeline(&h);
        Ok(Response::new(Self::status(h).await?))
    }

    async fn list_timelines(
        &self,
        req: Request<pb::ListTimelinesRequest>,
    ) -> Result<Response<pb::ListTimelinesResponse>, Status> {
        self.authorize(&req, Rpc::ListTimelines, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let m = self.manager.clone();
        let timelines = blocking(move || Ok(timeline_tree(&*tenant_of(&m, &r.tenant_id)?))).await?;
        Ok(Response::new(pb::ListTimelinesResponse { timelines }))
    }

    async fn timeline_status(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::TimelineStatus, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let s = blocking(move || Ok(h.status())).await?;
        Ok(Response::new(timeline_info(s)))
    }

    async fn delete_timeline(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::DeleteTimelineResponse>, Status> {
        self.authorize(&req, Rpc::DeleteTimeline, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let m = self.manager.clone();
        let t = blocking(move || tenant_of(&m, &r.tenant_id)).await?;
        let timeline = check_timeline_id(&r.timeline_id).map_err(to_status)?;
        // Refuse early (branches) before stopping anything.
        let has_branches = t
            .timelines()
            .iter()
            .any(|h| h.parent().is_some_and(|p| p.timeline_id() == timeline));
        if !has_branches {
            self.background.stop_timeline(t.id(), timeline).await;
        }
        blocking(move || t.delete_timeline(timeline)).await?;
        Ok(Response::new(pb::DeleteTimelineResponse {}))
    }

    async fn set_safekeepers(
        &self,
        req: Request<pb::SetSafekeepersRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::SetSafekeepers, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let h2 = h.clone();
        blocking(move || h2.set_safekeepers(r.safekeepers)).await?;
        self.background.start_timeline(&h);
        Ok(Response::new(Self::status(h).await?))
    }

    async fn lsn_for_timestamp(
        &self,
        req: Request<pb::LsnForTimestampRequest>,
    ) -> Result<Response<pb::LsnForTimestampResponse>, Status> {
        self.authorize(&req, Rpc::LsnForTimestamp, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let lsn = blocking(move || {
            let name = format!("{}/{}", h.tenant_id(), h.timeline_id());
            h.read(|t| branch::lsn_for_time(t, &name, r.timestamp_micros, r.inclusive))
        })
        .await?;
        Ok(Response::new(pb::LsnForTimestampResponse { lsn: lsn.0 }))
    }

    async fn list_restore_points(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::ListRestorePointsResponse>, Status> {
        self.authorize(&req, Rpc::ListRestorePoints, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let pts = blocking(move || h.read(branch::restore_points)).await?;
        let restore_points = pts
            .into_iter()
            .map(|(name, lsn, t)| pb::RestorePoint {
                name,
                lsn: lsn.0,
                timestamp_micros: t,
            })
            .collect();
        Ok(Response::new(pb::ListRestorePointsResponse {
            restore_points,
        }))
    }

    async fn compact(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        self.authorize(&req, Rpc::Compact, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let (summary, layers) = blocking(move || {
            let rep = h.compact()?;
            let (stats, layers) = h.read(|t| (t.layer_stats(), t.layer_descs().len()));
            let summary = format!(
                "merged {} L0 layers into {} L1 runs ({} layers, {} bytes); wrote {} image layers ({} bytes), skipped {} partitions; now {}",
                rep.l0_merged,
                rep.l1_runs_written,
                rep.l1_layers_written,
                rep.l1_bytes,
                rep.image_layers_written,
                rep.image_bytes,
                rep.image_partitions_skipped,
                stats.summary()
            );
            Ok((summary, layers))
        })
        .await?;
        Ok(Response::new(pb::CompactResponse {
            summary,
            layers: layers as u32,
        }))
    }

    async fn flush(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::Flush, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let s = blocking(move || {
            h.flush()?;
            Ok(h.status())
        })
        .await?;
        Ok(Response::new(timeline_info(s)))
    }

    type BasebackupStream = BasebackupStream;

    async fn basebackup(
        &self,
        req: Request<pb::BasebackupRequest>,
    ) -> Result<Response<Self::BasebackupStream>, Status> {
        self.authorize(&req, Rpc::Basebackup, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let lsn = blocking({
            let h = h.clone();
            move || resolved_read_lsn(&h, r.lsn, "basebackup")
        })
        .await?;
        let mut opts = BasebackupOptions::new(
            lsn,
            if r.read_only {
                Mode::ReadOnly
            } else {
                Mode::ReadWrite
            },
        );
        opts.prev_lsn = (r.prev_lsn != 0).then_some(Lsn(r.prev_lsn));
        opts.without_relation_files = r.without_relation_files;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                buf: Vec::with_capacity(CHUNK),
                tx: tx.clone(),
            };
            // The timeline stays read-locked while the tar is written (ingest waits).
            let res = h.read(|t| basebackup_tar(t, &opts, &mut out));
            let res = res.and_then(|rep| {
                out.send()
                    .map(|_| rep)
                    .map_err(|source| BasebackupError::Io {
                        path: "the gRPC stream".into(),
                        source,
                    })
            });
            match res {
                Ok(rep) => info!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                                 lsn = %rep.lsn, bytes = rep.bytes, files = rep.files,
                                 "basebackup sent"),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::failed_precondition(e.to_string())));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_page(
        &self,
        req: Request<pb::GetPageRequest>,
    ) -> Result<Response<pb::GetPageResponse>, Status> {
        self.authorize(&req, Rpc::GetPage, &req.get_ref().tenant_id)?;
        use pb::get_page_request::Target;
        let r = req.into_inner();
        let key = match r.target {
            Some(Target::RelBlock(b)) => {
                let fork = fork_of(b.fork)?;
                Key::rel_block(
                    RelFileNode {
                        spc: b.spc,
                        db: b.db,
                        rel: b.rel,
                    },
                    fork,
                    b.blkno,
                )
            }
            Some(Target::Key(k)) => {
                let bytes: [u8; KEY_SIZE] = k.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!(
                        "key of {} bytes; a key is {KEY_SIZE} bytes",
                        k.len()
                    ))
                })?;
                Key::from_bytes(bytes)
            }
            None => return Err(Status::invalid_argument("no target: give rel_block or key")),
        };
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let (page, lsn) = read_at(h, r.lsn, move |t, lsn| {
            match key.kind() {
                Some(KeyKind::RelBlock { .. } | KeyKind::SlruBlock { .. }) => t
                    .get_page(key, lsn)
                    .map(|p| p.map(|p| Bytes::copy_from_slice(&p[..]))),
                _ => t.get_image_value(key, lsn),
            }
            .map_err(TenantError::timeline(format!("reading key {key} at {lsn}")))
        })
        .await?;
        Ok(Response::new(pb::GetPageResponse {
            exists: page.is_some(),
            page: page.map(|p| p.to_vec()).unwrap_or_default(),
            lsn: lsn.0,
        }))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        self.authorize(&req, Rpc::Gc, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let tenant = tenant_of(&self.manager, &r.tenant_id).map_err(to_status)?;
        let which = optional_timeline_id(&r.timeline_id).map_err(to_status)?;
        let results = blocking(move || tenant.gc(which)).await?;
        let timelines = results
            .into_iter()
            .map(|g| pb::TimelineGcResult {
                timeline_id: g.timeline_id.to_string(),
                cutoff_lsn: g.report.cutoff_lsn.0,
                pitr_lsn: g.parts.pitr_lsn.0,
                branch_points: g.parts.branch_points.iter().map(|l| l.0).collect(),
                lease_lsns: g.parts.leases.iter().map(|l| l.0).collect(),
                image_lsn: g.report.image_lsn.0,
                image_layers_written: g.report.image_layers_written as u32,
                image_bytes_written: g.report.image_bytes_written,
                layers_removed: g.report.layers_removed as u32,
                bytes_removed: g.report.bytes_removed,
                layers_kept_below: g.report.layers_kept_below as u32,
                partitions_skipped: g.report.partitions_skipped as u32,
            })
            .collect();
        Ok(Response::new(pb::GcResponse { timelines }))
    }

    async fn create_lease(
        &self,
        req: Request<pb::CreateLeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.authorize(&req, Rpc::CreateLease, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        if r.lsn == 0 {
            return Err(Status::invalid_argument("no LSN: give the LSN to lease"));
        }
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let ttl = std::time::Duration::from_secs(r.ttl_seconds);
        let expires = blocking(move || h.create_owned_lease(Lsn(r.lsn), ttl, &r.owner)).await?;
        Ok(Response::new(pb::LeaseResponse {
            lsn: r.lsn,
            expires_unix_ms: expires,
        }))
    }

    async fn rel_size(
        &self,
        req: Request<pb::RelRequest>,
    ) -> Result<Response<pb::RelSizeResponse>, Status> {
        self.authorize(&req, Rpc::RelSize, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let (rel, fork) = (rel_of(&r), fork_of(r.forknum)?);
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let (nblocks, lsn) =
            read_at(h, r.lsn, move |t, lsn| reads::rel_size(t, rel, fork, lsn)).await?;
        Ok(Response::new(pb::RelSizeResponse {
            nblocks,
            lsn: lsn.0,
        }))
    }

    async fn rel_exists(
        &self,
        req: Request<pb::RelRequest>,
    ) -> Result<Response<pb::RelExistsResponse>, Status> {
        self.authorize(&req, Rpc::RelExists, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let (rel, fork) = (rel_of(&r), fork_of(r.forknum)?);
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let (exists, lsn) =
            read_at(h, r.lsn, move |t, lsn| reads::rel_exists(t, rel, fork, lsn)).await?;
        Ok(Response::new(pb::RelExistsResponse { exists, lsn: lsn.0 }))
    }

    async fn db_size(
        &self,
        req: Request<pb::DbSizeRequest>,
    ) -> Result<Response<pb::DbSizeResponse>, Status> {
        self.authorize(&req, Rpc::DbSize, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let (spc, db) = (r.spcnode, r.dbnode);
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let ((bytes, forks), lsn) =
            read_at(h, r.lsn, move |t, lsn| reads::db_size(t, spc, db, lsn)).await?;
        Ok(Response::new(pb::DbSizeResponse {
            bytes,
            forks,
            lsn: lsn.0,
        }))
    }

    async fn slru_segment(
        &self,
        req: Request<pb::SlruSegmentRequest>,
    ) -> Result<Response<pb::SlruSegmentResponse>, Status> {
        self.authorize(&req, Rpc::SlruSegment, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let kind = match pb::SlruKind::try_from(r.kind) {
            Ok(pb::SlruKind::Clog) => SlruKind::Clog,
            Ok(pb::SlruKind::MultixactOffsets) => SlruKind::MultiXactOffsets,
            Ok(pb::SlruKind::MultixactMembers) => SlruKind::MultiXactMembers,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "SLRU kind {} is unknown: 0 CLOG, 1 MULTIXACT_OFFSETS, 2 MULTIXACT_MEMBERS",
                    r.kind
                )))
            }
        };
        let segno = r.segno;
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let (data, lsn) = read_at(h, r.lsn, move |t, lsn| {
            reads::slru_segment(t, kind, segno, lsn)
        })
        .await?;
        Ok(Response::new(pb::SlruSegmentResponse { data, lsn: lsn.0 }))
    }

    async fn resume_ingest(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineInfo>, Status> {
        self.authorize(&req, Rpc::ResumeIngest, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let h2 = h.clone();
        let cleared = blocking(move || h2.resume_ingest()).await?;
        if let Some(s) = cleared {
            info!(tenant = %h.tenant_id(), timeline = %h.timeline_id(), record_lsn = %s.record_lsn,
                  "ingest resumed on request: the record is tried again");
        }
        Ok(Response::new(Self::status(h).await?))
    }

    async fn list_relations(
        &self,
        req: Request<pb::ListRelationsRequest>,
    ) -> Result<Response<pb::ListRelationsResponse>, Status> {
        self.authorize(&req, Rpc::ListRelations, &req.get_ref().tenant_id)?;
        let r = req.into_inner();
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let list = blocking(move || pages::list_relations(&h, r.lsn)).await?;
        Ok(Response::new(list))
    }

    type GetPagesStream = GetPagesStream;

    async fn get_pages(
        &self,
        req: Request<tonic::Streaming<pb::GetPagesRequest>>,
    ) -> Result<Response<Self::GetPagesStream>, Status> {
        let claims = self.authorize_stream(&req)?;
        let answers = pages::serve(self.manager.clone(), claims, req.into_inner());
        Ok(Response::new(Box::pin(answers)))
    }

    async fn delete_tenant(
        &self,
        req: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        self.authorize(&req, Rpc::DeleteTenant, &req.get_ref().tenant_id)?;
        Ok(Response::new(
            self.delete_tenant_now(req.into_inner()).await?,
        ))
    }

    async fn list_leases(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        self.authorize(&req, Rpc::ListLeases, &req.get_ref().tenant_id)?;
        Ok(Response::new(self.list_leases_now(req.into_inner()).await?))
    }

    async fn revoke_lease(
        &self,
        req: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        self.authorize(&req, Rpc::RevokeLease, &req.get_ref().tenant_id)?;
        Ok(Response::new(
            self.revoke_lease_now(req.into_inner()).await?,
        ))
    }

    async fn get_tenant_config(
        &self,
        req: Request<pb::GetTenantConfigRequest>,
    ) -> Result<Response<pb::TenantConfigResponse>, Status> {
        self.authorize(&req, Rpc::GetTenantConfig, &req.get_ref().tenant_id)?;
        Ok(Response::new(
            self.get_tenant_config_now(req.into_inner()).await?,
        ))
    }

    async fn set_tenant_config(
        &self,
        req: Request<pb::SetTenantConfigRequest>,
    ) -> Result<Response<pb::TenantConfigResponse>, Status> {
        self.authorize(&req, Rpc::SetTenantConfig, &req.get_ref().tenant_id)?;
        Ok(Response::new(
            self.set_tenant_config_now(req.into_inner()).await?,
        ))
    }
}
