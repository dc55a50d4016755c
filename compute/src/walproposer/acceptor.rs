//! One task per safekeeper: streams WAL from the shared buffer at the acceptor's own pace
//! (pipelined, at most `max_inflight` bytes not yet fsynced), reports its flush LSN, and on any
//! failure reconnects with backoff and rejoins the current term (greeting + `Elected`, no vote).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn, Instrument};
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

use super::buffer::TooOld;
use super::history::{start_point, TermHistory};
use super::session::{Session, SessionError};
use super::Shared;
use crate::pg::replication::WalStream;
use crate::pg::{PgConnection, PgError};
use walproto::replication::ReplicationMessage;

/// Largest append (several XLogData chunks are coalesced up to this).
const MAX_APPEND: usize = 1 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a commit LSN move may wait for an append to carry it before an empty append does.
const COMMIT_DELAY: Duration = Duration::from_millis(20);

/// What acceptor tasks tell the proposer's main loop.
#[derive(Debug)]
pub enum Event {
    /// Joined the current term; appends continue at `flush`.
    Joined { idx: usize, flush: Lsn },
    /// The acceptor's durable WAL end moved.
    Flushed { idx: usize, flush: Lsn },
    /// The session failed; the task reconnects.
    Left { idx: usize },
    /// Another proposer won: stop.
    Fatal(SessionError),
}

/// Runs until the proposer stops (the events channel closes) or a fatal error.
pub async fn run(
    idx: usize,
    addr: String,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    mut joined: Option<(Session, Lsn)>,
) {
    let span = tracing::info_span!("safekeeper", addr = %addr);
    async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (session, start) = match joined.take() {
                Some(j) => j,
                None => match rejoin(&addr, &shared).await {
                    Ok(j) => {
                        info!(start = %j.1, term = shared.term, "rejoined the current term");
                        j
                    }
                    Err(e) if e.is_fatal() && matches!(e, SessionError::Superseded { .. }) => {
                        let _ = events.send(Event::Fatal(e));
                        return;
                    }
                    Err(e) => {
                        if e.is_fatal() {
                            error!("cannot rejoin: {e}");
                        } else {
                            warn!("cannot rejoin: {e}");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        if events.is_closed() {
                            return;
                        }
                        continue;
                    }
                },
            };
            if events.send(Event::Joined { idx, flush: start }).is_err() {
                return;
            }
            let r = stream(idx, session, start, &shared, &events).await;
            shared.set_hungry(idx, false);
            match r {
                Ok(()) => return,
                Err(e @ SessionError::Superseded { .. }) => {
                    let _ = events.send(Event::Fatal(e));
                    return;
                }
                Err(e) => {
                    warn!("session failed, reconnecting: {e}");
                    backoff = Duration::from_millis(100);
                    if events.send(Event::Left { idx }).is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Greets the acceptor and sends `Elected` for the current term from the point where its log
/// agrees with ours.
async fn rejoin(addr: &str, shared: &Shared) -> Result<(Session, Lsn), SessionError> {
    let (mut s, g) = Session::open(
        addr,
        shared.greeting.clone(),
        shared.timeout,
        shared.safekeeper_token.as_ref(),
        shared.safekeeper_tls.as_ref(),
    )
    .await?;
    if g.term > shared.term {
        return Err(SessionError::Superseded {
            addr: addr.to_string(),
            message: format!(
                "it is at term {}, above ours ({}): another walproposer was elected",
                g.term, shared.term
            ),
        });
    }
    let hist = TermHistory::from_pb(g.term_history.as_ref());
    let log_start = shared.buffer.lock().expect("buffer lock").start();
    let start = start_point(&hist, Lsn(g.flush_lsn), &shared.history, log_start).map_err(|m| {
        SessionError::Rejected {
            addr: addr.to_string(),
            message: m,
        }
    })?;
    if start < Lsn(g.commit_lsn) {
        return Err(SessionError::Rejected {
            addr: addr.to_string(),
            message: format!(
                "its commit LSN {} is above the point {start} where its log agrees with ours",
                Lsn(g.commit_lsn)
            ),
        });
    }
    debug!(flush = %Lsn(g.flush_lsn), term = g.term, %start, "rejoining");
    s.elect(shared.term, &shared.history, start, shared.timeout)
        .await?;
    Ok((s, start))
}

async fn stream(
    idx: usize,
    mut s: Session,
    start: Lsn,
    shared: &Shared,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), SessionError> {
    let mut progress = shared.progress.subscribe();
    let mut sent = start;
    let mut flush = start;
    let mut sent_commit = Lsn(0);
    // WAL below the buffer comes from Postgres over a catch-up connection.
    let mut catchup: Option<mpsc::Receiver<Result<(Lsn, Bytes), String>>> = None;
    let mut pending: Option<(Lsn, Bytes)> = None;
    let mut last_send = Instant::now();
    let mut rtt = RoundTrips::default();
    // One timer for the commit delay, moved only when its deadline changes (a new timer per
    // iteration, earlier than the runtime's next wake-up, would write its eventfd each time).
    let mut commit_timer = std::pin::pin!(tokio::time::sleep(COMMIT_DELAY));
    loop {
        let p = *progress.borrow_and_update();
        let mut sent_any = false;
        // Appends answered are popped from `rtt.pending` (capped far above any window).
        while sent.0 - flush.0 < shared.max_inflight
            && rtt.pending.len() < shared.max_appends_in_flight
        {
            let (begin, data) = if let Some(x) = pending.take() {
                x
            } else if let Some(rx) = catchup.as_mut() {
                match rx.try_recv() {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        return Err(SessionError::Transient {
                            addr: s.addr.clone(),
                            message: e,
                        })
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        info!(at = %sent, "caught up from Postgres; streaming from the buffer");
                        catchup = None;
                        continue;
                    }
                }
            } else {
                if sent >= p.end {
                    break;
                }
                let chunk = shared
                    .buffer
                    .lock()
                    .expect("buffer lock")
                    .read(sent, MAX_APPEND);
                match chunk {
                    Ok(Some(d)) => (sent, d),
                    Ok(None) => break,
                    Err(TooOld { wanted, start }) => {
                        info!(from = %wanted, until = %start, "catching up from Postgres");
                        catchup = Some(spawn_catchup(shared, wanted, start));
                        continue;
                    }
                }
            };
            if begin != sent {
                return Err(SessionError::Transient {
                    addr: s.addr.clone(),
                    message: format!("catch-up WAL starts at {begin}, expected {sent}"),
                });
            }
            let end = Lsn(sent.0 + data.len() as u64);
            s.send(In::AppendRequest(pb::AppendRequest {
                term: shared.term,
                begin_lsn: sent.0,
                end_lsn: end.0,
                wal_data: data.to_vec(),
                commit_lsn: p.commit.0,
                truncate_lsn: p.truncate.0,
                proposer_flush_lsn: p.end.0,
            }))
            .await?;
            rtt.sent(end);
            sent = end;
            sent_any = true;
        }
        shared.set_hungry(
            idx,
            catchup.is_none()
                && pending.is_none()
                && sent >= p.end
                && sent.0 - flush.0 < shared.max_inflight
                && rtt.pending.len() < shared.max_appends_in_flight,
        );
        if sent_any {
            sent_commit = p.commit;
            last_send = Instant::now();
        } else if p.commit > sent_commit && last_send.elapsed() >= COMMIT_DELAY {
            // Nothing new to send, but the commit LSN moved: tell the acceptor.
            s.send(In::AppendRequest(pb::AppendRequest {
                term: shared.term,
                begin_lsn: sent.0,
                end_lsn: sent.0,
                wal_data: Vec::new(),
                commit_lsn: p.commit.0,
                truncate_lsn: p.truncate.0,
                proposer_flush_lsn: p.end.0,
            }))
            .await?;
            sent_commit = p.commit;
            last_send = Instant::now();
        }
        // A commit LSN move rides on the next append; alone it is sent after COMMIT_DELAY.
        let commit_wait = (p.commit > sent_commit).then(|| last_send + COMMIT_DELAY);
        if let Some(at) = commit_wait {
            let at = tokio::time::Instant::from_std(at);
            if commit_timer.deadline() != at {
                commit_timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            m = s.recv() => match m? {
                Out::AppendResponse(r) => {
                    if r.term != shared.term {
                        return Err(SessionError::Superseded {
                            addr: s.addr.clone(),
                            message: format!("append answered in term {}, ours is {}", r.term, shared.term),
                        });
                    }
                    shared.set_acked_commit(idx, Lsn(r.commit_lsn));
                    let f = Lsn(r.flush_lsn);
                    if f > sent {
                        return Err(SessionError::Rejected {
                            addr: s.addr.clone(),
                            message: format!("reports flush {f} beyond what was sent ({sent})"),
                        });
                    }
                    if f > flush {
                        flush = f;
                        rtt.flushed(flush);
                        if events.send(Event::Flushed { idx, flush }).is_err() {
                            return Ok(());
                        }
                    }
                }
                other => {
                    return Err(SessionError::Rejected {
                        addr: s.addr.clone(),
                        message: format!("expected AppendResponse, got {other:?}"),
                    })
                }
            },
            c = progress.changed() => {
                if c.is_err() {
                    return Ok(());
                }
            }
            _ = &mut commit_timer, if commit_wait.is_some() => {}
            m = recv_catchup(&mut catchup), if catchup.is_some() && pending.is_none()
                && sent.0 - flush.0 < shared.max_inflight => {
                match m {
                    Some(Ok(x)) => pending = Some(x),
                    Some(Err(e)) => {
                        return Err(SessionError::Transient { addr: s.addr.clone(), message: e })
                    }
                    None => {
                        info!(at = %sent, "caught up from Postgres; streaming from the buffer");
                        catchup = None;
                    }
                }
            }
        }
    }
}

/// How often each acceptor task logs its append round trips.
const RTT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Append round trips (sent → reported fsynced) since the last log line.
struct RoundTrips {
    pending: std::collections::VecDeque<(Lsn, Instant)>,
    appends: u64,
    us: Vec<u64>,
    since: Instant,
}

impl Default for RoundTrips {
    fn default() -> Self {
        RoundTrips {
            pending: Default::default(),
            appends: 0,
            us: Vec::new(),
            since: Instant::now(),
        }
    }
}

/// A session that ends abandons its appends in flight.
impl Drop for RoundTrips {
    fn drop(&mut self) {
        super::metrics::appends_in_flight(-(self.pending.len() as i64));
    }
}

impl RoundTrips {
    fn sent(&mut self, end: Lsn) {
        self.appends += 1;
        if self.pending.len() < 100_000 {
            self.pending.push_back((end, Instant::now()));
            super::metrics::appends_in_flight(1);
        }
    }

    fn flushed(&mut self, flush: Lsn) {
        while let Some(&(end, at)) = self.pending.front() {
            if end > flush {
                break;
            }
            if self.us.len() < 1_000_000 {
                self.us.push(at.elapsed().as_micros() as u64);
            }
            super::metrics::append_acked(at.elapsed());
            super::metrics::appends_in_flight(-1);
            self.pending.pop_front();
        }
        if self.since.elapsed() >= RTT_LOG_INTERVAL && !self.us.is_empty() {
            self.us.sort_unstable();
            let pct = |p: f64| self.us[((self.us.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
            info!(
                appends = self.appends,
                acks = self.us.len(),
                rtt_ms_p50 = pct(0.5),
                rtt_ms_p99 = pct(0.99),
                rtt_ms_max = pct(1.0),
                "append stats"
            );
            self.appends = 0;
            self.us.clear();
            self.since = Instant::now();
        }
    }
}

async fn recv_catchup(
    rx: &mut Option<mpsc::Receiver<Result<(Lsn, Bytes), String>>>,
) -> Option<Result<(Lsn, Bytes), String>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Streams WAL `[from, until)` from Postgres over its own replication connection (no slot, not
/// a synchronous standby) into a channel; the channel closes at `until`.
fn spawn_catchup(
    shared: &Shared,
    from: Lsn,
    until: Lsn,
) -> mpsc::Receiver<Result<(Lsn, Bytes), String>> {
    let (tx, rx) = mpsc::channel(8);
    let cfg = shared.catchup_pg.clone();
    let tli = shared.pg_timeline;
    tokio::spawn(async move {
        let r: Result<(), PgError> = async {
            let conn = PgConnection::connect(&cfg).await?;
            let mut ws = WalStream::start(conn, None, from, tli).await?;
            let mut at = from;
            while at < until && !tx.is_closed() {
                match ws.next(Duration::from_secs(1)).await? {
                    Some(ReplicationMessage::XLogData { start, data, .. }) => {
                        if start != at {
                            return Err(PgError::Protocol(format!(
                                "catch-up WAL at {start}, expected {at}"
                            )));
                        }
                        let take = (data.len() as u64).min(until.0 - at.0) as usize;
                        at = Lsn(at.0 + take as u64);
                        if tx.send(Ok((start, data.slice(..take)))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(ReplicationMessage::Keepalive {
                        reply_requested: true,
                        ..
                    }) => ws.send_status(at, Lsn(0), false).await?,
                    _ => {}
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = tx
                .send(Err(format!(
                    "cannot catch up from Postgres at {from} (below the proposer's buffer, which \
                     starts at {until}): {e}"
                )))
                .await;
        }
    });
    rx
}
