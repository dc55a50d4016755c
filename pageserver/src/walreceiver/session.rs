//! One stream from one safekeeper: XLogData into the sink (through a [`Pipeline`], so the
//! socket is read while earlier WAL is ingested), status updates back, and the reason it
//! ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::debug;
use walproto::pgclient::replication::WalStream;
use walproto::replication::ReplicationMessage;
use walproto::Lsn;

use super::monitor::Monitor;
use super::pipeline::Pipeline;
use super::probe::{describe, Probe};
use super::{ReceiverStatus, WalReceiverConf, WalSink};

/// Why a stream ended without an error.
pub(super) enum SessionEnd {
    Shutdown,
    /// Another safekeeper is well ahead of this one.
    Lagging(String),
}

pub(super) enum SessionError {
    /// The connection, the server or its WAL failed: try another safekeeper.
    Connection(String),
    /// The sink refused the WAL: fatal.
    Sink(anyhow::Error),
}

/// How long one read waits before checking shutdown, status and lag.
const TICK: Duration = Duration::from_millis(100);

/// Streams from the safekeeper connected and identified in `probe`, from `start`. Returns
/// once everything received is in the sink.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream(
    conf: &WalReceiverConf,
    probe: Probe,
    start: Lsn,
    sink: &Arc<dyn WalSink>,
    monitor: &Monitor,
    status: &watch::Sender<ReceiverStatus>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let conn_err = |e: walproto::pgclient::PgError| SessionError::Connection(describe(&e));
    let mut stream = tokio::time::timeout(
        conf.connect_timeout,
        WalStream::start(probe.conn, None, start, probe.identity.pg_timeline),
    )
    .await
    .map_err(|_| SessionError::Connection("START_REPLICATION timed out".into()))?
    .map_err(conn_err)?;
    let pipeline = Pipeline::start(sink.clone()).map_err(SessionError::Sink)?;
    let pumped = pump(
        conf,
        &probe.identity,
        start,
        &mut stream,
        &pipeline,
        sink.as_ref(),
        monitor,
        status,
        shutdown,
    )
    .await;
    // Whatever ended the stream, what was received goes into the sink first: the next stream
    // starts where the sink stands.
    pipeline.finish().await.map_err(SessionError::Sink)?;
    let end = pumped?;
    if matches!(end, SessionEnd::Shutdown) {
        // Tell the safekeeper where the sink stands before leaving.
        let _ =
            tokio::time::timeout(TICK * 10, send_status(&mut stream, sink.as_ref(), false)).await;
    }
    Ok(end)
}

/// Reads the stream into `pipeline` until it ends.
#[allow(clippy::too_many_arguments)]
async fn pump(
    conf: &WalReceiverConf,
    identity: &super::probe::Identity,
    start: Lsn,
    stream: &mut WalStream,
    pipeline: &Pipeline,
    sink: &dyn WalSink,
    monitor: &Monitor,
    status: &watch::Sender<ReceiverStatus>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let conn_err = |e: walproto::pgclient::PgError| SessionError::Connection(describe(&e));
    // Superseded by the sink's own error (`Pipeline::finish`).
    let sink_stopped = || SessionError::Sink(anyhow::anyhow!("the sink stopped taking WAL"));
    let mut pos = start;
    // The server's commit LSN, as its messages say.
    let mut server_end = identity.commit_lsn;
    // For the lag metrics: what the safekeepers committed, even past a record ingest refuses.
    let seen = crate::metrics::timeline_facts(conf.tenant_id, conf.timeline_id);
    let see = |lsn: Lsn| seen.commit_lsn_seen.fetch_max(lsn.0, Ordering::Relaxed);
    see(server_end);
    let mut last_message = Instant::now();
    let mut last_status: Option<Instant> = None;
    let mut ahead_since: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return Ok(SessionEnd::Shutdown);
        }
        if pipeline.stopped() {
            return Err(sink_stopped());
        }
        let mut reply_now = false;
        match stream.next(TICK).await.map_err(conn_err)? {
            Some(ReplicationMessage::XLogData {
                start: at,
                wal_end,
                data,
                ..
            }) => {
                last_message = Instant::now();
                if at != pos {
                    return Err(SessionError::Connection(format!(
                        "the server sent WAL at {at}, but the stream is at {pos}"
                    )));
                }
                see(wal_end);
                if !data.is_empty() {
                    let len = data.len() as u64;
                    pipeline
                        .send(pos, data)
                        .await
                        .map_err(|()| sink_stopped())?;
                    pos = Lsn(pos.0 + len);
                    status.send_modify(|s| s.received = pos);
                }
                server_end = server_end.max(wal_end).max(pos);
            }
            Some(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            }) => {
                last_message = Instant::now();
                server_end = server_end.max(wal_end);
                see(wal_end);
                reply_now = reply_requested;
            }
            Some(other) => {
                return Err(SessionError::Connection(format!(
                    "unexpected replication message from the server: {other:?}"
                )))
            }
            None => {}
        }
        if last_message.elapsed() >= conf.stream_timeout {
            return Err(SessionError::Connection(format!(
                "nothing received for {:?}",
                conf.stream_timeout
            )));
        }
        if reply_now || last_status.is_none_or(|t| t.elapsed() >= conf.status_interval) {
            send_status(stream, sink, false).await.map_err(conn_err)?;
            last_status = Some(Instant::now());
        }
        match monitor.best_other() {
            Some((other, lsn)) if lsn.0 > server_end.0.saturating_add(conf.max_lag) => {
                let since = *ahead_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= conf.lag_patience {
                    return Ok(SessionEnd::Lagging(format!(
                        "safekeeper {} is at {lsn}, more than {} bytes ahead of this one ({server_end}) for {:?}",
                        conf.safekeepers[other], conf.max_lag, conf.lag_patience
                    )));
                }
            }
            _ => ahead_since = None,
        }
    }
}

async fn send_status(
    stream: &mut WalStream,
    sink: &dyn WalSink,
    reply_requested: bool,
) -> Result<(), walproto::pgclient::PgError> {
    // The positions come from under the timeline lock, which a flush or a slow basebackup can
    // hold: never wait for it on an async worker (two such waits starve a 2-core runtime, and
    // then nothing drains the basebackup stream that holds the lock).
    let f = off_async_worker(|| sink.feedback());
    debug!(received = %f.received, durable_local = %f.durable_local, durable_remote = %f.durable_remote, "status update");
    stream
        .send_positions(
            f.received,
            f.durable_local,
            f.durable_remote,
            reply_requested,
        )
        .await
}

/// Runs `f`, which may block, without holding up an async worker of a multi-threaded runtime
/// (the runtime hands the worker's other tasks to a new one meanwhile).
fn off_async_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::current().runtime_flavor() {
        RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
