//! Redo of B-tree records (`access/nbtree/nbtxlog.c`), one block at a time.
//!
//! Page splits rebuild the left page in item order on a fresh page and the right page from the
//! logged tuples; posting-list splits and deduplication are replayed with the same algorithms
//! as the primary (`_bt_swap_posting`, `_bt_dedup_*`, `_bt_update_posting`), so tuples land on
//! the same bytes and consistency checking compares equal.

use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::btree::*;

use super::itup::{self, IndexTuple};
use super::page::{self, perr, AddItem, PResult, Page};

pub const BTP_LEAF: u16 = 1 << 0;
pub const BTP_ROOT: u16 = 1 << 1;
pub const BTP_DELETED: u16 = 1 << 2;
pub const BTP_META: u16 = 1 << 3;
pub const BTP_HALF_DEAD: u16 = 1 << 4;
pub const BTP_SPLIT_END: u16 = 1 << 5;
pub const BTP_HAS_GARBAGE: u16 = 1 << 6;
pub const BTP_INCOMPLETE_SPLIT: u16 = 1 << 7;
pub const BTP_HAS_FULLXID: u16 = 1 << 8;
/// `sizeof(BTPageOpaqueData)`.
pub const BT_OPAQUE_SIZE: usize = 16;
const BTREE_MAGIC: u32 = 0x053162;
const P_NONE: u32 = 0;
const P_HIKEY: usize = 1;
const NO_SHUFFLE: AddItem = AddItem {
    overwrite: false,
    is_heap: false,
};

/// `BTPageOpaqueData` at `pd_special`: prev, next, level, flags, cycleid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opaque {
    pub prev: u32,
    pub next: u32,
    pub level: u32,
    pub flags: u16,
    pub cycleid: u16,
}

fn opaque_pos(p: &Page) -> PResult<usize> {
    let s = page::special(p);
    if s + BT_OPAQUE_SIZE > p.len() {
        return perr!("pd_special {s} leaves no room for the btree opaque data");
    }
    Ok(s)
}

pub fn opaque(p: &Page) -> PResult<Opaque> {
    let s = opaque_pos(p)?;
    Ok(Opaque {
        prev: page::get_u32(p, s)?,
        next: page::get_u32(p, s + 4)?,
        level: page::get_u32(p, s + 8)?,
        flags: page::get_u16(p, s + 12)?,
        cycleid: page::get_u16(p, s + 14)?,
    })
}

pub fn set_opaque(p: &mut Page, o: Opaque) -> PResult<()> {
    let s = opaque_pos(p)?;
    page::put_u32(p, s, o.prev)?;
    page::put_u32(p, s + 4, o.next)?;
    page::put_u32(p, s + 8, o.level)?;
    page::put_u16(p, s + 12, o.flags)?;
    page::put_u16(p, s + 14, o.cycleid)
}

/// `_bt_pageinit` followed by setting the opaque fields.
fn init_page(p: &mut Page, o: Opaque) -> PResult<()> {
    page::init(p, BT_OPAQUE_SIZE);
    set_opaque(p, o)
}

/// `P_FIRSTDATAKEY`: the high key occupies offset 1 unless the page is rightmost.
fn first_data_key(o: &Opaque) -> usize {
    if o.next == P_NONE {
        1
    } else {
        2
    }
}

fn blkno_of(rec: &DecodedRecord, id: u8) -> Option<u32> {
    rec.block(id).map(|b| b.blkno)
}

fn parse(rec: &DecodedRecord) -> PResult<BtreeRecord> {
    BtreeRecord::parse_record(rec).map_err(|e| page::PageError(e.to_string()))
}

/// Applies a Btree record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let id = blk.id;
    let data = rec.block_data(blk);
    match parse(rec)? {
        BtreeRecord::Insert { op, offnum } => match id {
            0 => {
                if op == XLOG_BTREE_INSERT_POST {
                    insert_post(p, data, offnum as usize)?;
                } else {
                    page::add_item(p, data, offnum as usize, NO_SHUFFLE)?;
                }
                page::set_lsn(p, lsn);
                Ok(())
            }
            1 => clear_incomplete_split(p, lsn),
            2 => restore_meta(p, data, lsn),
            _ => perr!("unexpected block {id}"),
        },
        BtreeRecord::Split { left, split } => match id {
            0 => split_left(rec, p, data, left, &split),
            1 => {
                let o = Opaque {
                    prev: blkno_of(rec, 0).unwrap_or(P_NONE),
                    next: blkno_of(rec, 2).unwrap_or(P_NONE),
                    level: split.level,
                    flags: if split.level == 0 { BTP_LEAF } else { 0 },
                    cycleid: 0,
                };
                init_page(p, o)?;
                restore_page(p, data)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            2 => {
                let mut o = opaque(p)?;
                o.prev = blkno_of(rec, 1).unwrap_or(P_NONE);
                set_opaque(p, o)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            3 => clear_incomplete_split(p, lsn),
            _ => perr!("unexpected block {id}"),
        },
        BtreeRecord::Dedup { nintervals } => {
            super::btree_dedup::redo_dedup(p, data, nintervals as usize)?;
            page::set_lsn(p, lsn);
            Ok(())
        }
        BtreeRecord::Delete {
            ndeleted, nupdated, ..
        }
        | BtreeRecord::Vacuum { ndeleted, nupdated } => {
            super::btree_dedup::redo_delete(p, data, ndeleted as usize, nupdated as usize)?;
            let mut o = opaque(p)?;
            o.flags &= !BTP_HAS_GARBAGE;
            set_opaque(p, o)?;
            page::set_lsn(p, lsn);
            Ok(())
        }
        BtreeRecord::MarkPageHalfdead {
            poffset,
            leftblk,
            rightblk,
            topparent,
            ..
        } => match id {
            1 => {
                let poffset = poffset as usize;
                let next = page::item_range(p, poffset + 1)?;
                let rightsib = IndexTuple(&p[next]).block()?;
                let cur = page::item_range(p, poffset)?;
                itup::set_block(&mut p[cur], rightsib)?;
                page::index_tuple_delete(p, poffset + 1)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            0 => {
                let o = Opaque {
                    prev: leftblk,
                    next: rightblk,
                    level: 0,
                    flags: BTP_HALF_DEAD | BTP_LEAF,
                    cycleid: 0,
                };
                half_dead_leaf(p, o, topparent, lsn)
            }
            _ => perr!("unexpected block {id}"),
        },
        BtreeRecord::UnlinkPage { unlink: u, .. } => match id {
            1 => {
                let mut o = opaque(p)?;
                o.next = u.rightsib;
                set_opaque(p, o)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            0 => {
                let mut flags = BTP_DELETED | BTP_HAS_FULLXID;
                if u.level == 0 {
                    flags |= BTP_LEAF;
                }
                let o = Opaque {
                    prev: u.leftsib,
                    next: u.rightsib,
                    level: u.level,
                    flags,
                    cycleid: 0,
                };
                init_page(p, o)?;
                // BTPageSetDeleted: the contents are a BTDeletedPageData with safexid.
                page::set_lower(p, page::SIZE_OF_PAGE_HEADER + 8);
                page::set_upper(p, page::special(p));
                p[24..32].copy_from_slice(&u.safexid.to_le_bytes());
                page::set_lsn(p, lsn);
                Ok(())
            }
            2 => {
                let mut o = opaque(p)?;
                o.prev = u.leftsib;
                set_opaque(p, o)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            3 => {
                let o = Opaque {
                    prev: u.leafleftsib,
                    next: u.leafrightsib,
                    level: 0,
                    flags: BTP_HALF_DEAD | BTP_LEAF,
                    cycleid: 0,
                };
                half_dead_leaf(p, o, u.leaftopparent, lsn)
            }
            4 => restore_meta(p, data, lsn),
            _ => perr!("unexpected block {id}"),
        },
        BtreeRecord::NewRoot { level, .. } => match id {
            0 => {
                let mut flags = BTP_ROOT;
                if level == 0 {
                    flags |= BTP_LEAF;
                }
                let o = Opaque {
                    prev: P_NONE,
                    next: P_NONE,
                    level,
                    flags,
                    cycleid: 0,
                };
                init_page(p, o)?;
                if level > 0 {
                    restore_page(p, data)?;
                }
                page::set_lsn(p, lsn);
                Ok(())
            }
            1 => clear_incomplete_split(p, lsn),
            2 => restore_meta(p, data, lsn),
            _ => perr!("unexpected block {id}"),
        },
        BtreeRecord::ReusePage { .. } => Ok(()),
        BtreeRecord::MetaCleanup(_) => restore_meta(p, data, lsn),
    }
}

/// `_bt_clear_incomplete_split`.
fn clear_incomplete_split(p: &mut Page, lsn: u64) -> PResult<()> {
    let mut o = opaque(p)?;
    o.flags &= !BTP_INCOMPLETE_SPLIT;
    set_opaque(p, o)?;
    page::set_lsn(p, lsn);
    Ok(())
}

/// `_bt_restore_meta`: the metapage is rebuilt from `xl_btree_metadata`.
fn restore_meta(p: &mut Page, data: &[u8], lsn: u64) -> PResult<()> {
    if data.len() < SIZE_OF_BTREE_METADATA {
        return perr!(
            "metapage data of {} bytes, need {SIZE_OF_BTREE_METADATA}",
            data.len()
        );
    }
    let o = Opaque {
        flags: BTP_META,
        ..Default::default()
    };
    init_page(p, o)?;
    // BTMetaPageData at PageGetContents (24): magic, version, root, level, fastroot,
    // fastlevel, last_cleanup_num_delpages, pad, last_cleanup_num_heap_tuples (f64),
    // allequalimage; 48 bytes.
    page::put_u32(p, 24, BTREE_MAGIC)?;
    for i in 0..6 {
        let v = page::get_u32(data, 4 * i)?;
        page::put_u32(p, 28 + 4 * i, v)?;
    }
    p[56..64].copy_from_slice(&(-1.0f64).to_le_bytes());
    p[64] = data[24];
    page::set_lower(p, 24 + 48);
    page::set_lsn(p, lsn);
    Ok(())
}

/// `_bt_restore_page`: the logged upper part of a page, highest item number first, re-added
/// in reverse so the items get back their numbers and physical order.
fn restore_page(p: &mut Page, data: &[u8]) -> PResult<()> {
    let mut items = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let size = page::maxalign(IndexTuple(&data[pos..]).size()?);
        if size == 0 || pos + size > data.len() {
            return perr!(
                "index tuple at {pos} of {size} bytes overruns {} bytes",
                data.len()
            );
        }
        items.push(&data[pos..pos + size]);
        pos += size;
    }
    let n = items.len();
    for (i, item) in items.iter().enumerate().rev() {
        page::add_item(p, item, n - i, NO_SHUFFLE)?;
    }
    Ok(())
}

/// The dummy high key of a half-dead leaf page, pointing at the top parent.
fn half_dead_leaf(p: &mut Page, o: Opaque, topparent: u32, lsn: u64) -> PResult<()> {
    init_page(p, o)?;
    let mut t = [0u8; 8];
    t[6..8].copy_from_slice(&(8u16 | itup::INDEX_ALT_TID_MASK).to_le_bytes());
    itup::set_block(&mut t, topparent)?;
    page::add_item(p, &t, P_HIKEY, NO_SHUFFLE)?;
    page::set_lsn(p, lsn);
    Ok(())
}

/// INSERT_POST: the logged item is `postingoff` then the original new item; the posting list
/// before it is split with `_bt_swap_posting`.
fn insert_post(p: &mut Page, data: &[u8], offnum: usize) -> PResult<()> {
    let postingoff = page::get_u16(data, 0)? as usize;
    let mut newitem = data.get(2..).unwrap_or(&[]).to_vec();
    let prev = offnum
        .checked_sub(1)
        .ok_or_else(|| page::PageError("posting insert at offset 0".into()))?;
    let r = page::item_range(p, prev)?;
    let nposting = itup::swap_posting(&mut newitem, &p[r.clone()], postingoff)?;
    let n = page::maxalign(nposting.len()).min(nposting.len());
    if r.start + n > p.len() {
        return perr!("posting list overruns the page");
    }
    p[r.start..r.start + n].copy_from_slice(&nposting[..n]);
    page::add_item(p, &newitem, offnum, NO_SHUFFLE)?;
    Ok(())
}

/// The left half of a split (block 0): a fresh page with the logged high key, then the items
/// before `firstrightoff` in order, with the new item and the split posting list in place.
fn split_left(
    rec: &DecodedRecord,
    p: &mut Page,
    data: &[u8],
    onleft: bool,
    s: &BtreeSplit,
) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let oo = opaque(p)?;
    let mut pos = 0;
    let mut newitem: Vec<u8> = Vec::new();
    let mut nposting: Option<Vec<u8>> = None;
    let mut replacepostingoff = 0usize;
    if onleft || s.postingoff != 0 {
        let size = page::maxalign(IndexTuple(data).size()?);
        newitem = data
            .get(..size)
            .ok_or_else(|| page::PageError("new item overruns the block data".into()))?
            .to_vec();
        pos = size;
        if s.postingoff != 0 {
            replacepostingoff = (s.newitemoff as usize).saturating_sub(1);
            let r = page::item_range(p, replacepostingoff)?;
            nposting = Some(itup::swap_posting(
                &mut newitem,
                &p[r],
                s.postingoff as usize,
            )?);
        }
    }
    let hikey = data.get(pos..).unwrap_or(&[]);
    let hsize = page::maxalign(IndexTuple(hikey).size()?);
    let Some(hikey) = hikey.get(..hsize) else {
        return perr!("left high key overruns the block data");
    };
    let mut left = page::temp_page_copy_special(p)?;
    page::add_item(&mut left, hikey, P_HIKEY, NO_SHUFFLE)?;
    let mut leftoff = P_HIKEY + 1;
    let mut off = first_data_key(&oo);
    let firstright = s.firstrightoff as usize;
    let newitemoff = s.newitemoff as usize;
    while off < firstright {
        if off == replacepostingoff && nposting.is_some() {
            let np = nposting.as_deref().unwrap_or(&[]);
            page::add_item(&mut left, np, leftoff, NO_SHUFFLE)?;
            leftoff += 1;
            off += 1;
            continue;
        } else if onleft && off == newitemoff {
            page::add_item(&mut left, &newitem, leftoff, NO_SHUFFLE)?;
            leftoff += 1;
        }
        let r = page::item_range(p, off)?;
        page::add_item(&mut left, &p[r], leftoff, NO_SHUFFLE)?;
        leftoff += 1;
        off += 1;
    }
    if onleft && off == newitemoff {
        page::add_item(&mut left, &newitem, leftoff, NO_SHUFFLE)?;
    }
    *p = *left;
    let mut o = opaque(p)?;
    o.flags = BTP_INCOMPLETE_SPLIT;
    if s.level == 0 {
        o.flags |= BTP_LEAF;
    }
    o.next = blkno_of(rec, 1).unwrap_or(P_NONE);
    o.cycleid = 0;
    set_opaque(p, o)?;
    page::set_lsn(p, lsn);
    Ok(())
}
