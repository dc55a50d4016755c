//! The gRPC service `strata.safekeeper.v1.Safekeeper`: a thin adapter that authenticates each
//! call, parses its ids and hands it to the set of timelines ([`crate::timelines`]): a
//! `Propose` stream to a proposer session ([`crate::session`]), `TimelineStatus` and
//! `DeleteTimeline` to the timeline they name.

use std::path::PathBuf;
use std::sync::Arc;

use strata_auth::{authorize, Claims, Scope};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, Instrument};
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::proposer_message::Msg as In;

use crate::config::ServiceConfig;
use crate::convert::{history_to_pb, parse_ids};
use crate::session::blocking;
use crate::timelines::Timelines;

/// The `strata.safekeeper.v1.Safekeeper` service.
#[derive(Clone)]
pub struct SafekeeperService {
    timelines: Arc<Timelines>,
}

impl SafekeeperService {
    /// A stand-alone safekeeper's service: no peers, no object store.
    pub fn new(node_id: u64, datadir: PathBuf) -> Self {
        Self::with_timelines(Timelines::new(node_id, datadir, ServiceConfig::default()))
    }

    /// The service of these timelines.
    pub fn with_timelines(timelines: Arc<Timelines>) -> Self {
        SafekeeperService { timelines }
    }

    pub fn timelines(&self) -> &Arc<Timelines> {
        &self.timelines
    }

    /// The caller's token's claims: a valid token is needed for every call when auth is on
    /// (what it may do is checked once the call names its tenant).
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Option<Claims>, Status> {
        strata_auth::authenticate(req, self.timelines.config().auth.verifier.as_deref())
    }

    pub fn into_server(self) -> pb::safekeeper_server::SafekeeperServer<Self> {
        pb::safekeeper_server::SafekeeperServer::new(self).max_decoding_message_size(64 << 20)
    }
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
        if g.acceptor_id != 0 && g.acceptor_id != self.timelines.node_id() {
            return Err(Status::invalid_argument(format!(
                "proposer expected safekeeper {}, this is safekeeper {}",
                g.acceptor_id,
                self.timelines.node_id()
            )));
        }
        let span = info_span!("session", tenant = %id.tenant, timeline = %id.timeline, proposer = %g.proposer_id);
        let (tx, rx) = mpsc::channel(64);
        let timelines = self.timelines.clone();
        tokio::spawn(
            async move {
                info!(?peer, "session started");
                match crate::session::run(timelines, id, g, inbound, &tx).await {
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
        let timelines = self.timelines.clone();
        let tl = blocking(move || timelines.timeline(id, None))
            .await?
            .ok_or_else(|| match self.timelines.quarantine_reason(id) {
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
            acceptor_id: self.timelines.node_id(),
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
                .timelines
                .config()
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
        let (deleted, remote_objects_deleted) = self.timelines.delete_timeline(id).await?;
        Ok(Response::new(pb::DeleteTimelineResponse {
            deleted,
            remote_objects_deleted,
        }))
    }
}
