//! PostgreSQL 15 page primitives (`storage/bufpage.h`, `bufpage.c`, `itemid.h`) on an 8 KiB
//! page held as `[u8; 8192]`.
//!
//! Redo must reproduce Postgres's pages byte for byte in every region that consistency checking
//! compares, so these follow `bufpage.c`'s algorithms (where tuples land, which line pointers
//! move, what happens to the hint flags). Every access is bounds-checked: a corrupt page or an
//! offset taken from a malformed record yields a [`PageError`], never a panic. The caller (the
//! rmgr redo) adds which record and block it was.

use walproto::consts::BLCKSZ;

pub use super::page_compact::{
    index_multi_delete, index_tuple_delete, index_tuple_delete_no_compact, index_tuple_overwrite,
    repair_fragmentation, truncate_line_pointer_array,
};

/// One page.
pub type Page = [u8; BLCKSZ];

/// `SizeOfPageHeaderData`: the 24-byte header before the line pointer array.
pub const SIZE_OF_PAGE_HEADER: usize = 24;
/// `sizeof(ItemIdData)`.
pub const ITEM_ID_SIZE: usize = 4;
/// `PG_PAGE_LAYOUT_VERSION`.
pub const PG_PAGE_LAYOUT_VERSION: u16 = 4;

/// `pd_flags` bits.
pub const PD_HAS_FREE_LINES: u16 = 0x0001;
pub const PD_PAGE_FULL: u16 = 0x0002;
pub const PD_ALL_VISIBLE: u16 = 0x0004;

/// `lp_flags` values.
pub const LP_UNUSED: u8 = 0;
pub const LP_NORMAL: u8 = 1;
pub const LP_REDIRECT: u8 = 2;
pub const LP_DEAD: u8 = 3;

/// `MaxHeapTuplesPerPage` for 8 KiB pages: PageAddItem refuses larger heap offsets.
pub const MAX_HEAP_TUPLES_PER_PAGE: usize = 291;

/// What is wrong with a page or with what a record asks of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PageError(pub String);

pub type PResult<T> = Result<T, PageError>;

/// Builds an `Err(PageError)` from a format string.
macro_rules! perr {
    ($($arg:tt)*) => { Err($crate::redo::page::PageError(format!($($arg)*))) };
}
pub(crate) use perr;

/// `MAXALIGN` for 8-byte alignment.
pub const fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// `SHORTALIGN`.
pub const fn shortalign(n: usize) -> usize {
    (n + 1) & !1
}

pub fn get_u16(b: &[u8], off: usize) -> PResult<u16> {
    match b.get(off..off + 2) {
        Some(s) => Ok(u16::from_le_bytes([s[0], s[1]])),
        None => perr!("read of 2 bytes at {off} beyond {} bytes", b.len()),
    }
}

pub fn get_u32(b: &[u8], off: usize) -> PResult<u32> {
    match b.get(off..off + 4) {
        Some(s) => Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => perr!("read of 4 bytes at {off} beyond {} bytes", b.len()),
    }
}

pub fn put_u16(b: &mut [u8], off: usize, v: u16) -> PResult<()> {
    match b.get_mut(off..off + 2) {
        Some(s) => {
            s.copy_from_slice(&v.to_le_bytes());
            Ok(())
        }
        None => perr!("write of 2 bytes at {off} beyond {} bytes", b.len()),
    }
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) -> PResult<()> {
    match b.get_mut(off..off + 4) {
        Some(s) => {
            s.copy_from_slice(&v.to_le_bytes());
            Ok(())
        }
        None => perr!("write of 4 bytes at {off} beyond {} bytes", b.len()),
    }
}

// ---- header fields (fixed offsets within the 24-byte header: cannot be out of bounds) ----

/// `pd_lsn` as a 64-bit LSN (`xlogid` high word first, each word little-endian).
pub fn lsn(p: &Page) -> u64 {
    let hi = u32::from_le_bytes(p[0..4].try_into().unwrap()) as u64;
    let lo = u32::from_le_bytes(p[4..8].try_into().unwrap()) as u64;
    (hi << 32) | lo
}

/// `PageSetLSN`.
pub fn set_lsn(p: &mut Page, lsn: u64) {
    p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
}

fn h16(p: &Page, off: usize) -> u16 {
    u16::from_le_bytes([p[off], p[off + 1]])
}

fn set_h16(p: &mut Page, off: usize, v: u16) {
    p[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn checksum(p: &Page) -> u16 {
    h16(p, 8)
}
pub fn set_checksum(p: &mut Page, v: u16) {
    set_h16(p, 8, v)
}
pub fn flags(p: &Page) -> u16 {
    h16(p, 10)
}
pub fn set_flags(p: &mut Page, v: u16) {
    set_h16(p, 10, v)
}
pub fn lower(p: &Page) -> usize {
    h16(p, 12) as usize
}
pub fn set_lower(p: &mut Page, v: usize) {
    set_h16(p, 12, v as u16)
}
pub fn upper(p: &Page) -> usize {
    h16(p, 14) as usize
}
pub fn set_upper(p: &mut Page, v: usize) {
    set_h16(p, 14, v as u16)
}
pub fn special(p: &Page) -> usize {
    h16(p, 16) as usize
}
pub fn pagesize_version(p: &Page) -> u16 {
    h16(p, 18)
}
pub fn prune_xid(p: &Page) -> u32 {
    u32::from_le_bytes(p[20..24].try_into().unwrap())
}
pub fn set_prune_xid(p: &mut Page, xid: u32) {
    p[20..24].copy_from_slice(&xid.to_le_bytes());
}

/// `PageIsNew`: never initialized (`pd_upper == 0`).
pub fn is_new(p: &Page) -> bool {
    upper(p) == 0
}

/// `PageInit`: zero the page, set the header for an empty page with `special_size` bytes of
/// special space at the end.
pub fn init(p: &mut Page, special_size: usize) {
    let special_size = maxalign(special_size);
    p.fill(0);
    set_lower(p, SIZE_OF_PAGE_HEADER);
    set_upper(p, BLCKSZ - special_size);
    set_h16(p, 16, (BLCKSZ - special_size) as u16);
    set_h16(p, 18, BLCKSZ as u16 | PG_PAGE_LAYOUT_VERSION);
}

/// `PageSetPrunable`: remember the oldest xid that may make a tuple prunable.
pub fn set_prunable(p: &mut Page, xid: u32) {
    let cur = prune_xid(p);
    if cur == 0 || xid_precedes(xid, cur) {
        set_prune_xid(p, xid);
    }
}

/// `TransactionIdPrecedes`: modulo-2^32 comparison for normal xids.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    if a < 3 || b < 3 {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `PageGetMaxOffsetNumber`.
pub fn max_offset(p: &Page) -> usize {
    lower(p).saturating_sub(SIZE_OF_PAGE_HEADER) / ITEM_ID_SIZE
}

/// `PageIsEmpty`.
pub fn is_empty(p: &Page) -> bool {
    lower(p) <= SIZE_OF_PAGE_HEADER
}

/// A line pointer (`ItemIdData`): a 32-bit word of `lp_off:15, lp_flags:2, lp_len:15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemId {
    pub off: usize,
    pub flags: u8,
    pub len: usize,
}

impl ItemId {
    pub fn from_word(w: u32) -> ItemId {
        ItemId {
            off: (w & 0x7FFF) as usize,
            flags: ((w >> 15) & 3) as u8,
            len: (w >> 17) as usize,
        }
    }
    pub fn word(self) -> u32 {
        (self.off as u32 & 0x7FFF) | ((self.flags as u32 & 3) << 15) | ((self.len as u32) << 17)
    }
    pub fn normal(off: usize, len: usize) -> ItemId {
        ItemId {
            off,
            flags: LP_NORMAL,
            len,
        }
    }
    pub const UNUSED: ItemId = ItemId {
        off: 0,
        flags: LP_UNUSED,
        len: 0,
    };
    pub fn is_used(self) -> bool {
        self.flags != LP_UNUSED
    }
    pub fn has_storage(self) -> bool {
        self.len != 0
    }
    pub fn is_normal(self) -> bool {
        self.flags == LP_NORMAL
    }
}

fn lp_pos(offnum: usize) -> usize {
    SIZE_OF_PAGE_HEADER + (offnum - 1) * ITEM_ID_SIZE
}

/// `PageGetItemId` for `offnum` in `1..=max_offset`.
pub fn item_id(p: &Page, offnum: usize) -> PResult<ItemId> {
    if offnum == 0 || offnum > max_offset(p) {
        return perr!(
            "offset {offnum} outside the line pointer array (max offset {})",
            max_offset(p)
        );
    }
    Ok(ItemId::from_word(get_u32(p, lp_pos(offnum))?))
}

/// Writes line pointer `offnum`, which must lie inside the page's header area.
pub fn set_item_id(p: &mut Page, offnum: usize, id: ItemId) -> PResult<()> {
    if offnum == 0 || lp_pos(offnum) + ITEM_ID_SIZE > BLCKSZ {
        return perr!("line pointer {offnum} outside the page");
    }
    put_u32(p, lp_pos(offnum), id.word())
}

/// The byte range of a normal item (`PageGetItem`), checked against the page.
pub fn item_range(p: &Page, offnum: usize) -> PResult<std::ops::Range<usize>> {
    let id = item_id(p, offnum)?;
    if !id.has_storage() || id.off + id.len > BLCKSZ || id.off < SIZE_OF_PAGE_HEADER {
        return perr!(
            "item {offnum} has no valid storage (lp_off {} lp_flags {} lp_len {})",
            id.off,
            id.flags,
            id.len
        );
    }
    Ok(id.off..id.off + id.len)
}

/// A normal item's range: the redo routines that modify a tuple in place require LP_NORMAL.
pub fn normal_item_range(p: &Page, offnum: usize) -> PResult<std::ops::Range<usize>> {
    let id = item_id(p, offnum)?;
    if !id.is_normal() {
        return perr!(
            "invalid lp: item {offnum} is not LP_NORMAL (lp_flags {})",
            id.flags
        );
    }
    item_range(p, offnum)
}

/// Checks the header invariants `bufpage.c` checks before moving tuples.
pub fn check_header(p: &Page) -> PResult<()> {
    let (l, u, s) = (lower(p), upper(p), special(p));
    if l < SIZE_OF_PAGE_HEADER || l > u || u > s || s > BLCKSZ || s != maxalign(s) {
        return perr!("corrupted page pointers: lower = {l}, upper = {u}, special = {s}");
    }
    Ok(())
}

/// Options of `PageAddItemExtended`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddItem {
    /// `PAI_OVERWRITE`: the target line pointer must be unused; nothing shifts.
    pub overwrite: bool,
    /// `PAI_IS_HEAP`: offsets above MaxHeapTuplesPerPage are refused.
    pub is_heap: bool,
}

/// `PageAddItemExtended` with an explicit offset (0 = first free slot), as redo calls it.
/// Returns the offset used. Only `item.len()` bytes are copied; alignment padding keeps the
/// page's old bytes, exactly like Postgres.
pub fn add_item(p: &mut Page, item: &[u8], offnum: usize, opts: AddItem) -> PResult<usize> {
    check_header(p)?;
    let limit = max_offset(p) + 1;
    let mut needshuffle = false;
    let mut offnum = offnum;
    if offnum != 0 {
        if opts.overwrite {
            if offnum < limit {
                let id = item_id(p, offnum)?;
                if id.is_used() || id.has_storage() {
                    return perr!("will not overwrite a used ItemId at offset {offnum}");
                }
            }
        } else if offnum < limit {
            needshuffle = true;
        }
    } else if flags(p) & PD_HAS_FREE_LINES != 0 {
        offnum = 1;
        while offnum < limit {
            let id = item_id(p, offnum)?;
            if !id.is_used() && !id.has_storage() {
                break;
            }
            offnum += 1;
        }
        if offnum >= limit {
            set_flags(p, flags(p) & !PD_HAS_FREE_LINES);
        }
    } else {
        offnum = limit;
    }
    if offnum > limit {
        return perr!(
            "specified item offset {offnum} is too large (max offset {})",
            limit - 1
        );
    }
    if opts.is_heap && offnum > MAX_HEAP_TUPLES_PER_PAGE {
        return perr!("cannot put more than MaxHeapTuplesPerPage items into a heap page");
    }
    let lower_new = if offnum == limit || needshuffle {
        lower(p) + ITEM_ID_SIZE
    } else {
        lower(p)
    };
    let aligned = maxalign(item.len());
    let upper_new = upper(p) as isize - aligned as isize;
    if (lower_new as isize) > upper_new {
        return perr!(
            "no room for an item of {} bytes (lower {} upper {})",
            item.len(),
            lower(p),
            upper(p)
        );
    }
    let upper_new = upper_new as usize;
    if needshuffle {
        let from = lp_pos(offnum);
        let to = lp_pos(limit);
        p.copy_within(from..to, from + ITEM_ID_SIZE);
    }
    set_item_id(p, offnum, ItemId::normal(upper_new, item.len()))?;
    p[upper_new..upper_new + item.len()].copy_from_slice(item);
    set_lower(p, lower_new);
    set_upper(p, upper_new);
    Ok(offnum)
}

/// `PageGetTempPageCopySpecial`: a fresh page with the same special space contents.
pub fn temp_page_copy_special(p: &Page) -> PResult<Box<Page>> {
    let s = special(p);
    if s > BLCKSZ {
        return perr!("pd_special {s} beyond the page");
    }
    let mut t = Box::new([0u8; BLCKSZ]);
    init(&mut t, BLCKSZ - s);
    t[s..].copy_from_slice(&p[s..]);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_id_bits() {
        let id = ItemId {
            off: 8152,
            flags: LP_REDIRECT,
            len: 40,
        };
        assert_eq!(ItemId::from_word(id.word()), id);
        assert_eq!(ItemId::from_word(0x0050_9FD8).off, 0x1FD8);
    }
}
