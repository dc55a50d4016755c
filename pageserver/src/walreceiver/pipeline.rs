//! The sink's side of a stream, on two threads of its own: the session hands each XLogData
//! over and goes back to the socket, while a decoding thread turns the chunks before it into
//! records ([`WalSink::decode`]) and an ingesting thread stores those before them
//! ([`WalSink::ingest`]); the three overlap. Chunks that queued up meanwhile are decoded
//! together (the per-call costs are paid once per [`MAX_BATCH`] bytes, not per message).
//! The first refusal in stream order ends the pipeline: WAL after it is not ingested.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use walproto::Lsn;

use super::{Staged, WalSink};

/// Chunks queued for decoding at most (the safekeeper sends up to 128 KiB per message: a few
/// MiB ahead of ingest).
const DEPTH: usize = 32;
/// Decoded chunks queued for ingest at most (each up to [`MAX_BATCH`] of WAL).
const DECODED_DEPTH: usize = 4;
/// Queued chunks are joined into one decode call up to this many bytes.
const MAX_BATCH: usize = 1 << 20;

/// The threads feeding the sink, and the queue to them.
pub(super) struct Pipeline {
    tx: mpsc::Sender<(Lsn, Bytes)>,
    /// The ingesting thread: the pipeline's result. It ends at the first refusal, even while
    /// the decoding thread still waits for WAL (so the session sees [`Pipeline::stopped`]).
    worker: JoinHandle<anyhow::Result<()>>,
    /// The decoding thread; it ends once the queue is closed or ingest has stopped.
    decoder: std::thread::JoinHandle<()>,
}

impl Pipeline {
    pub(super) fn start(sink: Arc<dyn WalSink>) -> anyhow::Result<Pipeline> {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (staged_tx, staged_rx) = sync_channel(DECODED_DEPTH);
        let (used_tx, used_rx) = sync_channel(DECODED_DEPTH + 2);
        let decoding = sink.clone();
        let decoder = std::thread::Builder::new()
            .name("wal-decode".into())
            .spawn(move || decode_all(decoding.as_ref(), rx, staged_tx, used_rx))?;
        let worker =
            tokio::task::spawn_blocking(move || ingest_all(sink.as_ref(), staged_rx, used_tx));
        Ok(Pipeline {
            tx,
            worker,
            decoder,
        })
    }

    /// Queues `data`, which starts at `at`, waiting for room. `Err`: the sink refused earlier
    /// WAL (the threads stopped; [`Pipeline::finish`] says why).
    pub(super) async fn send(&self, at: Lsn, data: Bytes) -> Result<(), ()> {
        self.tx.send((at, data)).await.map_err(|_| ())
    }

    /// Whether ingest stopped (the sink refused WAL).
    pub(super) fn stopped(&self) -> bool {
        self.worker.is_finished()
    }

    /// Waits until every queued chunk is in the sink (or the sink refused one: the error).
    pub(super) async fn finish(self) -> anyhow::Result<()> {
        drop(self.tx);
        let res = self
            .worker
            .await
            .map_err(|e| anyhow::anyhow!("the walreceiver's ingest thread failed: {e}"))?;
        // With the queue closed and ingest over, the decoding thread is at its end.
        let decoder = self.decoder;
        tokio::task::spawn_blocking(move || decoder.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the walreceiver's decoding thread panicked"))?;
        res
    }
}

/// The decoding side: hands each decoded chunk, or the error that ends the stream, to the
/// ingesting thread; stops when that thread has stopped. Chunks come back once ingested and
/// are dropped here: their records were allocated on this thread, and a local free is cheaper
/// than one from another thread.
fn decode_all(
    sink: &dyn WalSink,
    mut rx: mpsc::Receiver<(Lsn, Bytes)>,
    staged: SyncSender<anyhow::Result<Staged>>,
    used: Receiver<Staged>,
) {
    let mut joined = BytesMut::new();
    while let Some((at, first)) = rx.blocking_recv() {
        while used.try_recv().is_ok() {}
        let decoded = if first.len() >= MAX_BATCH || rx.is_empty() {
            sink.decode(at, &first)
        } else {
            join_queued(&mut joined, at, &first, &mut rx).and_then(|()| sink.decode(at, &joined))
        };
        let last = decoded.as_ref().map_or(true, Staged::ends_stream);
        // A closed channel: the ingesting thread stopped on an error of its own.
        if staged.send(decoded).is_err() || last {
            return;
        }
    }
}

/// `first` (at `at`) and the chunks queued behind it, up to [`MAX_BATCH`] bytes, into `joined`.
fn join_queued(
    joined: &mut BytesMut,
    at: Lsn,
    first: &[u8],
    rx: &mut mpsc::Receiver<(Lsn, Bytes)>,
) -> anyhow::Result<()> {
    let mut end = Lsn(at.0 + first.len() as u64);
    joined.clear();
    joined.extend_from_slice(first);
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
    Ok(())
}

/// The ingesting side: stores each decoded chunk in order, handing it back to be dropped;
/// the first error ends it.
fn ingest_all(
    sink: &dyn WalSink,
    staged: Receiver<anyhow::Result<Staged>>,
    used: SyncSender<Staged>,
) -> anyhow::Result<()> {
    for s in staged {
        let s = s?;
        sink.ingest(&s)?;
        // Full (the decoding thread is not taking them back, e.g. it has ended): drop here.
        let _ = used.try_send(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::walreceiver::Feedback;

    /// Takes chunks until one starts at `refuse_at` (refused in `ingest`) or holds the byte
    /// 0xFF (refused in `decode`); remembers what it ingested.
    struct Sink {
        refuse_at: Lsn,
        ingested: Mutex<Vec<Lsn>>,
    }

    impl WalSink for Sink {
        fn start_lsn(&self) -> Lsn {
            Lsn(0)
        }
        fn restart(&self, _at: Lsn) -> anyhow::Result<()> {
            Ok(())
        }
        fn receive(&self, start: Lsn, _wal: &[u8]) -> anyhow::Result<()> {
            anyhow::ensure!(start != self.refuse_at, "refused at {start}");
            self.ingested.lock().unwrap().push(start);
            Ok(())
        }
        fn decode(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<Staged> {
            anyhow::ensure!(!wal.contains(&0xFF), "undecodable at {start}");
            Ok(Staged::Raw {
                start,
                wal: Bytes::copy_from_slice(wal),
            })
        }
        fn feedback(&self) -> Feedback {
            Feedback::default()
        }
    }

    fn sink(refuse_at: u64) -> Arc<Sink> {
        Arc::new(Sink {
            refuse_at: Lsn(refuse_at),
            ingested: Mutex::new(Vec::new()),
        })
    }

    /// Polls `done` until it holds, failing the test after 10 s.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not after 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` chunks are in (so the next is not joined to them).
    async fn until_ingested(s: &Sink, n: usize) {
        wait_for("chunks ingested", || s.ingested.lock().unwrap().len() >= n).await
    }

    async fn until_stopped(p: &Pipeline) {
        wait_for("the pipeline stopped", || p.stopped()).await
    }

    /// A refused chunk stops the pipeline while no more WAL comes (the decoding thread is
    /// still waiting for some): the session must see it to restart the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ingest_refusal_stops_the_pipeline_without_more_wal() {
        let s = sink(8);
        let p = Pipeline::start(s.clone()).unwrap();
        p.send(Lsn(0), Bytes::from_static(&[1; 8])).await.unwrap();
        until_ingested(&s, 1).await;
        p.send(Lsn(8), Bytes::from_static(&[2; 8])).await.unwrap();
        until_stopped(&p).await;
        let e = p.finish().await.unwrap_err();
        assert!(e.to_string().contains("refused at 0/00000008"), "{e}");
        assert_eq!(*s.ingested.lock().unwrap(), vec![Lsn(0)]);
    }

    /// A chunk that cannot be decoded ends the pipeline after the chunks before it were
    /// ingested, and nothing after it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decode_refusal_ends_it_after_the_chunks_before() {
        let s = sink(u64::MAX);
        let p = Pipeline::start(s.clone()).unwrap();
        p.send(Lsn(0), Bytes::from_static(&[1; 8])).await.unwrap();
        until_ingested(&s, 1).await;
        p.send(Lsn(8), Bytes::from_static(&[0xFF; 8]))
            .await
            .unwrap();
        until_stopped(&p).await;
        // Sends after the end fail, or are queued and never ingested.
        let _ = p.send(Lsn(16), Bytes::from_static(&[3; 8])).await;
        let e = p.finish().await.unwrap_err();
        assert!(e.to_string().contains("undecodable at 0/00000008"), "{e}");
        assert_eq!(*s.ingested.lock().unwrap(), vec![Lsn(0)]);
    }

    /// Queued chunks are ingested in order, each once, whatever joins them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_chunk_is_ingested_in_order() {
        let s = sink(u64::MAX);
        let p = Pipeline::start(s.clone()).unwrap();
        for i in 0..200u64 {
            p.send(Lsn(i * 8), Bytes::from_static(&[1; 8]))
                .await
                .unwrap();
        }
        p.finish().await.unwrap();
        let got = s.ingested.lock().unwrap().clone();
        // Joined chunks arrive as one, at the first one's start.
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(got[0], Lsn(0));
        assert!(!got.is_empty() && got.len() <= 200);
    }
}
