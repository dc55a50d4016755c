//! ListRelations and GetPages: what a lazy compute's page filesystem reads. The relation
//! files are the full basebackup's ([`crate::basebackup::relfiles`]), and so are their
//! pages ([`crate::basebackup::pages::page_at`]: checksum set, zeros without history).
//!
//! Both read at the LSN the slim basebackup starts from for the same request LSN: one inside a
//! record means the state after that record.
//!
//! GetPages works on up to [`MAX_IN_FLIGHT`] requests of a stream at once, each cut into
//! parts of at least [`MIN_PART`] blocks read on blocking threads at the same time, and
//! answers each when it is done, in any order. Memory is bounded: the stream takes no new
//! request while [`MAX_IN_FLIGHT`] are unanswered, and answers wait in a queue of
//! [`RESPONSE_QUEUE`] for a client that does not read. The timeline's read lock (which ingest
//! waits for) is taken for one block at a time, never across a request.

use std::sync::Arc;

use layer_format::Lsn;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use walproto::proto::pageserver as pb;
use walproto::record::RelFileNode;

use strata_auth::Claims;

use super::auth::{allow_stream_request, Rpc};
use super::convert::to_status;
use super::{reads, resolved_read_lsn};
use crate::basebackup::pages::{default_threads, page_at};
use crate::basebackup::relfiles::relation_files_at;
use crate::import::info::ImportInfo;
use crate::tenant::{TenantError, TenantManager, TimelineHandle};

/// Blocks per GetPages request, at most (2 MiB of pages: below gRPC's 4 MiB message limit).
pub const MAX_BLOCKS_PER_REQUEST: usize = 256;
/// Requests of one stream worked on at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Answers waiting for the client to take them.
const RESPONSE_QUEUE: usize = 4;
/// Blocks read by one thread of a request, at least.
const MIN_PART: usize = 64;

type Result<T> = std::result::Result<T, TenantError>;
type Answers = ReceiverStream<std::result::Result<pb::GetPagesResponse, Status>>;

/// The relation files of the timeline's data directory at `lsn` (0: the last record end).
pub fn list_relations(h: &TimelineHandle, lsn: u64) -> Result<pb::ListRelationsResponse> {
    let lsn = resolved_read_lsn(h, lsn, "ListRelations")?;
    let files = h
        .read(|t| relation_files_at(t, lsn))
        .map_err(TenantError::timeline(format!(
            "listing the relation files of {}/{} at {lsn}",
            h.tenant_id(),
            h.timeline_id()
        )))?;
    Ok(pb::ListRelationsResponse {
        files: files
            .into_iter()
            .map(|f| pb::RelationFile {
                spc: f.rel.spc,
                db: f.rel.db,
                rel: f.rel.rel,
                fork: f.fork.into(),
                nblocks: f.nblocks,
                source_fork: f.source_fork.into(),
            })
            .collect(),
        lsn: lsn.0,
    })
}

/// Serves one GetPages stream: answers go to the returned stream, which ends after the
/// client half-closed and every request was answered.
///
/// With auth on, `claims` are the stream's token's: a request for a tenant they do not allow
/// ends the stream with PERMISSION_DENIED.
pub fn serve<S>(manager: Arc<TenantManager>, claims: Option<Claims>, mut inbound: S) -> Answers
where
    S: futures_util::Stream<Item = std::result::Result<pb::GetPagesRequest, Status>>
        + Send
        + Unpin
        + 'static,
{
    use futures_util::StreamExt;
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let req = match inbound.next().await {
                Some(Ok(r)) => r,
                // Half-closed: the answers still owed end the stream.
                None => break,
                Some(Err(s)) => {
                    tracing::debug!("GetPages stream ended by the client: {s}");
                    break;
                }
            };
            if let Err(refused) =
                allow_stream_request(claims.as_ref(), Rpc::GetPages, &req.tenant_id)
            {
                let _ = tx.send(Err(refused)).await;
                break;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            if tx.is_closed() {
                break;
            }
            let (tx, manager) = (tx.clone(), manager.clone());
            tokio::spawn(async move {
                let resp = answer(manager, req).await;
                // Waits while the client does not read; fails once it is gone.
                let _ = tx.send(Ok(resp)).await;
                drop(permit);
            });
        }
    });
    ReceiverStream::new(rx)
}

/// One request's answer: its pages or its error.
async fn answer(manager: Arc<TenantManager>, req: pb::GetPagesRequest) -> pb::GetPagesResponse {
    let request_id = req.request_id;
    let failed = |s: Status| pb::GetPagesResponse {
        request_id,
        pages: Vec::new(),
        lsn: 0,
        error: Some(pb::PagesError {
            code: s.code() as i32,
            message: s.message().to_string(),
        }),
    };
    let task_failed = |e: tokio::task::JoinError| {
        failed(Status::internal(format!(
            "GetPages request {request_id}: a read task failed: {e}"
        )))
    };
    let plan = match tokio::task::spawn_blocking(move || plan(&manager, req)).await {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(e)) => return failed(to_status(e)),
        Err(e) => return task_failed(e),
    };
    let n = plan.blocks.len();
    let parts = n.div_ceil(MIN_PART).clamp(1, default_threads());
    let per_part = n.div_ceil(parts).max(1);
    let mut tasks = Vec::with_capacity(parts);
    for first in (0..n).step_by(per_part) {
        let plan = plan.clone();
        let end = (first + per_part).min(n);
        tasks.push(tokio::task::spawn_blocking(move || plan.read(first..end)));
    }
    let mut pages = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(Ok(p)) => pages.extend(p),
            Ok(Err(e)) => return failed(to_status(e)),
            Err(e) => return task_failed(e),
        }
    }
    pb::GetPagesResponse {
        request_id,
        pages,
        lsn: plan.lsn.0,
        error: None,
    }
}

/// A checked request: every block exists at the LSN.
struct Plan {
    h: Arc<TimelineHandle>,
    lsn: Lsn,
    checksums: bool,
    blocks: Vec<(RelFileNode, u8, u32)>,
}

/// Checks a request: its size, timeline, LSN, forks, and that every block is inside its
/// fork at the LSN (reads relation sizes, no page).
fn plan(manager: &TenantManager, req: pb::GetPagesRequest) -> Result<Plan> {
    let what = format!(
        "GetPages request {} on timeline {}/{}",
        req.request_id, req.tenant_id, req.timeline_id
    );
    if req.blocks.len() > MAX_BLOCKS_PER_REQUEST {
        return Err(TenantError::InvalidArgument(format!(
            "{what}: {} blocks; at most {MAX_BLOCKS_PER_REQUEST} per request",
            req.blocks.len()
        )));
    }
    let h = super::convert::timeline_of(manager, &req.tenant_id, &req.timeline_id)?;
    let lsn = resolved_read_lsn(&h, req.lsn, "GetPages")?;
    let mut blocks = Vec::with_capacity(req.blocks.len());
    // Requests usually name one fork: its size is read once.
    let mut last: Option<(RelFileNode, u8, u32)> = None;
    for b in &req.blocks {
        let fork = u8::try_from(b.fork)
            .ok()
            .filter(|f| *f <= 3)
            .ok_or_else(|| {
                TenantError::InvalidArgument(format!(
                    "{what}: fork {} is not a fork number (0 main, 1 fsm, 2 vm, 3 init)",
                    b.fork
                ))
            })?;
        let rel = RelFileNode {
            spc: b.spc,
            db: b.db,
            rel: b.rel,
        };
        let nblocks = match last {
            Some((r, f, n)) if r == rel && f == fork => n,
            _ => {
                let n = h
                    .read(|t| reads::rel_size(t, rel, fork, lsn))
                    .map_err(|e| context(e, &format!("{what} at LSN {lsn}")))?;
                last = Some((rel, fork, n));
                n
            }
        };
        if b.blkno >= nblocks {
            return Err(TenantError::OutOfRange(format!(
                "{what} at LSN {lsn}: block {} of relation {}/{}/{} fork {fork} is past the \
                 fork's end: it has {nblocks} blocks then",
                b.blkno, rel.spc, rel.db, rel.rel
            )));
        }
        blocks.push((rel, fork, b.blkno));
    }
    let checksums = h
        .read(|t| ImportInfo::load(t, lsn))
        .map_err(TenantError::timeline(format!(
            "{what}: reading the import info at {lsn}"
        )))?
        .is_some_and(|i| i.control.data_checksums());
    Ok(Plan {
        h,
        lsn,
        checksums,
        blocks,
    })
}

/// `e` with `ctx` in front of its message, its kind kept.
fn context(e: TenantError, ctx: &str) -> TenantError {
    match e {
        TenantError::NotFound(m) => TenantError::NotFound(format!("{ctx}: {m}")),
        TenantError::OutOfRange(m) => TenantError::OutOfRange(format!("{ctx}: {m}")),
        TenantError::InvalidArgument(m) => TenantError::InvalidArgument(format!("{ctx}: {m}")),
        other => other,
    }
}

impl Plan {
    /// The pages of blocks `range` of the plan.
    fn read(&self, range: std::ops::Range<usize>) -> Result<Vec<Vec<u8>>> {
        let mut pages = Vec::with_capacity(range.len());
        for &(rel, fork, blk) in &self.blocks[range] {
            // One block per read lock: ingest waits at most one page's reconstruction.
            let p = self
                .h
                .read(|t| page_at(t, self.lsn, self.checksums, rel, fork, blk))
                .map_err(TenantError::timeline(format!(
                    "GetPages on timeline {}/{}: reading block {blk} of relation {}/{}/{} fork \
                     {fork} at LSN {}",
                    self.h.tenant_id(),
                    self.h.timeline_id(),
                    rel.spc,
                    rel.db,
                    rel.rel,
                    self.lsn
                )))?;
            pages.push(p.to_vec());
        }
        Ok(pages)
    }
}
