//! The production page source: the pageserver's `ListRelations` and one `GetPages` stream with
//! many requests in flight, reconnected when it breaks; and the LSN lease that keeps the
//! compute's pages from garbage collection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_auth::BearerInterceptor;
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;

use super::names::{RelTag, RelationFork};
use super::source::{PageSource, SourceError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MESSAGE: usize = 64 << 20;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<pb::GetPagesResponse>>>>;

/// One `GetPages` stream: requests go in through `tx`; a task hands responses to their waiters.
struct PageStream {
    tx: mpsc::Sender<pb::GetPagesRequest>,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

pub struct GrpcSource {
    rt: tokio::runtime::Runtime,
    /// The pageserver's `host:port`.
    addr: String,
    /// The CA its certificate is checked against (TLS); none: in clear.
    tls: Option<strata_auth::ClientTls>,
    tenant: String,
    timeline: String,
    lsn: u64,
    stream: tokio::sync::Mutex<Option<PageStream>>,
    next_request: AtomicU64,
    /// Sends the compute's token (if any) with every call.
    auth: BearerInterceptor,
}

fn status_error(what: &str, s: &tonic::Status) -> SourceError {
    code_error(what, s.code() as i32, s.message())
}

/// Unavailable, timed out, aborted and overloaded are worth retrying; the rest is final.
fn code_error(what: &str, code: i32, message: &str) -> SourceError {
    use tonic::Code;
    let retry = [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::ResourceExhausted,
        Code::Cancelled,
        Code::Unknown,
    ];
    let msg = format!("{what}: {} ({message})", Code::from_i32(code));
    if retry.iter().any(|c| *c as i32 == code) {
        SourceError::Unavailable(msg)
    } else {
        SourceError::Refused(msg)
    }
}

impl GrpcSource {
    /// A source for `tenant`/`timeline` at `lsn` on the pageserver at `addr` (`host:port`),
    /// calling with `token` (a `tenant:<id>` token) if the pageserver checks tokens, over TLS
    /// checked against `tls`'s CA if given; connects on first use.
    pub fn new(
        addr: &str,
        (tenant, timeline, lsn): (&str, &str, u64),
        token: Option<String>,
        tls: Option<strata_auth::ClientTls>,
    ) -> std::io::Result<GrpcSource> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pagefs-grpc")
            .enable_all()
            .build()?;
        Ok(GrpcSource {
            rt,
            addr: addr.to_string(),
            tls,
            tenant: tenant.to_string(),
            timeline: timeline.to_string(),
            lsn,
            stream: tokio::sync::Mutex::new(None),
            next_request: AtomicU64::new(1),
            auth: strata_auth::client_interceptor(token),
        })
    }

    async fn client(
        &self,
    ) -> Result<PageserverClient<InterceptedService<Channel, BearerInterceptor>>, SourceError> {
        let endpoint = strata_auth::endpoint(&self.addr, self.tls.as_ref())
            .map_err(|e| SourceError::Refused(format!("pageserver {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| {
            let why = strata_auth::connect_error(&e, self.tls.as_ref());
            SourceError::Unavailable(format!(
                "connecting to the pageserver at {}: {why}",
                self.addr
            ))
        })?;
        Ok(
            PageserverClient::with_interceptor(channel, self.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    /// The live stream's sender and waiters, opening a new stream if there is none.
    async fn stream(&self) -> Result<(mpsc::Sender<pb::GetPagesRequest>, Pending), SourceError> {
        let mut slot = self.stream.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.alive.load(Ordering::SeqCst) {
                return Ok((s.tx.clone(), s.pending.clone()));
            }
        }
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel::<pb::GetPagesRequest>(1024);
        let mut responses = client
            .get_pages(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| status_error("opening the GetPages stream", &s))?
            .into_inner();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (task_pending, task_alive) = (pending.clone(), alive.clone());
        self.rt.spawn(async move {
            loop {
                match responses.message().await {
                    Ok(Some(resp)) => {
                        let waiter = task_pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&resp.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(resp);
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("the pageserver ended the GetPages stream");
                        break;
                    }
                    Err(s) => {
                        tracing::warn!("the GetPages stream failed: {s}");
                        break;
                    }
                }
            }
            task_alive.store(false, Ordering::SeqCst);
            // Dropping the waiters' senders fails their requests: they retry on a new stream.
            task_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        });
        *slot = Some(PageStream {
            tx: tx.clone(),
            pending: pending.clone(),
            alive,
        });
        Ok((tx, pending))
    }

    async fn get_pages_async(
        &self,
        tag: RelTag,
        first: u32,
        count: u32,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        let (tx, pending) = self.stream().await?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, done_tx);
        let blocks = (first..first.saturating_add(count))
            .map(|blkno| pb::RelBlock {
                spc: tag.spc,
                db: tag.db,
                rel: tag.rel,
                fork: tag.fork,
                blkno,
            })
            .collect();
        let request = pb::GetPagesRequest {
            tenant_id: self.tenant.clone(),
            timeline_id: self.timeline.clone(),
            request_id,
            lsn: self.lsn,
            blocks,
        };
        let what = format!("GetPages {tag:?} blocks {first}..+{count}");
        if tx.send(request).await.is_err() {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&request_id);
            return Err(SourceError::Unavailable(format!(
                "{what}: the stream is closed"
            )));
        }
        let resp = done_rx
            .await
            .map_err(|_| SourceError::Unavailable(format!("{what}: the stream broke")))?;
        if let Some(e) = resp.error {
            return Err(code_error(&what, e.code, &e.message));
        }
        Ok(resp.pages)
    }

    /// Takes (or renews) `owner`'s lease on the LSN for `ttl`.
    pub fn create_lease(
        &self,
        ttl: Duration,
        owner: &str,
    ) -> Result<pb::LeaseResponse, SourceError> {
        self.rt.block_on(async {
            let mut client = self.client().await?;
            let req = pb::CreateLeaseRequest {
                tenant_id: self.tenant.clone(),
                timeline_id: self.timeline.clone(),
                lsn: self.lsn,
                ttl_seconds: ttl.as_secs(),
                owner: owner.to_string(),
            };
            tokio::time::timeout(CONNECT_TIMEOUT * 5, client.create_lease(req))
                .await
                .map_err(|_| SourceError::Unavailable("CreateLease timed out".into()))?
                .map(|r| r.into_inner())
                .map_err(|s| status_error("CreateLease", &s))
        })
    }

    /// Ends `owner`'s lease on the LSN now (other owners' leases there stay).
    pub fn revoke_lease(&self, owner: &str) -> Result<(), SourceError> {
        self.rt.block_on(async {
            let mut client = self.client().await?;
            let req = pb::RevokeLeaseRequest {
                tenant_id: self.tenant.clone(),
                timeline_id: self.timeline.clone(),
                lsn: self.lsn,
                owner: owner.to_string(),
            };
            tokio::time::timeout(CONNECT_TIMEOUT * 5, client.revoke_lease(req))
                .await
                .map_err(|_| SourceError::Unavailable("RevokeLease timed out".into()))?
                .map(|_| ())
                .map_err(|s| status_error("RevokeLease", &s))
        })
    }
}

impl PageSource for GrpcSource {
    fn list_relations(&self, deadline: Instant) -> Result<Vec<RelationFork>, SourceError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rt.block_on(async {
            let call = async {
                let mut client = self.client().await?;
                let req = pb::ListRelationsRequest {
                    tenant_id: self.tenant.clone(),
                    timeline_id: self.timeline.clone(),
                    lsn: self.lsn,
                };
                client
                    .list_relations(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| status_error("ListRelations", &s))
            };
            let resp = tokio::time::timeout(left, call)
                .await
                .map_err(|_| SourceError::Unavailable("ListRelations timed out".into()))??;
            Ok(resp
                .files
                .into_iter()
                .map(|f| RelationFork {
                    tag: RelTag {
                        spc: f.spc,
                        db: f.db,
                        rel: f.rel,
                        fork: f.fork,
                    },
                    nblocks: f.nblocks,
                    source_fork: f.source_fork,
                })
                .collect())
        })
    }

    fn get_pages(
        &self,
        tag: RelTag,
        first: u32,
        count: u32,
        deadline: Instant,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rt.block_on(async {
            tokio::time::timeout(left, self.get_pages_async(tag, first, count))
                .await
                .map_err(|_| SourceError::Unavailable("GetPages timed out".into()))?
        })
    }
}

/// Renews `owner`'s lease every third of `ttl` until `stop` is set; a failure is logged loudly
/// and retried at the next turn.
pub fn keep_lease(source: Arc<GrpcSource>, ttl: Duration, owner: &str, stop: Arc<AtomicBool>) {
    let period = (ttl / 3).max(Duration::from_secs(1));
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() >= next {
            match source.create_lease(ttl, owner) {
                Ok(lease) => tracing::debug!(
                    "lease on {} until unix ms {}",
                    walproto::Lsn(lease.lsn),
                    lease.expires_unix_ms
                ),
                Err(e) => tracing::error!(
                    "LEASE RENEWAL FAILED for {}: {e}; garbage collection may remove pages \
                     this compute reads once the lease expires",
                    walproto::Lsn(source.lsn)
                ),
            }
            next = Instant::now() + period;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
