//! Removes the `wal_consistency_checking` images (images without `BKPIMAGE_APPLY`) from a raw
//! record, so that what a timeline stores for a natively redone record is what Postgres writes
//! without consistency checking. The images only check redo; keeping them would multiply the
//! stored bytes (every block of every record carries an 8 KiB page) and could never change a
//! page. The result is a valid record: lengths, `XLR_CHECK_CONSISTENCY` and the CRC are
//! rewritten.

use bytes::Bytes;
use walproto::consts::*;
use walproto::record::{record_crc, DecodedRecord};

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| format!("record truncated at offset {}", self.pos))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// The record without its consistency-check images, or `None` if it has none.
pub fn strip_check_images(rec: &DecodedRecord) -> Result<Option<Bytes>, String> {
    if !rec
        .blocks
        .iter()
        .any(|b| b.image.as_ref().is_some_and(|i| !i.apply()))
    {
        return Ok(None);
    }
    let raw = &rec.raw[..];
    let mut cur = Cur {
        b: raw,
        pos: SIZE_OF_XLOG_RECORD,
    };
    let mut headers: Vec<u8> = Vec::with_capacity(64);
    // Per block, in order: (image length, keep the image, data length).
    let mut payloads: Vec<(usize, bool, usize)> = Vec::new();
    let mut main_len = 0usize;
    let mut datatotal = 0usize;
    while raw.len() - cur.pos > datatotal {
        let start = cur.pos;
        let id = cur.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = cur.u8()? as usize;
                headers.extend_from_slice(&raw[start..cur.pos]);
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = cur.u32()? as usize;
                headers.extend_from_slice(&raw[start..cur.pos]);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                cur.u16()?;
                headers.extend_from_slice(&raw[start..cur.pos]);
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                cur.u32()?;
                headers.extend_from_slice(&raw[start..cur.pos]);
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                let flags = cur.u8()?;
                let data_len = cur.u16()? as usize;
                let mut img = None;
                if flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let img_start = cur.pos;
                    let bimg_len = cur.u16()? as usize;
                    cur.u16()?;
                    let info = cur.u8()?;
                    if info & BKPIMAGE_COMPRESSED_MASK != 0 && info & BKPIMAGE_HAS_HOLE != 0 {
                        cur.u16()?;
                    }
                    img = Some((img_start..cur.pos, bimg_len, info & BKPIMAGE_APPLY != 0));
                }
                let tail_start = cur.pos;
                if flags & BKPBLOCK_SAME_REL == 0 {
                    cur.take(12)?;
                }
                cur.u32()?;
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
            other => return Err(format!("invalid block id {other} at offset {start}")),
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..SIZE_OF_XLOG_RECORD]);
    out.extend_from_slice(&headers);
    for (img_len, keep, data_len) in payloads {
        let img = cur.take(img_len)?;
        if keep {
            out.extend_from_slice(img);
        }
        out.extend_from_slice(cur.take(data_len)?);
    }
    out.extend_from_slice(cur.take(main_len)?);
    if cur.pos != raw.len() {
        return Err(format!(
            "{} bytes left over after the payloads",
            raw.len() - cur.pos
        ));
    }
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[16] &= !XLR_CHECK_CONSISTENCY;
    let crc = record_crc(&out);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    Ok(Some(out.into()))
}
