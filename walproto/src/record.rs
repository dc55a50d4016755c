//! One WAL record: the fixed header, block references, main data (`DecodeXLogRecord`).

use bytes::Bytes;

use crate::consts::*;
use crate::image::BlockImage;
use crate::lsn::Lsn;

/// A relation's physical identity: tablespace, database and relfilenode OIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelFileNode {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
}

impl std::fmt::Display for RelFileNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

/// The fixed 24-byte `XLogRecord` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogRecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl XLogRecordHeader {
    /// Reads the header from the first 24 bytes of `b`, which must be that long.
    pub fn parse(b: &[u8]) -> XLogRecordHeader {
        XLogRecordHeader {
            tot_len: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            xid: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            prev: Lsn(u64::from_le_bytes(b[8..16].try_into().unwrap())),
            info: b[16],
            rmid: b[17],
            crc: u32::from_le_bytes(b[20..24].try_into().unwrap()),
        }
    }

    /// The resource manager's part of `xl_info`.
    pub fn rmgr_info(&self) -> u8 {
        self.info & XLR_RMGR_INFO_MASK
    }
}

/// A block reference of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub id: u8,
    pub rel: RelFileNode,
    pub fork: u8,
    pub blkno: u32,
    /// The raw `fork_flags` byte.
    pub flags: u8,
    /// Where the data the rmgr's redo applies to the block lies in the record's `raw` bytes
    /// (empty if none): read it with [`DecodedRecord::block_data`]. An offset rather than a
    /// `Bytes` slice, because reference counting per slice costs a fifth of decode time.
    pub(crate) data_range: std::ops::Range<u32>,
    pub image: Option<BlockImage>,
}

impl BlockRef {
    /// The record initializes the page from scratch: no earlier version is needed.
    pub fn will_init(&self) -> bool {
        self.flags & BKPBLOCK_WILL_INIT != 0
    }

    pub fn has_data(&self) -> bool {
        self.flags & BKPBLOCK_HAS_DATA != 0
    }

    /// The image must be restored on redo (not one only for WAL consistency checking).
    pub fn applies_image(&self) -> bool {
        self.image.as_ref().is_some_and(|i| i.apply())
    }
}

/// A whole decoded record.
#[derive(Clone, Debug)]
pub struct DecodedRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the next record may start: the end of this one, MAXALIGNed (for XLOG_SWITCH, the
    /// end of the segment). Postgres keys page versions and sets `pd_lsn` with this.
    pub end_lsn: Lsn,
    pub header: XLogRecordHeader,
    pub blocks: Vec<BlockRef>,
    /// Where the main data lies in `raw`: read it with [`DecodedRecord::main_data`].
    pub(crate) main_data_range: std::ops::Range<u32>,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
    /// The whole record as it is in the WAL, page headers removed.
    pub raw: Bytes,
}

impl DecodedRecord {
    pub fn rmid(&self) -> u8 {
        self.header.rmid
    }

    /// `xl_info` with the record machinery's bits masked off.
    pub fn rmgr_info(&self) -> u8 {
        self.header.rmgr_info()
    }

    pub fn xid(&self) -> u32 {
        self.header.xid
    }

    /// Bytes of full-page images in the record (pg_waldump's `fpi_len`).
    pub fn fpi_len(&self) -> u32 {
        self.blocks
            .iter()
            .filter_map(|b| b.image.as_ref())
            .map(|i| i.stored_len() as u32)
            .sum()
    }

    pub fn block(&self, id: u8) -> Option<&BlockRef> {
        self.blocks.iter().find(|b| b.id == id)
    }

    /// The record's main data.
    pub fn main_data(&self) -> &[u8] {
        &self.raw[range(&self.main_data_range)]
    }

    /// The main data as a `Bytes` sharing the record's buffer.
    pub fn main_data_bytes(&self) -> Bytes {
        self.raw.slice(range(&self.main_data_range))
    }

    /// The data of one of this record's block references.
    pub fn block_data(&self, block: &BlockRef) -> &[u8] {
        &self.raw[range(&block.data_range)]
    }

    /// The data of a block reference as a `Bytes` sharing the record's buffer.
    pub fn block_data_bytes(&self, block: &BlockRef) -> Bytes {
        self.raw.slice(range(&block.data_range))
    }
}

fn range(r: &std::ops::Range<u32>) -> std::ops::Range<usize> {
    r.start as usize..r.end as usize
}

impl DecodedRecord {
    /// Assembles a record from parts, for tests elsewhere in the crate: `raw` must hold the
    /// ranges given.
    #[cfg(test)]
    pub(crate) fn from_parts(
        header: XLogRecordHeader,
        blocks: Vec<BlockRef>,
        main_data_range: std::ops::Range<u32>,
        raw: Bytes,
    ) -> DecodedRecord {
        DecodedRecord {
            lsn: Lsn(0x0100_0000),
            end_lsn: Lsn(0x0100_0040),
            header,
            blocks,
            main_data_range,
            origin: None,
            toplevel_xid: None,
            raw,
        }
    }
}

impl DecodedRecord {
    /// Some block reference carries an image only for `wal_consistency_checking` (an image
    /// without `BKPIMAGE_APPLY`).
    pub fn has_check_images(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| b.image.as_ref().is_some_and(|i| !i.apply()))
    }

    /// The record's bytes as Postgres would have written them without
    /// `wal_consistency_checking`: every image without `BKPIMAGE_APPLY` removed from its block
    /// reference (images that redo restores stay), `XLR_CHECK_CONSISTENCY` cleared, `xl_tot_len`
    /// and the CRC rewritten; the header order and everything else unchanged. `None` if the
    /// record has no such image.
    pub fn raw_without_check_images(&self) -> Result<Option<Bytes>, RecordFormatError> {
        if !self.has_check_images() {
            return Ok(None);
        }
        let raw = &self.raw[..];
        let mut cur = Cursor {
            buf: raw,
            pos: SIZE_OF_XLOG_RECORD,
        };
        let mut headers: Vec<u8> = Vec::with_capacity(64);
        // Per block reference, in order: (image length, keep the image, data length).
        let mut payloads: Vec<(usize, bool, usize)> = Vec::with_capacity(self.blocks.len());
        let mut main_len = 0usize;
        let mut datatotal = 0usize;
        while raw.len() - cur.pos > datatotal {
            let start = cur.pos;
            match cur.u8("block id")? {
                XLR_BLOCK_ID_DATA_SHORT => {
                    main_len = cur.u8("main data length")? as usize;
                    headers.extend_from_slice(&raw[start..cur.pos]);
                    break;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    main_len = cur.u32("main data length")? as usize;
                    headers.extend_from_slice(&raw[start..cur.pos]);
                    break;
                }
                XLR_BLOCK_ID_ORIGIN => {
                    cur.u16("replication origin")?;
                    headers.extend_from_slice(&raw[start..cur.pos]);
                }
                XLR_BLOCK_ID_TOPLEVEL_XID => {
                    cur.u32("top-level xid")?;
                    headers.extend_from_slice(&raw[start..cur.pos]);
                }
                id if id <= XLR_MAX_BLOCK_ID => {
                    let flags = cur.u8("fork flags")?;
                    let data_len = cur.u16("block data length")? as usize;
                    // (image header bytes, image length, BKPIMAGE_APPLY)
                    let mut img = None;
                    if flags & BKPBLOCK_HAS_IMAGE != 0 {
                        let img_start = cur.pos;
                        let bimg_len = cur.u16("image length")? as usize;
                        cur.u16("image hole offset")?;
                        let info = cur.u8("image info")?;
                        if info & BKPIMAGE_COMPRESSED_MASK != 0 && info & BKPIMAGE_HAS_HOLE != 0 {
                            cur.u16("image hole length")?;
                        }
                        img = Some((img_start..cur.pos, bimg_len, info & BKPIMAGE_APPLY != 0));
                    }
                    let tail_start = cur.pos;
                    if flags & BKPBLOCK_SAME_REL == 0 {
                        cur.take::<12>("relfilenode")?;
                    }
                    cur.u32("block number")?;
                    let keep = img.as_ref().is_none_or(|i| i.2);
                    headers.push(id);
                    headers.push(if keep {
                        flags
                    } else {
                        flags & !BKPBLOCK_HAS_IMAGE
                    });
                    headers.extend_from_slice(&(data_len as u16).to_le_bytes());
                    if let (true, Some((r, _, _))) = (keep, img.as_ref()) {
                        headers.extend_from_slice(&raw[r.clone()]);
                    }
                    headers.extend_from_slice(&raw[tail_start..cur.pos]);
                    let bimg_len = img.as_ref().map_or(0, |i| i.1);
                    datatotal += bimg_len + data_len;
                    payloads.push((bimg_len, keep, data_len));
                }
                other => return fmt_err(format!("invalid block_id {other} at offset {start}")),
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        out.extend_from_slice(&raw[..SIZE_OF_XLOG_RECORD]);
        out.extend_from_slice(&headers);
        let mut pos = cur.pos;
        let mut payload = |n: usize, what: &str| -> Result<&[u8], RecordFormatError> {
            let s = raw
                .get(pos..pos + n)
                .ok_or_else(|| RecordFormatError(format!("record truncated in {what}")))?;
            pos += n;
            Ok(s)
        };
        for (img_len, keep, data_len) in payloads {
            let img = payload(img_len, "a block image")?;
            if keep {
                out.extend_from_slice(img);
            }
            out.extend_from_slice(payload(data_len, "block data")?);
        }
        out.extend_from_slice(payload(main_len, "the main data")?);
        if pos != raw.len() {
            return fmt_err(format!(
                "{} bytes left over after the payloads",
                raw.len() - pos
            ));
        }
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_le_bytes());
        out[16] &= !XLR_CHECK_CONSISTENCY;
        let crc = record_crc(&out);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        Ok(Some(out.into()))
    }

    /// The record as Postgres would have written it without `wal_consistency_checking`
    /// ([`DecodedRecord::raw_without_check_images`]), decoded; `None` if it has no image
    /// without `BKPIMAGE_APPLY`. The LSNs stay those of the record (a shorter record would
    /// move every later LSN; callers comparing two ingests want them equal).
    pub fn without_check_images(&self) -> Result<Option<DecodedRecord>, RecordFormatError> {
        let Some(raw) = self.raw_without_check_images()? else {
            return Ok(None);
        };
        decode_record_body(self.lsn, self.end_lsn, raw).map(Some)
    }
}

/// Why a record's body cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RecordFormatError(pub String);

fn fmt_err<T>(msg: impl Into<String>) -> Result<T, RecordFormatError> {
    Err(RecordFormatError(msg.into()))
}

/// A bounds-checked little-endian reader over a record.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], RecordFormatError> {
        let Some(bytes) = self.buf.get(self.pos..self.pos + N) else {
            return fmt_err(format!("record truncated while reading {what}"));
        };
        self.pos += N;
        Ok(bytes.try_into().unwrap())
    }
    fn u8(&mut self, what: &str) -> Result<u8, RecordFormatError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, RecordFormatError> {
        Ok(u16::from_le_bytes(self.take(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, RecordFormatError> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }
}

/// Decodes the body of a complete record whose CRC has been checked. `raw` holds exactly
/// `header.tot_len` bytes.
pub fn decode_record_body(
    lsn: Lsn,
    end_lsn: Lsn,
    raw: Bytes,
) -> Result<DecodedRecord, RecordFormatError> {
    let header = XLogRecordHeader::parse(&raw);
    let mut cur = Cursor {
        buf: &raw,
        pos: SIZE_OF_XLOG_RECORD,
    };
    // Blocks are built first with empty payloads; `payload_lens[i]` = (image, data) lengths
    // of `blocks[i]`, sliced out of `raw` once the headers end. No other allocation is needed.
    let mut blocks: Vec<BlockRef> = Vec::new();
    let mut payload_lens = [(0usize, 0usize); XLR_MAX_BLOCK_ID as usize + 1];
    let mut main_data_len = 0usize;
    let mut origin = None;
    let mut toplevel_xid = None;
    let mut datatotal = 0usize;
    let mut last_rel: Option<RelFileNode> = None;

    while cur.buf.len() - cur.pos > datatotal {
        let block_id = cur.u8("block id")?;
        match block_id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_data_len = cur.u8("main data length")? as usize;
                datatotal += main_data_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_data_len = cur.u32("main data length")? as usize;
                datatotal += main_data_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => origin = Some(cur.u16("replication origin")?),
            XLR_BLOCK_ID_TOPLEVEL_XID => toplevel_xid = Some(cur.u32("top-level xid")?),
            id if id <= XLR_MAX_BLOCK_ID => {
                if blocks.last().is_some_and(|b| b.id >= id) {
                    return fmt_err(format!("out-of-order block_id {id}"));
                }
                let flags = cur.u8("fork flags")?;
                let fork = flags & BKPBLOCK_FORK_MASK;
                if fork > MAX_FORKNUM {
                    return fmt_err(format!("block {id} has invalid fork number {fork}"));
                }
                let data_len = cur.u16("block data length")? as usize;
                let has_data = flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return fmt_err(format!(
                        "BKPBLOCK_HAS_DATA set, but no data included (block {id})"
                    ));
                }
                if !has_data && data_len != 0 {
                    return fmt_err(format!(
                        "BKPBLOCK_HAS_DATA not set, but data length is {data_len} (block {id})"
                    ));
                }
                datatotal += data_len;
                let mut image_len = 0;
                let image = if flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = cur.u16("image length")? as usize;
                    let hole_offset = cur.u16("image hole offset")?;
                    let bimg_info = cur.u8("image info")?;
                    let compressed = bimg_info & BKPIMAGE_COMPRESSED_MASK != 0;
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    let hole_length = if compressed {
                        if has_hole {
                            cur.u16("image hole length")?
                        } else {
                            0
                        }
                    } else {
                        (BLCKSZ - bimg_len.min(BLCKSZ)) as u16
                    };
                    datatotal += bimg_len;
                    if has_hole && (hole_offset == 0 || hole_length == 0 || bimg_len == BLCKSZ) {
                        return fmt_err(format!(
                            "BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length} block image length {bimg_len} (block {id})"
                        ));
                    }
                    if !has_hole && (hole_offset != 0 || hole_length != 0) {
                        return fmt_err(format!(
                            "BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_length} (block {id})"
                        ));
                    }
                    if compressed && bimg_len == BLCKSZ {
                        return fmt_err(format!(
                            "BKPIMAGE_COMPRESSED set, but block image length {bimg_len} (block {id})"
                        ));
                    }
                    if !has_hole && !compressed && bimg_len != BLCKSZ {
                        return fmt_err(format!(
                            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is {bimg_len} (block {id})"
                        ));
                    }
                    if hole_offset as usize + hole_length as usize > BLCKSZ {
                        return fmt_err(format!(
                            "image hole offset {hole_offset} length {hole_length} exceeds the page (block {id})"
                        ));
                    }
                    image_len = bimg_len;
                    Some(BlockImage::new(
                        bimg_info,
                        hole_offset,
                        hole_length,
                        Bytes::new(),
                    ))
                } else {
                    None
                };
                let rel = if flags & BKPBLOCK_SAME_REL == 0 {
                    let rel = RelFileNode {
                        spc: cur.u32("tablespace")?,
                        db: cur.u32("database")?,
                        rel: cur.u32("relfilenode")?,
                    };
                    last_rel = Some(rel);
                    rel
                } else {
                    match last_rel {
                        Some(rel) => rel,
                        None => {
                            return fmt_err(format!(
                                "BKPBLOCK_SAME_REL set but no previous rel (block {id})"
                            ))
                        }
                    }
                };
                let blkno = cur.u32("block number")?;
                payload_lens[blocks.len()] = (image_len, data_len);
                blocks.push(BlockRef {
                    id,
                    rel,
                    fork,
                    blkno,
                    flags,
                    data_range: 0..0,
                    image,
                });
            }
            other => return fmt_err(format!("invalid block_id {other}")),
        }
    }

    let remaining = cur.buf.len() - cur.pos;
    if remaining != datatotal {
        return fmt_err(format!(
            "record length mismatch: headers announce {datatotal} payload bytes, {remaining} present"
        ));
    }

    // Payloads follow in block order: each block's image, then its data; then the main data.
    let mut pos = cur.pos;
    for (block, &(image_len, data_len)) in blocks.iter_mut().zip(&payload_lens) {
        if let Some(image) = &mut block.image {
            image.stored = raw.slice(pos..pos + image_len);
            pos += image_len;
        }
        block.data_range = pos as u32..(pos + data_len) as u32;
        pos += data_len;
    }
    let main_data_range = pos as u32..(pos + main_data_len) as u32;
    Ok(DecodedRecord {
        lsn,
        end_lsn,
        header,
        blocks,
        main_data_range,
        origin,
        toplevel_xid,
        raw,
    })
}

/// CRC32C of a record as Postgres computes it: the payload after the header, then the header up
/// to (not including) `xl_crc`.
pub fn record_crc(raw: &[u8]) -> u32 {
    let crc = crate::crc::crc32c(&raw[SIZE_OF_XLOG_RECORD..]);
    crate::crc::crc32c_append(crc, &raw[..20])
}

#[cfg(test)]
mod strip_tests {
    use super::*;
    use crate::encoder::build_record;

    /// Block 0: a consistency-check image (no APPLY) with a hole, and data; block 1 (same
    /// relation): a full-page write (APPLY) with a hole, no data.
    fn record(block0_apply: bool) -> DecodedRecord {
        let hole_len = 4000u16;
        let bimg_len = (BLCKSZ as u16) - hole_len;
        let mut headers = Vec::new();
        let mut payloads = Vec::new();
        for (id, apply) in [(0u8, block0_apply), (1u8, true)] {
            let mut flags = BKPBLOCK_HAS_IMAGE;
            let data: &[u8] = if id == 0 { &[9, 8, 7, 6] } else { &[] };
            if !data.is_empty() {
                flags |= BKPBLOCK_HAS_DATA;
            }
            if id == 1 {
                flags |= BKPBLOCK_SAME_REL;
            }
            headers.push(id);
            headers.push(flags);
            headers.extend_from_slice(&(data.len() as u16).to_le_bytes());
            headers.extend_from_slice(&bimg_len.to_le_bytes());
            headers.extend_from_slice(&100u16.to_le_bytes());
            let info = BKPIMAGE_HAS_HOLE | if apply { BKPIMAGE_APPLY } else { 0 };
            headers.push(info);
            if id == 0 {
                for v in [1663u32, 5, 16384] {
                    headers.extend_from_slice(&v.to_le_bytes());
                }
            }
            headers.extend_from_slice(&(10 + id as u32).to_le_bytes());
            payloads.extend(std::iter::repeat_n(id + 1, bimg_len as usize));
            payloads.extend_from_slice(data);
        }
        headers.extend_from_slice(&payloads);
        let raw = build_record(
            10,
            XLR_CHECK_CONSISTENCY,
            7,
            Lsn(0x0100_0000),
            &headers,
            &[],
        );
        decode_record_body(Lsn(0x0200_0000), Lsn(0x0200_4000), raw.into()).unwrap()
    }

    #[test]
    fn without_check_images_drops_only_them() {
        let rec = record(false);
        assert!(rec.has_check_images());
        let s = rec
            .without_check_images()
            .unwrap()
            .expect("an image to strip");
        assert_eq!((s.lsn, s.end_lsn), (rec.lsn, rec.end_lsn));
        // The image and its 5-byte header are gone.
        let image = rec.blocks[0].image.as_ref().unwrap().stored.len();
        assert_eq!(s.raw.len(), rec.raw.len() - image - 5);
        assert_eq!(s.header.tot_len as usize, s.raw.len());
        assert_eq!(record_crc(&s.raw), s.header.crc);
        assert_eq!(s.header.info & XLR_CHECK_CONSISTENCY, 0);
        assert_eq!(s.blocks.len(), 2);
        let (a, b) = (&s.blocks[0], &s.blocks[1]);
        assert!(a.image.is_none() && a.flags & BKPBLOCK_HAS_IMAGE == 0);
        assert_eq!((a.rel, a.blkno), (rec.blocks[0].rel, 10));
        assert_eq!(s.block_data(a), &[9, 8, 7, 6]);
        assert_eq!(b.image, rec.blocks[1].image);
        assert_eq!((b.rel, b.blkno), (a.rel, 11));
        assert!(!s.has_check_images());
        assert!(s.without_check_images().unwrap().is_none());
        // Only full-page writes: nothing to strip.
        assert!(record(true).without_check_images().unwrap().is_none());
    }
}
