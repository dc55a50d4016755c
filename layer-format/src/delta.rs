//! Delta layers: (key, LSN) → [`Value`] over a key range × an LSN range `[start, end)`.
//!
//! File layout: [`crate::format`] with layer kind 1. Each stored value is the
//! [`Value::encode`] encoding (lz4-compressed when that pays, see [`crate::compress`]); the
//! index entry carries the value's `will_init` bit, so [`DeltaLayerReader::versions`] and
//! [`DeltaLayerReader::collect_chain`] find where a key's history starts without reading any
//! value.

use std::ops::Range;
use std::path::Path;

use walproto::Lsn;

use crate::compress::Compression;
use crate::error::Result;
use crate::format::RawEntry;
use crate::key::Key;
use crate::name::{LayerDesc, LayerKind};
use crate::reader::{Backwards, LayerFile, RawEntries, ValueHandle};
use crate::value::Value;
use crate::writer::{RawWriter, WrittenLayer};

/// Writes a delta layer; entries must come in strictly increasing (key, LSN) order.
pub struct DeltaLayerWriter {
    raw: RawWriter,
    buf: Vec<u8>,
}

impl DeltaLayerWriter {
    /// Starts `dir/<name>.delta` (under a temporary name until [`DeltaLayerWriter::finish`]).
    pub fn new(dir: &Path, key_range: Range<Key>, lsn_range: Range<Lsn>) -> Result<Self> {
        Self::with_compression(dir, key_range, lsn_range, Compression::default())
    }

    /// Like [`DeltaLayerWriter::new`], choosing whether values may be compressed.
    pub fn with_compression(
        dir: &Path,
        key_range: Range<Key>,
        lsn_range: Range<Lsn>,
        compression: Compression,
    ) -> Result<Self> {
        let desc = LayerDesc::delta(key_range, lsn_range);
        Ok(DeltaLayerWriter {
            raw: RawWriter::create(dir, desc, compression)?,
            buf: Vec::new(),
        })
    }

    /// Appends a value. Errors if `(key, lsn)` is not greater than the previous entry's or lies
    /// outside the layer's ranges (the writer stays usable after such an error).
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        self.buf.clear();
        value.encode(&mut self.buf);
        self.raw
            .put_kind(key, lsn, value.will_init(), &self.buf, value.is_image())
    }

    /// Appends a value already encoded by [`Value::encode`] (an in-memory layer's bytes)
    /// without decoding it; its tag and flags are checked.
    pub fn put_encoded(&mut self, key: Key, lsn: Lsn, encoded: &[u8]) -> Result<()> {
        let (will_init, is_image) = Value::check_encoded(encoded).map_err(|e| {
            self.raw
                .invalid(format!("encoded value of ({key}, {lsn}): {e}"))
        })?;
        self.raw.put_kind(key, lsn, will_init, encoded, is_image)
    }

    /// Appends a value of another delta layer as that layer stores it ([`DeltaLayerReader::
    /// read_stored`]): a compressed value is copied without decompressing it (and keeps its
    /// crc), an uncompressed one is checked like [`DeltaLayerWriter::put_encoded`] and
    /// compressed if this writer's policy says so. For merges: no decode, no re-encode.
    pub fn put_stored(
        &mut self,
        key: Key,
        lsn: Lsn,
        handle: &ValueHandle,
        stored: &[u8],
    ) -> Result<()> {
        if handle.is_compressed() {
            return self
                .raw
                .put_stored(key, lsn, handle.will_init(), true, stored, handle.crc());
        }
        let (will_init, is_image) = Value::check_encoded(stored).map_err(|e| {
            self.raw
                .invalid(format!("encoded value of ({key}, {lsn}): {e}"))
        })?;
        if will_init != handle.will_init() {
            return Err(self.raw.invalid(format!(
                "value of ({key}, {lsn}): will_init differs between index and value"
            )));
        }
        self.raw.put_kind(key, lsn, will_init, stored, is_image)
    }

    /// Finishes the file: index tail, footer, fsync, rename into place, fsync of the directory.
    pub fn finish(self) -> Result<WrittenLayer> {
        self.raw.finish()
    }

    /// [`DeltaLayerWriter::finish`] with the key range ending at `end` (see
    /// [`crate::writer`]'s `narrow_key_end`): a merge opens each output file at its first key
    /// with an open end and fixes the end once the file is full.
    pub fn finish_at_key_end(mut self, end: Key) -> Result<WrittenLayer> {
        self.raw.narrow_key_end(end)?;
        self.raw.finish()
    }
}

/// One entry of a delta layer, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    pub key: Key,
    pub lsn: Lsn,
    /// The value is an image or a record that starts the key's history.
    pub will_init: bool,
    /// Reads the value with [`DeltaLayerReader::read_value`].
    pub handle: ValueHandle,
}

impl From<RawEntry> for DeltaEntry {
    fn from(e: RawEntry) -> DeltaEntry {
        DeltaEntry {
            key: e.key,
            lsn: e.lsn,
            will_init: e.will_init(),
            handle: e.handle(),
        }
    }
}

/// A delta layer file opened through mmap. `Send + Sync`: share it between threads.
pub struct DeltaLayerReader {
    file: LayerFile,
}

impl DeltaLayerReader {
    /// Maps the file and checks its header, footer and fence array.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(DeltaLayerReader {
            file: LayerFile::open(path, LayerKind::Delta)?,
        })
    }

    pub fn desc(&self) -> &LayerDesc {
        self.file.desc()
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn entry_count(&self) -> u64 {
        self.file.entry_count()
    }

    pub fn file_size(&self) -> u64 {
        self.file.file_size()
    }

    /// Number of index blocks.
    pub fn index_block_count(&self) -> usize {
        self.file.block_count()
    }

    fn check_key(&self, key: Key) -> Result<()> {
        if self.desc().key_range.contains(&key) {
            Ok(())
        } else {
            Err(self.file.invalid(format!(
                "key {key} is outside the layer's key range {}..{}",
                self.desc().key_range.start,
                self.desc().key_range.end
            )))
        }
    }

    /// `key`'s entries with LSN ≤ `lsn`, newest first, without reading values. The caller
    /// usually stops after the first entry with `will_init` (see
    /// [`DeltaLayerReader::collect_chain`]). Errors if `key` is outside the layer's key range.
    pub fn versions(&self, key: Key, lsn: Lsn) -> Result<Versions<'_>> {
        self.check_key(key)?;
        Ok(Versions {
            inner: Backwards::new(&self.file, key, lsn)?,
            done: false,
        })
    }

    /// Appends to `out` `key`'s entries with LSN ≤ `lsn`, newest first, up to and including
    /// the first `will_init` one. Returns true if it reached a `will_init` entry (the history
    /// is complete in this layer); false means older layers must supply the rest.
    pub fn collect_chain(&self, key: Key, lsn: Lsn, out: &mut Vec<DeltaEntry>) -> Result<bool> {
        self.check_key(key)?;
        let mut it = Backwards::new(&self.file, key, lsn)?;
        while let Some(e) = it.step()? {
            out.push(e.into());
            if e.will_init() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads and decodes a value (checks its crc32c, decompresses, and checks that it agrees
    /// with the index's `will_init` bit).
    pub fn read_value(&self, handle: &ValueHandle) -> Result<Value> {
        let what = || format!("value at {}", handle.offset());
        let bytes = self.file.read_value(handle, what)?;
        let value = Value::decode(&bytes).map_err(|e| {
            self.file
                .corrupt(handle.offset(), format!("{}: {e}", what()))
        })?;
        if value.will_init() != handle.will_init() {
            return Err(self.file.corrupt(
                handle.offset(),
                format!("{}: will_init differs between index and value", what()),
            ));
        }
        Ok(value)
    }

    /// A value's bytes as stored (lz4-compressed if `handle.is_compressed()`), checked
    /// against its crc: for copying into another layer with [`DeltaLayerWriter::put_stored`].
    pub fn read_stored(&self, handle: &ValueHandle) -> Result<&[u8]> {
        self.file
            .read_stored(handle, || format!("value at {}", handle.offset()))
    }

    /// Every entry in (key, LSN) order, without values (for compaction and checks).
    pub fn entries(&self) -> impl Iterator<Item = Result<DeltaEntry>> + '_ {
        RawEntries::new(&self.file).map(|r| r.map(DeltaEntry::from))
    }

    /// The entries whose key lies in `keys`, in (key, LSN) order, without values: one slice of
    /// the layer for a merge that splits the key space between threads.
    pub fn entries_in(&self, keys: Range<Key>) -> impl Iterator<Item = Result<DeltaEntry>> + '_ {
        let end = keys.end;
        RawEntries::from_key(&self.file, keys.start)
            .filter(move |r| r.as_ref().map_or(true, |e| e.key >= keys.start))
            .take_while(move |r| r.as_ref().map_or(true, |e| e.key < end))
            .map(|r| r.map(DeltaEntry::from))
    }

    /// Keys cutting the layer into about `parts` slices of equal entry counts (ascending,
    /// possibly fewer), for [`DeltaLayerReader::entries_in`].
    pub fn split_keys(&self, parts: usize) -> Vec<Key> {
        RawEntries::split_keys(&self.file, parts)
    }

    /// Every entry with its value, in (key, LSN) order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Key, Lsn, Value)>> + '_ {
        self.entries().map(move |r| {
            let e = r?;
            let v = self.read_value(&e.handle)?;
            Ok((e.key, e.lsn, v))
        })
    }

    /// Reads every entry and value, returning the first problem found.
    pub fn verify(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.iter() {
            r?;
            n += 1;
        }
        Ok(n)
    }
}

/// Iterator from [`DeltaLayerReader::versions`]: newest first; stops after an error.
pub struct Versions<'a> {
    inner: Backwards<'a>,
    done: bool,
}

impl Iterator for Versions<'_> {
    type Item = Result<DeltaEntry>;

    fn next(&mut self) -> Option<Result<DeltaEntry>> {
        if self.done {
            return None;
        }
        match self.inner.step() {
            Ok(Some(e)) => Some(Ok(e.into())),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
