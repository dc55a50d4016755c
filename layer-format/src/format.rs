//! The on-disk layout shared by delta and image layer files (format version 1).
//!
//! Every integer is big-endian. An LSN stored next to a key is big-endian too, so a 26-byte
//! `key ‖ lsn` compares bytewise in (key, LSN) order, which the index searches rely on.
//!
//! ```text
//! [header][value][value]…[index block][value]…[index block]…[fence array][footer]
//! ```
//!
//! The writer streams: each value is appended as it arrives, and its index entry goes into a
//! pending index block (at most [`INDEX_BLOCK_MAX`] bytes); a full block is written inline,
//! right after the values it indexes, and only its 36-byte fence stays in memory. Values and
//! index blocks tile the space between the header and the fence array with no gaps, so every
//! byte of the file is covered by exactly one checksum.
//!
//! **Header** (68 bytes, at offset 0)
//!
//! | offset | size | field                                                            |
//! |--------|------|------------------------------------------------------------------|
//! | 0      | 8    | magic `STRATALY`                                                 |
//! | 8      | 2    | format version (1)                                               |
//! | 10     | 1    | layer kind: 1 delta, 2 image                                     |
//! | 11     | 1    | flags, must be 0                                                 |
//! | 12     | 18   | key range start (inclusive)                                      |
//! | 30     | 18   | key range end (exclusive)                                        |
//! | 48     | 8    | LSN range start (inclusive; an image layer's LSN)                |
//! | 56     | 8    | LSN range end (exclusive; image layer: LSN + 1)                  |
//! | 64     | 4    | crc32c of bytes 0..64                                            |
//!
//! **Value**: the stored bytes, framed by its index entry (offset, length, crc32c). A delta
//! layer stores [`crate::Value::encode`] bytes, an image layer the page bytes. With the entry's
//! lz4 flag, the stored bytes are `[uncompressed length u32][lz4 block]` (see
//! [`crate::compress`]).
//!
//! **Index entry** (43 bytes)
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 18   | key                                                          |
//! | 18     | 8    | LSN (image layer: the layer's LSN)                           |
//! | 26     | 8    | offset of the stored value in the file                       |
//! | 34     | 4    | length of the stored value                                   |
//! | 38     | 4    | crc32c of the stored value                                   |
//! | 42     | 1    | flags: bit 0 `will_init` (always set in image layers), bit 1 lz4 |
//!
//! **Index block** (`6 + 43·n` bytes, at most 4,096, so 1 ≤ n ≤ 95 entries in (key, LSN)
//! order): `count u16`, `count` entries, crc32c u32 of the preceding bytes of the block.
//!
//! **Fence** (36 bytes, one per index block, in file order): first key (18), first LSN (8),
//! block offset u64, entry count u16. The fence array is covered by a crc32c in the footer.
//!
//! **Footer** (36 bytes, the last bytes of the file)
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 8    | offset of the fence array               |
//! | 8      | 4    | number of index blocks (fences)         |
//! | 12     | 4    | crc32c of the fence array               |
//! | 16     | 8    | number of entries                       |
//! | 24     | 8    | magic `STRATAFT`                        |
//! | 32     | 4    | crc32c of footer bytes 0..32            |
//!
//! A reader checks the header, footer and fence array (and their consistency: sizes, offsets,
//! order) at open; an index block's crc when it first uses the block (then remembers it in a
//! bitmap, so warm lookups do not re-hash 4 KiB); a value's crc whenever it reads the value.
//! A full scan additionally checks that values and blocks tile the file and that entries are
//! in strictly increasing (key, LSN) order inside the layer's ranges, so flipping any single
//! byte of a file is detected by open + a scan.

use walproto::Lsn;

use crate::key::{Key, KEY_SIZE};

pub(crate) const HEADER_MAGIC: &[u8; 8] = b"STRATALY";
pub(crate) const FOOTER_MAGIC: &[u8; 8] = b"STRATAFT";
pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const KIND_DELTA: u8 = 1;
pub(crate) const KIND_IMAGE: u8 = 2;

pub(crate) const HEADER_LEN: usize = 68;
pub(crate) const FOOTER_LEN: usize = 36;
pub(crate) const ENTRY_LEN: usize = 43;
pub(crate) const FENCE_LEN: usize = 36;
/// Largest index block in bytes.
pub const INDEX_BLOCK_MAX: usize = 4096;
pub(crate) const BLOCK_OVERHEAD: usize = 6;
pub(crate) const MAX_ENTRIES_PER_BLOCK: usize = (INDEX_BLOCK_MAX - BLOCK_OVERHEAD) / ENTRY_LEN;
/// `key ‖ lsn`, the sort key of an entry.
pub(crate) const SORT_LEN: usize = KEY_SIZE + 8;

pub(crate) const FLAG_WILL_INIT: u8 = 0x01;
pub(crate) const FLAG_LZ4: u8 = 0x02;
pub(crate) const KNOWN_FLAGS: u8 = FLAG_WILL_INIT | FLAG_LZ4;

pub(crate) fn block_len(count: usize) -> usize {
    BLOCK_OVERHEAD + count * ENTRY_LEN
}

pub(crate) fn sort_key(key: Key, lsn: Lsn) -> [u8; SORT_LEN] {
    let mut b = [0u8; SORT_LEN];
    b[..KEY_SIZE].copy_from_slice(key.as_bytes());
    b[KEY_SIZE..].copy_from_slice(&lsn.0.to_be_bytes());
    b
}

/// Reads a big-endian integer at `at`; callers guarantee the bounds.
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

pub(crate) fn key_at(b: &[u8], at: usize) -> Key {
    let mut a = [0u8; KEY_SIZE];
    a.copy_from_slice(&b[at..at + KEY_SIZE]);
    Key::from_bytes(a)
}

/// The fixed part of a layer: kind and ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: u8,
    pub key_start: Key,
    pub key_end: Key,
    pub lsn_start: Lsn,
    pub lsn_end: Lsn,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(HEADER_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[10] = self.kind;
        b[11] = 0;
        b[12..30].copy_from_slice(self.key_start.as_bytes());
        b[30..48].copy_from_slice(self.key_end.as_bytes());
        b[48..56].copy_from_slice(&self.lsn_start.0.to_be_bytes());
        b[56..64].copy_from_slice(&self.lsn_end.0.to_be_bytes());
        let crc = walproto::crc::crc32c(&b[..64]);
        b[64..68].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and checks a header; the error is `(offset, reason)`.
    pub fn decode(b: &[u8]) -> Result<Header, (u64, String)> {
        if b.len() < HEADER_LEN {
            return Err((0, format!("file too short for a header: {} bytes", b.len())));
        }
        if &b[0..8] != HEADER_MAGIC {
            return Err((0, format!("bad magic {:02X?}, not a layer file", &b[0..8])));
        }
        let version = be_u16(b, 8);
        if version != FORMAT_VERSION {
            return Err((
                8,
                format!("unsupported format version {version} (this build reads {FORMAT_VERSION})"),
            ));
        }
        let stored = be_u32(b, 64);
        let actual = walproto::crc::crc32c(&b[..64]);
        if stored != actual {
            return Err((
                64,
                format!("header checksum mismatch: stored {stored:08X}, computed {actual:08X}"),
            ));
        }
        if b[11] != 0 {
            return Err((11, format!("unknown header flags 0x{:02X}", b[11])));
        }
        let kind = b[10];
        if kind != KIND_DELTA && kind != KIND_IMAGE {
            return Err((10, format!("unknown layer kind {kind}")));
        }
        Ok(Header {
            kind,
            key_start: key_at(b, 12),
            key_end: key_at(b, 30),
            lsn_start: Lsn(be_u64(b, 48)),
            lsn_end: Lsn(be_u64(b, 56)),
        })
    }
}

/// The trailer of a layer file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    pub fence_offset: u64,
    pub block_count: u32,
    pub fence_crc: u32,
    pub entry_count: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&self.fence_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.block_count.to_be_bytes());
        b[12..16].copy_from_slice(&self.fence_crc.to_be_bytes());
        b[16..24].copy_from_slice(&self.entry_count.to_be_bytes());
        b[24..32].copy_from_slice(FOOTER_MAGIC);
        let crc = walproto::crc::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and checks the footer bytes; the error is `(offset within footer, reason)`.
    pub fn decode(b: &[u8]) -> Result<Footer, (u64, String)> {
        debug_assert_eq!(b.len(), FOOTER_LEN);
        if &b[24..32] != FOOTER_MAGIC {
            return Err((24, format!("bad footer magic {:02X?}", &b[24..32])));
        }
        let stored = be_u32(b, 32);
        let actual = walproto::crc::crc32c(&b[..32]);
        if stored != actual {
            return Err((
                32,
                format!("footer checksum mismatch: stored {stored:08X}, computed {actual:08X}"),
            ));
        }
        Ok(Footer {
            fence_offset: be_u64(b, 0),
            block_count: be_u32(b, 8),
            fence_crc: be_u32(b, 12),
            entry_count: be_u64(b, 16),
        })
    }
}

/// One decoded index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub key: Key,
    pub lsn: Lsn,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    pub flags: u8,
}

impl RawEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.lsn.0.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        out.push(self.flags);
    }

    /// Decodes the entry at the start of `b` (at least `ENTRY_LEN` bytes).
    pub fn decode(b: &[u8]) -> RawEntry {
        RawEntry {
            key: key_at(b, 0),
            lsn: Lsn(be_u64(b, 18)),
            offset: be_u64(b, 26),
            len: be_u32(b, 34),
            crc: be_u32(b, 38),
            flags: b[42],
        }
    }
}
