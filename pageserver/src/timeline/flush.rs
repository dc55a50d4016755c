//! The background thread: frozen in-memory layers are written as L0 delta layer files, and
//! automatic compaction (the L0 → L1 merge and the images after it) runs, on a thread of its
//! own while ingest goes on.
//!
//! The thread only writes files (fsynced, renamed, directory fsynced, then opened); it never
//! touches the timeline's state: a compaction reads a snapshot of the layer map taken when it
//! was submitted ([`super::compaction::ImageSnapshot`]). Its results are installed by the
//! ingest thread the same way ([`super::compaction`]: replace the L0 layers in the layer map
//! and the metadata, then add the images). Results come back in freeze order, and the ingest thread
//! *installs* them ([`super::Timeline`]): the layer joins the layer map, the frozen layer
//! leaves the in-memory set, and the metadata is stored with the ingest position *of that
//! frozen layer* — so `disk_consistent_lsn` only ever names a record whose values are all in
//! listed files, and a crash resumes there. Reads see a frozen layer until its file is
//! installed, so no value is ever invisible. An error in the thread is handed back like a
//! result and fails the timeline's next write; it cannot vanish.
//!
//! Memory is bounded: at most [`MAX_FROZEN`] layers wait or are being written; a freeze beyond
//! that waits for the oldest.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use layer_format::{Compression, DeltaLayerWriter, Key, Lsn};

use super::compaction::{compact_in_background, BackgroundCompaction, ImageSnapshot};
use super::error::{Result, TimelineError};
use super::layer_map::Layer;
use super::open_layer::FrozenLayer;

/// Frozen layers allowed in flight (each up to `freeze_bytes` of memory).
pub const MAX_FROZEN: usize = 2;

/// L0 layers compress every value that shrinks enough, WAL records included: compaction then
/// copies the compressed bytes into L1 as they are
/// ([`layer_format::DeltaLayerWriter::put_stored`]), so each value is compressed once, and the
/// L0 files (written and fsynced on the ingest path, read back by the merge) are a third of
/// the size. On 560 MB of pgbench WAL: L0 607 → 206 MB, layer bytes written with automatic
/// compaction 857 → 359 MB, ingest until durable and compacted ~1.5× faster
/// (`benches/ingest_vs_recovery.rs`).
const L0_COMPRESSION: Compression = Compression::Lz4;

/// A finished L0 layer file.
pub struct FlushedLayer {
    pub layer: Arc<Layer>,
    pub file_size: u64,
}

enum Job {
    Flush(Arc<FrozenLayer>),
    /// Groups of L0 layers, each to become one L1 run of files of about this size, then
    /// the images reads of the result need ([`compact_in_background`]).
    Compact(Vec<Vec<Arc<Layer>>>, u64, ImageSnapshot),
}

/// A finished job.
pub enum Done {
    /// `None` for a frozen layer without values.
    Flushed(Result<Option<FlushedLayer>>),
    Compacted(Result<BackgroundCompaction>),
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Results in submission order.
    done: VecDeque<Done>,
    shutdown: bool,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    cv: Condvar,
    /// Results waiting in `done` (read without the lock on every record).
    ready: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the thread while holding the lock leaves the state consistent (it only
        // pushes and pops whole entries).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One background thread and its queue (started at its first job).
struct Worker {
    name: &'static str,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Jobs submitted and not yet taken back.
    in_flight: usize,
    /// The result standing for a job whose thread died without one.
    lost: fn(TimelineError) -> Done,
}

impl Worker {
    fn new(dir: &Path, name: &'static str, lost: fn(TimelineError) -> Done) -> Worker {
        Worker {
            name,
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
                ready: AtomicUsize::new(0),
            }),
            thread: None,
            in_flight: 0,
            lost,
        }
    }

    fn has_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) > 0
    }

    fn submit(&mut self, job: Job) -> Result<()> {
        if self.thread.is_none() {
            let shared = self.shared.clone();
            let t = std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || run(&shared))
                .map_err(TimelineError::io(
                    "start a background thread of",
                    &self.shared.dir,
                ))?;
            self.thread = Some(t);
        }
        self.shared.lock().jobs.push_back(job);
        self.shared.cv.notify_all();
        self.in_flight += 1;
        Ok(())
    }

    /// The next result in submission order: waits for it if `wait`, else only if it is
    /// ready. `None` when nothing is in flight (or, without `wait`, nothing is ready).
    fn take(&mut self, wait: bool) -> Option<Done> {
        if self.in_flight == 0 || (!wait && !self.has_ready()) {
            return None;
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.done.pop_front() {
                self.shared.ready.fetch_sub(1, Ordering::AcqRel);
                self.in_flight -= 1;
                return Some(r);
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                self.in_flight = 0;
                return Some((self.lost)(TimelineError::Invalid(format!(
                    "the {} thread ended without a result (it panicked)",
                    self.name
                ))));
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Worker {
    /// Stops the thread after the job it is running (queued jobs are dropped: their results
    /// were not durable yet, and a file finished after its timeline closed would be deleted
    /// at the next open anyway). Joining keeps a later open of the directory from racing
    /// with it.
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The background threads of one timeline: one writes L0 files, in freeze order; the other
/// runs automatic compactions, so that a long compaction never holds up a flush (nor, once
/// [`MAX_FROZEN`] layers wait, ingest).
pub struct Flusher {
    flush: Worker,
    compact: Worker,
}

impl Flusher {
    pub fn new(dir: &Path) -> Flusher {
        Flusher {
            flush: Worker::new(dir, "l0-flush", |e| Done::Flushed(Err(e))),
            compact: Worker::new(dir, "compaction", |e| Done::Compacted(Err(e))),
        }
    }

    /// Frozen layers submitted and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.flush.in_flight
    }

    /// Whether a compaction is submitted and not yet taken back.
    pub fn merging(&self) -> bool {
        self.compact.in_flight > 0
    }

    /// Whether a result can be taken without waiting.
    pub fn has_ready(&self) -> bool {
        self.flush.has_ready() || self.compact.has_ready()
    }

    /// Queues a frozen layer for writing.
    pub fn submit(&mut self, frozen: Arc<FrozenLayer>) -> Result<()> {
        self.flush.submit(Job::Flush(frozen))
    }

    /// Queues an L0 → L1 merge of these groups and the images after it (see
    /// [`compact_in_background`]).
    pub fn submit_compaction(
        &mut self,
        groups: Vec<Vec<Arc<Layer>>>,
        target: u64,
        snapshot: ImageSnapshot,
    ) -> Result<()> {
        self.compact.submit(Job::Compact(groups, target, snapshot))
    }

    /// The next result: a finished compaction, else the next L0 file in freeze order. With
    /// `wait`, waits for the next L0 file if one is in flight, else for the compaction.
    /// `None` when nothing is in flight (or, without `wait`, nothing is ready).
    pub fn take(&mut self, wait: bool) -> Option<Done> {
        if self.compact.has_ready() {
            return self.compact.take(false);
        }
        if self.flush.in_flight > 0 {
            return self.flush.take(wait);
        }
        self.compact.take(wait)
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        // The job (and the snapshot it holds) is dropped before its result is handed back:
        // the ingest thread then owns the key space alone again.
        let res = match job {
            Job::Flush(frozen) => Done::Flushed(write_l0(&shared.dir, &frozen)),
            Job::Compact(groups, target, snapshot) => Done::Compacted(compact_in_background(
                &shared.dir,
                target,
                &groups,
                snapshot,
            )),
        };
        shared.lock().done.push_back(res);
        shared.ready.fetch_add(1, Ordering::AcqRel);
        shared.cv.notify_all();
    }
}

/// Writes a frozen layer as an L0 delta layer covering every key and its LSN range, durably.
pub fn write_l0(dir: &Path, frozen: &FrozenLayer) -> Result<Option<FlushedLayer>> {
    let l = &frozen.layer;
    let Some((lo, hi)) = l.lsn_bounds() else {
        return Ok(None);
    };
    let mut w = DeltaLayerWriter::with_compression(
        dir,
        Key::MIN..Key::MAX,
        lo..Lsn(hi.0 + 1),
        L0_COMPRESSION,
    )?;
    l.for_each_sorted(|key, lsn, encoded| w.put_encoded(key, lsn, encoded))?;
    let written = w.finish()?;
    let layer = Layer::open(dir, &written.desc)?;
    Ok(Some(FlushedLayer {
        layer: Arc::new(layer),
        file_size: written.file_size,
    }))
}

#[cfg(test)]
mod tests {
    use layer_format::Value;

    use super::super::{Timeline, TimelineConf};
    use super::*;

    fn conf() -> TimelineConf {
        let mut c = TimelineConf {
            freeze_bytes: 64 * 1024,
            ..TimelineConf::default()
        };
        c.compaction.auto = false;
        c
    }

    /// Ingest `n` records of one 8 KiB image each, starting after `lsn`.
    fn ingest(tl: &mut Timeline, lsn: &mut u64, n: u64) -> Result<()> {
        for i in 0..n {
            let start = *lsn;
            *lsn += 0x2000;
            let key = Key::from_bytes([1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, i as u8]);
            tl.put(key, Lsn(*lsn), &Value::image(vec![i as u8; 8192]))?;
            tl.finish_record(Lsn(start), Lsn(*lsn))?;
        }
        Ok(())
    }

    /// Background flushes keep values readable while frozen, make everything durable at
    /// `flush`, and the durable position survives a reopen.
    #[test]
    fn background_flush_is_readable_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut lsn = 0x100_0000;
        let mut tl = Timeline::create(dir.path(), conf(), Lsn(lsn)).unwrap();
        ingest(&mut tl, &mut lsn, 100).unwrap();
        // 100 × 8 KiB with a 64 KiB freeze size: many frozen layers, most flushed by now or
        // in flight; every value is readable wherever it is.
        let key = Key::from_bytes([1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 42]);
        let v = tl.get_image_value(key, Lsn(lsn)).unwrap().unwrap();
        assert_eq!(v[0], 42);
        tl.flush().unwrap();
        assert_eq!(tl.disk_consistent_lsn(), Lsn(lsn));
        assert!(tl.write_stats().l0_flushes >= 10);
        drop(tl);
        let tl = Timeline::open(dir.path(), conf(), None).unwrap();
        assert_eq!(tl.disk_consistent_lsn(), Lsn(lsn));
        let v = tl.get_image_value(key, Lsn(lsn)).unwrap().unwrap();
        assert_eq!(v[0], 42);
    }

    /// An error on the flush thread (here: the directory is gone) comes back from the
    /// timeline's next write, names the problem, and leaves the timeline refusing writes.
    #[test]
    fn background_error_surfaces() {
        let dir = tempfile::tempdir().unwrap();
        let tl_dir = dir.path().join("tl");
        let mut lsn = 0x100_0000;
        let mut tl = Timeline::create(&tl_dir, conf(), Lsn(lsn)).unwrap();
        ingest(&mut tl, &mut lsn, 4).unwrap();
        std::fs::remove_dir_all(&tl_dir).unwrap();
        let err = ingest(&mut tl, &mut lsn, 100)
            .and_then(|_| tl.flush())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tl"), "{err}");
        let again = tl.flush().unwrap_err().to_string();
        assert!(again.contains("refuses writes"), "{again}");
    }
}
