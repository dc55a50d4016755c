//! Reading WAL from a directory of segment files (a `pg_wal` directory, an archive, what
//! `pg_receivewal` wrote), through the streaming decoder.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::consts::WAL_SEGMENT_SIZE;
use crate::decoder::{DecodeError, Decoded, WalStreamDecoder};
use crate::lsn::{parse_segment_file_name, segment_file_name, Lsn};
use crate::record::DecodedRecord;

/// Why reading WAL from files stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    #[error("reading WAL file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    #[error("no WAL segment file for {lsn} (looked for {name} in {dir})")]
    NoStartSegment {
        lsn: Lsn,
        name: String,
        dir: PathBuf,
    },
}

/// Where and why the WAL read from files ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEnd {
    pub lsn: Lsn,
    pub reason: String,
}

/// Bytes read and handed to the decoder at a time. Records share the buffer they were read
/// into until the last of them is dropped, usually by another thread (ingest). Small buffers
/// keep that thread's reference-count updates off the buffer the decoder is splitting (with
/// 1 MiB, the two threads contended for one counter), and the buffers are recycled
/// ([`ReadBuffers`]), so they are not page-faulted in again.
const READ_CHUNK: usize = 128 * 1024;

/// Read buffers kept for reuse: enough for the records a pipelined ingest holds in flight.
const POOLED_BUFFERS: usize = 32;

/// Read buffers whose records are all dropped, shared with the buffers out there.
#[derive(Default)]
struct ReadBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl ReadBuffers {
    fn take(&self) -> Vec<u8> {
        let pooled = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        pooled.unwrap_or_else(|| vec![0; READ_CHUNK])
    }
}

/// The filled part of a read buffer; goes back to its pool when the last record in it is
/// dropped.
struct ReadBuffer {
    buf: Vec<u8>,
    len: usize,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOLED_BUFFERS {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Reads records from segment files in one directory, starting at the first record at or after
/// a given LSN (pg_waldump's `-s`), and stopping before any record that does not end by an
/// optional end LSN (pg_waldump's `-e`).
pub struct WalDirReader {
    dir: PathBuf,
    timeline: u32,
    start: Lsn,
    end: Option<Lsn>,
    decoder: WalStreamDecoder,
    file: Option<(File, PathBuf)>,
    /// LSN of the next byte to read from files.
    read_lsn: Lsn,
    buffers: ReadBuffers,
    finished: Option<WalEnd>,
}

impl WalDirReader {
    /// Opens `dir` for reading from `start` on `timeline` (if `None`: the timeline of the
    /// highest-numbered segment file that holds `start`).
    pub fn open(
        dir: &Path,
        start: Lsn,
        end: Option<Lsn>,
        timeline: Option<u32>,
    ) -> Result<Self, WalReadError> {
        let timeline = match timeline {
            Some(t) => t,
            None => find_timeline(dir, start.segment_number())?.unwrap_or(1),
        };
        // Decode from the top of the page: the first record at or after `start` is found by
        // walking the page, as Postgres does, since `start` need not be a record boundary.
        let from = start.page_start();
        let mut reader = WalDirReader {
            dir: dir.to_path_buf(),
            timeline,
            start,
            end,
            decoder: WalStreamDecoder::new(from),
            file: None,
            read_lsn: from,
            buffers: ReadBuffers::default(),
            finished: None,
        };
        if !reader.open_segment()? {
            return Err(WalReadError::NoStartSegment {
                lsn: start,
                name: segment_file_name(timeline, start.segment_number()),
                dir: dir.to_path_buf(),
            });
        }
        Ok(reader)
    }

    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// How reading ended, once `next_record` has returned `Ok(None)`.
    pub fn end(&self) -> Option<&WalEnd> {
        self.finished.as_ref()
    }

    /// Opens the segment holding `read_lsn`, positioned there. `false` if there is no file.
    fn open_segment(&mut self) -> Result<bool, WalReadError> {
        let segno = self.read_lsn.segment_number();
        let name = segment_file_name(self.timeline, segno);
        let mut path = self.dir.join(&name);
        if !path.exists() {
            path = self.dir.join(format!("{name}.partial"));
            if !path.exists() {
                self.file = None;
                return Ok(false);
            }
        }
        let io_err = |source| WalReadError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io_err)?;
        file.seek(SeekFrom::Start(self.read_lsn.segment_offset()))
            .map_err(io_err)?;
        self.file = Some((file, path));
        Ok(true)
    }

    /// Feeds the decoder more bytes. `false` when the files (or the end LSN) have no more.
    fn fill(&mut self) -> Result<bool, WalReadError> {
        if self.end.is_some_and(|end| self.read_lsn >= end) {
            return Ok(false);
        }
        if self.file.is_none() && !self.open_segment()? {
            return Ok(false);
        }
        let seg_left = (WAL_SEGMENT_SIZE - self.read_lsn.segment_offset()) as usize;
        let mut want = seg_left.min(READ_CHUNK);
        if let Some(end) = self.end {
            want = want.min((end.0 - self.read_lsn.0) as usize);
        }
        let (file, path) = self.file.as_mut().expect("segment opened above");
        let mut buf = self.buffers.take();
        let n = file
            .read(&mut buf[..want])
            .map_err(|source| WalReadError::Io {
                path: path.clone(),
                source,
            })?;
        if n == 0 {
            // A short (partial or truncated) segment: nothing more to read in it.
            return Ok(false);
        }
        self.decoder.feed_bytes(Bytes::from_owner(ReadBuffer {
            buf,
            len: n,
            pool: Arc::downgrade(&self.buffers.0),
        }));
        self.read_lsn = Lsn(self.read_lsn.0 + n as u64);
        if self.read_lsn.is_segment_start() {
            self.file = None;
        }
        Ok(true)
    }

    /// The next record, `Ok(None)` at the end of the WAL (see [`WalDirReader::end`]).
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, WalReadError> {
        if self.finished.is_some() {
            return Ok(None);
        }
        loop {
            match self.decoder.next()? {
                Decoded::Record(rec) => {
                    if rec.lsn < self.start {
                        continue;
                    }
                    return Ok(Some(rec));
                }
                Decoded::EndOfWal { lsn, reason } => {
                    self.finished = Some(WalEnd { lsn, reason });
                    return Ok(None);
                }
                Decoded::NeedMore => {
                    if !self.fill()? {
                        let lsn = self.decoder.record_lsn();
                        let reason = if self.end.is_some_and(|e| self.read_lsn >= e) {
                            "reached the end LSN".to_string()
                        } else if self.decoder.in_record() {
                            format!(
                                "WAL files end inside the record at {lsn} (segment {} missing or short)",
                                segment_file_name(self.timeline, self.read_lsn.segment_number())
                            )
                        } else {
                            format!(
                                "no more WAL files (segment {} missing or short)",
                                segment_file_name(self.timeline, self.read_lsn.segment_number())
                            )
                        };
                        self.finished = Some(WalEnd { lsn, reason });
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// The highest timeline among the segment files of `dir` for segment `segno`.
fn find_timeline(dir: &Path, segno: u64) -> Result<Option<u32>, WalReadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| WalReadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut best = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some((tli, seg)) = name.to_str().and_then(parse_segment_file_name) {
            if seg == segno && best.is_none_or(|b| tli > b) {
                best = Some(tli);
            }
        }
    }
    Ok(best)
}

/// The LSN of the first segment file in `dir` (lowest segment number), if any.
pub fn first_segment_lsn(dir: &Path) -> io::Result<Option<Lsn>> {
    let mut first: Option<u64> = None;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if let Some((_, seg)) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            first = Some(first.map_or(seg, |f| f.min(seg)));
        }
    }
    Ok(first.map(|s| Lsn(s * WAL_SEGMENT_SIZE)))
}
