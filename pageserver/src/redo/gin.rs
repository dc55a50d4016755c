//! Redo of GIN (`access/gin/ginxlog.c`) records, one block at a time.
//!
//! Entry-tree pages are ordinary index pages (line pointers and index tuples); posting-tree
//! pages are handled in [`data_page`] and their compressed segments in [`posting`]. Splits and
//! entry-page vacuum are logged as forced full-page images, which the framework restores
//! before redo is called; only the child whose incomplete-split flag they clear is redone here.

mod data_page;
mod posting;

use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};

use super::itup::IndexTuple;
use super::page::{self, get_u16, get_u32, perr, AddItem, PResult, Page};

const XLOG_GIN_CREATE_PTREE: u8 = 0x10;
const XLOG_GIN_INSERT: u8 = 0x20;
const XLOG_GIN_SPLIT: u8 = 0x30;
const XLOG_GIN_VACUUM_PAGE: u8 = 0x40;
const XLOG_GIN_DELETE_PAGE: u8 = 0x50;
const XLOG_GIN_UPDATE_META_PAGE: u8 = 0x60;
const XLOG_GIN_INSERT_LISTPAGE: u8 = 0x70;
const XLOG_GIN_DELETE_LISTPAGE: u8 = 0x80;
const XLOG_GIN_VACUUM_DATA_LEAF_PAGE: u8 = 0x90;

/// `ginxlogInsert.flags` and `ginxlogSplit.flags`.
const GIN_INSERT_ISDATA: u16 = 0x01;
const GIN_INSERT_ISLEAF: u16 = 0x02;

/// `GinPageOpaqueData.flags`.
pub const GIN_DATA: u16 = 1 << 0;
pub const GIN_LEAF: u16 = 1 << 1;
pub const GIN_DELETED: u16 = 1 << 2;
pub const GIN_META: u16 = 1 << 3;
pub const GIN_LIST: u16 = 1 << 4;
pub const GIN_LIST_FULLROW: u16 = 1 << 5;
pub const GIN_INCOMPLETE_SPLIT: u16 = 1 << 6;
pub const GIN_COMPRESSED: u16 = 1 << 7;

/// `sizeof(GinPageOpaqueData)`: rightlink, maxoff, flags.
pub const GIN_OPAQUE_SIZE: usize = 8;
/// `sizeof(GinMetaPageData)`, as the records carry it.
const META_SIZE: usize = 56;
const INVALID_BLOCK: u32 = u32::MAX;
const NO_SHUFFLE: AddItem = AddItem {
    overwrite: false,
    is_heap: false,
};

/// `GinPageOpaqueData` at `pd_special`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opaque {
    pub rightlink: u32,
    pub maxoff: u16,
    pub flags: u16,
}

fn opaque_pos(p: &Page) -> PResult<usize> {
    let s = page::special(p);
    if s + GIN_OPAQUE_SIZE > BLCKSZ {
        return perr!("pd_special {s} leaves no room for the GIN opaque data");
    }
    Ok(s)
}

pub fn opaque(p: &Page) -> PResult<Opaque> {
    let s = opaque_pos(p)?;
    Ok(Opaque {
        rightlink: get_u32(p, s)?,
        maxoff: get_u16(p, s + 4)?,
        flags: get_u16(p, s + 6)?,
    })
}

pub fn set_opaque(p: &mut Page, o: Opaque) -> PResult<()> {
    let s = opaque_pos(p)?;
    page::put_u32(p, s, o.rightlink)?;
    page::put_u16(p, s + 4, o.maxoff)?;
    page::put_u16(p, s + 6, o.flags)
}

/// `GinInitPage`: an empty page with these flags and no right sibling.
fn init_page(p: &mut Page, flags: u16) -> PResult<()> {
    page::init(p, GIN_OPAQUE_SIZE);
    set_opaque(
        p,
        Opaque {
            rightlink: INVALID_BLOCK,
            maxoff: 0,
            flags,
        },
    )
}

/// `GinInitMetabuffer` followed by copying the logged `GinMetaPageData` over the defaults.
fn restore_meta(p: &mut Page, meta: &[u8]) -> PResult<()> {
    let Some(meta) = meta.get(..META_SIZE) else {
        return perr!("metadata of {} bytes, need {META_SIZE}", meta.len());
    };
    init_page(p, GIN_META)?;
    let at = page::SIZE_OF_PAGE_HEADER;
    p[at..at + META_SIZE].copy_from_slice(meta);
    page::set_lower(p, at + META_SIZE);
    Ok(())
}

/// The index tuples of a pending-list record, packed one after another (no alignment).
fn packed_tuples(data: &[u8], n: usize) -> PResult<Vec<&[u8]>> {
    // A malformed count must not reserve memory the data cannot back.
    let mut out = Vec::with_capacity(n.min(data.len()));
    let mut pos = 0;
    for _ in 0..n {
        let rest = data.get(pos..).unwrap_or(&[]);
        let size = IndexTuple(rest).size()?;
        let Some(t) = rest.get(..size).filter(|_| size > 0) else {
            return perr!("index tuple of {size} bytes at {pos} overruns the block data");
        };
        out.push(t);
        pos += size;
    }
    Ok(out)
}

/// `ginRedoClearIncompleteSplit`.
fn clear_incomplete_split(p: &mut Page) -> PResult<()> {
    let mut o = opaque(p)?;
    o.flags &= !GIN_INCOMPLETE_SPLIT;
    set_opaque(p, o)
}

/// A block number stored as `BlockIdData` (high half first).
fn block_id(b: &[u8], at: usize) -> PResult<u32> {
    Ok(((get_u16(b, at)? as u32) << 16) | get_u16(b, at + 2)? as u32)
}

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let main = rec.main_data();
    let data = rec.block_data(blk);
    let id = blk.id;
    match rec.rmgr_info() {
        XLOG_GIN_CREATE_PTREE if id == 0 => {
            let size = get_u32(main, 0)? as usize;
            let Some(list) = main.get(4..4 + size) else {
                return perr!("posting list of {size} bytes overruns the record");
            };
            init_page(p, GIN_DATA | GIN_LEAF | GIN_COMPRESSED)?;
            let at = data_page::DATA_START;
            if at + size > page::special(p) {
                return perr!("posting list of {size} bytes does not fit a page");
            }
            p[at..at + size].copy_from_slice(list);
            page::set_lower(p, at + size);
        }
        XLOG_GIN_INSERT => {
            let flags = get_u16(main, 0)?;
            let leaf = flags & GIN_INSERT_ISLEAF != 0;
            match id {
                0 => {
                    // The right half of the child split this insert finishes.
                    let rightchild = if leaf {
                        INVALID_BLOCK
                    } else {
                        block_id(main, 6)?
                    };
                    if flags & GIN_INSERT_ISDATA != 0 {
                        insert_data(p, leaf, rightchild, data)?;
                    } else {
                        insert_entry(p, rightchild, data)?;
                    }
                }
                1 if !leaf => clear_incomplete_split(p)?,
                _ => return perr!("unexpected block {id}"),
            }
        }
        XLOG_GIN_SPLIT if id == 3 => clear_incomplete_split(p)?,
        XLOG_GIN_SPLIT | XLOG_GIN_VACUUM_PAGE => {
            return perr!("block {id} must be restored from its full-page image")
        }
        XLOG_GIN_VACUUM_DATA_LEAF_PAGE if id == 0 => data_page::recompress(p, data)?,
        XLOG_GIN_DELETE_PAGE => {
            let parent_off = get_u16(main, 0)? as usize;
            let rightlink = get_u32(main, 4)?;
            let delete_xid = get_u32(main, 8)?;
            match id {
                0 => {
                    let mut o = opaque(p)?;
                    o.flags |= GIN_DELETED;
                    set_opaque(p, o)?;
                    page::set_prune_xid(p, delete_xid);
                }
                1 => data_page::delete_item(p, parent_off)?,
                2 => {
                    let mut o = opaque(p)?;
                    o.rightlink = rightlink;
                    set_opaque(p, o)?;
                }
                _ => return perr!("unexpected block {id}"),
            }
        }
        XLOG_GIN_UPDATE_META_PAGE => {
            // node (12 bytes), padding to the 8-aligned metadata, then prevTail,
            // newRightlink, ntuples.
            let meta = main.get(16..).unwrap_or(&[]);
            let after = 16 + META_SIZE;
            let prev_tail = get_u32(main, after)?;
            let new_rightlink = get_u32(main, after + 4)?;
            let ntuples = get_u32(main, after + 8)? as i32;
            match id {
                0 => restore_meta(p, meta)?,
                1 if ntuples > 0 => append_to_tail(p, data, ntuples as usize)?,
                1 if prev_tail != INVALID_BLOCK => {
                    let mut o = opaque(p)?;
                    o.rightlink = new_rightlink;
                    set_opaque(p, o)?;
                }
                // Registered but not touched by Postgres's redo: leave it as it is.
                1 => return Ok(()),
                _ => return perr!("unexpected block {id}"),
            }
        }
        XLOG_GIN_INSERT_LISTPAGE if id == 0 => {
            let rightlink = get_u32(main, 0)?;
            let ntuples = get_u32(main, 4)? as i32;
            // The tail of a sublist ends a heap row: it counts one.
            let full_row = rightlink == INVALID_BLOCK;
            page::init(p, GIN_OPAQUE_SIZE);
            set_opaque(
                p,
                Opaque {
                    rightlink,
                    maxoff: full_row as u16,
                    flags: GIN_LIST | if full_row { GIN_LIST_FULLROW } else { 0 },
                },
            )?;
            for (i, t) in packed_tuples(data, ntuples.max(0) as usize)?
                .into_iter()
                .enumerate()
            {
                page::add_item(p, t, i + 1, NO_SHUFFLE)?;
            }
        }
        XLOG_GIN_DELETE_LISTPAGE => {
            let ndeleted = get_u32(main, META_SIZE)? as i32;
            match id {
                0 => restore_meta(p, main)?,
                i if (i as i32) <= ndeleted => init_page(p, GIN_DELETED)?,
                _ => return perr!("unexpected block {id} (ndeleted {ndeleted})"),
            }
        }
        info => return perr!("unexpected GIN record {info:#04x} for block {id}"),
    }
    page::set_lsn(p, rec.end_lsn.0);
    Ok(())
}

/// `ginRedoInsertEntry`: the logged offset, delete flag and tuple; on an internal page the
/// downlink at that offset first moves to the new right half of the split child.
fn insert_entry(p: &mut Page, rightchild: u32, data: &[u8]) -> PResult<()> {
    let offset = get_u16(data, 0)? as usize;
    let is_delete = data.get(2).copied().unwrap_or(0) != 0;
    let tup = data.get(4..).unwrap_or(&[]);
    let size = IndexTuple(tup).size()?;
    let Some(tup) = tup.get(..size) else {
        return perr!("entry tuple of {size} bytes overruns the block data");
    };
    if rightchild != INVALID_BLOCK {
        // GinSetDownlink: the tuple's t_tid becomes (child, InvalidOffsetNumber).
        let r = page::item_range(p, offset)?;
        if r.len() < 6 {
            return perr!("entry tuple at {offset} too short for a downlink");
        }
        page::put_u16(p, r.start, (rightchild >> 16) as u16)?;
        page::put_u16(p, r.start + 2, rightchild as u16)?;
        page::put_u16(p, r.start + 4, 0)?;
    }
    if is_delete {
        page::index_tuple_delete(p, offset)?;
    }
    page::add_item(p, tup, offset, NO_SHUFFLE)?;
    Ok(())
}

/// `ginRedoInsertData`: leaf pages get segment actions, internal pages a new posting item.
fn insert_data(p: &mut Page, leaf: bool, rightchild: u32, data: &[u8]) -> PResult<()> {
    if leaf {
        return data_page::recompress(p, data);
    }
    // ginxlogInsertDataInternal: offset, then the PostingItem.
    let offset = get_u16(data, 0)? as usize;
    data_page::set_item_child(p, offset, rightchild)?;
    data_page::add_item(p, data.get(2..).unwrap_or(&[]), offset)
}

/// UPDATE_META_PAGE with tuples: they go after the tail page's last item, and the page
/// counts one more heap tuple.
fn append_to_tail(p: &mut Page, data: &[u8], ntuples: usize) -> PResult<()> {
    let first = if page::is_empty(p) {
        1
    } else {
        page::max_offset(p) + 1
    };
    for (i, t) in packed_tuples(data, ntuples)?.into_iter().enumerate() {
        page::add_item(p, t, first + i, NO_SHUFFLE)?;
    }
    let mut o = opaque(p)?;
    o.maxoff = o.maxoff.wrapping_add(1);
    set_opaque(p, o)
}

/// This resource manager's `rm_mask` (`gin_mask`): LSN, checksum and hint bits; a deleted
/// page's whole content; otherwise the hole, when `pd_lower` is past the header.
pub fn mask(p: &mut Page) {
    super::mask::mask_page_lsn_and_checksum(p);
    super::mask::mask_page_hint_bits(p);
    // An uninitialized page's "opaque" lies in the (now zero) LSN: no flags.
    let flags = opaque(p).map_or(0, |o| o.flags);
    if flags & GIN_DELETED != 0 {
        super::mask::mask_page_content(p);
    } else if page::lower(p) > page::SIZE_OF_PAGE_HEADER {
        super::mask::mask_unused_space(p);
    }
}
