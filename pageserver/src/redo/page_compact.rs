//! The `bufpage.c` operations that remove or move items: deletion from index pages,
//! in-place replacement, and heap page defragmentation. Split from `page.rs` to keep files
//! small; re-exported there.

use walproto::consts::BLCKSZ;

use super::page::{
    check_header, flags, is_empty, item_id, lower, max_offset, maxalign, perr, set_flags,
    set_item_id, set_lower, set_upper, special, upper, ItemId, PResult, Page, ITEM_ID_SIZE,
    PD_HAS_FREE_LINES, SIZE_OF_PAGE_HEADER,
};

fn lp_pos(offnum: usize) -> usize {
    SIZE_OF_PAGE_HEADER + (offnum - 1) * ITEM_ID_SIZE
}

/// `PageIndexTupleDelete`: remove an index item, close the gap in the line pointer array and
/// in the tuple space.
pub fn index_tuple_delete(p: &mut Page, offnum: usize) -> PResult<()> {
    check_header(p)?;
    let nline = max_offset(p);
    if offnum == 0 || offnum > nline {
        return perr!("invalid index offnum: {offnum} (max {nline})");
    }
    let id = item_id(p, offnum)?;
    let offset = id.off;
    let size = maxalign(id.len);
    let (u, s) = (upper(p), special(p));
    if offset < u || offset + size > s || offset != maxalign(offset) {
        return perr!("corrupted line pointer: offset = {offset}, size = {size}");
    }
    let from = lp_pos(offnum + 1);
    let l = lower(p);
    if l > from {
        p.copy_within(from..l, from - ITEM_ID_SIZE);
    }
    if offset > u {
        p.copy_within(u..offset, u + size);
    }
    set_upper(p, u + size);
    set_lower(p, l - ITEM_ID_SIZE);
    if !is_empty(p) {
        for i in 1..nline {
            let mut ii = item_id(p, i)?;
            if ii.has_storage() && ii.off <= offset {
                ii.off += size;
                set_item_id(p, i, ii)?;
            }
        }
    }
    Ok(())
}

/// One item kept by a compaction: where its line pointer goes and where its bytes are now.
struct Kept {
    offsetindex: usize,
    itemoff: usize,
    alignedlen: usize,
}

/// `compactify_tuples`: pack the kept items against `pd_special` in the given order and point
/// their line pointers at the new places. Postgres's memmove strategy differs by case but the
/// resulting bytes from the new `pd_upper` to `pd_special` are always these; below `pd_upper`
/// is free space, which no comparison looks at.
fn compactify(p: &mut Page, kept: &[Kept]) -> PResult<()> {
    let old: Box<Page> = Box::new(*p);
    let mut up = special(p);
    for k in kept {
        if k.alignedlen > up || k.itemoff + k.alignedlen > BLCKSZ {
            return perr!("corrupted item lengths during compaction");
        }
        up -= k.alignedlen;
        p[up..up + k.alignedlen].copy_from_slice(&old[k.itemoff..k.itemoff + k.alignedlen]);
        let mut id = item_id(p, k.offsetindex + 1)?;
        id.off = up;
        set_item_id(p, k.offsetindex + 1, id)?;
    }
    set_upper(p, up);
    Ok(())
}

/// `PageIndexMultiDelete`: delete the (sorted) index items `itemnos` at once.
pub fn index_multi_delete(p: &mut Page, itemnos: &[u16]) -> PResult<()> {
    if itemnos.len() <= 2 {
        for &off in itemnos.iter().rev() {
            index_tuple_delete(p, off as usize)?;
        }
        return Ok(());
    }
    check_header(p)?;
    let (u, s) = (upper(p), special(p));
    let nline = max_offset(p);
    let mut kept = Vec::with_capacity(nline);
    let mut newids = Vec::with_capacity(nline);
    let mut nextitm = 0;
    let mut totallen = 0;
    for offnum in 1..=nline {
        let id = item_id(p, offnum)?;
        if id.off < u || id.off + id.len > s || id.off != maxalign(id.off) {
            return perr!(
                "corrupted line pointer: offset = {}, size = {}",
                id.off,
                id.len
            );
        }
        if nextitm < itemnos.len() && offnum == itemnos[nextitm] as usize {
            nextitm += 1;
        } else {
            kept.push(Kept {
                offsetindex: newids.len(),
                itemoff: id.off,
                alignedlen: maxalign(id.len),
            });
            totallen += maxalign(id.len);
            newids.push(id);
        }
    }
    if nextitm != itemnos.len() {
        return perr!("incorrect index offsets supplied");
    }
    if totallen > s - lower(p) {
        return perr!("corrupted item lengths: total {totallen}");
    }
    for (i, id) in newids.iter().enumerate() {
        set_item_id(p, i + 1, *id)?;
    }
    set_lower(p, SIZE_OF_PAGE_HEADER + newids.len() * ITEM_ID_SIZE);
    if kept.is_empty() {
        // compactify_tuples is not called with nothing to keep in Postgres either; the
        // space simply becomes free.
        set_upper(p, s);
        return Ok(());
    }
    compactify(p, &kept)
}

/// `PageIndexTupleOverwrite`: replace index item `offnum` by `newtup`, keeping its line
/// pointer flags; other items move by the size difference.
pub fn index_tuple_overwrite(p: &mut Page, offnum: usize, newtup: &[u8]) -> PResult<()> {
    check_header(p)?;
    let itemcount = max_offset(p);
    if offnum == 0 || offnum > itemcount {
        return perr!("invalid index offnum: {offnum}");
    }
    let id = item_id(p, offnum)?;
    let offset = id.off;
    let (u, l) = (upper(p), lower(p));
    if offset < u || offset + id.len > special(p) || offset != maxalign(offset) {
        return perr!(
            "corrupted line pointer: offset = {offset}, size = {}",
            id.len
        );
    }
    let oldsize = maxalign(id.len);
    let newsize = maxalign(newtup.len());
    if newsize > oldsize + (u - l) {
        return perr!("failed to overwrite item {offnum}: no room");
    }
    let diff = oldsize as isize - newsize as isize;
    if diff != 0 {
        let dst = (u as isize + diff) as usize;
        p.copy_within(u..offset, dst);
        set_upper(p, dst);
        for i in 1..=itemcount {
            let mut ii = item_id(p, i)?;
            if ii.has_storage() && ii.off <= offset {
                ii.off = (ii.off as isize + diff) as usize;
                set_item_id(p, i, ii)?;
            }
        }
    }
    let newoff = (offset as isize + diff) as usize;
    let mut id = item_id(p, offnum)?;
    id.off = newoff;
    id.len = newtup.len();
    set_item_id(p, offnum, id)?;
    p[newoff..newoff + newtup.len()].copy_from_slice(newtup);
    Ok(())
}

/// `PageRepairFragmentation` (heap pages, PG15): compact the storage of used items, reset
/// unused line pointers, truncate trailing unused ones, update `PD_HAS_FREE_LINES`.
pub fn repair_fragmentation(p: &mut Page) -> PResult<()> {
    check_header(p)?;
    let (u, s) = (upper(p), special(p));
    let nline = max_offset(p);
    let mut kept = Vec::with_capacity(nline);
    let mut nunused = 0;
    let mut finalusedlp = 0;
    let mut totallen = 0;
    for i in 1..=nline {
        let id = item_id(p, i)?;
        if id.is_used() {
            if id.has_storage() {
                if id.off < u || id.off >= s {
                    return perr!("corrupted line pointer: {}", id.off);
                }
                kept.push(Kept {
                    offsetindex: i - 1,
                    itemoff: id.off,
                    alignedlen: maxalign(id.len),
                });
                totallen += maxalign(id.len);
            }
            finalusedlp = i;
        } else {
            set_item_id(p, i, ItemId::UNUSED)?;
            nunused += 1;
        }
    }
    if kept.is_empty() {
        set_upper(p, s);
    } else {
        if totallen > s - lower(p) {
            return perr!("corrupted item lengths: total {totallen}");
        }
        compactify(p, &kept)?;
    }
    if finalusedlp != nline {
        let nunusedend = nline - finalusedlp;
        nunused -= nunusedend;
        set_lower(p, lower(p) - ITEM_ID_SIZE * nunusedend);
    }
    if nunused > 0 {
        set_flags(p, flags(p) | PD_HAS_FREE_LINES);
    } else {
        set_flags(p, flags(p) & !PD_HAS_FREE_LINES);
    }
    Ok(())
}

/// `PageTruncateLinePointerArray`: drop trailing unused line pointers (never the first one)
/// and set `PD_HAS_FREE_LINES` if unused ones remain before them.
pub fn truncate_line_pointer_array(p: &mut Page) -> PResult<()> {
    let mut countdone = false;
    let mut sethint = false;
    let mut nunusedend = 0;
    for i in (1..=max_offset(p)).rev() {
        let id = item_id(p, i)?;
        if !countdone && i > 1 {
            if !id.is_used() {
                nunusedend += 1;
            } else {
                countdone = true;
            }
        } else if !id.is_used() {
            sethint = true;
            break;
        }
    }
    if nunusedend > 0 {
        set_lower(p, lower(p) - ITEM_ID_SIZE * nunusedend);
    }
    let f = flags(p);
    set_flags(
        p,
        if sethint {
            f | PD_HAS_FREE_LINES
        } else {
            f & !PD_HAS_FREE_LINES
        },
    );
    Ok(())
}

/// `PageIndexTupleDeleteNoCompact`: remove an index tuple's bytes but keep the other items'
/// offsets; its line pointer becomes unused, or goes away if it is the last one.
pub fn index_tuple_delete_no_compact(p: &mut Page, offnum: usize) -> PResult<()> {
    check_header(p)?;
    let mut nline = max_offset(p);
    if offnum == 0 || offnum > nline {
        return perr!("invalid index offnum: {offnum} (max {nline})");
    }
    let mut id = item_id(p, offnum)?;
    let (offset, u, s) = (id.off, upper(p), special(p));
    if offset < u || offset + id.len > s || offset != maxalign(offset) {
        return perr!(
            "corrupted line pointer: offset = {offset}, size = {}",
            id.len
        );
    }
    let size = maxalign(id.len);
    if offnum < nline {
        id = ItemId::UNUSED;
        set_item_id(p, offnum, id)?;
    } else {
        set_lower(p, lower(p) - ITEM_ID_SIZE);
        nline -= 1;
    }
    if u + size > BLCKSZ {
        return perr!("corrupted line pointer: offset = {offset}, size = {size}");
    }
    if offset > u {
        p.copy_within(u..offset, u + size);
    }
    set_upper(p, u + size);
    if !is_empty(p) {
        for i in 1..=nline {
            let mut ii = item_id(p, i)?;
            if ii.has_storage() && ii.off <= offset {
                ii.off += size;
                set_item_id(p, i, ii)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::page::{add_item, init, item_range, AddItem};

    fn page() -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        init(&mut p, 0);
        p
    }

    #[test]
    fn add_delete_repair() {
        let mut p = page();
        assert_eq!(
            add_item(&mut p, &[1; 30], 0, AddItem::default()).unwrap(),
            1
        );
        assert_eq!(
            add_item(&mut p, &[2; 16], 0, AddItem::default()).unwrap(),
            2
        );
        assert_eq!(upper(&p), 8192 - 32 - 16);
        // Insert before item 1: line pointers shift.
        assert_eq!(add_item(&mut p, &[3; 8], 1, AddItem::default()).unwrap(), 1);
        assert_eq!(item_id(&p, 2).unwrap().len, 30);
        index_tuple_delete(&mut p, 2).unwrap();
        assert_eq!(max_offset(&p), 2);
        assert_eq!(upper(&p), 8192 - 16 - 8);
        assert_eq!(&p[item_range(&p, 2).unwrap()], &[2; 16]);
        assert_eq!(&p[item_range(&p, 1).unwrap()], &[3; 8]);
        // Errors, not panics.
        assert!(add_item(&mut p, &[0; 8], 9, AddItem::default()).is_err());
        assert!(item_id(&p, 0).is_err());
        assert!(add_item(&mut p, &[0; 9000], 0, AddItem::default()).is_err());
        // Repair: make item 1 unused, the other moves to the end.
        set_item_id(&mut p, 1, ItemId::UNUSED).unwrap();
        repair_fragmentation(&mut p).unwrap();
        assert_eq!(item_id(&p, 2).unwrap().off, 8192 - 16);
        assert_ne!(flags(&p) & PD_HAS_FREE_LINES, 0);
        set_item_id(&mut p, 2, ItemId::UNUSED).unwrap();
        repair_fragmentation(&mut p).unwrap();
        assert_eq!(max_offset(&p), 0);
        assert_eq!(upper(&p), 8192);
    }

    #[test]
    fn corrupt_header_is_an_error() {
        let mut p = page();
        set_lower(&mut p, 9000);
        assert!(add_item(&mut p, &[1; 4], 0, AddItem::default()).is_err());
        assert!(repair_fragmentation(&mut p).is_err());
        assert!(index_multi_delete(&mut p, &[1, 2, 3]).is_err());
    }

    #[test]
    fn multi_delete_and_overwrite() {
        let mut p = page();
        for i in 0..6u8 {
            add_item(&mut p, &[i; 12], 0, AddItem::default()).unwrap();
        }
        index_multi_delete(&mut p, &[1, 3, 5]).unwrap();
        assert_eq!(max_offset(&p), 3);
        assert_eq!(&p[item_range(&p, 1).unwrap()], &[1; 12]);
        assert_eq!(&p[item_range(&p, 3).unwrap()], &[5; 12]);
        assert_eq!(upper(&p), 8192 - 3 * 16);
        index_tuple_overwrite(&mut p, 2, &[9; 24]).unwrap();
        assert_eq!(&p[item_range(&p, 2).unwrap()], &[9; 24]);
        assert_eq!(&p[item_range(&p, 3).unwrap()], &[5; 12]);
        assert_eq!(&p[item_range(&p, 1).unwrap()], &[1; 12]);
        assert_eq!(upper(&p), 8192 - 16 - 16 - 24);
    }
}
