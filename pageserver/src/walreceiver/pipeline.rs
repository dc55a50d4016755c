//! The sink's side of a stream, on a thread of its own: the session hands each XLogData over
//! and goes back to the socket, while the chunks before it are decoded and ingested. Chunks
//! that queued up meanwhile go to the sink together, as one `receive` (one decode call, one
//! ingest batch: the per-batch costs are paid once per [`MAX_BATCH`] bytes, not per message).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use walproto::Lsn;

use super::WalSink;

/// Chunks queued for the sink at most (the safekeeper sends up to 128 KiB per message: a few
/// MiB ahead of ingest).
const DEPTH: usize = 32;
/// Queued chunks are joined into one `receive` up to this many bytes.
const MAX_BATCH: usize = 1 << 20;

/// The thread feeding the sink, and the queue to it.
pub(super) struct Pipeline {
    tx: mpsc::Sender<(Lsn, Bytes)>,
    worker: JoinHandle<anyhow::Result<()>>,
}

impl Pipeline {
    pub(super) fn start(sink: Arc<dyn WalSink>) -> Pipeline {
        let (tx, rx) = mpsc::channel(DEPTH);
        let worker = tokio::task::spawn_blocking(move || feed(sink.as_ref(), rx));
        Pipeline { tx, worker }
    }

    /// Queues `data`, which starts at `at`, waiting for room. `Err`: the sink refused earlier
    /// WAL (the thread stopped; [`Pipeline::finish`] says why).
    pub(super) async fn send(&self, at: Lsn, data: Bytes) -> Result<(), ()> {
        self.tx.send((at, data)).await.map_err(|_| ())
    }

    /// Whether the thread stopped (the sink refused WAL).
    pub(super) fn stopped(&self) -> bool {
        self.worker.is_finished()
    }

    /// Waits until every queued chunk is in the sink (or the sink refused one: the error).
    pub(super) async fn finish(self) -> anyhow::Result<()> {
        drop(self.tx);
        self.worker
            .await
            .map_err(|e| anyhow::anyhow!("the walreceiver's ingest thread failed: {e}"))?
    }
}

/// Hands every chunk of `rx` to `sink`, joining those already queued, until the session
/// drops its sender or the sink refuses one.
fn feed(sink: &dyn WalSink, mut rx: mpsc::Receiver<(Lsn, Bytes)>) -> anyhow::Result<()> {
    let mut joined = BytesMut::new();
    while let Some((at, first)) = rx.blocking_recv() {
        let mut end = Lsn(at.0 + first.len() as u64);
        if first.len() >= MAX_BATCH || rx.is_empty() {
            sink.receive(at, &first)?;
            continue;
        }
        joined.clear();
        joined.extend_from_slice(&first);
        while joined.len() < MAX_BATCH {
            let Ok((next_at, next)) = rx.try_recv() else {
                break;
            };
            anyhow::ensure!(
                next_at == end,
                "the walreceiver queued WAL at {next_at} after WAL ending at {end}"
            );
            joined.extend_from_slice(&next);
            end = Lsn(end.0 + next.len() as u64);
        }
        sink.receive(at, &joined)?;
    }
    Ok(())
}
