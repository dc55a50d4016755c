//! Image layers: key → page image at one LSN, over a key range.
//!
//! File layout: [`crate::format`] with layer kind 2; the LSN range in the header is
//! `lsn..lsn+1` and every index entry carries that LSN and the `will_init` flag. Each stored
//! value is the raw image bytes, lz4-compressed per value when that saves at least 1/8
//! ([`crate::compress`]).
//!
//! A key inside the layer's key range that the layer lacks does not exist at the layer's LSN:
//! [`ImageLayerReader::get`] returns `None` for it, and a reader must not look further back.

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use walproto::Lsn;

use crate::compress::Compression;
use crate::error::Result;
use crate::format::sort_key;
use crate::key::Key;
use crate::name::{LayerDesc, LayerKind};
use crate::reader::{LayerFile, RawEntries, ValueHandle};
use crate::writer::{RawWriter, WrittenLayer};

/// Writes an image layer; keys must come in strictly increasing order.
pub struct ImageLayerWriter {
    raw: RawWriter,
    lsn: Lsn,
}

impl ImageLayerWriter {
    /// Starts `dir/<name>.image` for `key_range` at `lsn` (which must be below `Lsn::MAX`).
    pub fn new(dir: &Path, key_range: Range<Key>, lsn: Lsn) -> Result<Self> {
        Self::with_compression(dir, key_range, lsn, Compression::default())
    }

    /// Like [`ImageLayerWriter::new`], choosing whether images may be compressed.
    pub fn with_compression(
        dir: &Path,
        key_range: Range<Key>,
        lsn: Lsn,
        compression: Compression,
    ) -> Result<Self> {
        let mut desc = LayerDesc::image(key_range, lsn);
        if lsn == Lsn::MAX {
            // Makes `check` reject it: an image layer needs lsn + 1.
            desc.lsn_range = lsn..lsn;
        }
        Ok(ImageLayerWriter {
            raw: RawWriter::create(dir, desc, compression)?,
            lsn,
        })
    }

    /// Appends the image of `key`. Errors if `key` is not greater than the previous key or
    /// lies outside the key range (the writer stays usable after such an error).
    pub fn put(&mut self, key: Key, image: &[u8]) -> Result<()> {
        self.raw.put(key, self.lsn, true, image)
    }

    /// Finishes the file: index tail, footer, fsync, rename into place, fsync of the directory.
    pub fn finish(self) -> Result<WrittenLayer> {
        self.raw.finish()
    }
}

/// An image layer file opened through mmap. `Send + Sync`: share it between threads.
pub struct ImageLayerReader {
    file: LayerFile,
}

impl ImageLayerReader {
    /// Maps the file and checks its header, footer and fence array.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(ImageLayerReader {
            file: LayerFile::open(path, LayerKind::Image)?,
        })
    }

    pub fn desc(&self) -> &LayerDesc {
        self.file.desc()
    }

    /// The LSN of every image in the layer.
    pub fn lsn(&self) -> Lsn {
        self.file.desc().lsn_range.start
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

    /// The image of `key` at the layer's LSN, or `None` if the layer has no image for it,
    /// which means the key does not exist at that LSN. Errors if `key` is outside the layer's
    /// key range, or on corruption.
    pub fn get(&self, key: Key) -> Result<Option<Bytes>> {
        let Some(handle) = self.find(key)? else {
            return Ok(None);
        };
        self.read(key, &handle).map(Some)
    }

    /// The stored image's handle, without reading it.
    fn find(&self, key: Key) -> Result<Option<ValueHandle>> {
        let range = &self.desc().key_range;
        if !range.contains(&key) {
            return Err(self.file.invalid(format!(
                "key {key} is outside the layer's key range {}..{}",
                range.start, range.end
            )));
        }
        let Some((b, i)) = self.file.seek_le(&sort_key(key, self.lsn()))? else {
            return Ok(None);
        };
        let entries = self.file.block(b)?;
        let at = i * crate::format::ENTRY_LEN;
        let e = crate::format::RawEntry::decode(&entries[at..at + crate::format::ENTRY_LEN]);
        if e.key != key {
            return Ok(None);
        }
        if e.lsn != self.lsn() || !e.will_init() {
            return Err(self.file.corrupt(
                self.file.block_offset(b) + 2 + at as u64,
                format!("image entry for {key} has LSN {} or lacks will_init", e.lsn),
            ));
        }
        Ok(Some(e.handle()))
    }

    fn read(&self, key: Key, handle: &ValueHandle) -> Result<Bytes> {
        let bytes = self.file.read_value(handle, || format!("image of {key}"))?;
        Ok(match bytes {
            std::borrow::Cow::Borrowed(b) => Bytes::copy_from_slice(b),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        })
    }

    /// Every (key, image) in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Key, Bytes)>> + '_ {
        RawEntries::new(&self.file).map(move |r| {
            let e = r?;
            let image = self.read(e.key, &e.handle())?;
            Ok((e.key, image))
        })
    }

    /// Every key in order, without reading images.
    pub fn keys(&self) -> impl Iterator<Item = Result<Key>> + '_ {
        RawEntries::new(&self.file).map(|r| r.map(|e| e.key))
    }

    /// Reads every entry and image, returning the first problem found.
    pub fn verify(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.iter() {
            r?;
            n += 1;
        }
        Ok(n)
    }
}
