//! The one ingest driver: how WAL reaches [`WalIngest::ingest_record`], for every caller (the
//! walreceiver through `tenant::handle`, import, `verify-redo`, the benchmarks).
//!
//! - [`StreamDecoder`]: a WAL byte stream, in chunks that must be contiguous, decoded into
//!   records from the timeline's ingest position on (what the walreceiver receives).
//! - [`WalIngest::ingest_batch`]: records in WAL order, each ingested after the open layer's
//!   index slots of the pages a few records ahead were prefetched (on WAL that touches pages
//!   at random, the probe's cache misses were most of a put's own time).
//! - [`ingest_batch_yielding`]: the same into a [`WalIngest`] that readers share (the
//!   service's timelines), handing the lock to waiting readers between records.
//! - [`WalIngest::ingest_pipelined`]: a record source decoded on a thread of its own, in
//!   batches, while this thread ingests them (WAL files: import, `verify-redo`, benchmarks).

use layer_format::{Key, Lsn};
use parking_lot::{RwLock, RwLockWriteGuard};
use walproto::decoder::{Decoded, WalStreamDecoder};
use walproto::record::DecodedRecord;
use walproto::rmgr;

use super::{failpoint, nonpage, IngestError, WalIngest};
use crate::timeline::Timeline;

/// Records handed from the decoding thread to the ingesting thread at a time (amortizes the
/// channel's synchronization over many small records).
const PIPELINE_BATCH: usize = 256;
/// How many records ahead of the one being ingested the index slots of its pages are
/// prefetched ([`WalIngest::prefetch_puts`]): far enough for the loads to land, near enough
/// for them to stay in the cache.
const PREFETCH_AHEAD: usize = 4;
/// Batches in flight between the threads (bounds the memory ahead of ingest).
const PIPELINE_DEPTH: usize = 16;

/// Why a WAL stream cannot go on (the sender must restart at the ingest position).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("WAL chunk starts at {start}, but the stream is at {at}; chunks must be contiguous")]
    NotContiguous { start: Lsn, at: Lsn },
    #[error("the WAL stream has no record at {lsn} ({reason})")]
    EndOfWal { lsn: Lsn, reason: String },
    #[error("{0}")]
    Decode(String),
}

/// A WAL byte stream decoded from a timeline's ingest position on.
pub struct StreamDecoder {
    dec: WalStreamDecoder,
}

/// The records one chunk completed, and why the stream ended after them, if it did.
pub struct DecodedChunk {
    pub records: Vec<DecodedRecord>,
    pub failed: Option<StreamError>,
}

impl StreamDecoder {
    /// A stream starting at `tl`'s ingest position (the end of its last record), which checks
    /// that its first record follows that record.
    pub fn at_ingest_position(tl: &Timeline) -> StreamDecoder {
        let d = WalStreamDecoder::new(tl.last_record_end());
        let dec = match tl.last_record_lsn() {
            Lsn::INVALID => d,
            prev => d.expect_prev(prev),
        };
        StreamDecoder { dec }
    }

    /// Where the next chunk must start.
    pub fn input_lsn(&self) -> Lsn {
        self.dec.input_lsn()
    }

    /// Takes the chunk `wal`, which must start at [`StreamDecoder::input_lsn`], and decodes
    /// every record it completes. A chunk that does not start there is refused whole.
    pub fn decode_chunk(&mut self, start: Lsn, wal: &[u8]) -> Result<DecodedChunk, StreamError> {
        if start != self.dec.input_lsn() {
            return Err(StreamError::NotContiguous {
                start,
                at: self.dec.input_lsn(),
            });
        }
        self.dec.feed(wal);
        let mut records = Vec::new();
        let failed = loop {
            match self.dec.next() {
                Ok(Decoded::Record(r)) => records.push(r),
                Ok(Decoded::NeedMore) => break None,
                Ok(Decoded::EndOfWal { lsn, reason }) => {
                    break Some(StreamError::EndOfWal {
                        lsn,
                        reason: reason.to_string(),
                    })
                }
                Err(e) => break Some(StreamError::Decode(e.to_string())),
            }
        };
        Ok(DecodedChunk { records, failed })
    }
}

/// A record of a batch that ingest refused.
#[derive(Debug)]
pub struct BatchError {
    /// Records of the batch ingested before it (its index in the batch).
    pub ingested: usize,
    pub error: IngestError,
}

/// [`WalIngest::ingest_batch`] into the ingest that `lock` shares with readers: the batch
/// write-locks it, but after every record hands it to the readers waiting, if any (a fair
/// hand-over: they run before the batch takes the lock back; with none waiting it costs one
/// load). A read waits for at most one record, never for a batch, and sees the timeline at a
/// record boundary. The test failpoint [`failpoint::pause_after`] holds the batch there.
pub fn ingest_batch_yielding(
    lock: &RwLock<WalIngest>,
    records: &[DecodedRecord],
) -> Result<usize, BatchError> {
    let mut ingest = lock.write();
    for (i, rec) in records.iter().enumerate() {
        ingest.ingest_nth(records, i)?;
        match failpoint::pause_after(rec) {
            Some(pause) => RwLockWriteGuard::unlocked_fair(&mut ingest, || pause.wait()),
            None => RwLockWriteGuard::bump(&mut ingest),
        }
    }
    Ok(records.len())
}

/// Why [`WalIngest::ingest_pipelined`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Ingest(IngestError),
    #[error("reading the WAL: {0}")]
    Read(#[source] E),
}

impl WalIngest {
    /// Starts loading the open layer's index slots for `rec`'s pages.
    #[inline]
    fn prefetch_puts(&self, rec: &DecodedRecord) {
        let tl = self.timeline();
        for blk in &rec.blocks {
            tl.prefetch_put(&Key::rel_block(blk.rel, blk.fork, blk.blkno));
        }
        // A commit adds the next commit-time entry, a new key (or the one after, if a commit
        // comes first).
        if rec.rmid() == rmgr::RM_XACT_ID {
            let next = self.nonpage_state().commits;
            for key in [next, next + 1]
                .into_iter()
                .filter_map(nonpage::keys::commit_entry)
            {
                tl.prefetch_put(&key);
            }
        }
    }

    /// Ingests `records` in order, prefetching ahead; stops at the first refused record.
    /// Returns the number ingested (records already ingested count too).
    pub fn ingest_batch(&mut self, records: &[DecodedRecord]) -> Result<usize, BatchError> {
        self.ingest_batch_with(records, &mut |_, _| {})
    }

    /// [`WalIngest::ingest_batch`], calling `after` with each record once it is ingested.
    fn ingest_batch_with(
        &mut self,
        records: &[DecodedRecord],
        after: &mut dyn FnMut(&mut WalIngest, &DecodedRecord),
    ) -> Result<usize, BatchError> {
        for (i, rec) in records.iter().enumerate() {
            self.ingest_nth(records, i)?;
            after(self, rec);
        }
        Ok(records.len())
    }

    /// Ingests `records[i]`, first prefetching for the record [`PREFETCH_AHEAD`] further.
    #[inline]
    fn ingest_nth(&mut self, records: &[DecodedRecord], i: usize) -> Result<(), BatchError> {
        if let Some(ahead) = records.get(i + PREFETCH_AHEAD) {
            self.prefetch_puts(ahead);
        }
        self.ingest_record(&records[i])
            .map(|_| ())
            .map_err(|error| BatchError { ingested: i, error })
    }

    /// Ingests every record `next` yields, decoding on a thread of its own while this thread
    /// ingests (the two overlap; ingest order is the WAL's). Stops at the first error of
    /// either side.
    ///
    /// Ingested batches go back to the decoding thread, which drops the records there: their
    /// memory was allocated on that thread, and freeing it there is a local free instead of a
    /// cross-thread one, and the batch vector is reused.
    pub fn ingest_pipelined<E: std::error::Error + Send + 'static>(
        &mut self,
        next: impl FnMut() -> Result<Option<DecodedRecord>, E> + Send,
    ) -> Result<(), PipelineError<E>> {
        self.ingest_pipelined_with(next, |_, _| {})
    }

    /// [`WalIngest::ingest_pipelined`], calling `after` on this thread with each record once
    /// it is ingested (counting, `verify-redo`'s checks).
    pub fn ingest_pipelined_with<E: std::error::Error + Send + 'static>(
        &mut self,
        mut next: impl FnMut() -> Result<Option<DecodedRecord>, E> + Send,
        mut after: impl FnMut(&mut WalIngest, &DecodedRecord),
    ) -> Result<(), PipelineError<E>> {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Result<Vec<DecodedRecord>, E>>(PIPELINE_DEPTH);
        let (done_tx, done_rx) = sync_channel::<Vec<DecodedRecord>>(PIPELINE_DEPTH + 2);
        std::thread::scope(|scope| {
            scope.spawn(move || loop {
                let mut spare = None;
                while let Ok(mut used) = done_rx.try_recv() {
                    used.clear();
                    spare = Some(used);
                }
                let mut batch = spare.unwrap_or_else(|| Vec::with_capacity(PIPELINE_BATCH));
                let end = loop {
                    match next() {
                        Ok(Some(rec)) => {
                            batch.push(rec);
                            if batch.len() == PIPELINE_BATCH {
                                break false;
                            }
                        }
                        Ok(None) => break true,
                        Err(e) => {
                            let _ = tx.send(Ok(batch));
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                };
                // A closed channel: the ingesting side stopped on an error.
                if tx.send(Ok(batch)).is_err() || end {
                    return;
                }
            });
            // Dropping `rx` on an error ends the decoding thread at its next send.
            for batch in rx {
                let batch = batch.map_err(PipelineError::Read)?;
                self.ingest_batch_with(&batch, &mut after)
                    .map_err(|e| PipelineError::Ingest(e.error))?;
                // Full (the decoder is not taking them back, e.g. it has ended): drop here.
                let _ = done_tx.try_send(batch);
            }
            Ok(())
        })
    }
}
