//! A proposer's `Propose` stream is a session: greeting, optional vote, Elected, then appends.
//!
//! A timeline is created only by a greeting that asks for it (`create_timeline`, set by the
//! walproposer that owns it): any other greeting for a timeline this safekeeper does not hold
//! fails with NOT_FOUND and leaves nothing on disk.
//!
//! A vote or election for a term that no later election could exceed (above
//! [`walproto::term_history::MAX_TERM`], or a jump of more than
//! [`walproto::term_history::MAX_TERM_STEP`]) is refused with INVALID_ARGUMENT before anything
//! is persisted, so no single message can lock a timeline.
//!
//! The session writes every append already received, fsyncs once for all of them, and answers
//! with an `AppendResponse` itself (it also answers when the writer thread makes WAL durable),
//! so a proposer can pipeline appends and many of them share one fsync, with no task hop per
//! acknowledgement. Blocking work (control file fsyncs, truncation, recovery) runs on tokio's
//! blocking pool; lazy control-file writes run there outside the acceptor's lock.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{info, warn};
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::term_history::term_raise_refusal;
use walproto::Lsn;

use crate::acceptor::{AcceptorError, GreetingInfo};
use crate::convert::{history_from_pb, history_to_pb, to_status};
use crate::group_commit::{caller_syncs, Durable};
use crate::ids::TenantTimeline;
use crate::timeline::Timeline;
use crate::timelines::Timelines;

/// WAL queued but not yet durable, per session, before reading more appends from the stream.
const MAX_IN_FLIGHT: u64 = 64 << 20;

/// WAL a session writes before it syncs, when appends keep arriving.
const MAX_UNSYNCED: u64 = 8 << 20;

/// Where a session's answers go (the response stream of the `Propose` call).
pub(crate) type Tx = mpsc::Sender<Result<pb::AcceptorMessage, Status>>;

async fn send(tx: &Tx, msg: Out) -> Result<(), Status> {
    tx.send(Ok(pb::AcceptorMessage { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("proposer went away"))
}

/// Runs blocking acceptor work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AcceptorError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("acceptor task failed: {e}")))?
        .map_err(to_status)
}

/// One proposer session after its greeting `g` for timeline `id`.
pub(crate) async fn run(
    timelines: Arc<Timelines>,
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
    let set = timelines.clone();
    let existing = blocking(move || set.timeline(id, None)).await?;
    let quarantined = timelines.quarantine_reason(id);
    if existing.is_none() && quarantined.is_none() && !g.create_timeline {
        return Err(Status::not_found(format!(
            "timeline {id} does not exist on this safekeeper, and the greeting did not ask to \
             create it (only its walproposer does)"
        )));
    }
    if let Some(reason) = quarantined {
        if timelines
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
    crate::recovery::ensure_timeline(&timelines, id, &info).await?;
    let set = timelines.clone();
    let tl = blocking(move || set.timeline(id, Some(&info)))
        .await?
        .ok_or_else(|| Status::internal("timeline was not created"))?;
    let _proposer = tl.count_proposer();
    let greeting = {
        let d = tl.durable.borrow().lsn;
        let mut a = tl.lock();
        let (flush, commit) = a.on_durable(d);
        pb::GreetingResponse {
            acceptor_id: timelines.node_id(),
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
