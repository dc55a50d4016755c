//! The mmap reader shared by delta and image layers (layout in [`crate::format`]).
//!
//! `open` maps the file and checks everything small and fixed: header (magic, version, crc,
//! ranges), footer (magic, crc), fence array (crc, sizes, offsets in order and in bounds,
//! first keys strictly increasing and inside the ranges, entry counts adding up) and, if the
//! file name is a layer name, that it matches the header. Index blocks are checked (crc, and
//! that the block agrees with its fence) the first time they are used; a per-block bit
//! remembers that, so a warm point lookup costs two binary searches, one value crc and a copy.
//! Every value read checks the value's crc32c from its index entry.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use walproto::Lsn;

use crate::compress::decompress;
use crate::error::{LayerError, Result};
use crate::format::*;
use crate::key::{Key, KEY_SIZE};
use crate::name::{LayerDesc, LayerKind};

/// Where a value is stored, to read it later; from a delta layer lookup or scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueHandle {
    offset: u64,
    len: u32,
    crc: u32,
    flags: u8,
}

impl ValueHandle {
    /// Bytes the value takes in the file (after compression).
    pub fn stored_len(&self) -> u32 {
        self.len
    }

    /// Offset of the stored value in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The `will_init` bit of the value's index entry.
    pub fn will_init(&self) -> bool {
        self.flags & FLAG_WILL_INIT != 0
    }

    /// True if the value is stored lz4-compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_LZ4 != 0
    }

    /// The crc32c of the stored bytes.
    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }
}

impl RawEntry {
    pub(crate) fn handle(&self) -> ValueHandle {
        ValueHandle {
            offset: self.offset,
            len: self.len,
            crc: self.crc,
            flags: self.flags,
        }
    }

    pub(crate) fn will_init(&self) -> bool {
        self.flags & FLAG_WILL_INIT != 0
    }
}

pub(crate) struct LayerFile {
    path: PathBuf,
    map: Mmap,
    desc: LayerDesc,
    fence_offset: usize,
    block_count: usize,
    entry_count: u64,
    verified: Box<[AtomicU64]>,
}

impl LayerFile {
    pub fn open(path: &Path, expect: LayerKind) -> Result<LayerFile> {
        let io = |op, source| LayerError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let corrupt = |offset: u64, reason: String| LayerError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if len < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(corrupt(
                len,
                format!(
                    "file is {len} bytes, shorter than a header and footer ({} bytes)",
                    HEADER_LEN + FOOTER_LEN
                ),
            ));
        }
        if usize::try_from(len).is_err() {
            return Err(corrupt(0, format!("file of {len} bytes cannot be mapped")));
        }
        // SAFETY: layer files are immutable once renamed into place: no process writes to or
        // truncates them (eviction deletes the file, which leaves existing mappings valid).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("mmap", e))?;
        let len = map.len();
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(corrupt(len as u64, "file shrank while being opened".into()));
        }

        let header = Header::decode(&map).map_err(|(off, reason)| corrupt(off, reason))?;
        let kind = if header.kind == KIND_DELTA {
            LayerKind::Delta
        } else {
            LayerKind::Image
        };
        if kind != expect {
            return Err(corrupt(
                10,
                format!("is a {kind:?} layer, expected a {expect:?} layer"),
            ));
        }
        let desc = LayerDesc {
            kind,
            key_range: header.key_start..header.key_end,
            lsn_range: header.lsn_start..header.lsn_end,
        };
        desc.check()
            .map_err(|reason| corrupt(12, format!("header has {reason}")))?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if let Ok(named) = LayerDesc::parse(name) {
                if named != desc {
                    return Err(corrupt(
                        12,
                        format!("file name does not match the header, which says {desc}"),
                    ));
                }
            }
        }

        let footer_at = len - FOOTER_LEN;
        let footer = Footer::decode(&map[footer_at..])
            .map_err(|(off, reason)| corrupt(footer_at as u64 + off, reason))?;
        let block_count = footer.block_count as usize;
        let fence_offset = footer.fence_offset;
        let fences_len = block_count as u64 * FENCE_LEN as u64;
        if fence_offset < HEADER_LEN as u64
            || fence_offset.checked_add(fences_len) != Some(footer_at as u64)
        {
            return Err(corrupt(
                footer_at as u64,
                format!(
                    "footer says {block_count} index blocks with fences at {fence_offset}, \
                     but the footer starts at {footer_at}"
                ),
            ));
        }
        let fence_offset = fence_offset as usize;
        let fences = &map[fence_offset..footer_at];
        let actual = walproto::crc::crc32c(fences);
        if actual != footer.fence_crc {
            return Err(corrupt(
                fence_offset as u64,
                format!(
                    "fence array checksum mismatch: stored {:08X}, computed {actual:08X}",
                    footer.fence_crc
                ),
            ));
        }

        let f = LayerFile {
            path: path.to_path_buf(),
            map,
            desc,
            fence_offset,
            block_count,
            entry_count: footer.entry_count,
            verified: (0..block_count.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        f.check_fences()?;
        Ok(f)
    }

    fn check_fences(&self) -> Result<()> {
        let mut total: u64 = 0;
        let mut prev_end = HEADER_LEN;
        let mut prev_first: Option<&[u8]> = None;
        for i in 0..self.block_count {
            let at = (self.fence_offset + i * FENCE_LEN) as u64;
            let (first, offset, count) = self.fence(i);
            if count == 0 || count > MAX_ENTRIES_PER_BLOCK {
                return Err(self.corrupt(at, format!("fence {i} has {count} entries")));
            }
            let end = offset.checked_add(block_len(count) as u64);
            if offset < prev_end as u64 || end.is_none_or(|e| e > self.fence_offset as u64) {
                return Err(self.corrupt(
                    at,
                    format!("fence {i}: index block at {offset} is out of place or bounds"),
                ));
            }
            prev_end = end.unwrap_or_default() as usize;
            if prev_first.is_some_and(|p| p >= first) {
                return Err(self.corrupt(at, format!("fence {i}: first keys out of order")));
            }
            prev_first = Some(first);
            let key = key_at(first, 0);
            let lsn = Lsn(be_u64(first, KEY_SIZE));
            if !self.desc.key_range.contains(&key) || !self.desc.lsn_range.contains(&lsn) {
                return Err(self.corrupt(
                    at,
                    format!("fence {i}: first entry ({key}, {lsn}) is outside the layer"),
                ));
            }
            total += count as u64;
        }
        if total != self.entry_count {
            return Err(self.corrupt(
                (self.map.len() - FOOTER_LEN + 16) as u64,
                format!(
                    "footer says {} entries, index blocks hold {total}",
                    self.entry_count
                ),
            ));
        }
        Ok(())
    }

    pub fn corrupt(&self, offset: u64, reason: String) -> LayerError {
        LayerError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    pub fn invalid(&self, reason: String) -> LayerError {
        LayerError::InvalidInput {
            path: self.path.clone(),
            reason,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn desc(&self) -> &LayerDesc {
        &self.desc
    }

    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn block_count(&self) -> usize {
        self.block_count
    }

    /// (first sort key, block offset, entry count) of fence `i < block_count`.
    fn fence(&self, i: usize) -> (&[u8], u64, usize) {
        let at = self.fence_offset + i * FENCE_LEN;
        let f = &self.map[at..at + FENCE_LEN];
        (
            &f[..SORT_LEN],
            be_u64(f, SORT_LEN),
            be_u16(f, SORT_LEN + 8) as usize,
        )
    }

    /// File offset of index block `i`.
    pub fn block_offset(&self, i: usize) -> u64 {
        self.fence(i).1
    }

    /// The entries of index block `i < block_count` (count × `ENTRY_LEN` bytes), checked.
    pub fn block(&self, i: usize) -> Result<&[u8]> {
        let (first, offset, count) = self.fence(i);
        let offset = offset as usize; // in bounds: checked at open
        let len = block_len(count);
        let block = &self.map[offset..offset + len];
        let entries = &block[2..len - 4];
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.verified[word].load(Ordering::Relaxed) & bit != 0 {
            return Ok(entries);
        }
        let stored_count = be_u16(block, 0) as usize;
        if stored_count != count {
            return Err(self.corrupt(
                offset as u64,
                format!("index block {i} has {stored_count} entries, its fence says {count}"),
            ));
        }
        let stored = be_u32(block, len - 4);
        let actual = walproto::crc::crc32c(&block[..len - 4]);
        if stored != actual {
            return Err(self.corrupt(
                offset as u64,
                format!(
                    "index block {i} checksum mismatch: stored {stored:08X}, computed {actual:08X}"
                ),
            ));
        }
        if &entries[..SORT_LEN] != first {
            return Err(self.corrupt(
                offset as u64,
                format!("index block {i} does not start with its fence's key"),
            ));
        }
        self.verified[word].fetch_or(bit, Ordering::Relaxed);
        Ok(entries)
    }

    /// Position (block, entry) of the last entry whose (key, LSN) is ≤ `target`.
    pub fn seek_le(&self, target: &[u8; SORT_LEN]) -> Result<Option<(usize, usize)>> {
        // Number of blocks whose first entry is <= target.
        let (mut lo, mut hi) = (0, self.block_count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.fence(mid).0 <= &target[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(None);
        }
        let b = lo - 1;
        let entries = self.block(b)?;
        let count = entries.len() / ENTRY_LEN;
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = mid * ENTRY_LEN;
            if entries[at..at + SORT_LEN] <= target[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // lo >= 1: the block's first entry equals its fence key, which is <= target.
        Ok(Some((b, lo.saturating_sub(1))))
    }

    /// The stored bytes of a value, checked against the entry's crc and decompressed.
    pub fn read_value(&self, h: &ValueHandle, what: impl Fn() -> String) -> Result<Cow<'_, [u8]>> {
        let stored = self.read_stored(h, &what)?;
        if h.flags & FLAG_LZ4 != 0 {
            decompress(stored)
                .map(Cow::Owned)
                .map_err(|reason| self.corrupt(h.offset, format!("{}: {reason}", what())))
        } else {
            Ok(Cow::Borrowed(stored))
        }
    }

    /// The stored bytes of a value as they are in the file (compressed if the handle says
    /// so), checked against the entry's crc.
    pub fn read_stored(&self, h: &ValueHandle, what: impl Fn() -> String) -> Result<&[u8]> {
        let start = h.offset;
        let end = start.checked_add(u64::from(h.len));
        if start < HEADER_LEN as u64 || end.is_none_or(|e| e > self.fence_offset as u64) {
            return Err(self.corrupt(
                start,
                format!(
                    "{}: value of {} bytes at {start} is outside the data area",
                    what(),
                    h.len
                ),
            ));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(self.corrupt(
                start,
                format!("{}: unknown entry flags 0x{:02X}", what(), h.flags),
            ));
        }
        let stored = &self.map[start as usize..start as usize + h.len as usize];
        let actual = walproto::crc::crc32c(stored);
        if actual != h.crc {
            return Err(self.corrupt(
                start,
                format!(
                    "{}: value checksum mismatch: stored {:08X}, computed {actual:08X}",
                    what(),
                    h.crc
                ),
            ));
        }
        Ok(stored)
    }
}

/// All entries of a layer in file order, checking everything a scan can check: the index
/// blocks' crcs, strictly increasing (key, LSN) inside the layer's ranges, known flags, and
/// that values and index blocks tile the data area with no gap or overlap.
pub(crate) struct RawEntries<'a> {
    file: &'a LayerFile,
    block: usize,
    index: usize,
    expected: u64,
    prev: Option<[u8; SORT_LEN]>,
    done: bool,
}

impl<'a> RawEntries<'a> {
    pub fn new(file: &'a LayerFile) -> RawEntries<'a> {
        RawEntries {
            file,
            block: 0,
            index: 0,
            expected: HEADER_LEN as u64,
            prev: None,
            done: false,
        }
    }

    /// Entries from the index block that holds `start`'s first version (the caller skips
    /// the smaller keys before it), checked as [`RawEntries::new`] checks them from there on.
    pub fn from_key(file: &'a LayerFile, start: Key) -> RawEntries<'a> {
        let target = sort_key(start, Lsn(0));
        // Blocks whose first entry sorts before `start`: the last of them may hold it.
        let (mut lo, mut hi) = (0, file.block_count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if file.fence(mid).0 < &target[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let block = lo.saturating_sub(1);
        // The block's values come right after the previous index block.
        let expected = match block.checked_sub(1) {
            None => HEADER_LEN as u64,
            Some(prev) => {
                let (_, offset, count) = file.fence(prev);
                offset + block_len(count) as u64
            }
        };
        RawEntries {
            file,
            block,
            index: 0,
            expected,
            prev: None,
            done: false,
        }
    }

    /// Keys that cut the layer's index into about `parts` pieces of equal entry counts,
    /// ascending and each above the layer's first key (fewer when the index has few blocks).
    pub fn split_keys(file: &LayerFile, parts: usize) -> Vec<Key> {
        let blocks = file.block_count;
        let mut keys: Vec<Key> = Vec::new();
        for i in 1..parts {
            let b = blocks * i / parts;
            if b == 0 || b >= blocks {
                continue;
            }
            let key = key_at(file.fence(b).0, 0);
            if key > key_at(file.fence(0).0, 0) && keys.last().is_none_or(|&k| key > k) {
                keys.push(key);
            }
        }
        keys
    }

    fn step(&mut self) -> Result<Option<RawEntry>> {
        let f = self.file;
        loop {
            if self.block >= f.block_count {
                if self.expected != f.fence_offset as u64 {
                    return Err(f.corrupt(
                        self.expected,
                        format!(
                            "data area ends at {}, but the fence array starts at {}",
                            self.expected, f.fence_offset
                        ),
                    ));
                }
                return Ok(None);
            }
            let entries = f.block(self.block)?;
            let count = entries.len() / ENTRY_LEN;
            if self.index == count {
                let offset = f.block_offset(self.block);
                if offset != self.expected {
                    return Err(f.corrupt(
                        offset,
                        format!(
                            "index block {} at {offset}, expected right after its values at {}",
                            self.block, self.expected
                        ),
                    ));
                }
                self.expected += block_len(count) as u64;
                self.block += 1;
                self.index = 0;
                continue;
            }
            let at = self.index * ENTRY_LEN;
            let entry_pos = f.block_offset(self.block) + 2 + at as u64;
            let e = RawEntry::decode(&entries[at..at + ENTRY_LEN]);
            let sk = &entries[at..at + SORT_LEN];
            let bad = |reason: String| {
                f.corrupt(entry_pos, format!("entry ({}, {}): {reason}", e.key, e.lsn))
            };
            if self.prev.is_some_and(|p| p[..] >= *sk) {
                return Err(bad("entries out of order".into()));
            }
            if !f.desc.key_range.contains(&e.key) || !f.desc.lsn_range.contains(&e.lsn) {
                return Err(bad("outside the layer's ranges".into()));
            }
            if e.flags & !KNOWN_FLAGS != 0 {
                return Err(bad(format!("unknown flags 0x{:02X}", e.flags)));
            }
            if f.desc.kind == LayerKind::Image && !e.will_init() {
                return Err(bad("image entry without the will_init flag".into()));
            }
            if e.offset != self.expected {
                return Err(bad(format!(
                    "value at {}, expected at {}",
                    e.offset, self.expected
                )));
            }
            self.expected += u64::from(e.len);
            let mut p = [0u8; SORT_LEN];
            p.copy_from_slice(sk);
            self.prev = Some(p);
            self.index += 1;
            return Ok(Some(e));
        }
    }
}

impl Iterator for RawEntries<'_> {
    type Item = Result<RawEntry>;

    fn next(&mut self) -> Option<Result<RawEntry>> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
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

/// Position of an entry when walking one key's versions newest-first.
pub(crate) struct Backwards<'a> {
    file: &'a LayerFile,
    key: Key,
    /// Next (block, entry) to yield, if any.
    pos: Option<(usize, usize)>,
}

impl<'a> Backwards<'a> {
    pub fn new(file: &'a LayerFile, key: Key, lsn: Lsn) -> Result<Backwards<'a>> {
        let pos = file.seek_le(&sort_key(key, lsn))?;
        Ok(Backwards { file, key, pos })
    }

    pub fn step(&mut self) -> Result<Option<RawEntry>> {
        let Some((b, i)) = self.pos else {
            return Ok(None);
        };
        let entries = self.file.block(b)?;
        let at = i * ENTRY_LEN;
        if at + ENTRY_LEN > entries.len() {
            self.pos = None;
            return Ok(None);
        }
        let e = RawEntry::decode(&entries[at..at + ENTRY_LEN]);
        if e.key != self.key {
            self.pos = None;
            return Ok(None);
        }
        self.pos = if i > 0 {
            Some((b, i - 1))
        } else if b > 0 {
            let (_, _, count) = self.file.fence(b - 1);
            Some((b - 1, count - 1))
        } else {
            None
        };
        Ok(Some(e))
    }
}
