//! The streaming writer shared by delta and image layers (layout in [`crate::format`]).
//!
//! Memory stays bounded: one pending index block (≤ 4 KiB), one compression buffer, a
//! `BufWriter`, and a 36-byte fence per index block written so far (about 0.9% of the index
//! size, e.g. 380 KiB for a layer of a million 150-byte records). The file is written under a
//! temporary name (`<final name>.<pid>.<n>.tmp`), fsynced, renamed into place, and then the
//! directory is fsynced; an unfinished writer removes its temporary file when dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use walproto::Lsn;

use crate::compress::{try_compress, Compression};
use crate::error::{LayerError, Result};
use crate::format::*;
use crate::key::Key;
use crate::name::LayerDesc;

/// What a finished writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenLayer {
    pub desc: LayerDesc,
    /// `dir/<desc.file_name()>`.
    pub path: PathBuf,
    pub file_size: u64,
    pub entry_count: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct RawWriter {
    desc: LayerDesc,
    dir: PathBuf,
    final_path: PathBuf,
    temp_path: PathBuf,
    out: Option<BufWriter<File>>,
    pos: u64,
    compression: Compression,
    scratch: Vec<u8>,
    block: Vec<u8>,
    block_count: usize,
    block_first: [u8; SORT_LEN],
    fences: Vec<u8>,
    fence_count: u32,
    entry_count: u64,
    /// The last entry's (key, LSN) as integers ([`ordinal`]), to check the order cheaply.
    last: Option<(u128, u16, u64)>,
    /// The key range was narrowed after the header was written ([`RawWriter::narrow_key_end`]):
    /// `finish` writes the header again.
    narrowed: bool,
    /// Set after an I/O error: the file is in an unknown state.
    failed: bool,
    finished: bool,
}

impl RawWriter {
    pub fn create(dir: &Path, desc: LayerDesc, compression: Compression) -> Result<RawWriter> {
        let name = desc.file_name();
        let final_path = dir.join(&name);
        if let Err(reason) = desc.check() {
            return Err(LayerError::InvalidInput {
                path: final_path,
                reason: format!("cannot write a layer with {reason}"),
            });
        }
        let temp_path = dir.join(format!(
            "{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|source| LayerError::Io {
                path: temp_path.clone(),
                op: "create temporary layer file",
                source,
            })?;
        let header = header_of(&desc);
        let mut w = RawWriter {
            desc,
            dir: dir.to_path_buf(),
            final_path,
            temp_path,
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
            pos: 0,
            compression,
            scratch: Vec::new(),
            block: Vec::with_capacity(INDEX_BLOCK_MAX),
            block_count: 0,
            block_first: [0; SORT_LEN],
            fences: Vec::new(),
            fence_count: 0,
            entry_count: 0,
            last: None,
            narrowed: false,
            failed: false,
            finished: false,
        };
        w.write(&header.encode())?;
        Ok(w)
    }

    pub(crate) fn invalid(&self, reason: String) -> LayerError {
        LayerError::InvalidInput {
            path: self.final_path.clone(),
            reason,
        }
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> LayerError {
        LayerError::Io {
            path: self.temp_path.clone(),
            op,
            source,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let res = match self.out.as_mut() {
            Some(out) => out.write_all(bytes),
            None => Ok(()),
        };
        if let Err(e) = res {
            self.failed = true;
            return Err(self.io("write", e));
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends one value. `(key, lsn)` must be strictly greater than the previous one and
    /// inside the layer's ranges.
    pub fn put(&mut self, key: Key, lsn: Lsn, will_init: bool, value: &[u8]) -> Result<()> {
        self.put_kind(key, lsn, will_init, value, true)
    }

    /// Like [`RawWriter::put`]; `is_image` says whether [`Compression::Lz4Images`] tries it.
    pub fn put_kind(
        &mut self,
        key: Key,
        lsn: Lsn,
        will_init: bool,
        value: &[u8],
        is_image: bool,
    ) -> Result<()> {
        let sk = self.check_entry(key, lsn, value.len())?;
        let mut flags = if will_init { FLAG_WILL_INIT } else { 0 };
        let mut scratch = std::mem::take(&mut self.scratch);
        let compressed = if self.compression.tries(is_image) {
            try_compress(value, &mut scratch)
        } else {
            None
        };
        let stored: &[u8] = match compressed {
            Some(n) => {
                flags |= FLAG_LZ4;
                &scratch[..n]
            }
            None => value,
        };
        let crc = walproto::crc::crc32c(stored);
        let res = self.append(sk, key, lsn, flags, stored, crc);
        self.scratch = scratch;
        res
    }

    /// Appends a value exactly as another layer file stores it (`lz4` says whether it is
    /// compressed; `crc` is the crc32c of `stored`, already checked by the reader): a merge
    /// copies compressed values without decompressing and compressing them again.
    pub fn put_stored(
        &mut self,
        key: Key,
        lsn: Lsn,
        will_init: bool,
        lz4: bool,
        stored: &[u8],
        crc: u32,
    ) -> Result<()> {
        let sk = self.check_entry(key, lsn, stored.len())?;
        let mut flags = if will_init { FLAG_WILL_INIT } else { 0 };
        if lz4 {
            flags |= FLAG_LZ4;
        }
        self.append(sk, key, lsn, flags, stored, crc)
    }

    /// Checks that `(key, lsn)` may come next; returns its sort key.
    fn check_entry(&self, key: Key, lsn: Lsn, len: usize) -> Result<[u8; SORT_LEN]> {
        if self.failed {
            return Err(self.invalid("an earlier write failed; the layer is abandoned".into()));
        }
        if !self.desc.key_range.contains(&key) {
            return Err(self.invalid(format!(
                "key {key} is outside the layer's key range {}..{}",
                self.desc.key_range.start, self.desc.key_range.end
            )));
        }
        if !self.desc.lsn_range.contains(&lsn) {
            return Err(self.invalid(format!(
                "LSN {lsn} is outside the layer's LSN range {}..{}",
                self.desc.lsn_range.start, self.desc.lsn_range.end
            )));
        }
        let sk = sort_key(key, lsn);
        if let Some(last) = self.last {
            if ordinal(key, lsn) <= last {
                return Err(self.invalid(format!(
                    "entries out of order: ({key}, {lsn}) after ({}, {})",
                    Key::from_ordinal((last.0, last.1)),
                    Lsn(last.2)
                )));
            }
        }
        if len > u32::MAX as usize - 8 {
            return Err(self.invalid(format!("value of {len} bytes is too large")));
        }
        Ok(sk)
    }

    /// Writes a checked entry's stored bytes and indexes them.
    fn append(
        &mut self,
        sk: [u8; SORT_LEN],
        key: Key,
        lsn: Lsn,
        flags: u8,
        stored: &[u8],
        crc: u32,
    ) -> Result<()> {
        let entry = RawEntry {
            key,
            lsn,
            offset: self.pos,
            len: stored.len() as u32,
            crc,
            flags,
        };
        self.write(stored)?;

        if self.block_count == 0 {
            self.block_first = sk;
        }
        entry.encode_into(&mut self.block);
        self.block_count += 1;
        self.entry_count += 1;
        self.last = Some(ordinal(key, lsn));
        if self.block_count == MAX_ENTRIES_PER_BLOCK {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block_count == 0 {
            return Ok(());
        }
        let offset = self.pos;
        let count = self.block_count as u16;
        let mut crc = walproto::crc::crc32c(&count.to_be_bytes());
        crc = walproto::crc::crc32c_append(crc, &self.block);
        let block = std::mem::take(&mut self.block);
        let res = self
            .write(&count.to_be_bytes())
            .and_then(|_| self.write(&block))
            .and_then(|_| self.write(&crc.to_be_bytes()));
        self.block = block;
        res?;
        self.block.clear();
        self.fences.extend_from_slice(&self.block_first);
        self.fences.extend_from_slice(&offset.to_be_bytes());
        self.fences.extend_from_slice(&count.to_be_bytes());
        self.fence_count += 1;
        self.block_count = 0;
        Ok(())
    }

    /// Ends the layer's key range at `end` instead of where [`RawWriter::create`] put it: for
    /// a writer that learns its range as it goes (a merge cutting its output files where a
    /// file is full, in one pass). `end` must lie past the last key written and not beyond the
    /// range's end; [`RawWriter::finish`] then writes the narrowed header and file name.
    pub fn narrow_key_end(&mut self, end: Key) -> Result<()> {
        let last = self.last.map(|(hi, lo, _)| Key::from_ordinal((hi, lo)));
        if end > self.desc.key_range.end
            || end <= self.desc.key_range.start
            || last.is_some_and(|last| end <= last)
        {
            return Err(self.invalid(format!(
                "cannot end the key range {}..{} at {end} (last key written: {})",
                self.desc.key_range.start,
                self.desc.key_range.end,
                last.map_or("none".to_string(), |k| k.to_string())
            )));
        }
        self.desc.key_range.end = end;
        self.final_path = self.dir.join(self.desc.file_name());
        self.narrowed = true;
        Ok(())
    }

    /// Writes the index tail and footer, fsyncs, renames into place, fsyncs the directory.
    pub fn finish(mut self) -> Result<WrittenLayer> {
        if self.failed {
            return Err(self.invalid("an earlier write failed; the layer is abandoned".into()));
        }
        self.flush_block()?;
        let footer = Footer {
            fence_offset: self.pos,
            block_count: self.fence_count,
            fence_crc: walproto::crc::crc32c(&self.fences),
            entry_count: self.entry_count,
        };
        let fences = std::mem::take(&mut self.fences);
        self.write(&fences)?;
        self.write(&footer.encode())?;
        let Some(out) = self.out.take() else {
            return Err(self.invalid("writer output already closed".into()));
        };
        let file = out.into_inner().map_err(|e| {
            let err = e.into_error();
            self.io("flush", err)
        })?;
        if self.narrowed {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&header_of(&self.desc).encode(), 0)
                .map_err(|e| self.io("rewrite header", e))?;
        }
        file.sync_all().map_err(|e| self.io("fsync", e))?;
        drop(file);
        fs::rename(&self.temp_path, &self.final_path).map_err(|e| self.io("rename", e))?;
        self.finished = true;
        let dir = File::open(&self.dir).map_err(|source| LayerError::Io {
            path: self.dir.clone(),
            op: "open directory",
            source,
        })?;
        dir.sync_all().map_err(|source| LayerError::Io {
            path: self.dir.clone(),
            op: "fsync directory",
            source,
        })?;
        Ok(WrittenLayer {
            desc: self.desc.clone(),
            path: self.final_path.clone(),
            file_size: self.pos,
            entry_count: self.entry_count,
        })
    }
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.out.take();
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// The header that describes `desc`.
fn header_of(desc: &LayerDesc) -> Header {
    Header {
        kind: match desc.kind {
            crate::LayerKind::Delta => KIND_DELTA,
            crate::LayerKind::Image => KIND_IMAGE,
        },
        key_start: desc.key_range.start,
        key_end: desc.key_range.end,
        lsn_start: desc.lsn_range.start,
        lsn_end: desc.lsn_range.end,
    }
}

/// (key, LSN) as integers: compares like the entries' sort keys, without a `memcmp` call.
fn ordinal(key: Key, lsn: Lsn) -> (u128, u16, u64) {
    let (hi, lo) = key.ordinal();
    (hi, lo, lsn.0)
}
