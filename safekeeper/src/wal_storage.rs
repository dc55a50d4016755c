//! WAL segment files of one timeline, laid out as Postgres lays out `pg_wal`.
//!
//! Each 16 MiB segment is a file named like Postgres's (`TTTTTTTTXXXXXXXXYYYYYYYY`); the segment
//! being written carries a `.partial` suffix, so a complete segment is recognisable by its name
//! alone (and can be offloaded or served as it is). New segments are created at full size
//! (zeros), so a write never grows a file and a reader sees zeros, the normal end of WAL, past
//! what was written.
//!
//! Segments are zero-filled ahead of use: once the segment being written is half full, a
//! background thread writes the next one as real zeros under a name that is not a segment
//! name ([`PREALLOC_FILE`]) and fsyncs it; the switch renames it into place. An `fdatasync`
//! into such a segment then only writes data: into a sparse file it would also have to commit
//! the block allocation to the file system's journal, every time (Postgres zero-fills its WAL
//! segments for the same reason). When the next segment is not ready in time (or at the first
//! segment of a timeline), it is created sparse (`set_len`) instead: still correct, only
//! slower to sync. A leftover preallocated file (a crash) is removed on open.
//!
//! This type is synchronous and owned by one writer thread ([`crate::group_commit`]); readers
//! use [`read_wal`], which only opens files by name.
//!
//! Durability rules:
//! - `flush_lsn` only moves after `fdatasync` of every segment written since the last flush, and
//!   of the directory when a file was created or renamed;
//! - on open, the end of WAL is the larger of the control file's flush LSN (which is only ever
//!   set to a durable LSN) and the end of the last complete, CRC-valid record found by decoding
//!   the last segments. Anything after it is a torn tail and is zeroed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{info, warn};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::lsn::{parse_segment_file_name, segment_file_name};
use walproto::{Decoded, Lsn, WalStreamDecoder};

use crate::control_file::fsync_dir;

/// What went wrong with the WAL files; names the file or the LSNs involved.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write at {lsn} is not contiguous: WAL ends at {end}")]
    NotContiguous { lsn: Lsn, end: Lsn },
    #[error(
        "cannot truncate WAL to {lsn}: it must lie between the WAL start {start} and end {end}"
    )]
    TruncateOutOfRange { lsn: Lsn, start: Lsn, end: Lsn },
    /// A write or fsync failed; the writer goes on once the proposer rejoins.
    #[error("WAL writer failed: {0}; waiting for the proposer to rejoin, which cuts the WAL back to the last flushed LSN")]
    Failed(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The segment file name for `segno`, with `.partial` if it is the one being written.
fn file_name(tli: u32, segno: u64, partial: bool) -> String {
    let name = segment_file_name(tli, segno);
    if partial {
        name + ".partial"
    } else {
        name
    }
}

/// The path of segment `segno` if it exists under either name, and whether it is `.partial`.
pub(crate) fn find_segment(dir: &Path, tli: u32, segno: u64) -> Option<(PathBuf, bool)> {
    [false, true].into_iter().find_map(|partial| {
        let p = dir.join(file_name(tli, segno, partial));
        p.exists().then_some((p, partial))
    })
}

/// Segment numbers of `tli` present in `dir`, sorted.
fn list_segments(dir: &Path, tli: u32) -> Result<Vec<u64>, WalError> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some((t, segno)) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            if t == tli {
                segs.push(segno);
            }
        }
    }
    segs.sort_unstable();
    segs.dedup();
    Ok(segs)
}

/// Reads WAL at `lsn` into `buf`, not past the end of its segment; 0 if the segment is absent.
/// The caller bounds the read by a flush LSN: bytes beyond it are not WAL yet.
pub fn read_wal(dir: &Path, tli: u32, lsn: Lsn, buf: &mut [u8]) -> Result<usize, WalError> {
    let want = buf
        .len()
        .min((WAL_SEGMENT_SIZE - lsn.segment_offset()) as usize);
    // The writer may rename `.partial` to the final name between our look-up and open: retry.
    for _ in 0..3 {
        let Some((path, _)) = find_segment(dir, tli, lsn.segment_number()) else {
            return Ok(0);
        };
        match File::open(&path) {
            Ok(f) => {
                f.read_exact_at(&mut buf[..want], lsn.segment_offset())
                    .map_err(io_err(&path))?;
                return Ok(want);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(0)
}

/// Removes segments `segnos` (under either name) and fsyncs the directory. Only for
/// segments the writer is done with: complete and below the flush LSN.
pub fn remove_segments(
    dir: &Path,
    tli: u32,
    segnos: std::ops::Range<u64>,
) -> Result<usize, WalError> {
    let mut removed = 0;
    for segno in segnos {
        for partial in [false, true] {
            let p = dir.join(file_name(tli, segno, partial));
            match fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
    }
    fsync_dir(dir).map_err(io_err(dir))?;
    Ok(removed)
}

/// Reads the whole of segment `segno` (16 MiB) under either name; `None` if it is absent.
pub fn read_segment(dir: &Path, tli: u32, segno: u64) -> Result<Option<Vec<u8>>, WalError> {
    let mut buf = vec![0u8; WAL_SEGMENT_SIZE as usize];
    let n = read_wal(dir, tli, Lsn(segno * WAL_SEGMENT_SIZE), &mut buf)?;
    Ok((n == buf.len()).then_some(buf))
}

/// The segment currently written: its number and open file.
struct Open {
    segno: u64,
    file: File,
}

/// The name of the next segment while it is zero-filled ahead of use; not a segment name, so
/// nothing else (readers, offload, recovery) ever takes it for WAL.
pub const PREALLOC_FILE: &str = "next-segment.prealloc";

/// The next segment being zero-filled by a background thread.
struct Prealloc {
    segno: u64,
    cancel: Arc<AtomicBool>,
    /// `Ok(true)`: written in full and fsynced.
    thread: JoinHandle<io::Result<bool>>,
}

/// Writes a whole segment of zeros to `path` and fsyncs it; `Ok(false)` if cancelled.
fn zero_fill(path: &Path, cancel: &AtomicBool) -> io::Result<bool> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < WAL_SEGMENT_SIZE {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        file.write_all_at(&zeros, off)?;
        off += zeros.len() as u64;
    }
    file.sync_all()?;
    Ok(!cancel.load(Ordering::Relaxed))
}

/// The WAL of one timeline on disk.
pub struct WalStorage {
    dir: PathBuf,
    tli: u32,
    local_start: Lsn,
    write_lsn: Lsn,
    flush_lsn: Lsn,
    current: Option<Open>,
    /// Segments completed since the last flush: fsynced, then renamed to their final name.
    completed: Vec<Open>,
    dir_dirty: bool,
    fsyncs: u64,
    prealloc: Option<Prealloc>,
    /// Segments that were switched to preallocated (zero-filled) files.
    preallocated: u64,
}

impl WalStorage {
    /// Opens the WAL in `dir` and finds its end (see the module docs). `local_start` is where
    /// this timeline's WAL begins (0: none yet), `durable_flush` the control file's flush LSN.
    pub fn open(
        dir: &Path,
        tli: u32,
        local_start: Lsn,
        durable_flush: Lsn,
    ) -> Result<Self, WalError> {
        let mut s = WalStorage {
            dir: dir.to_path_buf(),
            tli,
            local_start,
            write_lsn: durable_flush.max(local_start),
            flush_lsn: durable_flush.max(local_start),
            current: None,
            completed: Vec::new(),
            dir_dirty: false,
            fsyncs: 0,
            prealloc: None,
            preallocated: 0,
        };
        s.remove_prealloc_file()?;
        if local_start == Lsn(0) {
            return Ok(s);
        }
        s.remove_below_start()?;
        let end = s.scan_end(s.flush_lsn)?;
        s.cut_tail(end)?;
        info!(%end, "found end of WAL");
        Ok(s)
    }

    /// Removes segments wholly below the WAL start: the control file already says the WAL
    /// starts later, so a crash between saving it and removing them left them behind.
    fn remove_below_start(&self) -> Result<(), WalError> {
        let first = self.local_start.segment_number();
        let stale: Vec<u64> = list_segments(&self.dir, self.tli)?
            .into_iter()
            .filter(|&s| s < first)
            .collect();
        if let (Some(&lo), Some(&hi)) = (stale.first(), stale.last()) {
            let n = remove_segments(&self.dir, self.tli, lo..hi + 1)?;
            info!(removed = n, start = %self.local_start, "removed segments left below the WAL start");
        }
        Ok(())
    }

    /// Decodes from a record boundary or segment start at or below `base` to the end of the last
    /// complete, valid record; returns the larger of that and `base` (which is durable).
    fn scan_end(&self, base: Lsn) -> Result<Lsn, WalError> {
        let start = if base.segment_number() == self.local_start.segment_number() {
            self.local_start
        } else {
            base.segment_start()
        };
        let mut decoder = WalStreamDecoder::new(start);
        let mut last_end = start;
        let mut pos = start;
        let mut buf = vec![0u8; 1 << 20];
        'segments: loop {
            let n = read_wal(&self.dir, self.tli, pos, &mut buf)?;
            if n == 0 {
                break;
            }
            decoder.feed(&buf[..n]);
            pos = Lsn(pos.0 + n as u64);
            loop {
                match decoder.next() {
                    Ok(Decoded::Record(r)) => last_end = r.end_lsn,
                    Ok(Decoded::NeedMore) => break,
                    Ok(Decoded::EndOfWal { .. }) => break 'segments,
                    Err(e) => {
                        warn!(%e, "torn or invalid WAL tail treated as end of WAL");
                        break 'segments;
                    }
                }
            }
        }
        Ok(last_end.max(base))
    }

    /// Makes `end` the end of WAL: later segments removed, the rest of its segment zeroed, the
    /// segments before it named as complete, its own segment `.partial`; all fsynced.
    fn cut_tail(&mut self, end: Lsn) -> Result<(), WalError> {
        self.current = None;
        self.completed.clear();
        self.cancel_prealloc()?;
        let segno = end.segment_number();
        for s in list_segments(&self.dir, self.tli)? {
            if s > segno {
                for partial in [false, true] {
                    let p = self.dir.join(file_name(self.tli, s, partial));
                    match fs::remove_file(&p) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                        _ => {}
                    }
                }
            } else if s < segno {
                if let Some((p, true)) = find_segment(&self.dir, self.tli, s) {
                    let full = self.dir.join(file_name(self.tli, s, false));
                    fs::rename(&p, &full).map_err(io_err(&p))?;
                }
            }
        }
        if let Some((p, partial)) = find_segment(&self.dir, self.tli, segno) {
            let path = self.dir.join(file_name(self.tli, segno, true));
            if !partial {
                fs::rename(&p, &path).map_err(io_err(&p))?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // Shrinking then growing the file zeroes the tail without writing it.
            file.set_len(end.segment_offset()).map_err(io_err(&path))?;
            file.set_len(WAL_SEGMENT_SIZE).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            self.current = Some(Open { segno, file });
        }
        fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.write_lsn = end;
        self.flush_lsn = end;
        Ok(())
    }

    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }

    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }

    pub fn local_start(&self) -> Lsn {
        self.local_start
    }

    /// `fdatasync` calls on segment files so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pg_timeline(&self) -> u32 {
        self.tli
    }

    /// Segments switched to a zero-filled file prepared in the background.
    pub fn preallocated(&self) -> u64 {
        self.preallocated
    }

    /// Removes a preallocated file left behind (not WAL: never renamed into place).
    fn remove_prealloc_file(&self) -> Result<(), WalError> {
        let p = self.dir.join(PREALLOC_FILE);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Stops a background zero-fill (waits for its thread) and removes its file.
    fn cancel_prealloc(&mut self) -> Result<(), WalError> {
        if let Some(p) = self.prealloc.take() {
            p.cancel.store(true, Ordering::Relaxed);
            let _ = p.thread.join();
            self.remove_prealloc_file()?;
        }
        Ok(())
    }

    /// Starts zero-filling segment `segno` in the background, unless that is under way.
    fn start_prealloc(&mut self, segno: u64) {
        if self.prealloc.is_some() {
            return;
        }
        let path = self.dir.join(PREALLOC_FILE);
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        match std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || zero_fill(&path, &c))
        {
            Ok(thread) => {
                self.prealloc = Some(Prealloc {
                    segno,
                    cancel,
                    thread,
                })
            }
            Err(e) => warn!(%e, "could not start zero-filling the next WAL segment"),
        }
    }

    /// Renames the zero-filled file into place as segment `segno` (`.partial`), if it is
    /// ready and for that segment; true if it was. Anything else is cancelled and removed.
    fn take_prealloc(&mut self, segno: u64, path: &Path) -> Result<bool, WalError> {
        let Some(p) = self.prealloc.take() else {
            return Ok(false);
        };
        if p.segno != segno || !p.thread.is_finished() {
            self.prealloc = Some(p);
            self.cancel_prealloc()?;
            return Ok(false);
        }
        match p.thread.join() {
            Ok(Ok(true)) => {
                let from = self.dir.join(PREALLOC_FILE);
                fs::rename(&from, path).map_err(io_err(&from))?;
                self.preallocated += 1;
                Ok(true)
            }
            Ok(Err(e)) => {
                warn!(%e, "zero-filling the next WAL segment failed; creating it sparse");
                self.remove_prealloc_file()?;
                Ok(false)
            }
            _ => {
                self.remove_prealloc_file()?;
                Ok(false)
            }
        }
    }

    /// Opens (creating at full size if needed) the segment `segno` for writing.
    fn open_segment(&mut self, segno: u64) -> Result<Open, WalError> {
        let path = self.dir.join(file_name(self.tli, segno, true));
        if !path.exists() && self.take_prealloc(segno, &path)? {
            self.dir_dirty = true;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != WAL_SEGMENT_SIZE {
            file.set_len(WAL_SEGMENT_SIZE).map_err(io_err(&path))?;
            self.dir_dirty = true;
        }
        Ok(Open { segno, file })
    }

    /// Writes `data` at `lsn`, which must be the current end of WAL. Not durable until
    /// [`WalStorage::flush`].
    pub fn write(&mut self, lsn: Lsn, data: &[u8]) -> Result<(), WalError> {
        let timer = strata_metrics::Timer::start();
        if lsn != self.write_lsn || self.local_start == Lsn(0) {
            return Err(WalError::NotContiguous {
                lsn,
                end: self.write_lsn,
            });
        }
        let mut pos = lsn;
        let mut left = data;
        while !left.is_empty() {
            let segno = pos.segment_number();
            if self.current.as_ref().is_none_or(|o| o.segno != segno) {
                let next = self.open_segment(segno)?;
                if let Some(prev) = self.current.replace(next) {
                    self.completed.push(prev);
                }
            }
            let n = left
                .len()
                .min((WAL_SEGMENT_SIZE - pos.segment_offset()) as usize);
            if let Some(open) = &self.current {
                open.file
                    .write_all_at(&left[..n], pos.segment_offset())
                    .map_err(|e| io_err(&self.dir.join(file_name(self.tli, segno, true)))(e))?;
            }
            left = &left[n..];
            pos = Lsn(pos.0 + n as u64);
            // A segment written to its end is complete now, not at the next write: the flush
            // that makes its end durable also gives it its final name, so nothing (WAL
            // removal at a flush LSN on the boundary) ever sees it as the open `.partial`.
            if pos.segment_offset() == 0 {
                if let Some(done) = self.current.take() {
                    self.completed.push(done);
                }
            }
        }
        self.write_lsn = pos;
        crate::metrics::wal_written(timer, data.len());
        // Half way through a segment: prepare the next one.
        if pos.segment_offset() >= WAL_SEGMENT_SIZE / 2 {
            let next = pos.segment_number() + 1;
            if self.prealloc.as_ref().is_none_or(|p| p.segno != next) {
                self.cancel_prealloc()?;
                self.start_prealloc(next);
            }
        }
        Ok(())
    }

    /// Makes everything written durable; returns the new flush LSN.
    pub fn flush(&mut self) -> Result<Lsn, WalError> {
        if self.flush_lsn == self.write_lsn && self.completed.is_empty() && !self.dir_dirty {
            return Ok(self.flush_lsn);
        }
        let timer = strata_metrics::Timer::start();
        for done in std::mem::take(&mut self.completed) {
            let partial = self.dir.join(file_name(self.tli, done.segno, true));
            done.file.sync_data().map_err(io_err(&partial))?;
            self.fsyncs += 1;
            let full = self.dir.join(file_name(self.tli, done.segno, false));
            fs::rename(&partial, &full).map_err(io_err(&partial))?;
            self.dir_dirty = true;
        }
        if let Some(open) = &self.current {
            if self.write_lsn > self.flush_lsn {
                // The path is built only for an error: this runs on every append's fsync.
                open.file.sync_data().map_err(|e| {
                    io_err(&self.dir.join(file_name(self.tli, open.segno, true)))(e)
                })?;
                self.fsyncs += 1;
            }
        }
        if self.dir_dirty {
            fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
            self.dir_dirty = false;
        }
        self.flush_lsn = self.write_lsn;
        crate::metrics::wal_synced(timer);
        Ok(self.flush_lsn)
    }

    /// Cuts the WAL back to `lsn` (a divergent tail is being discarded): the rest of its segment
    /// is zeroed and later segments are removed, durably, before this returns.
    pub fn truncate(&mut self, lsn: Lsn) -> Result<(), WalError> {
        self.flush()?;
        if lsn < self.local_start || lsn > self.write_lsn {
            return Err(WalError::TruncateOutOfRange {
                lsn,
                start: self.local_start,
                end: self.write_lsn,
            });
        }
        self.cut_tail(lsn)
    }

    /// After a failed write or fsync (a full disk, an I/O error): drops every open file and
    /// cuts the WAL back to the last flushed LSN, reopening its segment. What was written
    /// after it was never acknowledged and may or may not have reached the disk, so it goes;
    /// the proposer sends it again. Everything up to the flush LSN was fsynced before.
    pub fn recover(&mut self) -> Result<Lsn, WalError> {
        let end = self.flush_lsn;
        if self.local_start == Lsn(0) {
            self.current = None;
            self.completed.clear();
            self.write_lsn = end;
            return Ok(end);
        }
        self.cut_tail(end)?;
        Ok(end)
    }

    /// Forgets all WAL: the timeline's WAL now starts (empty) at `start`.
    pub fn reset(&mut self, start: Lsn) -> Result<(), WalError> {
        self.current = None;
        self.completed.clear();
        self.cancel_prealloc()?;
        for s in list_segments(&self.dir, self.tli)? {
            for partial in [false, true] {
                let p = self.dir.join(file_name(self.tli, s, partial));
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                    _ => {}
                }
            }
        }
        fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.local_start = start;
        self.write_lsn = start;
        self.flush_lsn = start;
        Ok(())
    }
}

impl Drop for WalStorage {
    fn drop(&mut self) {
        if let Err(e) = self.cancel_prealloc() {
            warn!(%e, "could not remove the preallocated WAL segment");
        }
    }
}

#[cfg(test)]
#[path = "wal_storage_tests.rs"]
mod tests;
