//! Redo of Heap records (`heap_redo` in `access/heap/heapam.c`), one block at a time.
//!
//! Each function applies to the block given what Postgres's `heap_xlog_*` does to the same
//! buffer once `XLogReadBufferForRedo` says BLK_NEEDS_REDO. The visibility-map clearing those
//! routines do on a page that is not a block reference is in [`super::extra`].

use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::heap::*;

use super::htup::{self, form_tuple, Htup, SIZEOF_HEAP_TUPLE_HEADER};
use super::page::{self, perr, AddItem, PResult, Page};

/// `SizeOfHeapHeader`: `xl_heap_header` (t_infomask2, t_infomask, t_hoff).
const SIZE_OF_HEAP_HEADER: usize = 5;

const HEAP_ADD: AddItem = AddItem {
    overwrite: true,
    is_heap: true,
};

pub fn parse(rec: &DecodedRecord) -> PResult<HeapRecord> {
    HeapRecord::parse(rec.header.info, &rec.main_data_bytes())
        .map_err(|e| page::PageError(e.to_string()))
}

/// Applies a Heap record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    match parse(rec)? {
        HeapRecord::Insert {
            init,
            offnum,
            flags,
        } => {
            if init {
                page::init(p, 0);
            }
            let data = rec.block_data(blk);
            let tuple = logged_tuple(data, rec.xid(), blk.blkno, offnum)?;
            if page::max_offset(p) + 1 < offnum as usize {
                return perr!("invalid max offset number for offnum {offnum}");
            }
            page::add_item(p, &tuple, offnum as usize, HEAP_ADD)?;
            page::set_lsn(p, lsn);
            set_visibility_flags(p, flags);
            Ok(())
        }
        HeapRecord::Delete {
            xmax,
            offnum,
            infobits_set,
            flags,
        } => {
            let r = page::normal_item_range(p, offnum as usize)?;
            let mut h = Htup::new(&mut p[r])?;
            h.reset_xmax_bits(infobits_set);
            h.set_hot_updated(false);
            if flags & XLH_DELETE_IS_SUPER == 0 {
                h.set_xmax(xmax);
            } else {
                h.set_xmin(0);
            }
            h.set_cid(0);
            if flags & XLH_DELETE_IS_PARTITION_MOVE != 0 {
                h.set_ctid(
                    htup::MOVED_PARTITIONS_BLOCK_NUMBER,
                    htup::MOVED_PARTITIONS_OFFSET_NUMBER,
                );
            } else {
                h.set_ctid(blk.blkno, offnum);
            }
            page::set_prunable(p, rec.xid());
            if flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 {
                clear_all_visible(p);
            }
            page::set_lsn(p, lsn);
            Ok(())
        }
        HeapRecord::Update(u) => redo_update(rec, blk, p, &u),
        HeapRecord::Truncate { .. } => Ok(()),
        HeapRecord::Confirm { offnum } => {
            let r = page::normal_item_range(p, offnum as usize)?;
            Htup::new(&mut p[r])?.set_ctid(blk.blkno, offnum);
            page::set_lsn(p, lsn);
            Ok(())
        }
        HeapRecord::Lock {
            locking_xid,
            offnum,
            infobits_set,
            ..
        } => {
            let r = page::normal_item_range(p, offnum as usize)?;
            let mut h = Htup::new(&mut p[r])?;
            h.reset_xmax_bits(infobits_set);
            if htup::xmax_is_locked_only(h.infomask()) {
                h.set_hot_updated(false);
                h.set_ctid(blk.blkno, offnum);
            }
            h.set_xmax(locking_xid);
            h.set_cid(0);
            page::set_lsn(p, lsn);
            Ok(())
        }
        HeapRecord::Inplace { offnum } => {
            let newtup = rec.block_data(blk);
            let r = page::normal_item_range(p, offnum as usize)?;
            let t = &mut p[r];
            let hoff = Htup::new(t)?.hoff();
            if hoff > t.len() || t.len() - hoff != newtup.len() {
                return perr!(
                    "wrong tuple length: item has {} bytes after t_hoff, record {}",
                    t.len().saturating_sub(hoff),
                    newtup.len()
                );
            }
            t[hoff..].copy_from_slice(newtup);
            page::set_lsn(p, lsn);
            Ok(())
        }
    }
}

/// PD_ALL_VISIBLE as INSERT and MULTI_INSERT leave it.
pub fn set_visibility_flags(p: &mut Page, flags: u8) {
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        clear_all_visible(p);
    }
    if flags & XLH_INSERT_ALL_FROZEN_SET != 0 {
        page::set_flags(p, page::flags(p) | page::PD_ALL_VISIBLE);
    }
}

pub fn clear_all_visible(p: &mut Page) {
    page::set_flags(p, page::flags(p) & !page::PD_ALL_VISIBLE);
}

/// The tuple of an INSERT: `xl_heap_header` then bitmap + data.
fn logged_tuple(data: &[u8], xid: u32, blkno: u32, offnum: u16) -> PResult<Vec<u8>> {
    if data.len() <= SIZE_OF_HEAP_HEADER {
        return perr!("tuple data of {} bytes is too short", data.len());
    }
    let infomask2 = page::get_u16(data, 0)?;
    let infomask = page::get_u16(data, 2)?;
    Ok(form_tuple(
        infomask2,
        infomask,
        data[4],
        &[&data[SIZE_OF_HEAP_HEADER..]],
        xid,
        blkno,
        offnum,
    ))
}

/// `heap_xlog_update`. Block 0 is the new tuple's page; block 1, if present, the old one's.
fn redo_update(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page, u: &HeapUpdate) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let old_block = rec.block(1);
    let newblk = rec
        .block(0)
        .map(|b| b.blkno)
        .ok_or_else(|| page::PageError("UPDATE without block 0".into()))?;
    let same_page = old_block.is_none();
    let does_old = blk.id == 1 || (blk.id == 0 && same_page);
    let does_new = blk.id == 0;
    let mut old_tuple: Option<std::ops::Range<usize>> = None;

    if does_old {
        let offnum = u.old_offnum as usize;
        let r = page::normal_item_range(p, offnum)?;
        let mut h = Htup::new(&mut p[r.clone()])?;
        h.reset_xmax_bits(u.old_infobits_set);
        h.set_hot_updated(u.hot);
        h.set_xmax(u.old_xmax);
        h.set_cid(0);
        h.set_ctid(newblk, u.new_offnum);
        page::set_prunable(p, rec.xid());
        if u.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
            clear_all_visible(p);
        }
        page::set_lsn(p, lsn);
        old_tuple = Some(r);
    }
    if !does_new {
        return Ok(());
    }
    if !same_page && u.init {
        page::init(p, 0);
    }
    let data = rec.block_data(blk);
    let offnum = u.new_offnum as usize;
    if page::max_offset(p) + 1 < offnum {
        return perr!("invalid max offset number for offnum {offnum}");
    }
    let mut pos = 0;
    let mut prefixlen = 0usize;
    let mut suffixlen = 0usize;
    if u.flags & XLH_UPDATE_PREFIX_FROM_OLD != 0 {
        prefixlen = page::get_u16(data, pos)? as usize;
        pos += 2;
    }
    if u.flags & XLH_UPDATE_SUFFIX_FROM_OLD != 0 {
        suffixlen = page::get_u16(data, pos)? as usize;
        pos += 2;
    }
    if data.len() < pos + SIZE_OF_HEAP_HEADER {
        return perr!("update data of {} bytes is too short", data.len());
    }
    let infomask2 = page::get_u16(data, pos)?;
    let infomask = page::get_u16(data, pos + 2)?;
    let hoff = data[pos + 4];
    pos += SIZE_OF_HEAP_HEADER;
    let rest = &data[pos..];

    let (prefix, suffix): (Vec<u8>, Vec<u8>) = if prefixlen > 0 || suffixlen > 0 {
        let Some(r) = old_tuple else {
            return perr!("prefix/suffix from an old tuple on another page");
        };
        let old = &p[r];
        let old_hoff = old.get(22).copied().unwrap_or(0) as usize;
        let prefix = old
            .get(old_hoff..old_hoff + prefixlen)
            .ok_or_else(|| page::PageError(format!("prefix of {prefixlen} beyond old tuple")))?
            .to_vec();
        let suffix = old
            .len()
            .checked_sub(suffixlen)
            .and_then(|s| old.get(s..))
            .ok_or_else(|| page::PageError(format!("suffix of {suffixlen} beyond old tuple")))?
            .to_vec();
        (prefix, suffix)
    } else {
        (Vec::new(), Vec::new())
    };
    let tuple = if prefixlen > 0 {
        let bitmap_len = (hoff as usize)
            .checked_sub(SIZEOF_HEAP_TUPLE_HEADER)
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| page::PageError(format!("t_hoff {hoff} inconsistent with data")))?;
        form_tuple(
            infomask2,
            infomask,
            hoff,
            &[&rest[..bitmap_len], &prefix, &rest[bitmap_len..], &suffix],
            rec.xid(),
            newblk,
            u.new_offnum,
        )
    } else {
        form_tuple(
            infomask2,
            infomask,
            hoff,
            &[rest, &suffix],
            rec.xid(),
            newblk,
            u.new_offnum,
        )
    };
    let mut tuple = tuple;
    Htup::new(&mut tuple)?.set_xmax(u.new_xmax);
    page::add_item(p, &tuple, offnum, HEAP_ADD)?;
    if u.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
        clear_all_visible(p);
    }
    page::set_lsn(p, lsn);
    Ok(())
}
