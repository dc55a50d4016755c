//! The walreceiver: streams one timeline's committed WAL from the safekeepers into a sink.
//!
//! The safekeepers serve the Postgres replication protocol up to their commit LSN. The
//! receiver asks each one where it stands (`IDENTIFY_SYSTEM`, whose `xlogpos` is that
//! safekeeper's commit LSN), streams from the most advanced one with
//! `START_REPLICATION PHYSICAL <start>` and hands every XLogData to the [`WalSink`], whose
//! positions it reports back in standby status updates: write = received, flush = durable
//! locally, apply = durable remotely (a safekeeper removes WAL only below what a client named
//! `pageserver*` reported as applied, and what is offloaded).
//!
//! It moves to another safekeeper when the connection dies, when the server sends nothing for
//! [`WalReceiverConf::stream_timeout`], or when another safekeeper's commit LSN stays more
//! than [`WalReceiverConf::max_lag`] bytes ahead for [`WalReceiverConf::lag_patience`]
//! (a lagging or stuck safekeeper). Every stream starts at [`WalSink::start_lsn`], announced
//! with [`WalSink::restart`]: bytes handed to the sink always continue what it has.
//!
//! A sink that has stopped taking WAL for good ([`WalSink::stopped`]: a record it can never
//! ingest) ends [`run`] at once with that reason: retrying would only fail the same way, so
//! the caller waits for the stop to be lifted. While no safekeeper can be streamed from (no
//! compute has written the timeline yet, all are down), the receiver retries with backoff and
//! tells the sink why ([`WalSink::problem`]). A timeline no safekeeper has yet (a branch
//! without a compute) is normal: said once at info. Anything else (a safekeeper down, behind)
//! is warned when it starts or changes, and repeated at most once per [`WAIT_WARN_INTERVAL`].
//!
//! - [`probe`]: connecting to one safekeeper and asking where it stands.
//! - [`monitor`]: the other safekeepers' positions, polled while streaming.
//! - [`session`]: one stream from one safekeeper, and why it ended.
//! - [`pipeline`]: the sink fed on two threads of its own, so that reading the socket,
//!   decoding and ingest overlap.

mod monitor;
mod pipeline;
mod probe;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};
use walproto::ids::{TenantId, TimelineId};
use walproto::Lsn;

use crate::ingest::driver::DecodedChunk;
use session::{SessionEnd, SessionError};

/// Where to stream from and how patient to be.
#[derive(Clone, Debug)]
pub struct WalReceiverConf {
    /// `host:port` of each safekeeper's replication server (`--listen-pg`).
    pub safekeepers: Vec<String>,
    /// The timeline, as the safekeepers name it.
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// The password (a `safekeeper` token) for safekeepers that ask for one.
    pub password: Option<String>,
    /// Connecting and authenticating, and each `IDENTIFY_SYSTEM`.
    pub connect_timeout: Duration,
    /// Nothing received from the server for this long: move on. A safekeeper sends a keepalive
    /// every 10 s while idle, so this must be well above that.
    pub stream_timeout: Duration,
    /// How often to send a standby status update.
    pub status_interval: Duration,
    /// How often to ask the other safekeepers where they stand while streaming.
    pub probe_interval: Duration,
    /// Another safekeeper this many bytes ahead of the one streamed from…
    pub max_lag: u64,
    /// …for this long: switch to it.
    pub lag_patience: Duration,
    /// Waits between rounds of failed connections, doubling from `backoff_min`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl WalReceiverConf {
    pub fn new(
        safekeepers: Vec<String>,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> WalReceiverConf {
        WalReceiverConf {
            safekeepers,
            tenant_id,
            timeline_id,
            ..WalReceiverConf::default()
        }
    }
}

impl Default for WalReceiverConf {
    fn default() -> Self {
        WalReceiverConf {
            safekeepers: Vec::new(),
            tenant_id: TenantId::default(),
            timeline_id: TimelineId::default(),
            password: None,
            connect_timeout: Duration::from_secs(5),
            stream_timeout: Duration::from_secs(30),
            status_interval: Duration::from_secs(1),
            probe_interval: Duration::from_secs(2),
            max_lag: 16 << 20,
            lag_patience: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The sink's positions, reported to the safekeeper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Feedback {
    /// The end of the WAL handed to the sink.
    pub received: Lsn,
    /// Up to here the sink's state is durable on local disk.
    pub durable_local: Lsn,
    /// Up to here the sink's state is durable in the object store (`Lsn(0)`: nothing yet).
    pub durable_remote: Lsn,
}

/// A chunk of the stream between [`WalSink::decode`] and [`WalSink::ingest`].
pub enum Staged {
    /// The bytes as received (a sink that does all its work in `receive`).
    Raw { start: Lsn, wal: bytes::Bytes },
    /// The records the chunk completed (and why the stream ends after them, if it does).
    Decoded(DecodedChunk),
}

impl Staged {
    /// Nothing after this chunk can be decoded: the stream must restart.
    pub fn ends_stream(&self) -> bool {
        matches!(self, Staged::Decoded(c) if c.failed.is_some())
    }
}

/// Where the WAL goes.
pub trait WalSink: Send + Sync {
    /// Where streaming must (re)start: the end of the last record made durable or ingested.
    fn start_lsn(&self) -> Lsn;
    /// A new stream begins at `at` (the value `start_lsn` just returned): bytes received
    /// beyond it so far (a record in progress) are to be forgotten, and the next `receive`
    /// starts at `at`. Called before the first `receive` of every stream, the first included.
    /// An error ends [`run`] with it.
    fn restart(&self, at: Lsn) -> anyhow::Result<()>;
    /// WAL bytes beginning at `start`, contiguous with the previous call since the last
    /// `restart`. An error ends [`run`] with it: WAL cannot be skipped.
    fn receive(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<()>;
    /// `receive`'s first half, which may run ahead of the second on a thread of its own (the
    /// walreceiver's pipeline): called in stream order, it prepares the bytes for
    /// [`WalSink::ingest`]. By default it only keeps them.
    fn decode(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<Staged> {
        Ok(Staged::Raw {
            start,
            wal: bytes::Bytes::copy_from_slice(wal),
        })
    }
    /// `receive`'s second half: what [`WalSink::decode`] returned, in the same order.
    fn ingest(&self, staged: &Staged) -> anyhow::Result<()> {
        match staged {
            Staged::Raw { start, wal } => self.receive(*start, wal),
            Staged::Decoded(chunk) => anyhow::bail!(
                "this sink cannot ingest {} decoded records it did not decode",
                chunk.records.len()
            ),
        }
    }
    fn feedback(&self) -> Feedback;
    /// `Some(why)` when the sink takes no more WAL whatever is sent (a record it cannot
    /// ingest): [`run`] then ends with that error instead of streaming again.
    fn stopped(&self) -> Option<String> {
        None
    }
    /// Why no WAL can be streamed now (`None` once a stream starts), for status pages.
    fn problem(&self, _problem: Option<String>) {}
}

/// The same "no safekeeper to stream from" failure is warned about again at most this often
/// while it lasts (every retry would otherwise warn, for as long as it lasts).
pub const WAIT_WARN_INTERVAL: Duration = Duration::from_secs(300);

/// How a wait for a safekeeper to stream from is logged.
#[derive(Debug, PartialEq, Eq)]
enum WaitLog {
    /// No safekeeper has the timeline yet (no compute wrote it): normal, said once.
    Info,
    /// A failure that started or changed, or the same one after [`WAIT_WARN_INTERVAL`]; with
    /// the number of retries not logged since the last warning.
    Warn(u64),
    /// A repeat.
    Debug,
}

/// What the waits so far logged.
#[derive(Debug, Default)]
struct WaitLogger {
    /// The last wait's reason, and whether it was only "no WAL yet".
    last: Option<(bool, String)>,
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl WaitLogger {
    fn on_wait(&mut self, no_wal_yet: bool, why: &str, now: Instant) -> WaitLog {
        let previous = self.last.replace((no_wal_yet, why.to_string()));
        if no_wal_yet {
            self.last_warn = None;
            self.suppressed = 0;
            return match previous {
                Some((true, _)) => WaitLog::Debug,
                _ => WaitLog::Info,
            };
        }
        let same = previous.is_some_and(|(idle, w)| !idle && w == why);
        let recent = self
            .last_warn
            .is_some_and(|t| now.saturating_duration_since(t) < WAIT_WARN_INTERVAL);
        if same && recent {
            self.suppressed += 1;
            return WaitLog::Debug;
        }
        self.last_warn = Some(now);
        WaitLog::Warn(std::mem::take(&mut self.suppressed))
    }

    /// Streaming again: the next wait is logged afresh.
    fn reset(&mut self) {
        *self = WaitLogger::default();
    }
}

/// What the receiver is doing, for status pages and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// The safekeeper streamed from now.
    pub streaming_from: Option<String>,
    /// Streams started, the first included.
    pub streams: u64,
    /// Why the last stream ended.
    pub last_switch_reason: Option<String>,
    /// The end of the WAL received and queued for the sink since the last restart.
    pub received: Lsn,
    /// Why no safekeeper could be streamed from at the last attempt (cleared by a stream).
    pub last_error: Option<String>,
}

/// Streams the timeline's WAL into `sink` until `shutdown` turns true (then `Ok`), or until
/// something that moving to another safekeeper cannot fix: the sink refuses WAL, or a
/// safekeeper serves another system or Postgres timeline than the stream so far.
pub async fn run(
    conf: WalReceiverConf,
    sink: Arc<dyn WalSink>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    WalReceiver::new(conf).run(sink, shutdown).await
}

/// [`run`], with a view of what it is doing.
pub struct WalReceiver {
    conf: WalReceiverConf,
    status: watch::Sender<ReceiverStatus>,
}

impl WalReceiver {
    pub fn new(conf: WalReceiverConf) -> WalReceiver {
        WalReceiver {
            conf,
            status: watch::Sender::new(ReceiverStatus::default()),
        }
    }

    pub fn status(&self) -> watch::Receiver<ReceiverStatus> {
        self.status.subscribe()
    }

    pub async fn run(
        self,
        sink: Arc<dyn WalSink>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let span = info_span!("walreceiver", tenant = %self.conf.tenant_id, timeline = %self.conf.timeline_id);
        self.run_inner(sink, shutdown).instrument(span).await
    }

    async fn run_inner(
        self,
        sink: Arc<dyn WalSink>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let conf = Arc::new(self.conf);
        anyhow::ensure!(
            !conf.safekeepers.is_empty(),
            "walreceiver for {}/{}: no safekeepers to stream from",
            conf.tenant_id,
            conf.timeline_id
        );
        let mut pinned: Option<probe::Identity> = None;
        let mut backoff = conf.backoff_min;
        // The safekeeper just left because of a failure: not chosen again on a tie.
        let mut avoid: Option<usize> = None;
        let mut waits = WaitLogger::default();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if let Some(why) = sink.stopped() {
                sink.problem(None);
                anyhow::bail!("{why}");
            }
            let start = sink.start_lsn();
            let probes = tokio::select! {
                p = probe::probe_all(&conf) => p,
                Ok(_) = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let found: Vec<Result<probe::Identity, String>> = probes
                .iter()
                .map(|p| p.as_ref().map(|p| p.identity.clone()).map_err(Clone::clone))
                .collect();
            let idx = match choose(&conf.safekeepers, &found, start, avoid, &mut pinned) {
                Ok(i) => i,
                Err(Choice::Fatal(e)) => return Err(e),
                Err(Choice::Wait { why, no_wal_yet }) => {
                    match waits.on_wait(no_wal_yet, &why, Instant::now()) {
                        WaitLog::Info => info!(
                            "no safekeeper has WAL of this timeline yet (no compute has written \
                             it); waiting for it: {why}"
                        ),
                        WaitLog::Warn(0) => {
                            warn!("no safekeeper to stream from, retrying in {backoff:?}: {why}")
                        }
                        WaitLog::Warn(n) => warn!(
                            "still no safekeeper to stream from ({n} retries since the last \
                             warning), retrying in {backoff:?}: {why}"
                        ),
                        WaitLog::Debug => {
                            debug!("no safekeeper to stream from, retrying in {backoff:?}: {why}")
                        }
                    }
                    let problem = format!("no safekeeper to stream from: {why}");
                    sink.problem(Some(problem.clone()));
                    self.status.send_modify(|s| s.last_error = Some(problem));
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(conf.backoff_max);
                    continue;
                }
            };
            let Some(Ok(probe)) = probes.into_iter().nth(idx) else {
                continue; // choose returns the index of a successful probe
            };
            let addr = conf.safekeepers[idx].clone();
            info!(safekeeper = %addr, commit_lsn = %probe.identity.commit_lsn, %start, "streaming from safekeeper");
            waits.reset();
            sink.problem(None);
            self.status.send_modify(|s| {
                s.streaming_from = Some(addr.clone());
                s.streams += 1;
                s.last_error = None;
                s.received = start;
            });
            sink.restart(start)?;
            let monitor = monitor::Monitor::spawn(conf.clone(), idx);
            let result = session::stream(
                &conf,
                probe,
                start,
                &sink,
                &monitor,
                &self.status,
                &mut shutdown,
            )
            .await;
            drop(monitor);
            self.status.send_modify(|s| s.streaming_from = None);
            let (reason, failure) = match result {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Lagging(why)) => (why, false),
                Err(SessionError::Sink(e)) => return Err(e),
                Err(SessionError::Connection(why)) => (why, true),
            };
            warn!(safekeeper = %addr, "left safekeeper: {reason}");
            self.status
                .send_modify(|s| s.last_switch_reason = Some(format!("{addr}: {reason}")));
            avoid = failure.then_some(idx);
            if failure && sink.start_lsn() <= start {
                // Nothing was gained from that stream: do not spin on a failing server.
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(conf.backoff_max);
            } else {
                backoff = conf.backoff_min;
            }
        }
    }
}

enum Choice {
    /// Nothing to stream from now; try again later. `no_wal_yet`: only because no safekeeper
    /// has the timeline yet.
    Wait { why: String, no_wal_yet: bool },
    /// A safekeeper serves a different system or Postgres timeline.
    Fatal(anyhow::Error),
}

/// The most advanced safekeeper that holds `start` (index into `addrs`), preferring not to
/// go back to `avoid` on a tie. The safekeepers must agree on the system id and Postgres
/// timeline, and keep serving the ones of the first stream (`pinned`, set here): anything
/// else is a misconfiguration or a timeline switch, which the receiver does not follow.
fn choose(
    addrs: &[String],
    found: &[Result<probe::Identity, String>],
    start: Lsn,
    avoid: Option<usize>,
    pinned: &mut Option<probe::Identity>,
) -> Result<usize, Choice> {
    let same = |a: &probe::Identity, b: &probe::Identity| {
        a.system_id == b.system_id && a.pg_timeline == b.pg_timeline
    };
    let reachable: Vec<(usize, &probe::Identity)> = found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.as_ref().ok().map(|id| (i, id)))
        .collect();
    let reference = pinned.as_ref().or(reachable.first().map(|(_, id)| *id));
    if let Some(reference) = reference {
        if reachable.iter().any(|(_, id)| !same(id, reference)) {
            let seen: Vec<String> = reachable
                .iter()
                .map(|(i, id)| {
                    format!(
                        "{} serves system {} timeline {}",
                        addrs[*i], id.system_id, id.pg_timeline
                    )
                })
                .collect();
            let streamed = pinned
                .as_ref()
                .map(|p| {
                    format!(
                        " (this walreceiver streamed system {} timeline {})",
                        p.system_id, p.pg_timeline
                    )
                })
                .unwrap_or_default();
            return Err(Choice::Fatal(anyhow::anyhow!(
                "the safekeepers disagree on the system or Postgres timeline: {}{streamed}; \
                 a switch of system or timeline is not supported",
                seen.join(", ")
            )));
        }
    }
    let mut problems = Vec::new();
    let mut no_wal_yet = true;
    let mut best: Option<(usize, Lsn)> = None;
    for (i, (addr, found)) in addrs.iter().zip(found).enumerate() {
        let id = match found {
            Ok(id) => id,
            Err(e) => {
                no_wal_yet &= e.ends_with(probe::NO_TIMELINE_HINT);
                problems.push(format!("{addr}: {e}"));
                continue;
            }
        };
        no_wal_yet = false;
        if id.commit_lsn < start {
            problems.push(format!(
                "{addr}: its commit LSN {} is behind the start {start}",
                id.commit_lsn
            ));
            continue;
        }
        let better = match best {
            None => true,
            Some((b, lsn)) => {
                id.commit_lsn > lsn
                    || (id.commit_lsn == lsn && Some(b) == avoid && Some(i) != avoid)
            }
        };
        if better {
            best = Some((i, id.commit_lsn));
        }
    }
    match best {
        Some((i, _)) => {
            if let Ok(id) = &found[i] {
                pinned.get_or_insert_with(|| id.clone());
            }
            Ok(i)
        }
        None => Err(Choice::Wait {
            why: problems.join("; "),
            no_wal_yet,
        }),
    }
}

/// Sleeps `d`; `true` if shutdown was requested meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        Ok(_) = shutdown.wait_for(|s| *s) => {}
    }
    *shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::Identity;

    fn at(lsn: u64) -> Result<Identity, String> {
        Ok(Identity {
            system_id: 7,
            pg_timeline: 1,
            commit_lsn: Lsn(lsn),
        })
    }

    fn pick(
        found: &[Result<Identity, String>],
        start: u64,
        avoid: Option<usize>,
    ) -> Result<usize, String> {
        let addrs: Vec<String> = (0..found.len()).map(|i| format!("sk{i}:1")).collect();
        match choose(&addrs, found, Lsn(start), avoid, &mut None) {
            Ok(i) => Ok(i),
            Err(Choice::Wait { why, .. }) => Err(format!("wait: {why}")),
            Err(Choice::Fatal(e)) => Err(format!("fatal: {e}")),
        }
    }

    #[test]
    fn a_failure_warns_when_it_starts_or_changes_and_once_per_interval() {
        let mut w = WaitLogger::default();
        let t0 = Instant::now();
        let down = "sk0:1: connection refused";
        assert_eq!(w.on_wait(false, down, t0), WaitLog::Warn(0));
        for i in 1..100 {
            assert_eq!(
                w.on_wait(false, down, t0 + Duration::from_secs(i)),
                WaitLog::Debug
            );
        }
        assert_eq!(
            w.on_wait(false, down, t0 + WAIT_WARN_INTERVAL),
            WaitLog::Warn(99)
        );
        assert_eq!(
            w.on_wait(false, down, t0 + WAIT_WARN_INTERVAL),
            WaitLog::Debug
        );
        // Another failure is news.
        let behind = "sk0:1: its commit LSN 0/10 is behind the start 0/20";
        assert_eq!(
            w.on_wait(false, behind, t0 + WAIT_WARN_INTERVAL),
            WaitLog::Warn(1)
        );
        w.reset();
        assert_eq!(
            w.on_wait(false, behind, t0 + WAIT_WARN_INTERVAL),
            WaitLog::Warn(0)
        );
    }

    #[test]
    fn a_timeline_no_safekeeper_has_yet_is_said_once_at_info() {
        let mut w = WaitLogger::default();
        let t0 = Instant::now();
        let none = "sk0:1: timeline t does not exist on this safekeeper";
        assert_eq!(w.on_wait(true, none, t0), WaitLog::Info);
        for i in 1..1000 {
            let t = t0 + Duration::from_secs(i);
            assert_eq!(w.on_wait(true, none, t), WaitLog::Debug);
        }
        // A real failure while waiting is warned; back to "no WAL yet" is said once again.
        let later = t0 + Duration::from_secs(2000);
        assert_eq!(w.on_wait(false, "sk0:1: refused", later), WaitLog::Warn(0));
        assert_eq!(w.on_wait(true, none, later), WaitLog::Info);
    }

    #[test]
    fn no_wal_yet_only_when_every_safekeeper_lacks_the_timeline() {
        let addrs: Vec<String> = vec!["a:1".into(), "b:1".into()];
        let missing = || {
            Err(format!(
                "timeline x does not exist{}",
                probe::NO_TIMELINE_HINT
            ))
        };
        let no_wal = |found: &[Result<Identity, String>]| match choose(
            &addrs,
            found,
            Lsn(5),
            None,
            &mut None,
        ) {
            Err(Choice::Wait { no_wal_yet, .. }) => no_wal_yet,
            _ => panic!("expected a wait"),
        };
        assert!(no_wal(&[missing(), missing()]));
        assert!(!no_wal(&[missing(), Err("connection refused".into())]));
        assert!(!no_wal(&[missing(), at(4)]));
    }

    #[test]
    fn chooses_the_most_advanced_safekeeper() {
        assert_eq!(pick(&[at(10), at(30), at(20)], 5, None), Ok(1));
        // A tie: not the one just left after a failure.
        assert_eq!(pick(&[at(30), at(30), at(20)], 5, Some(0)), Ok(1));
        assert_eq!(pick(&[at(30), at(30)], 5, Some(1)), Ok(0));
        // Unreachable or behind the start: skipped, and said why when none is left.
        assert_eq!(pick(&[Err("refused".into()), at(9)], 5, None), Ok(1));
        let w = pick(&[Err("refused".into()), at(4)], 5, None).unwrap_err();
        assert!(
            w.starts_with("wait: ") && w.contains("sk0:1: refused"),
            "{w}"
        );
        assert!(
            w.contains("sk1:1: its commit LSN 0/00000004 is behind the start 0/00000005"),
            "{w}"
        );
    }

    #[test]
    fn another_system_or_timeline_is_fatal() {
        let mut other = at(50);
        other.as_mut().unwrap().pg_timeline = 2;
        let e = pick(&[at(10), other], 5, None).unwrap_err();
        assert!(
            e.starts_with("fatal: ") && e.contains("sk1:1 serves system 7 timeline 2"),
            "{e}"
        );
        // Pinned by the first stream, even when that safekeeper is now unreachable.
        let addrs = vec!["a:1".to_string(), "b:1".to_string()];
        let mut pinned = None;
        assert!(choose(&addrs, &[at(10), at(10)], Lsn(5), None, &mut pinned).is_ok());
        assert_eq!(pinned.as_ref().map(|p| p.system_id), Some(7));
        let mut moved = at(20);
        moved.as_mut().unwrap().system_id = 8;
        match choose(
            &addrs,
            &[Err("down".into()), moved],
            Lsn(5),
            None,
            &mut pinned,
        ) {
            Err(Choice::Fatal(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("b:1 serves system 8") && e.contains("streamed system 7"),
                    "{e}"
                );
            }
            _ => panic!("a moved system must be fatal"),
        }
        // Nothing is pinned until a safekeeper is chosen.
        let mut pinned = None;
        assert!(choose(&addrs, &[at(1), at(2)], Lsn(5), None, &mut pinned).is_err());
        assert!(pinned.is_none());
    }
}
