//! The main loop: Postgres in, safekeepers out, the commit LSN back to Postgres.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::proto::safekeeper as pb;
use walproto::replication::ReplicationMessage;
use walproto::Lsn;

use super::acceptor::{self, Event};
use super::buffer::WalBuffer;
use super::checks::{check_postgres, parse_id};
use super::election::{campaign, plan};
use super::history::quorum_lsn;
use super::{Config, Progress, Shared};
use crate::pg::replication::{identify_system, WalStream};
use crate::pg::PgConnection;

/// How often Postgres hears from us even when nothing moves.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the quorum latency is logged.
const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// Longest pause in reading from Postgres while every acceptor has an append in flight.
const MAX_READ_PAUSE: Duration = Duration::from_millis(10);
/// How often the main loop wakes when nothing happens (status to Postgres, stats).
const TICK: Duration = Duration::from_millis(100);
/// The read timeout on the replication stream: long, so that its timer, created per read,
/// is never the runtime's next wake-up (the tick is); see the timers in `stream_loop`.
const READ_TIMEOUT: Duration = Duration::from_secs(3600);

/// Checks Postgres, wins an election, then streams; returns an error when this walproposer
/// can no longer commit, and `Ok` once Postgres has ended the replication stream (a shutdown)
/// and everything it sent is committed and acknowledged.
pub async fn run(cfg: Config) -> Result<()> {
    let tenant = parse_id("tenant", &cfg.tenant_id)?;
    let timeline = parse_id("timeline", &cfg.timeline_id)?;
    if cfg.safekeepers.is_empty() {
        bail!("no safekeepers given");
    }
    let span = tracing::info_span!("walproposer", tenant = %tenant, timeline = %timeline);
    run_inner(cfg, tenant, timeline).instrument(span).await
}

async fn run_inner(cfg: Config, tenant: String, timeline: String) -> Result<()> {
    check_postgres(&cfg.pg, &cfg.application_name, &cfg.slot).await?;
    let mut repl = cfg.pg.clone();
    repl.replication = true;
    repl.application_name = Some(cfg.application_name.clone());
    let mut conn = PgConnection::connect(&repl)
        .await
        .context("opening the replication connection to Postgres")?;
    let id = identify_system(&mut conn)
        .await
        .context("IDENTIFY_SYSTEM")?;
    info!(system_id = id.system_id, pg_timeline = id.timeline, xlogpos = %id.xlogpos, "Postgres identified");

    let greeting = pb::Greeting {
        tenant_id: tenant,
        timeline_id: timeline,
        proposer_id: cfg.proposer_id.clone(),
        system_id: id.system_id,
        pg_timeline: id.timeline,
        wal_seg_size: WAL_SEGMENT_SIZE as u32,
        acceptor_id: 0,
        create_timeline: true,
    };
    let won = campaign(
        &cfg.safekeepers,
        &greeting,
        cfg.timeout,
        cfg.safekeeper_token.as_ref(),
        cfg.safekeeper_tls.as_ref(),
    )
    .await?;
    // Postgres's position now, after the vote: nothing a safekeeper holds may be beyond it.
    let now = identify_system(&mut conn)
        .await
        .context("IDENTIFY_SYSTEM")?;
    if (now.system_id, now.timeline) != (id.system_id, id.timeline) {
        bail!("Postgres's system id or timeline changed during the election");
    }
    let bootstrap = cfg.start_lsn.unwrap_or(now.xlogpos.segment_start());
    let plan = plan(&won, now.xlogpos, bootstrap)?;
    let term = won.term;
    super::metrics::elected(term);
    info!(
        term,
        donor = won.donor().idx + 1,
        term_start = %plan.term_start,
        history = ?plan.history.0,
        "won the election"
    );

    // Announce: each voter truncates to its start point and adopts the history.
    let mut joined = Vec::new();
    for (v, start) in won.voters.into_iter().zip(plan.starts.iter().copied()) {
        let mut s = v.session;
        match s.elect(term, &plan.history, start, cfg.timeout).await {
            Ok(_) => joined.push((v.idx, s, start)),
            Err(e @ super::session::SessionError::Superseded { .. }) => bail!("{e}"),
            Err(e) => warn!("Elected failed, the safekeeper will rejoin: {e}"),
        }
    }
    let stream_start = joined.iter().map(|j| j.2).min().unwrap_or(plan.term_start);

    let (progress, _) = watch::channel(Progress {
        end: stream_start,
        commit: plan.commit,
        truncate: Lsn(0),
    });
    let shared = Arc::new(Shared {
        term,
        history: plan.history.clone(),
        greeting,
        buffer: Mutex::new(WalBuffer::new(stream_start)),
        progress,
        max_inflight: cfg.max_inflight,
        max_appends_in_flight: cfg.max_appends_in_flight.max(1),
        timeout: cfg.timeout,
        safekeeper_token: cfg.safekeeper_token.clone(),
        safekeeper_tls: cfg.safekeeper_tls.clone(),
        catchup_pg: {
            let mut c = repl.clone();
            c.application_name = Some(format!("{}_catchup", cfg.application_name));
            c
        },
        pg_timeline: id.timeline,
        hungry: (0..cfg.safekeepers.len())
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
        hungry_notify: tokio::sync::Notify::new(),
        acked_commit: (0..cfg.safekeepers.len())
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    });

    let mut stream = WalStream::start(conn, Some(&cfg.slot), stream_start, id.timeline)
        .await
        .with_context(|| {
            format!(
                "START_REPLICATION SLOT {} PHYSICAL {stream_start} TIMELINE {}",
                cfg.slot, id.timeline
            )
        })?;
    info!(%stream_start, "streaming from Postgres");
    super::metrics::set_streaming(true);

    let n = cfg.safekeepers.len();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let mut initial: Vec<Option<(super::session::Session, Lsn)>> = (0..n).map(|_| None).collect();
    let mut flushes: Vec<Option<Lsn>> = vec![None; n];
    for (idx, s, start) in joined {
        initial[idx] = Some((s, start));
        flushes[idx] = Some(start);
    }
    for (idx, init) in initial.into_iter().enumerate() {
        tasks.spawn(acceptor::run(
            idx,
            cfg.safekeepers[idx].clone(),
            shared.clone(),
            ev_tx.clone(),
            init,
        ));
    }
    drop(ev_tx);

    let result = stream_loop(
        &cfg,
        &shared,
        &mut stream,
        &mut events,
        plan.term_start,
        stream_start,
        flushes,
    )
    .await;
    super::metrics::set_streaming(false);
    tasks.abort_all();
    result
}

async fn stream_loop(
    cfg: &Config,
    shared: &Shared,
    stream: &mut WalStream,
    events: &mut mpsc::UnboundedReceiver<Event>,
    term_start: Lsn,
    stream_start: Lsn,
    mut flushes: Vec<Option<Lsn>>,
) -> Result<()> {
    let mut connected: Vec<bool> = flushes.iter().map(|f| f.is_some()).collect();
    let mut received = stream_start;
    let mut commit = shared.progress.borrow().commit;
    let mut last_status = Instant::now();
    let mut reported = Lsn(u64::MAX);
    let mut throttled = false;
    // Quorum latency: from an XLogData chunk's arrival to the commit LSN covering it.
    let mut inflight: std::collections::VecDeque<(Lsn, Instant)> = Default::default();
    let mut lat_us: Vec<u64> = Vec::new();
    let mut last_stats = Instant::now();
    let mut last_read = Instant::now();
    // Timers live across iterations and are only moved later: registering a timer earlier
    // than the runtime's next wake-up writes its eventfd (a syscall and an extra epoll round),
    // which a fresh timer per iteration would cost on every acknowledgement.
    let mut pause_timer = std::pin::pin!(tokio::time::sleep(MAX_READ_PAUSE));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let quorum_flush = quorum_lsn(&flushes);
        let backpressure = received.0.saturating_sub(quorum_flush.0) > cfg.max_lag;
        if backpressure != throttled {
            throttled = backpressure;
            if backpressure {
                warn!(%received, %quorum_flush, connected = connected.iter().filter(|c| **c).count(),
                    "a majority of safekeepers is behind: pausing reads from Postgres");
            } else {
                info!("safekeepers caught up: resuming reads from Postgres");
            }
        }
        let mut reply_now = false;
        // Read Postgres only when an acceptor can take WAL now (or after a short pause).
        let read_pause = MAX_READ_PAUSE.saturating_sub(last_read.elapsed());
        let want_wal = !backpressure && (read_pause.is_zero() || shared.any_hungry());
        let pause_until = tokio::time::Instant::from_std(last_read + MAX_READ_PAUSE);
        if !want_wal && !backpressure && pause_timer.deadline() != pause_until {
            pause_timer.as_mut().reset(pause_until);
        }
        tokio::select! {
            ev = events.recv() => match ev {
                None => bail!("all safekeeper tasks ended"),
                Some(Event::Joined { idx, flush }) => {
                    flushes[idx] = Some(flush);
                    connected[idx] = true;
                }
                Some(Event::Flushed { idx, flush }) => flushes[idx] = Some(flush),
                Some(Event::Left { idx }) => connected[idx] = false,
                Some(Event::Fatal(e)) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "stopping: this walproposer (term {}) can no longer commit",
                        shared.term
                    )))
                }
            },
            // No short timeout here: the tick below wakes the loop for the status and stats.
            m = stream.next(READ_TIMEOUT), if want_wal => {
                last_read = Instant::now();
                let m = match m {
                    Ok(m) => m,
                    // Postgres ended the stream (a shutdown): what it sent must still become
                    // committed on the safekeepers before this walproposer goes.
                    Err(e) => {
                        let e = anyhow::Error::new(e)
                            .context("reading the replication stream from Postgres");
                        return drain_after_stream_end(shared, events, &mut flushes, term_start, received, e).await;
                    }
                };
                match m {
                    Some(ReplicationMessage::XLogData { start, data, .. }) => {
                        let len = data.len() as u64;
                        shared
                            .buffer
                            .lock()
                            .expect("buffer lock")
                            .push(start, data)
                            .map_err(anyhow::Error::msg)?;
                        received = Lsn(received.0 + len);
                        shared.progress.send_modify(|p| p.end = received);
                        super::metrics::received(received);
                        if inflight.len() < 100_000 {
                            inflight.push_back((received, Instant::now()));
                        }
                    }
                    Some(ReplicationMessage::Keepalive { reply_requested, .. }) => {
                        reply_now = reply_requested;
                    }
                    Some(_) | None => {}
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(50)), if backpressure => {}
            _ = shared.hungry_notify.notified(), if !want_wal && !backpressure => {}
            _ = &mut pause_timer, if !want_wal && !backpressure => {}
            _ = tick.tick() => {}
            _ = super::fence::FENCE.lifted.notified() => {}
        }

        // The commit LSN: fsynced by a majority in this term, and this term's WAL start
        // reached (so everything below it is on a majority under the new history).
        let q = quorum_lsn(&flushes);
        if q >= term_start && q > commit {
            commit = q;
            while let Some(&(end, at)) = inflight.front() {
                if end > commit {
                    break;
                }
                lat_us.push(at.elapsed().as_micros() as u64);
                super::metrics::quorum_reached(at.elapsed());
                inflight.pop_front();
            }
        }
        if last_stats.elapsed() >= STATS_INTERVAL {
            lat_us.sort_unstable();
            let pct = |p: f64| {
                lat_us
                    .get(((lat_us.len().saturating_sub(1)) as f64 * p) as usize)
                    .map_or(0.0, |us| *us as f64 / 1000.0)
            };
            info!(
                %received,
                %commit,
                chunks = lat_us.len(),
                quorum_ms_p50 = pct(0.5),
                quorum_ms_p99 = pct(0.99),
                quorum_ms_max = pct(1.0),
                buffered = shared.buffer.lock().expect("buffer lock").len(),
                "stats"
            );
            lat_us.clear();
            last_stats = Instant::now();
        }
        let truncate = if flushes.iter().all(|f| f.is_some()) {
            flushes.iter().flatten().copied().min().unwrap_or(Lsn(0))
        } else {
            Lsn(0)
        };
        shared.progress.send_if_modified(|p| {
            let changed = p.commit != commit || p.truncate != truncate;
            p.commit = commit;
            p.truncate = truncate;
            changed
        });

        // Trim what every safekeeper that ever joined has fsynced, and anything beyond the cap.
        {
            let mut buf = shared.buffer.lock().expect("buffer lock");
            let mut keep = flushes
                .iter()
                .flatten()
                .copied()
                .min()
                .unwrap_or(buf.start())
                .min(received);
            if received.0.saturating_sub(keep.0) > cfg.max_buffer {
                keep = Lsn(received.0 - cfg.max_buffer);
            }
            buf.trim(keep);
        }

        // While a group coordinator holds a fence, Postgres hears the positions it last heard.
        let (write, flush) =
            super::fence::FENCE.positions_to_send(received.max(commit), commit, commit);
        if reply_now || flush != reported || last_status.elapsed() >= STATUS_INTERVAL {
            stream
                .send_status(write, flush, false)
                .await
                .context("sending the standby status to Postgres")?;
            reported = flush;
            super::metrics::reported_flush(flush);
            last_status = Instant::now();
        }
    }
}

/// After Postgres ended the replication stream: keeps counting acknowledgements until
/// everything received is committed, publishes that commit LSN, waits until every acceptor
/// that holds all of it has acknowledged it (a commit-only append, answered at once), then
/// ends cleanly. Without this, a compute's last records (its shutdown checkpoint) would stay
/// uncommitted on the safekeepers, and the next compute of the branch could not start there.
/// Returns `err` if the WAL is not committed within [`FINAL_COMMIT_WAIT`].
async fn drain_after_stream_end(
    shared: &Shared,
    events: &mut mpsc::UnboundedReceiver<Event>,
    flushes: &mut [Option<Lsn>],
    term_start: Lsn,
    received: Lsn,
    err: anyhow::Error,
) -> Result<()> {
    let deadline = Instant::now() + FINAL_COMMIT_WAIT;
    let mut left = vec![false; flushes.len()];
    loop {
        let q = quorum_lsn(flushes);
        if q >= term_start && q >= received {
            shared
                .progress
                .send_modify(|p| p.commit = p.commit.max(received));
            return await_commit_acks(shared, events, flushes, &mut left, received).await;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(err.context(format!(
                "Postgres ended the stream and WAL up to {received} was not committed within {FINAL_COMMIT_WAIT:?} (quorum at {q})"
            )));
        }
        match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Some(ev)) => note_event(ev, flushes, &mut left)?,
            Ok(None) | Err(_) => return Err(err),
        }
    }
}

/// Longest wait, after Postgres ended the stream, for a quorum to flush what it sent (normally
/// there already: Postgres waits for the flush acknowledgements before it ends the stream).
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Longest wait, after the final commit is published, for the acceptors to acknowledge it
/// (normally one commit delay and a round trip). Generous: a walproposer that gives up exits,
/// and a commit LSN not yet delivered then never is, so the next writer of the branch cannot
/// start (its safekeepers hold WAL past their commit LSN); seen with 3 s while other processes
/// kept the disk busy.
const COMMIT_ACK_WAIT: Duration = Duration::from_secs(10);

/// Waits until each connected acceptor whose flush reached `commit` has acknowledged `commit`,
/// at most [`COMMIT_ACK_WAIT`]. Acceptors still behind are not waited for: they cannot take
/// that commit LSN before they hold the WAL, which they get from the next proposer.
async fn await_commit_acks(
    shared: &Shared,
    events: &mut mpsc::UnboundedReceiver<Event>,
    flushes: &mut [Option<Lsn>],
    left: &mut [bool],
    commit: Lsn,
) -> Result<()> {
    let deadline = Instant::now() + COMMIT_ACK_WAIT;
    loop {
        let waiting: Vec<usize> = (0..flushes.len())
            .filter(|&i| !left[i] && flushes[i].is_some_and(|f| f >= commit))
            .filter(|&i| shared.acked_commit(i) < commit)
            .collect();
        if waiting.is_empty() {
            info!(%commit, "Postgres ended the replication stream; all it sent is committed and acknowledged");
            return Ok(());
        }
        if Instant::now() >= deadline {
            warn!(%commit, acceptors = ?waiting, "Postgres ended the replication stream; all it sent is committed, but these acceptors did not acknowledge the final commit LSN within {COMMIT_ACK_WAIT:?}");
            return Ok(());
        }
        // The acknowledgements arrive without an event: look again shortly.
        match tokio::time::timeout(Duration::from_millis(5), events.recv()).await {
            Ok(Some(ev)) => note_event(ev, flushes, left)?,
            // Every acceptor task ended: nothing more can be acknowledged.
            Ok(None) => return Ok(()),
            Err(_) => {}
        }
    }
}

/// Applies an acceptor event while draining: flush positions and who is connected.
fn note_event(ev: Event, flushes: &mut [Option<Lsn>], left: &mut [bool]) -> Result<()> {
    match ev {
        Event::Joined { idx, flush } | Event::Flushed { idx, flush } => {
            flushes[idx] = Some(flush);
            left[idx] = false;
        }
        Event::Left { idx } => left[idx] = true,
        Event::Fatal(e) => return Err(anyhow::Error::new(e)),
    }
    Ok(())
}
