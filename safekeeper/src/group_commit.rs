//! Group commit: a timeline's [`WalStorage`] sits behind a mutex shared by a writer thread and
//! the callers; one `fdatasync` covers every append written while the previous one ran.
//!
//! An append is written to the OS by the caller (cheap: the page cache). Then either the
//! writer thread is asked to sync (it takes everything queued, fsyncs once, publishes the
//! durable LSN on a `watch` channel), or, on the latency path of a proposer session, the
//! caller syncs itself right after writing a batch of appends ([`caller_syncs`],
//! [`WalSyncer::sync`]), which saves two thread hand-offs per acknowledgement. Appends written
//! during an fsync wait for the lock and are covered by the next one, so under load the number
//! of fsyncs is the number of batches, not of appends.
//!
//! An I/O error (a full disk, say) stops the writer until the proposer rejoins: the error is
//! published, the failing session ends, and writes and flushes fail, since what was written
//! after the last flush is then unknown. The proposer's next `Elected`
//! ([`WalWriterHandle::recover_blocking`]) cuts the WAL back to the last flushed LSN (all that
//! was ever acknowledged) and the writer goes on from there: a failure is not sticky, and
//! nothing that was not fsynced is ever acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use walproto::Lsn;

use crate::wal_storage::{WalError, WalStorage};

type Reply = std_mpsc::Sender<Result<Lsn, WalError>>;

enum Command {
    /// Make everything written so far durable (no reply: durability is published).
    Sync,
    /// Replies once everything written before it is durable.
    Flush(Reply),
    Truncate {
        lsn: Lsn,
        reply: Reply,
    },
    Reset {
        start: Lsn,
        reply: Reply,
    },
    /// After a failure: cut back to the last flushed LSN and go on; then as `Flush`.
    Recover(Reply),
}

/// What the writer has made durable, or why it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    pub lsn: Lsn,
    pub error: Option<String>,
}

/// Counters for status and tests.
#[derive(Default, Debug)]
pub struct WalStats {
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
}

/// The storage and its last failure, shared by the writer thread and inline syncs.
struct State {
    storage: WalStorage,
    /// Set by a failed write or fsync; cleared by [`State::recover`].
    failed: Option<String>,
    timing: BatchTiming,
}

impl State {
    /// The error to answer while failed.
    fn check(&self) -> Result<(), WalError> {
        match &self.failed {
            None => Ok(()),
            Some(p) => Err(WalError::Failed(p.clone())),
        }
    }

    /// If failed: cuts the WAL back to the last flushed LSN so writing can go on from there.
    /// Stays failed (with the new error) if that fails too; a later call tries again.
    fn recover(&mut self) -> Result<(), WalError> {
        let Some(was) = self.failed.take() else {
            return Ok(());
        };
        match self.storage.recover() {
            Ok(at) => {
                tracing::info!(%at, failure = %was, "WAL writer recovered: the WAL continues from the last flushed LSN");
                Ok(())
            }
            Err(e) => {
                self.failed = Some(format!("{was}; recovering failed too: {e}"));
                self.check()
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    durable_tx: watch::Sender<Durable>,
    stats: Arc<WalStats>,
    /// A `Sync` is queued and not yet taken by the thread.
    sync_queued: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// fsyncs what is written (if anything) and publishes the durable LSN; under the lock.
    fn sync_locked(&self, st: &mut State, commands: usize) {
        if st.failed.is_none() {
            let before = st.storage.fsyncs();
            let t = Instant::now();
            if let Err(e) = st.storage.flush() {
                tracing::error!(%e, "WAL fsync failed; writes stop until the proposer rejoins");
                st.failed = Some(e.to_string());
            }
            let n = st.storage.fsyncs() - before;
            if n > 0 {
                self.stats.fsyncs.fetch_add(n, Ordering::Relaxed);
                st.timing.record(commands, t.elapsed());
            }
        }
        publish(&self.durable_tx, st.storage.flush_lsn(), &st.failed);
        st.timing.maybe_log();
    }
}

thread_local! {
    static CALLER_SYNCS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which writes WAL on this thread) without asking the writer thread to sync: the
/// caller promises to call [`WalSyncer::sync`] next, with no `.await` in between.
pub fn caller_syncs<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CALLER_SYNCS.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CALLER_SYNCS.with(|c| c.replace(true)));
    f()
}

/// A cheap handle that makes written WAL durable from the caller's thread (see
/// [`WalSyncer::sync`]).
#[derive(Clone)]
pub struct WalSyncer(Arc<Shared>);

impl WalSyncer {
    /// fsyncs everything written so far on this thread, publishes the durable LSN and returns
    /// it. This saves the hop to the writer thread and back on the latency path of an append;
    /// concurrent callers and the writer serialize on the storage, and a sync that finds
    /// nothing new written costs nothing.
    pub fn sync(&self) -> Result<Lsn, WalError> {
        let mut st = self.0.lock();
        self.0.sync_locked(&mut st, 1);
        st.check().map(|()| st.storage.flush_lsn())
    }
}

/// The handle to a timeline's writer. Appends are written to the OS by the caller
/// ([`WalWriterHandle::write`]); the writer thread fsyncs them, one `fdatasync` for everything
/// written while the previous one ran, unless a caller made them durable first
/// ([`WalSyncer::sync`]). Dropping the handle stops the thread after it drains the queue (and
/// waits for it, so the files are closed when the drop returns).
pub struct WalWriterHandle {
    tx: Option<mpsc::UnboundedSender<Command>>,
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    stats: Arc<WalStats>,
    thread: Option<JoinHandle<()>>,
}

impl WalWriterHandle {
    /// Starts the writer thread for `storage`.
    pub fn start(storage: WalStorage, name: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable {
            lsn: storage.flush_lsn(),
            error: None,
        });
        let stats = Arc::new(WalStats::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                storage,
                failed: None,
                timing: BatchTiming::new(),
            }),
            durable_tx,
            stats: stats.clone(),
            sync_queued: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(format!("wal-{name}"))
            .spawn(move || {
                let _enter = span.enter();
                run(thread_shared, rx)
            })?;
        Ok(WalWriterHandle {
            tx: Some(tx),
            shared,
            durable,
            stats,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) -> Result<(), WalError> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| WalError::Failed("WAL writer thread has stopped".into()))
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<Lsn, WalError> {
        let (reply, rx) = std_mpsc::channel();
        self.send(make(reply))?;
        rx.recv()
            .map_err(|_| WalError::Failed("WAL writer thread stopped before replying".into()))?
    }

    /// Writes WAL at `lsn` (to the OS, not yet durable) and asks the writer thread to make it
    /// durable; durability is announced on [`WalWriterHandle::durable`]. A write error stops
    /// the writer until [`WalWriterHandle::recover_blocking`].
    pub fn write(&self, lsn: Lsn, data: Bytes) -> Result<(), WalError> {
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.shared.lock();
            st.check()?;
            if let Err(e) = st.storage.write(lsn, &data) {
                tracing::error!(%e, "WAL write failed; writes stop until the proposer rejoins");
                st.failed = Some(e.to_string());
                publish(&self.shared.durable_tx, st.storage.flush_lsn(), &st.failed);
                return Err(e);
            }
        }
        if CALLER_SYNCS.with(|c| c.get()) {
            return Ok(());
        }
        if !self.shared.sync_queued.swap(true, Ordering::AcqRel) {
            self.send(Command::Sync)?;
        }
        Ok(())
    }

    /// A handle for inline syncs that does not borrow this one.
    pub fn syncer(&self) -> WalSyncer {
        WalSyncer(self.shared.clone())
    }

    /// Blocks until everything written so far is durable; returns the durable LSN.
    pub fn flush_blocking(&self) -> Result<Lsn, WalError> {
        self.call(Command::Flush)
    }

    /// Like [`WalWriterHandle::flush_blocking`], but first, if a write or fsync failed, cuts
    /// the WAL back to the last flushed LSN so appends can go on from there (a proposer
    /// rejoining). Returns the durable LSN, which is where appends continue.
    pub fn recover_blocking(&self) -> Result<Lsn, WalError> {
        self.call(Command::Recover)
    }

    /// Blocks until the WAL is durably cut back to `lsn`.
    pub fn truncate_blocking(&self, lsn: Lsn) -> Result<Lsn, WalError> {
        self.call(|reply| Command::Truncate { lsn, reply })
    }

    /// Blocks until all WAL is removed and the WAL restarts empty at `start`.
    pub fn reset_blocking(&self, start: Lsn) -> Result<Lsn, WalError> {
        self.call(|reply| Command::Reset { start, reply })
    }

    /// The durable LSN as it changes.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    pub fn stats(&self) -> &Arc<WalStats> {
        &self.stats
    }
}

impl Drop for WalWriterHandle {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        shared.sync_queued.store(false, Ordering::Release);
        let commands = batch.len();
        let mut waiters = Vec::new();
        let mut st = shared.lock();
        for cmd in batch {
            let (reply, r) = match cmd {
                Command::Sync => continue,
                Command::Flush(reply) => {
                    waiters.push(reply);
                    continue;
                }
                Command::Recover(reply) => {
                    match st.recover() {
                        Ok(()) => waiters.push(reply),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    publish(&shared.durable_tx, st.storage.flush_lsn(), &st.failed);
                    continue;
                }
                // Both rewrite the WAL's end durably, so a failure before them is recovered.
                Command::Truncate { lsn, reply } => (
                    reply,
                    st.recover()
                        .and_then(|()| st.storage.truncate(lsn))
                        .map(|_| st.storage.flush_lsn()),
                ),
                Command::Reset { start, reply } => (
                    reply,
                    st.recover()
                        .and_then(|()| st.storage.reset(start))
                        .map(|_| st.storage.flush_lsn()),
                ),
            };
            if let Err(e) = &r {
                if st.failed.is_none() {
                    st.failed = Some(e.to_string());
                }
            }
            publish(&shared.durable_tx, st.storage.flush_lsn(), &st.failed);
            let _ = reply.send(r);
        }
        shared.sync_locked(&mut st, commands);
        for w in waiters {
            let _ = w.send(st.check().map(|()| st.storage.flush_lsn()));
        }
    }
    // Never flush after a failure: what was written since the last flush is unknown.
    let mut st = shared.lock();
    if st.failed.is_none() {
        let _ = st.storage.flush();
    }
}

/// How often the writer logs its batch sizes and fsync times.
const TIMING_INTERVAL: Duration = Duration::from_secs(10);

/// Batch sizes and fsync durations since the last log line.
struct BatchTiming {
    since: Instant,
    commands: usize,
    fsync_us: Vec<u64>,
}

impl BatchTiming {
    fn new() -> Self {
        BatchTiming {
            since: Instant::now(),
            commands: 0,
            fsync_us: Vec::new(),
        }
    }

    fn record(&mut self, commands: usize, fsync: Duration) {
        self.commands += commands;
        if self.fsync_us.len() < 1_000_000 {
            self.fsync_us.push(fsync.as_micros() as u64);
        }
    }

    fn maybe_log(&mut self) {
        if self.since.elapsed() < TIMING_INTERVAL || self.fsync_us.is_empty() {
            return;
        }
        self.fsync_us.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.fsync_us.len() - 1) as f64 * p) as usize;
            self.fsync_us[i] as f64 / 1000.0
        };
        tracing::info!(
            batches = self.fsync_us.len(),
            requests = self.commands,
            flush_ms_p50 = pct(0.5),
            flush_ms_p99 = pct(0.99),
            flush_ms_max = pct(1.0),
            "wal writer stats"
        );
        *self = BatchTiming::new();
    }
}

fn publish(tx: &watch::Sender<Durable>, lsn: Lsn, failed: &Option<String>) {
    let new = Durable {
        lsn,
        error: failed.clone(),
    };
    tx.send_if_modified(|d| {
        let changed = *d != new;
        *d = new;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WalGen;
    use walproto::consts::WAL_SEGMENT_SIZE;

    const START: Lsn = Lsn(2 * WAL_SEGMENT_SIZE);

    fn handle(dir: &std::path::Path) -> WalWriterHandle {
        let mut s = WalStorage::open(dir, 1, Lsn(0), Lsn(0)).unwrap();
        s.reset(START).unwrap();
        WalWriterHandle::start(s, "test".into()).unwrap()
    }

    #[test]
    fn caller_sync_makes_writes_durable_without_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let (wal, _) = WalGen::new(7, 1, START).records(20, 500);
        let end = Lsn(START.0 + wal.len() as u64);
        caller_syncs(|| h.write(START, Bytes::from(wal.clone()))).unwrap();
        // Nothing asked the thread to sync: not durable until the caller syncs.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.durable().borrow().lsn, START);
        assert_eq!(h.syncer().sync().unwrap(), end);
        assert_eq!(h.durable().borrow().lsn, end);
        assert_eq!(h.stats().fsyncs.load(Ordering::Relaxed), 1);
        // A second sync with nothing new written costs no fsync.
        assert_eq!(h.syncer().sync().unwrap(), end);
        assert_eq!(h.stats().fsyncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn plain_writes_are_synced_by_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let (wal, _) = WalGen::new(7, 1, START).records(20, 500);
        let mut at = START;
        for c in wal.chunks(999) {
            h.write(at, Bytes::copy_from_slice(c)).unwrap();
            at = Lsn(at.0 + c.len() as u64);
        }
        let mut durable = h.durable();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|d| d.lsn == at))
                .await
                .expect("the writer thread syncs queued writes")
                .unwrap();
        });
        assert_eq!(h.flush_blocking().unwrap(), at);
        // A failed write stops the writer: what was written since the last flush is unknown.
        assert!(h.write(Lsn(at.0 + 8), Bytes::from_static(b"x")).is_err());
        assert!(h.durable().borrow().error.is_some());
        assert!(matches!(h.syncer().sync(), Err(WalError::Failed(_))));
        assert!(matches!(h.flush_blocking(), Err(WalError::Failed(_))));
        assert!(h.write(at, Bytes::from_static(b"x")).is_err());
        // Until the proposer rejoins: then it goes on from the last flushed LSN.
        assert_eq!(h.recover_blocking().unwrap(), at);
        assert_eq!(h.durable().borrow().error, None);
        let (more, _) = WalGen::new(7, 1, at).records(3, 500);
        h.write(at, Bytes::from(more.clone())).unwrap();
        let end = Lsn(at.0 + more.len() as u64);
        assert_eq!(h.flush_blocking().unwrap(), end);
    }

    #[test]
    fn a_failure_drops_what_was_written_after_the_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let (wal, _) = WalGen::new(7, 1, START).records(20, 500);
        let flushed = Lsn(START.0 + wal.len() as u64);
        h.write(START, Bytes::from(wal)).unwrap();
        assert_eq!(h.flush_blocking().unwrap(), flushed);
        // Written, never flushed, then a failure: never acknowledged, so it goes.
        let (unflushed, _) = WalGen::new(7, 1, flushed).records(5, 500);
        let unflushed_end = Lsn(flushed.0 + unflushed.len() as u64);
        caller_syncs(|| h.write(flushed, Bytes::from(unflushed))).unwrap();
        assert!(h
            .write(Lsn(unflushed_end.0 + 1), Bytes::from_static(b"x"))
            .is_err());
        assert_eq!(h.recover_blocking().unwrap(), flushed);
        let mut tail = vec![0xffu8; 4096];
        let n = crate::wal_storage::read_wal(dir.path(), 1, flushed, &mut tail).unwrap();
        assert_eq!(n, tail.len());
        assert!(tail.iter().all(|&b| b == 0), "the unflushed tail is zeroed");
    }
}
