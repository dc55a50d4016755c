//! Streaming a pageserver basebackup into a compute's data directory while it arrives.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use compute::node::ComputeNode;
use walproto::Lsn;

use crate::mgmt::Pageserver;
use crate::output::Progress;

/// What streaming a basebackup into a data directory took.
pub struct Streamed {
    /// From the request to the first tar byte (the pageserver's planning).
    pub(super) first_byte: Duration,
    /// From the request to the last tar byte.
    pub(super) last_byte: Duration,
    pub(super) bytes: u64,
    /// Time the unpacker spent not waiting for bytes.
    pub(super) unpack_busy: Duration,
    pub(super) unpack: compute::node::unpack::UnpackReport,
}

/// Fetches the basebackup at `lsn` and unpacks it into the compute's data directory while it
/// arrives: the tar is never stored whole (a 1 GB database does not need 1 GB of scratch
/// first, and unpacking overlaps with the pageserver's page reconstruction).
pub(crate) fn stream_basebackup(
    ps: &mut Pageserver,
    node: &ComputeNode,
    tenant_id: &str,
    timeline_id: &str,
    lsn: Lsn,
    read_only: bool,
    without_relation_files: bool,
) -> Result<Streamed> {
    // Chunks in flight between the gRPC stream and the unpacker (256 KiB each).
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let unpacker = s.spawn(move || {
            let mut r = ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
                waited: Duration::ZERO,
            };
            let t = Instant::now();
            let res = node.unpack_basebackup(&mut r);
            // Whatever a complete tar left unread (its zero padding) is drained, so that the
            // sender never blocks on a full channel; after an error, dropping the reader
            // stops the sender.
            if res.is_ok() {
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            res.map(|rep| (t.elapsed().saturating_sub(r.waited), rep))
        });
        let mut w = ChunkWriter { tx: Some(tx) };
        let mut bar = Progress::new("basebackup");
        let mut total = 0;
        let mut first_byte = None;
        let req = walproto::proto::pageserver::BasebackupRequest {
            tenant_id: tenant_id.into(),
            timeline_id: timeline_id.into(),
            lsn: lsn.0,
            read_only,
            prev_lsn: 0,
            without_relation_files,
        };
        let fetched = ps.basebackup(req, &mut w, &mut |n| {
            first_byte.get_or_insert_with(|| t0.elapsed());
            total = n;
            bar.bytes(n)
        });
        let last_byte = t0.elapsed();
        bar.done(total);
        // The end of the stream: the unpacker sees EOF.
        drop(w);
        let unpacked = unpacker
            .join()
            .map_err(|_| anyhow::anyhow!("the basebackup unpacker panicked"))?;
        // The pageserver's error explains an unpacker that saw a broken stream; an unpacker
        // error explains a stream that stopped because nobody read it.
        match (fetched, unpacked) {
            (Ok(()), Ok((unpack_busy, unpack))) => Ok(Streamed {
                first_byte: first_byte.unwrap_or(last_byte),
                last_byte,
                bytes: total,
                unpack_busy,
                unpack,
            }),
            (Err(e), _) if !is_broken_pipe(&e) => Err(e),
            (_, Err(e)) => Err(e.context("unpacking the basebackup")),
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The sending half of the basebackup pipe: each write is one chunk.
struct ChunkWriter {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.is_empty() {
            return Ok(0);
        }
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the unpacker stopped");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(b.to_vec())
            .map_err(|_| gone())?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiving half: EOF once the writer is dropped.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// Time spent waiting for the next chunk.
    waited: Duration,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let t = Instant::now();
            let next = self.rx.recv();
            self.waited += t.elapsed();
            match next {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
