//! Group commit: one writer thread owns a timeline's [`WalStorage`]; appends are queued to it,
//! and one `fdatasync` covers every append that arrived while the previous one ran.
//!
//! The thread takes everything queued, writes it, fsyncs once, then publishes the durable LSN
//! on a `watch` channel. Appends that arrive during the fsync wait in the queue and form the
//! next batch, so under load the number of fsyncs is the number of batches, not of appends,
//! and a single proposer stream pipelining appends gets the disk's sequential write rate.
//!
//! An I/O error poisons the writer: the error is published and every later command fails, since
//! what is on disk is then unknown until a restart re-reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use walproto::Lsn;

use crate::wal_storage::{WalError, WalStorage};

type Reply = std_mpsc::Sender<Result<Lsn, WalError>>;

enum Command {
    Write {
        lsn: Lsn,
        data: Bytes,
    },
    /// Replies once everything queued before it is durable.
    Flush(Reply),
    Truncate {
        lsn: Lsn,
        reply: Reply,
    },
    Reset {
        start: Lsn,
        reply: Reply,
    },
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

/// The handle to a timeline's writer thread. Dropping it stops the thread after it drains the
/// queue (and waits for it, so the files are closed when the drop returns).
pub struct WalWriterHandle {
    tx: Option<mpsc::UnboundedSender<Command>>,
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
        let thread_stats = stats.clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(format!("wal-{name}"))
            .spawn(move || {
                let _enter = span.enter();
                run(storage, rx, durable_tx, thread_stats)
            })?;
        Ok(WalWriterHandle {
            tx: Some(tx),
            durable,
            stats,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) -> Result<(), WalError> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| WalError::Poisoned("WAL writer thread has stopped".into()))
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<Lsn, WalError> {
        let (reply, rx) = std_mpsc::channel();
        self.send(make(reply))?;
        rx.recv()
            .map_err(|_| WalError::Poisoned("WAL writer thread stopped before replying".into()))?
    }

    /// Queues a write; durability is announced on [`WalWriterHandle::durable`].
    pub fn write(&self, lsn: Lsn, data: Bytes) -> Result<(), WalError> {
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Write { lsn, data })
    }

    /// Blocks until everything queued so far is durable; returns the durable LSN.
    pub fn flush_blocking(&self) -> Result<Lsn, WalError> {
        self.call(Command::Flush)
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

fn run(
    mut storage: WalStorage,
    mut rx: mpsc::UnboundedReceiver<Command>,
    durable_tx: watch::Sender<Durable>,
    stats: Arc<WalStats>,
) {
    let mut poisoned: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut waiters = Vec::new();
        let fsyncs_before = storage.fsyncs();
        for cmd in batch {
            if let Some(p) = &poisoned {
                match cmd {
                    Command::Write { .. } => {}
                    Command::Flush(r)
                    | Command::Truncate { reply: r, .. }
                    | Command::Reset { reply: r, .. } => {
                        let _ = r.send(Err(WalError::Poisoned(p.clone())));
                    }
                }
                continue;
            }
            let result = match cmd {
                Command::Write { lsn, data } => storage.write(lsn, &data).map(|_| None),
                Command::Flush(reply) => {
                    waiters.push(reply);
                    Ok(None)
                }
                Command::Truncate { lsn, reply } => {
                    let r = storage.truncate(lsn).map(|_| storage.flush_lsn());
                    Ok(Some((reply, r)))
                }
                Command::Reset { start, reply } => {
                    let r = storage.reset(start).map(|_| storage.flush_lsn());
                    Ok(Some((reply, r)))
                }
            };
            match result {
                Ok(None) => {}
                Ok(Some((reply, r))) => {
                    if let Err(e) = &r {
                        poisoned = Some(e.to_string());
                    }
                    publish(&durable_tx, storage.flush_lsn(), &poisoned);
                    let _ = reply.send(r);
                }
                Err(e) => poisoned = Some(e.to_string()),
            }
        }
        if poisoned.is_none() {
            if let Err(e) = storage.flush() {
                poisoned = Some(e.to_string());
            }
        }
        stats
            .fsyncs
            .fetch_add(storage.fsyncs() - fsyncs_before, Ordering::Relaxed);
        publish(&durable_tx, storage.flush_lsn(), &poisoned);
        for w in waiters {
            let _ = w.send(match &poisoned {
                None => Ok(storage.flush_lsn()),
                Some(p) => Err(WalError::Poisoned(p.clone())),
            });
        }
    }
    let _ = storage.flush();
}

fn publish(tx: &watch::Sender<Durable>, lsn: Lsn, poisoned: &Option<String>) {
    let new = Durable {
        lsn,
        error: poisoned.clone(),
    };
    tx.send_if_modified(|d| {
        let changed = *d != new;
        *d = new;
        changed
    });
}
