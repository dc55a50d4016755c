//! The gRPC service: one acceptor per (tenant, timeline), kept under
//! `<datadir>/<tenant>/<timeline>/`. A timeline is created only by a greeting that asks for it
//! (`create_timeline`, set by the walproposer that owns it): any other greeting for a timeline
//! this safekeeper does not hold fails with NOT_FOUND and leaves nothing on disk.
//!
//! A vote or election for a term that no later election could exceed (above
//! [`walproto::term_history::MAX_TERM`], or a jump of more than
//! [`walproto::term_history::MAX_TERM_STEP`]) is refused with INVALID_ARGUMENT before anything
//! is persisted, so no single message can lock a timeline.
//!
//! A `Propose` stream is a session: greeting, optional vote, Elected, then appends. The session
//! writes every append already received, fsyncs once for all of them, and answers with an
//! `AppendResponse` itself (it also answers when the writer thread makes WAL durable), so a
//! proposer can pipeline appends and many of them share one fsync, with no task hop per
//! acknowledgement. Blocking work (control file fsyncs, truncation, recovery) runs on tokio's
//! blocking pool; lazy control-file writes run there outside the acceptor's lock.
//!
//! A timeline is verified before it is opened (control file checks and every WAL record up to
//! the persisted flush LSN); a damaged one is quarantined and rebuilt from the peers, see
//! [`crate::quarantine`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use strata_auth::{authorize, Claims, Scope, TokenVerifier};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, info_span, warn, Instrument};
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::term_history::term_raise_refusal;
use walproto::Lsn;

use crate::acceptor::{Acceptor, AcceptorError, GreetingInfo};
use crate::convert::{history_from_pb, history_to_pb, parse_ids, to_status};
use crate::group_commit::{caller_syncs, Durable, WalStats, WalSyncer};
use crate::ids::TenantTimeline;
use crate::offload::OffloadStatus;
use crate::peers::Peer;
use crate::remote_storage::RemoteStorage;

/// WAL queued but not yet durable, per session, before reading more appends from the stream.
const MAX_IN_FLIGHT: u64 = 64 << 20;

/// WAL a session writes before it syncs, when appends keep arriving.
const MAX_UNSYNCED: u64 = 8 << 20;

/// One timeline's acceptor and the channels the sessions watch.
pub struct Timeline {
    pub id: TenantTimeline,
    acceptor: Mutex<Acceptor>,
    durable: watch::Receiver<Durable>,
    stats: Arc<WalStats>,
    /// Makes a session's appends durable on its own thread.
    syncer: WalSyncer,
    /// What the offload task last decided and uploaded.
    pub offload: Mutex<OffloadStatus>,
    /// The service, to report damage found while the timeline is open.
    service: Weak<Inner>,
    /// Damage was confirmed: the timeline is out of the service and serves nothing more.
    quarantined: AtomicBool,
    /// A verification triggered by a bad read is running.
    checking: AtomicBool,
    /// Proposer sessions connected now (a deletion is refused while there is one).
    proposers: AtomicUsize,
}

/// Counts a proposer session for as long as it lives.
struct ProposerSession(Arc<Timeline>);

impl ProposerSession {
    fn new(tl: &Arc<Timeline>) -> Self {
        tl.proposers.fetch_add(1, Ordering::AcqRel);
        ProposerSession(tl.clone())
    }
}

impl Drop for ProposerSession {
    fn drop(&mut self) {
        self.0.proposers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Timeline {
    fn new(acceptor: Acceptor, service: Weak<Inner>) -> Arc<Self> {
        Arc::new(Timeline {
            id: acceptor.state().id,
            durable: acceptor.wal().durable(),
            stats: acceptor.wal().stats().clone(),
            syncer: acceptor.wal().syncer(),
            acceptor: Mutex::new(acceptor),
            offload: Mutex::new(OffloadStatus::default()),
            service,
            quarantined: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            proposers: AtomicUsize::new(0),
        })
    }

    /// Damage was found and confirmed on disk: the timeline is being quarantined (its
    /// sessions, readers and offload task should stop; it is recovered from the peers).
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    /// A reader met a bad record (`what`): verifies the WAL on disk up to the durable LSN in
    /// the background and quarantines the timeline if the damage is confirmed.
    pub fn report_bad_wal(self: &Arc<Self>, what: String) {
        let Some(inner) = self.service.upgrade() else {
            return;
        };
        if self.is_quarantined() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(rt) = inner.runtime.clone() else {
            self.checking.store(false, Ordering::Release);
            return;
        };
        let tl = self.clone();
        rt.spawn(async move {
            warn!(timeline = %tl.id, "a reader met bad WAL ({what}); verifying the timeline on disk");
            let (dir, bound) = (tl.wal_dir(), tl.lsns().0);
            let r = tokio::task::spawn_blocking(move || {
                crate::quarantine::verify(&dir, Some(bound))
            })
            .await;
            tl.checking.store(false, Ordering::Release);
            match r {
                Ok(Ok(Err(c))) => inner.quarantine_open(tl, c),
                Ok(Ok(Ok(_))) => {
                    info!(timeline = %tl.id, "the WAL on disk verified; the bad read was not local damage")
                }
                Ok(Err(e)) => warn!(timeline = %tl.id, %e, "could not verify the timeline"),
                Err(e) => warn!(timeline = %tl.id, %e, "verification task failed"),
            }
        });
    }

    /// Proposer sessions connected now.
    pub(crate) fn proposers(&self) -> usize {
        self.proposers.load(Ordering::Acquire)
    }

    /// The timeline is being deleted: its sessions and offload task stop as for a quarantine.
    pub(crate) fn take_out_of_service(&self) {
        self.quarantined.store(true, Ordering::Release);
    }

    /// The acceptor; a panic elsewhere does not make it unusable (its state is always whole).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Acceptor> {
        self.acceptor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the acceptor's current state.
    pub fn state(&self) -> crate::control_file::ControlState {
        self.lock().state().clone()
    }

    /// The highest LSN known to be on a majority: what may be served to readers.
    pub fn commit_lsn(&self) -> Lsn {
        let mut acceptor = self.lock();
        let durable = self.durable.borrow().lsn;
        acceptor.on_durable(durable).1
    }

    /// The directory holding the timeline's segments.
    pub fn wal_dir(&self) -> PathBuf {
        self.lock().dir().to_path_buf()
    }

    /// (flush LSN, commit LSN) as of now.
    pub fn lsns(&self) -> (Lsn, Lsn) {
        let d = self.durable.borrow().lsn;
        self.lock().on_durable(d)
    }

    /// A pageserver reported WAL up to `lsn` durable in the object store.
    pub fn report_consumer_durable(&self, lsn: Lsn) {
        self.commit_lsn();
        self.lock().advance_consumer_durable(lsn);
    }

    fn offload_status(&self) -> OffloadStatus {
        self.offload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the service needs beyond its node id and data directory; the default is a
/// stand-alone safekeeper without an object store.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The other safekeepers of the cluster.
    pub peers: Vec<Peer>,
    /// Where WAL is offloaded; `None`: nothing is offloaded and no WAL is removed.
    pub remote: Option<RemoteStorage>,
    /// How often the offload task looks at peers, uploads complete segments and removes WAL.
    pub offload_tick: Duration,
    /// How often the segment being written is uploaded (as `.partial`).
    pub partial_offload_interval: Duration,
    /// The replication server's address, told to peers that recover from us.
    pub replication_addr: Option<String>,
    /// Tokens checked on the gRPC and replication ports, and sent to the peers.
    pub auth: ServiceAuth,
}

/// The safekeeper's side of authentication.
#[derive(Clone, Default)]
pub struct ServiceAuth {
    /// Checks every caller's token (gRPC and replication port); none: auth off.
    pub verifier: Option<Arc<TokenVerifier>>,
    /// The token this safekeeper sends its peers (status calls, recovery streams).
    pub peer_token: Option<String>,
    /// The CA the peers' gRPC certificates are checked against; none: peers in clear.
    pub peer_tls: Option<strata_auth::ClientTls>,
}

impl std::fmt::Debug for ServiceAuth {
    // Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAuth")
            .field("verifier", &self.verifier.is_some())
            .field("peer_token", &self.peer_token.is_some())
            .field("peer_tls", &self.peer_tls.as_ref().map(|t| t.ca_file()))
            .finish()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            peers: Vec::new(),
            remote: None,
            offload_tick: Duration::from_secs(1),
            partial_offload_interval: Duration::from_secs(10),
            replication_addr: None,
            auth: ServiceAuth::default(),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) node_id: u64,
    datadir: PathBuf,
    timelines: Mutex<HashMap<TenantTimeline, Arc<Timeline>>>,
    pub(crate) config: ServiceConfig,
    /// Starts each opened timeline's offload task (absent outside a tokio runtime).
    runtime: Option<tokio::runtime::Handle>,
    /// Timelines being recovered from peers right now.
    recovering: Mutex<HashSet<TenantTimeline>>,
    /// Quarantined timelines not yet recovered, and what was wrong.
    quarantined: Mutex<HashMap<TenantTimeline, String>>,
    /// This, for the tasks it starts.
    me: Weak<Inner>,
}

/// The `strata.safekeeper.v1.Safekeeper` service.
#[derive(Clone)]
pub struct SafekeeperService {
    inner: Arc<Inner>,
}

/// Runs blocking acceptor work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AcceptorError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("acceptor task failed: {e}")))?
        .map_err(to_status)
}

impl SafekeeperService {
    pub fn new(node_id: u64, datadir: PathBuf) -> Self {
        Self::with_config(node_id, datadir, ServiceConfig::default())
    }

    /// A service with peers, an object store and offload settings. Inside a tokio runtime,
    /// every timeline opened gets an offload task (see [`crate::offload`]).
    pub fn with_config(node_id: u64, datadir: PathBuf, config: ServiceConfig) -> Self {
        SafekeeperService {
            inner: Arc::new_cyclic(|me| Inner {
                node_id,
                datadir,
                timelines: Mutex::new(HashMap::new()),
                config,
                runtime: tokio::runtime::Handle::try_current().ok(),
                recovering: Mutex::new(HashSet::new()),
                quarantined: Mutex::new(HashMap::new()),
                me: me.clone(),
            }),
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The caller's token's claims: a valid token is needed for every call when auth is on
    /// (what it may do is checked once the call names its tenant).
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Option<Claims>, Status> {
        strata_auth::authenticate(req, self.inner.config.auth.verifier.as_deref())
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Opens every timeline on disk, so that their offload tasks run before any proposer
    /// or reader connects.
    ///
    /// Damaged timelines are quarantined (and recovered in the background with `--peers`), as
    /// are the ones quarantined before a restart and not recovered yet.
    pub fn open_all(&self) {
        for id in self.timelines_on_disk() {
            if let Err(e) = self.inner.timeline(id, None) {
                warn!(timeline = %id, %e, "could not open timeline");
            }
        }
        for (t, l) in crate::quarantine::pending_on_disk(&self.inner.datadir) {
            if let Ok(id) = parse_ids(&t, &l) {
                if self.inner.quarantine_reason(id).is_some() {
                    continue; // quarantined just now, its recovery already started
                }
                warn!(timeline = %id, "timeline was quarantined before the restart and is not recovered yet");
                self.inner.start_recovery(id);
            }
        }
    }

    /// Why the timeline is quarantined here, if it is.
    pub fn quarantine_reason(&self, id: TenantTimeline) -> Option<String> {
        self.inner.quarantine_reason(id)
    }

    /// The open timelines.
    pub fn open_timelines(&self) -> Vec<Arc<Timeline>> {
        self.inner.lock_map().values().cloned().collect()
    }

    pub fn into_server(self) -> pb::safekeeper_server::SafekeeperServer<Self> {
        pb::safekeeper_server::SafekeeperServer::new(self).max_decoding_message_size(64 << 20)
    }

    /// The timeline, opened from disk if it exists there; `None` if it does not.
    pub fn existing_timeline(
        &self,
        id: TenantTimeline,
    ) -> Result<Option<Arc<Timeline>>, AcceptorError> {
        self.inner.timeline(id, None)
    }

    /// The timelines in the data directory (`<tenant>/<timeline>/` with a control file).
    pub fn timelines_on_disk(&self) -> Vec<TenantTimeline> {
        let mut found = Vec::new();
        let Ok(tenants) = std::fs::read_dir(&self.inner.datadir) else {
            return found;
        };
        for tenant in tenants.flatten() {
            let Ok(timelines) = std::fs::read_dir(tenant.path()) else {
                continue;
            };
            for timeline in timelines.flatten() {
                let (Some(t), Some(l)) = (
                    tenant.file_name().to_str().map(str::to_string),
                    timeline.file_name().to_str().map(str::to_string),
                ) else {
                    continue;
                };
                if let Ok(id) = parse_ids(&t, &l) {
                    if timeline
                        .path()
                        .join(crate::control_file::CONTROL_FILE_NAME)
                        .exists()
                    {
                        found.push(id);
                    }
                }
            }
        }
        found.sort_by_key(|id| id.to_string());
        found
    }

    /// Persists every open timeline's state (clean shutdown; a crash is fine too, just slower
    /// to recover).
    pub fn shutdown(&self) {
        let timelines: Vec<_> = self.inner.lock_map().values().cloned().collect();
        for tl in timelines {
            if let Err(e) = tl.lock().persist_now() {
                warn!(timeline = %tl.id, %e, "could not persist timeline state at shutdown");
            }
        }
    }
}

impl Inner {
    pub(crate) fn lock_map(&self) -> MutexGuard<'_, HashMap<TenantTimeline, Arc<Timeline>>> {
        self.timelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of timeline `id`.
    pub(crate) fn timeline_dir(&self, id: TenantTimeline) -> PathBuf {
        self.datadir
            .join(id.tenant.to_string())
            .join(id.timeline.to_string())
    }

    pub(crate) fn recovering(&self) -> MutexGuard<'_, HashSet<TenantTimeline>> {
        self.recovering.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn quarantined(&self) -> MutexGuard<'_, HashMap<TenantTimeline, String>> {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn quarantine_reason(&self, id: TenantTimeline) -> Option<String> {
        self.quarantined().get(&id).cloned()
    }

    /// The error for a greeting of a quarantined timeline.
    fn quarantined_error(id: TenantTimeline, reason: &str) -> AcceptorError {
        AcceptorError::Invalid(format!(
            "timeline {id} is quarantined on this safekeeper ({reason}); it takes part again \
             once it is recovered from the peers"
        ))
    }

    /// Recovers quarantined timeline `id` from the peers in the background (nothing without
    /// `--peers` or a runtime).
    pub(crate) fn start_recovery(&self, id: TenantTimeline) {
        if self.config.peers.is_empty() {
            error!(timeline = %id, "timeline is quarantined and no --peers are configured to recover it from: restore it by hand");
            return;
        }
        if let (Some(rt), Some(inner)) = (&self.runtime, self.me.upgrade()) {
            let span = info_span!("recovery", tenant = %id.tenant, timeline = %id.timeline);
            rt.spawn(crate::recovery::recover_in_background(inner, id, None).instrument(span));
        }
    }

    /// Damage confirmed in open timeline `tl`: out of the map at once; once every user let go
    /// of it (its WAL writer thread stopped), its directory is quarantined and recovered.
    pub(crate) fn quarantine_open(&self, tl: Arc<Timeline>, c: crate::quarantine::Corruption) {
        let id = tl.id;
        {
            let mut map = self.lock_map();
            if tl.quarantined.swap(true, Ordering::AcqRel) {
                return;
            }
            if map.get(&id).is_some_and(|t| Arc::ptr_eq(t, &tl)) {
                map.remove(&id);
            }
            self.quarantined().insert(id, c.to_string());
        }
        error!(timeline = %id, "damage confirmed on disk: {c}; the timeline is quarantined once its sessions end");
        let weak = Arc::downgrade(&tl);
        drop(tl);
        if let (Some(rt), Some(inner)) = (&self.runtime, self.me.upgrade()) {
            let span = info_span!("recovery", tenant = %id.tenant, timeline = %id.timeline);
            rt.spawn(
                crate::recovery::recover_in_background(inner, id, Some((weak, c))).instrument(span),
            );
        }
    }

    /// The open timeline, opened from disk if it exists there, created if `create` is given.
    pub(crate) fn timeline(
        &self,
        id: TenantTimeline,
        create: Option<&GreetingInfo>,
    ) -> Result<Option<Arc<Timeline>>, AcceptorError> {
        let mut map = self.lock_map();
        if let Some(tl) = map.get(&id) {
            if let Some(g) = create {
                tl.lock().greet(g)?;
            }
            return Ok(Some(tl.clone()));
        }
        if let Some(reason) = self.quarantine_reason(id) {
            return match create {
                Some(_) => Err(Self::quarantined_error(id, &reason)),
                None => Ok(None),
            };
        }
        let dir = self.timeline_dir(id);
        match crate::quarantine::verify(&dir, None) {
            Ok(Ok(_)) => {}
            Ok(Err(c)) => {
                let moved =
                    crate::quarantine::quarantine(&dir, &c).map_err(|e| AcceptorError::Io {
                        path: e.path,
                        source: std::io::Error::other(e.message),
                    })?;
                let reason = format!("{c}; kept in {}", moved.display());
                self.quarantined().insert(id, reason.clone());
                self.start_recovery(id);
                return match create {
                    Some(_) => Err(Self::quarantined_error(id, &reason)),
                    None => Ok(None),
                };
            }
            Err(e) => {
                return Err(AcceptorError::Io {
                    path: e.path,
                    source: std::io::Error::other(e.message),
                })
            }
        }
        let acceptor = match create {
            Some(g) => Some(Acceptor::open_or_create(&dir, id, g)?),
            None => Acceptor::open(&dir, id)?,
        };
        Ok(acceptor.map(|a| {
            info!(timeline = %id, dir = %dir.display(), flush_lsn = %a.state().flush_lsn, term = a.state().term, "timeline opened");
            let tl = Timeline::new(a, self.me.clone());
            map.insert(id, tl.clone());
            if let Some(rt) = &self.runtime {
                let span = info_span!("offload", tenant = %id.tenant, timeline = %id.timeline);
                rt.spawn(
                    crate::offload::run(tl.clone(), self.node_id, self.config.clone())
                        .instrument(span),
                );
            }
            tl
        }))
    }
}

type Tx = mpsc::Sender<Result<pb::AcceptorMessage, Status>>;

async fn send(tx: &Tx, msg: Out) -> Result<(), Status> {
    tx.send(Ok(pb::AcceptorMessage { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("proposer went away"))
}

#[tonic::async_trait]
impl pb::safekeeper_server::Safekeeper for SafekeeperService {
    type ProposeStream = ReceiverStream<Result<pb::AcceptorMessage, Status>>;

    async fn propose(
        &self,
        request: Request<Streaming<pb::ProposerMessage>>,
    ) -> Result<Response<Self::ProposeStream>, Status> {
        let peer = request.remote_addr();
        let claims = self.authenticate(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the greeting"))?;
        let Some(In::Greeting(g)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be a Greeting",
            ));
        };
        let id = parse_ids(&g.tenant_id, &g.timeline_id)?;
        authorize(
            claims.as_ref(),
            &Scope::Safekeeper,
            Some(&id.tenant.to_string()),
        )?;
        if g.acceptor_id != 0 && g.acceptor_id != self.inner.node_id {
            return Err(Status::invalid_argument(format!(
                "proposer expected safekeeper {}, this is safekeeper {}",
                g.acceptor_id, self.inner.node_id
            )));
        }
        let span = info_span!("session", tenant = %id.tenant, timeline = %id.timeline, proposer = %g.proposer_id);
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        tokio::spawn(
            async move {
                info!(?peer, "session started");
                match session(inner, id, g, inbound, &tx).await {
                    Ok(()) => info!("session ended by the proposer"),
                    Err(status) => {
                        info!(code = ?status.code(), message = status.message(), "session ended");
                        let _ = tx.send(Err(status)).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn timeline_status(
        &self,
        request: Request<pb::TimelineStatusRequest>,
    ) -> Result<Response<pb::TimelineStatusResponse>, Status> {
        let claims = self.authenticate(&request)?;
        let r = request.into_inner();
        let id = parse_ids(&r.tenant_id, &r.timeline_id)?;
        authorize(
            claims.as_ref(),
            &Scope::Safekeeper,
            Some(&id.tenant.to_string()),
        )?;
        let inner = self.inner.clone();
        let tl = blocking(move || inner.timeline(id, None))
            .await?
            .ok_or_else(|| match self.inner.quarantine_reason(id) {
                Some(reason) => Status::not_found(format!(
                    "timeline {id} is quarantined on this safekeeper and not recovered yet: {reason}"
                )),
                None => {
                    Status::not_found(format!("timeline {id} does not exist on this safekeeper"))
                }
            })?;
        let d = tl.durable.borrow().lsn;
        let mut a = tl.lock();
        let (flush, commit) = a.on_durable(d);
        let s = a.state().clone();
        drop(a);
        let offload = tl.offload_status();
        Ok(Response::new(pb::TimelineStatusResponse {
            acceptor_id: self.inner.node_id,
            term: s.term,
            flush_lsn: flush.0,
            commit_lsn: commit.0,
            local_start_lsn: s.local_start_lsn.0,
            term_history: Some(history_to_pb(&s.term_history)),
            truncate_lsn: s.truncate_lsn.0,
            system_id: s.system_id,
            pg_timeline: s.pg_timeline,
            wal_fsyncs: tl.stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
            wal_appends: tl.stats.appends.load(std::sync::atomic::Ordering::Relaxed),
            offloaded_lsn: s.offloaded_lsn.0,
            consumer_durable_lsn: s.consumer_durable_lsn.0,
            offloader_id: offload.offloader_id,
            replication_addr: self
                .inner
                .config
                .replication_addr
                .clone()
                .unwrap_or_default(),
            partial_offloaded_lsn: offload.partial_offloaded_lsn.0,
        }))
    }

    async fn delete_timeline(
        &self,
        request: Request<pb::DeleteTimelineRequest>,
    ) -> Result<Response<pb::DeleteTimelineResponse>, Status> {
        let claims = self.authenticate(&request)?;
        authorize(claims.as_ref(), &Scope::Admin, None)?;
        let r = request.into_inner();
        let id = parse_ids(&r.tenant_id, &r.timeline_id)?;
        let (deleted, remote_objects_deleted) = self.inner.delete_timeline(id).await?;
        Ok(Response::new(pb::DeleteTimelineResponse {
            deleted,
            remote_objects_deleted,
        }))
    }
}

/// One proposer session after its greeting.
async fn session(
    inner: Arc<Inner>,
    id: TenantTimeline,
    g: pb::Greeting,
    mut inbound: Streaming<pb::ProposerMessage>,
    tx: &Tx,
) -> Result<(), Status> {
    let info = GreetingInfo {
        system_id: g.system_id,
        pg_timeline: g.pg_timeline,
        wal_seg_size: g.wal_seg_size,
    };
    // Opening verifies it: a damaged timeline is quarantined here and recovered just below.
    let inner2 = inner.clone();
    let existing = blocking(move || inner2.timeline(id, None)).await?;
    let quarantined = inner.quarantine_reason(id);
    if existing.is_none() && quarantined.is_none() && !g.create_timeline {
        return Err(Status::not_found(format!(
            "timeline {id} does not exist on this safekeeper, and the greeting did not ask to \
             create it (only its walproposer does)"
        )));
    }
    if let Some(reason) = quarantined {
        if inner
            .timeline_dir(id)
            .join(crate::control_file::CONTROL_FILE_NAME)
            .exists()
        {
            return Err(Status::unavailable(format!(
                "timeline {id} is quarantined on this safekeeper ({reason}); it is recovered \
                 from the peers once its old sessions end: retry"
            )));
        }
    }
    crate::recovery::ensure_timeline(&inner, id, &info).await?;
    let inner2 = inner.clone();
    let tl = blocking(move || inner2.timeline(id, Some(&info)))
        .await?
        .ok_or_else(|| Status::internal("timeline was not created"))?;
    let _proposer = ProposerSession::new(&tl);
    let greeting = {
        let d = tl.durable.borrow().lsn;
        let mut a = tl.lock();
        let (flush, commit) = a.on_durable(d);
        pb::GreetingResponse {
            acceptor_id: inner.node_id,
            term: a.state().term,
            term_history: Some(history_to_pb(&a.state().term_history.up_to(flush))),
            flush_lsn: flush.0,
            commit_lsn: commit.0,
        }
    };
    send(tx, Out::GreetingResponse(greeting)).await?;

    let mut elected: Option<u64> = None;
    // Set by Elected: this session answers its appends itself (no task hop per ack).
    let mut acks: Option<Acks> = None;
    // Appends written but not yet synced by this session (and their bytes).
    let mut unsynced = 0u64;
    loop {
        // Damage found by a reader: stop accepting, so the directory can be moved aside and
        // recovered from the peers (the proposer reconnects and greets again).
        if tl.is_quarantined() {
            return Err(Status::unavailable(format!(
                "timeline {id} was quarantined on this safekeeper (damaged WAL); it is being \
                 recovered from the peers: retry"
            )));
        }
        // Take every append already received before syncing, so one fsync covers them all.
        let ready = if unsynced < MAX_UNSYNCED {
            next_ready(&mut inbound)
        } else {
            None
        };
        let msg = match ready {
            Some(m) => m?,
            None => {
                if unsynced > 0 {
                    unsynced = 0;
                    tl.syncer
                        .sync()
                        .map_err(|e| Status::internal(format!("WAL write failed: {e}")))?;
                    if let Some(a) = acks.as_mut() {
                        a.answer(&tl, tx).await?;
                    }
                }
                match acks.as_mut() {
                    // Durability made by someone else (the writer thread) is answered too.
                    Some(a) => tokio::select! {
                        m = inbound.message() => m?,
                        c = a.durable.changed() => {
                            c.map_err(|_| Status::internal("WAL writer stopped"))?;
                            a.answer(&tl, tx).await?;
                            continue;
                        }
                    },
                    None => inbound.message().await?,
                }
            }
        };
        let Some(msg) = msg else { break };
        match msg.msg {
            Some(In::VoteRequest(v)) => {
                refuse_unreachable_term(&tl, v.term)?;
                let tl2 = tl.clone();
                let vote = blocking(move || tl2.lock().vote(v.term)).await?;
                info!(term = v.term, granted = vote.granted, flush_lsn = %vote.flush_lsn, "vote");
                send(
                    tx,
                    Out::VoteResponse(pb::VoteResponse {
                        term: vote.term,
                        vote_granted: vote.granted,
                        flush_lsn: vote.flush_lsn.0,
                        last_log_term: vote.last_log_term,
                        term_history: Some(history_to_pb(&vote.term_history)),
                        truncate_lsn: vote.truncate_lsn.0,
                        commit_lsn: vote.commit_lsn.0,
                        local_start_lsn: vote.local_start_lsn.0,
                    }),
                )
                .await?;
            }
            Some(In::Elected(e)) => {
                if elected.is_some() {
                    return Err(Status::invalid_argument("a second Elected in one session"));
                }
                refuse_unreachable_term(&tl, e.term)?;
                let (term, start, trunc) =
                    (e.term, Lsn(e.start_streaming_at), Lsn(e.truncate_to_lsn));
                let history = history_from_pb(e.term_history);
                let tl2 = tl.clone();
                let (flush, commit) = blocking(move || {
                    let mut a = tl2.lock();
                    let flush = a.elected(term, history, start, trunc)?;
                    Ok((flush, a.state().commit_lsn))
                })
                .await?;
                info!(term, %flush, "elected: accepting appends");
                elected = Some(term);
                send(
                    tx,
                    Out::ElectedResponse(pb::ElectedResponse {
                        term,
                        flush_lsn: flush.0,
                        commit_lsn: commit.0,
                    }),
                )
                .await?;
                let mut a = Acks {
                    durable: tl.durable.clone(),
                    last_sent: flush,
                };
                // Durability that moved since the election is answered at once.
                a.durable.mark_changed();
                acks = Some(a);
            }
            Some(In::AppendRequest(r)) => {
                if elected != Some(r.term) {
                    let current = tl.lock().state().term;
                    if r.term < current {
                        return Err(to_status(AcceptorError::StaleTerm {
                            got: r.term,
                            current,
                        }));
                    }
                    return Err(Status::invalid_argument(format!(
                        "append in term {} before an Elected for it in this session",
                        r.term
                    )));
                }
                if r.end_lsn.checked_sub(r.begin_lsn) != Some(r.wal_data.len() as u64) {
                    return Err(Status::invalid_argument(format!(
                        "append [{}, {}) carries {} bytes",
                        Lsn(r.begin_lsn),
                        Lsn(r.end_lsn),
                        r.wal_data.len()
                    )));
                }
                let empty = r.wal_data.is_empty();
                let len = r.wal_data.len() as u64;
                let data = Bytes::from(r.wal_data);
                let (write_lsn, heartbeat) = {
                    let mut a = tl.lock();
                    // This session syncs after the batch (above), not the writer thread.
                    caller_syncs(|| {
                        a.append(
                            r.term,
                            Lsn(r.begin_lsn),
                            data,
                            Lsn(r.commit_lsn),
                            Lsn(r.truncate_lsn),
                        )
                    })
                    .map_err(to_status)?;
                    if !empty {
                        unsynced += len.max(1);
                    }
                    // A heartbeat is answered now: nothing new will become durable.
                    let heartbeat = empty.then(|| {
                        let d = tl.durable.borrow().lsn;
                        let (flush, commit) = a.on_durable(d);
                        pb::AppendResponse {
                            term: a.state().term,
                            flush_lsn: flush.0,
                            commit_lsn: commit.0,
                        }
                    });
                    (a.write_lsn(), heartbeat)
                };
                if let Some(resp) = heartbeat {
                    if let Some(a) = acks.as_mut() {
                        a.last_sent = a.last_sent.max(Lsn(resp.flush_lsn));
                    }
                    send(tx, Out::AppendResponse(resp)).await?;
                    continue;
                }
                // Back-pressure: do not queue unbounded WAL ahead of the disk (only while
                // nothing of ours is waiting for this session's own sync).
                if let Some(a) = acks.as_mut() {
                    if unsynced == 0
                        && write_lsn.0.saturating_sub(a.durable.borrow().lsn.0) > MAX_IN_FLIGHT
                    {
                        a.durable
                            .wait_for(|d| {
                                d.error.is_some() || d.lsn.0 + MAX_IN_FLIGHT >= write_lsn.0
                            })
                            .await
                            .map_err(|_| Status::internal("WAL writer stopped"))?;
                        a.answer(&tl, tx).await?;
                    }
                }
            }
            Some(In::Greeting(_)) => {
                return Err(Status::invalid_argument("a second Greeting in one session"))
            }
            None => return Err(Status::invalid_argument("empty ProposerMessage")),
        }
    }
    if unsynced > 0 {
        tl.syncer
            .sync()
            .map_err(|e| Status::internal(format!("WAL write failed: {e}")))?;
        if let Some(a) = acks.as_mut() {
            a.answer(&tl, tx).await?;
        }
    }
    Ok(())
}

/// Refuses a vote or election for a term no later election could exceed, or a jump toward
/// one, before anything is persisted: one message must never lock the timeline.
fn refuse_unreachable_term(tl: &Timeline, requested: u64) -> Result<(), Status> {
    let current = tl.lock().state().term;
    match term_raise_refusal(current, requested) {
        None => Ok(()),
        Some(why) => {
            warn!(requested, current, "refused a term: {why}");
            Err(Status::invalid_argument(format!(
                "timeline {}: refused: {why}",
                tl.id
            )))
        }
    }
}

/// The next message if it has already arrived (never waits).
fn next_ready(
    inbound: &mut Streaming<pb::ProposerMessage>,
) -> Option<Result<Option<pb::ProposerMessage>, Status>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let fut = std::pin::pin!(inbound.message());
    match std::future::Future::poll(fut, &mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// The acknowledgements of an elected session: an `AppendResponse` each time the durable LSN
/// moves, sent by the session itself right after its own sync (one task, no hop per ack).
struct Acks {
    durable: watch::Receiver<Durable>,
    last_sent: Lsn,
}

impl Acks {
    /// Answers the durable LSN as of now if it moved since the last answer, and starts a lazy
    /// control-file write when one is due (in the background, outside the acceptor's lock:
    /// the proposer waits on the answer, the control file only keeps lazily persisted LSNs).
    async fn answer(&mut self, tl: &Arc<Timeline>, tx: &Tx) -> Result<(), Status> {
        let d = self.durable.borrow_and_update().clone();
        if let Some(e) = d.error {
            return Err(Status::internal(format!("WAL write failed: {e}")));
        }
        let (resp, job) = {
            let mut a = tl.lock();
            let (flush, commit) = a.on_durable(d.lsn);
            let resp = pb::AppendResponse {
                term: a.state().term,
                flush_lsn: flush.0,
                commit_lsn: commit.0,
            };
            (resp, a.lazy_persist())
        };
        if let Some(job) = job {
            let tl = tl.clone();
            tokio::task::spawn_blocking(move || {
                let r = job.run();
                if let Err(e) = &r {
                    warn!(timeline = %tl.id, %e, "could not persist the control file");
                }
                tl.lock().finish_persist(job, &r);
            });
        }
        if Lsn(resp.flush_lsn) != self.last_sent {
            self.last_sent = Lsn(resp.flush_lsn);
            send(tx, Out::AppendResponse(resp)).await?;
        }
        Ok(())
    }
}
