//! A relation fork's pages for the basebackup, reconstructed by several threads at once and
//! handed over in block order.
//!
//! Each page is an independent GetPage@LSN (a layer-map search and a redo of its records), so
//! a fork's block range is cut into batches that worker threads take in turn; the caller's
//! thread writes finished batches in order. At most [`WINDOW`] batches are ahead of the
//! writer, which bounds the memory to `WINDOW × BATCH` pages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use layer_format::{Key, Lsn};
use walproto::consts::BLCKSZ;
use walproto::record::RelFileNode;

use super::{checksum, BasebackupError};
use crate::redo::{page, Page};
use crate::timeline::{Timeline, TimelineError};

/// Blocks per batch (1 MiB of pages).
const BATCH: u32 = 128;
/// Batches reconstructed ahead of the writer, at most.
const WINDOW: usize = 16;

/// How the pages are read.
#[derive(Clone, Copy)]
pub(super) struct PageReader<'a> {
    pub tl: &'a Timeline,
    pub lsn: Lsn,
    pub checksums: bool,
    /// Worker threads for a range of more than one batch (1: the caller's thread only).
    pub threads: usize,
}

/// The default number of reconstruction threads: `STRATA_BASEBACKUP_THREADS` if set (1 to
/// 64), else the machine's cores, at most 4.
pub fn default_threads() -> usize {
    if let Some(n) = std::env::var("STRATA_BASEBACKUP_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.clamp(1, 64);
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

impl PageReader<'_> {
    /// Blocks `first..first + count` of `(rel, fork)` as they are at the LSN (zeros for a
    /// block without history), each batch of them given to `emit` in block order.
    pub fn read_range(
        &self,
        rel: RelFileNode,
        fork: u8,
        first: u32,
        count: u32,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), BasebackupError>,
    ) -> Result<(), BasebackupError> {
        if self.threads <= 1 || count <= BATCH {
            let mut buf = Vec::new();
            for b in (first..first + count).step_by(BATCH as usize) {
                buf.clear();
                self.batch(rel, fork, b, (first + count - b).min(BATCH), &mut buf)?;
                emit(&buf)?;
            }
            return Ok(());
        }
        let batches = count.div_ceil(BATCH) as usize;
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        // How many batches the writer has emitted, for the window.
        let written = Mutex::new(0usize);
        let moved = Condvar::new();
        let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>, BasebackupError>)>();
        std::thread::scope(|s| {
            for _ in 0..self.threads.min(batches) {
                let tx = tx.clone();
                let (next, stop, written, moved) = (&next, &stop, &written, &moved);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches {
                        return;
                    }
                    {
                        let mut w = written.lock().unwrap_or_else(|e| e.into_inner());
                        while i >= *w + WINDOW && !stop.load(Ordering::Relaxed) {
                            w = moved.wait(w).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let b = first + i as u32 * BATCH;
                    let mut buf = Vec::with_capacity(BATCH as usize * BLCKSZ);
                    let r = self
                        .batch(rel, fork, b, (first + count - b).min(BATCH), &mut buf)
                        .map(|()| buf);
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            let res = (|| {
                let mut pending = BTreeMap::new();
                let mut done = 0usize;
                while done < batches {
                    let (i, r) = rx.recv().map_err(|_| BasebackupError::Missing {
                        lsn: self.lsn,
                        reason: "a page reconstruction thread ended early".into(),
                    })?;
                    pending.insert(i, r);
                    while let Some(r) = pending.remove(&done) {
                        emit(&r?)?;
                        done += 1;
                        *written.lock().unwrap_or_else(|e| e.into_inner()) = done;
                        moved.notify_all();
                    }
                }
                Ok(())
            })();
            if res.is_err() {
                stop.store(true, Ordering::Relaxed);
                // Taking the lock orders the store before any waiter's next check.
                drop(written.lock().unwrap_or_else(|e| e.into_inner()));
                moved.notify_all();
            }
            res
        })
    }

    /// Appends blocks `first..first + n` to `out`.
    fn batch(
        &self,
        rel: RelFileNode,
        fork: u8,
        first: u32,
        n: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), BasebackupError> {
        for blk in first..first + n {
            out.extend_from_slice(&page_at(self.tl, self.lsn, self.checksums, rel, fork, blk)?[..]);
        }
        Ok(())
    }
}

/// Block `blk` of `(rel, fork)` as a data directory at `lsn` holds it: the page with its
/// checksum set when the cluster has `checksums` (a new, all-zero page has none), or zeros for
/// a block without history.
pub fn page_at(
    tl: &Timeline,
    lsn: Lsn,
    checksums: bool,
    rel: RelFileNode,
    fork: u8,
    blk: u32,
) -> Result<Box<Page>, TimelineError> {
    match tl.get_page(Key::rel_block(rel, fork, blk), lsn)? {
        Some(mut p) => {
            if checksums && !page::is_new(&p) {
                checksum::set_page_checksum(&mut p, blk);
            }
            Ok(p)
        }
        None => Ok(Box::new([0u8; BLCKSZ])),
    }
}
