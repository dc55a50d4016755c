//! Redo of BRIN (`access/brin/brin_xlog.c`) records, one block at a time.
//!
//! A BRIN index has three kinds of pages, told apart by the type word at the very end of the
//! 8-byte special space: the metapage (block 0), revmap pages (an array of heap-TID-sized
//! pointers to summary tuples, stored in what is formally the page's free hole), and regular
//! pages holding the summary tuples. Records name their blocks by role:
//!
//! | record          | block 0         | block 1            | block 2        |
//! |-----------------|-----------------|--------------------|----------------|
//! | CREATE_INDEX    | metapage (init) |                    |                |
//! | INSERT          | regular page    | revmap page        |                |
//! | UPDATE          | new regular     | revmap page        | old regular    |
//! | SAMEPAGE_UPDATE | regular page    |                    |                |
//! | REVMAP_EXTEND   | metapage        | new revmap (init)  |                |
//! | DESUMMARIZE     | revmap page     | regular page       |                |

use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};

use super::fields::Fields;
use super::page::{self, perr, AddItem, PResult, Page, SIZE_OF_PAGE_HEADER};

pub const XLOG_BRIN_CREATE_INDEX: u8 = 0x00;
pub const XLOG_BRIN_INSERT: u8 = 0x10;
pub const XLOG_BRIN_UPDATE: u8 = 0x20;
pub const XLOG_BRIN_SAMEPAGE_UPDATE: u8 = 0x30;
pub const XLOG_BRIN_REVMAP_EXTEND: u8 = 0x40;
pub const XLOG_BRIN_DESUMMARIZE: u8 = 0x50;
pub const XLOG_BRIN_OPMASK: u8 = 0x70;
/// The insert or update put the first tuple on a fresh regular page.
pub const XLOG_BRIN_INIT_PAGE: u8 = 0x80;

pub const BRIN_PAGETYPE_META: u16 = 0xF091;
pub const BRIN_PAGETYPE_REVMAP: u16 = 0xF092;
pub const BRIN_PAGETYPE_REGULAR: u16 = 0xF093;
/// `BRIN_EVACUATE_PAGE`, set on the primary without WAL.
pub const BRIN_EVACUATE_PAGE: u16 = 1;
const BRIN_META_MAGIC: u32 = 0xA810_9CFA;

/// `sizeof(BrinSpecialSpace)`: one MAXALIGN unit, the flags then the type in its last 4 bytes.
const SPECIAL_SIZE: usize = 8;
/// `PageGetContents`: the metapage data and the revmap array start right after the header.
const CONTENTS: usize = SIZE_OF_PAGE_HEADER;
/// `sizeof(BrinMetaPageData)`: magic, version, pagesPerRange, lastRevmapPage.
const META_SIZE: usize = 16;
/// `sizeof(ItemPointerData)`.
const TID_SIZE: usize = 6;
/// `REVMAP_PAGE_MAXITEMS`.
pub const REVMAP_PAGE_MAXITEMS: u32 = ((BLCKSZ - CONTENTS - SPECIAL_SIZE) / TID_SIZE) as u32;
const INVALID_BLOCK: u32 = u32::MAX;

/// Where a page's special-space type and flags words are, following its `pd_special`.
fn special_words(p: &Page) -> Option<(usize, usize)> {
    let s = page::special(p);
    (s + SPECIAL_SIZE <= BLCKSZ).then_some((s + 4, s + 6))
}

/// `BrinPageType`, if the special space is inside the page.
pub fn page_type(p: &Page) -> Option<u16> {
    special_words(p).and_then(|(_, t)| page::get_u16(p, t).ok())
}

/// `brin_page_init`.
fn page_init(p: &mut Page, page_type: u16) -> PResult<()> {
    page::init(p, SPECIAL_SIZE);
    page::put_u16(p, BLCKSZ - 2, page_type)
}

/// `xl_brin_insert`, alone or inside `xl_brin_update`.
#[derive(Clone, Copy, Debug)]
struct Insert {
    heap_blk: u32,
    pages_per_range: u32,
    offnum: u16,
}

impl Insert {
    fn parse(f: &Fields, at: usize) -> PResult<Insert> {
        f.need(at + 10)?;
        Ok(Insert {
            heap_blk: f.u32(at)?,
            pages_per_range: f.u32(at + 4)?,
            offnum: f.u16(at + 8)?,
        })
    }
}

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let info = rec.rmgr_info();
    let f = Fields {
        data: rec.main_data(),
        what: "BRIN",
    };
    let data = rec.block_data(blk);
    match (info & XLOG_BRIN_OPMASK, blk.id) {
        (XLOG_BRIN_CREATE_INDEX, 0) => {
            f.need(6)?;
            metapage_init(p, f.u32(0)?, f.u16(4)?)?;
        }
        (XLOG_BRIN_INSERT, id) => {
            let ins = Insert::parse(&f, 0)?;
            insert_part(rec, info, id, ins, data, p)?;
        }
        (XLOG_BRIN_UPDATE, 2) => {
            f.need(2)?;
            page::index_tuple_delete_no_compact(p, f.u16(0)? as usize)?;
        }
        (XLOG_BRIN_UPDATE, id) => {
            let ins = Insert::parse(&f, 4)?;
            insert_part(rec, info, id, ins, data, p)?;
        }
        (XLOG_BRIN_SAMEPAGE_UPDATE, 0) => {
            f.need(2)?;
            page::index_tuple_overwrite(p, f.u16(0)? as usize, data)?;
        }
        (XLOG_BRIN_REVMAP_EXTEND, 0) => {
            f.need(4)?;
            extend_meta(p, f.u32(0)?)?;
        }
        (XLOG_BRIN_REVMAP_EXTEND, 1) => {
            f.need(4)?;
            if f.u32(0)? != blk.blkno {
                return perr!(
                    "REVMAP_EXTEND targets block {} but registers block {}",
                    f.u32(0)?,
                    blk.blkno
                );
            }
            page_init(p, BRIN_PAGETYPE_REVMAP)?;
        }
        (XLOG_BRIN_DESUMMARIZE, id @ (0 | 1)) => {
            f.need(10)?;
            let (ppr, heap_blk) = (f.u32(0)?, f.u32(4)?);
            if id == 0 {
                set_revmap_entry(p, ppr, heap_blk, INVALID_BLOCK, 0)?;
            } else {
                page::index_tuple_delete_no_compact(p, f.u16(8)? as usize)?;
            }
        }
        (op, id) => return perr!("BRIN record {op:#x} has no block {id} to redo"),
    }
    page::set_lsn(p, lsn);
    Ok(())
}

/// The part of INSERT and UPDATE shared by both: the new tuple on block 0 and its revmap
/// entry on block 1, which points at block 0.
fn insert_part(
    rec: &DecodedRecord,
    info: u8,
    id: u8,
    ins: Insert,
    data: &[u8],
    p: &mut Page,
) -> PResult<()> {
    match id {
        0 => {
            if info & XLOG_BRIN_INIT_PAGE != 0 {
                page_init(p, BRIN_PAGETYPE_REGULAR)?;
            }
            let offnum = ins.offnum as usize;
            if offnum == 0 || offnum > page::max_offset(p) + 1 {
                return perr!(
                    "BRIN tuple offset {offnum} beyond max offset {}",
                    page::max_offset(p)
                );
            }
            let overwrite = AddItem {
                overwrite: true,
                is_heap: false,
            };
            page::add_item(p, data, offnum, overwrite)?;
            Ok(())
        }
        1 => {
            let Some(reg) = rec.block(0) else {
                return perr!("BRIN insert without the regular page (block 0)");
            };
            set_revmap_entry(p, ins.pages_per_range, ins.heap_blk, reg.blkno, ins.offnum)
        }
        _ => perr!("BRIN insert/update has no block {id} to redo"),
    }
}

/// `brin_metapage_init`.
fn metapage_init(p: &mut Page, pages_per_range: u32, version: u16) -> PResult<()> {
    page_init(p, BRIN_PAGETYPE_META)?;
    page::put_u32(p, CONTENTS, BRIN_META_MAGIC)?;
    page::put_u32(p, CONTENTS + 4, version as u32)?;
    page::put_u32(p, CONTENTS + 8, pages_per_range)?;
    page::put_u32(p, CONTENTS + 12, 0)?;
    page::set_lower(p, CONTENTS + META_SIZE);
    Ok(())
}

/// The metapage side of REVMAP_EXTEND: the new last revmap page, and pd_lower covering the
/// metadata (older versions left it at the header's end).
fn extend_meta(p: &mut Page, target: u32) -> PResult<()> {
    page::put_u32(p, CONTENTS + 12, target)?;
    page::set_lower(p, CONTENTS + META_SIZE);
    Ok(())
}

/// `brinSetHeapBlockItemptr`: the revmap slot of the range holding `heap_blk` points at
/// (`blkno`, `offnum`), or is invalidated when `offnum` is 0.
fn set_revmap_entry(
    p: &mut Page,
    pages_per_range: u32,
    heap_blk: u32,
    blkno: u32,
    offnum: u16,
) -> PResult<()> {
    if pages_per_range == 0 {
        return perr!("BRIN record with pagesPerRange 0");
    }
    let slot = (heap_blk / pages_per_range) % REVMAP_PAGE_MAXITEMS;
    let at = CONTENTS + slot as usize * TID_SIZE;
    let blkno = if offnum == 0 { INVALID_BLOCK } else { blkno };
    page::put_u16(p, at, (blkno >> 16) as u16)?;
    page::put_u16(p, at + 2, blkno as u16)?;
    page::put_u16(p, at + 4, offnum)
}

/// This resource manager's `rm_mask` (`brin_mask`).
pub fn mask(p: &mut Page) {
    super::mask::mask_page_lsn_and_checksum(p);
    super::mask::mask_page_hint_bits(p);
    let ty = page_type(p);
    if ty == Some(BRIN_PAGETYPE_REGULAR)
        || (ty == Some(BRIN_PAGETYPE_META) && page::lower(p) > SIZE_OF_PAGE_HEADER)
    {
        super::mask::mask_unused_space(p);
    }
    if let Some((flags_at, _)) = special_words(p) {
        if let Ok(f) = page::get_u16(p, flags_at) {
            let _ = page::put_u16(p, flags_at, f & !BRIN_EVACUATE_PAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revmap_capacity() {
        assert_eq!(REVMAP_PAGE_MAXITEMS, 1360);
    }

    #[test]
    fn delete_no_compact_keeps_offsets() {
        let mut p: Box<Page> = Box::new([0; BLCKSZ]);
        page_init(&mut p, BRIN_PAGETYPE_REGULAR).unwrap();
        let add = AddItem::default();
        for (i, b) in [1u8, 2, 3].iter().enumerate() {
            page::add_item(&mut p, &[*b; 16], i + 1, add).unwrap();
        }
        page::index_tuple_delete_no_compact(&mut p, 2).unwrap();
        assert_eq!(page::max_offset(&p), 3);
        assert!(!page::item_id(&p, 2).unwrap().is_used());
        let r3 = page::item_range(&p, 3).unwrap();
        assert_eq!(&p[r3], &[3u8; 16]);
        let r1 = page::item_range(&p, 1).unwrap();
        assert_eq!(&p[r1], &[1u8; 16]);
        page::index_tuple_delete_no_compact(&mut p, 3).unwrap();
        assert_eq!(page::max_offset(&p), 2);
        assert_eq!(page::upper(&p), BLCKSZ - SPECIAL_SIZE - 16);
        assert!(page::index_tuple_delete_no_compact(&mut p, 2).is_err());
    }
}
