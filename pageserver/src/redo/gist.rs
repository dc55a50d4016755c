//! Redo of GiST (`access/gist/gistxlog.c`) records, one block at a time.
//!
//! GiST pages end in a 16-byte `GISTPageOpaqueData`: the NSN (an LSN, high word first), the
//! right link, the flags and the page id `0xFF81`. Splits rebuild every page from the logged
//! tuples; the other records delete and append tuples with the `bufpage.c` primitives, so the
//! tuples land where the primary put them.

use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};

use super::itup::IndexTuple;
use super::page::{self, perr, AddItem, PResult, Page};

pub const XLOG_GIST_PAGE_UPDATE: u8 = 0x00;
pub const XLOG_GIST_DELETE: u8 = 0x10;
pub const XLOG_GIST_PAGE_REUSE: u8 = 0x20;
pub const XLOG_GIST_PAGE_SPLIT: u8 = 0x30;
pub const XLOG_GIST_PAGE_DELETE: u8 = 0x60;
pub const XLOG_GIST_ASSIGN_LSN: u8 = 0x70;

pub const F_LEAF: u16 = 1 << 0;
pub const F_DELETED: u16 = 1 << 1;
pub const F_TUPLES_DELETED: u16 = 1 << 2;
pub const F_FOLLOW_RIGHT: u16 = 1 << 3;
pub const F_HAS_GARBAGE: u16 = 1 << 4;
/// `GIST_PAGE_ID`.
pub const GIST_PAGE_ID: u16 = 0xFF81;
/// `sizeof(GISTPageOpaqueData)`.
pub const GIST_OPAQUE_SIZE: usize = 16;
/// `GIST_ROOT_BLKNO`.
const ROOT_BLKNO: u32 = 0;
const INVALID_BLOCK: u32 = u32::MAX;

/// Where the opaque area starts, if the page has room for one.
fn opaque_pos(p: &Page) -> PResult<usize> {
    let s = page::special(p);
    if s.checked_add(GIST_OPAQUE_SIZE).is_none_or(|e| e > BLCKSZ) {
        return perr!("pd_special {s} leaves no room for the GiST opaque data");
    }
    Ok(s)
}

pub fn flags(p: &Page) -> PResult<u16> {
    page::get_u16(p, opaque_pos(p)? + 12)
}

pub fn set_flags(p: &mut Page, f: u16) -> PResult<()> {
    let s = opaque_pos(p)?;
    page::put_u16(p, s + 12, f)
}

fn update_flags(p: &mut Page, set: u16, clear: u16) -> PResult<()> {
    let f = flags(p)?;
    set_flags(p, (f | set) & !clear)
}

/// `GistPageSetNSN`: stored like `pd_lsn`, as two 32-bit halves, high first.
pub fn set_nsn(p: &mut Page, nsn: u64) -> PResult<()> {
    let s = opaque_pos(p)?;
    page::put_u32(p, s, (nsn >> 32) as u32)?;
    page::put_u32(p, s + 4, nsn as u32)
}

pub fn set_rightlink(p: &mut Page, blk: u32) -> PResult<()> {
    let s = opaque_pos(p)?;
    page::put_u32(p, s + 8, blk)
}

/// `gistinitpage`: an empty page with no right link, NSN 0 and the given flags.
fn init_page(p: &mut Page, f: u16) -> PResult<()> {
    page::init(p, GIST_OPAQUE_SIZE);
    set_rightlink(p, INVALID_BLOCK)?;
    set_flags(p, f)?;
    let s = opaque_pos(p)?;
    page::put_u16(p, s + 14, GIST_PAGE_ID)
}

/// Reads a little-endian integer of `N` bytes at `off` of a record's data.
fn bytes<const N: usize>(d: &[u8], off: usize, what: &str) -> PResult<[u8; N]> {
    match d.get(off..off.saturating_add(N)) {
        Some(s) => Ok(s.try_into().unwrap()),
        None => perr!("{what}: record data of {} bytes too short", d.len()),
    }
}

/// Splits `d` into the index tuples laid end to end in it, each as long as its `t_info` says.
fn split_tuples(d: &[u8]) -> PResult<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = d;
    while !rest.is_empty() {
        let sz = IndexTuple(rest).size()?;
        if sz < 8 || sz > rest.len() {
            return perr!(
                "index tuple of {sz} bytes in {} bytes of record data",
                rest.len()
            );
        }
        let (t, r) = rest.split_at(sz);
        out.push(t);
        rest = r;
    }
    Ok(out)
}

/// `gistfillbuffer` at the end of the page, as redo always calls it.
fn append_tuples(p: &mut Page, tuples: &[&[u8]]) -> PResult<()> {
    let first = page::max_offset(p) + 1;
    for (off, t) in (first..).zip(tuples) {
        page::add_item(p, t, off, AddItem::default())?;
    }
    Ok(())
}

/// Offset numbers, two bytes each.
fn offsets(d: &[u8], n: usize) -> PResult<Vec<u16>> {
    let Some(raw) = d.get(..n.saturating_mul(2)) else {
        return perr!("{n} offsets in {} bytes of record data", d.len());
    };
    Ok(raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Applies a GiST record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let main = rec.main_data();
    match rec.rmgr_info() {
        XLOG_GIST_PAGE_UPDATE => match blk.id {
            0 => {
                let ntodelete = u16::from_le_bytes(bytes(main, 0, "PAGE_UPDATE")?) as usize;
                let ntoinsert = u16::from_le_bytes(bytes(main, 2, "PAGE_UPDATE")?) as usize;
                page_update(p, rec.block_data(blk), ntodelete, ntoinsert)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            1 => clear_follow_right(p, lsn),
            id => perr!("unexpected block {id}"),
        },
        XLOG_GIST_DELETE if blk.id == 0 => {
            let ntodelete = u16::from_le_bytes(bytes(main, 4, "DELETE")?) as usize;
            // Offsets follow the 6-byte header only when the primary logged some.
            if main.len() > 6 {
                page::index_multi_delete(p, &offsets(&main[6..], ntodelete)?)?;
            }
            update_flags(p, F_TUPLES_DELETED, F_HAS_GARBAGE)?;
            page::set_lsn(p, lsn);
            Ok(())
        }
        XLOG_GIST_PAGE_SPLIT => {
            if blk.id == 0 {
                clear_follow_right(p, lsn)
            } else {
                split_page(rec, blk, p)
            }
        }
        XLOG_GIST_PAGE_DELETE => match blk.id {
            0 => {
                let xid = u64::from_le_bytes(bytes(main, 0, "PAGE_DELETE")?);
                set_deleted(p, xid)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            1 => {
                let off = u16::from_le_bytes(bytes(main, 8, "PAGE_DELETE")?);
                page::index_tuple_delete(p, off as usize)?;
                page::set_lsn(p, lsn);
                Ok(())
            }
            id => perr!("unexpected block {id}"),
        },
        // PAGE_REUSE only gives hot standby a conflict point and ASSIGN_LSN only advances the
        // WAL position (gistGetFakeLSN); neither registers a block nor changes a page.
        XLOG_GIST_PAGE_REUSE | XLOG_GIST_ASSIGN_LSN => {
            perr!("record registers no block to change")
        }
        info => perr!("unexpected block {} for info {info:#04x}", blk.id),
    }
}

/// PAGE_UPDATE on its target: one tuple replaced in place, or deletes then appends.
fn page_update(p: &mut Page, data: &[u8], ntodelete: usize, ntoinsert: usize) -> PResult<()> {
    let mut rest = data;
    if ntodelete == 1 && ntoinsert == 1 {
        // gistplacetopage overwrites in place, so the other tuples move as they did there.
        let off = u16::from_le_bytes(bytes(rest, 0, "PAGE_UPDATE")?) as usize;
        let tuples = split_tuples(&rest[2..])?;
        let Some(first) = tuples.first() else {
            return perr!("PAGE_UPDATE replaces offset {off} with no tuple");
        };
        page::index_tuple_overwrite(p, off, first)?;
        rest = &rest[2 + first.len()..];
    } else if ntodelete > 0 {
        let todelete = offsets(rest, ntodelete)?;
        rest = &rest[ntodelete * 2..];
        page::index_multi_delete(p, &todelete)?;
        if flags(p)? & F_LEAF != 0 {
            update_flags(p, F_TUPLES_DELETED, 0)?;
        }
    }
    append_tuples(p, &split_tuples(rest)?)
}

/// What redo does to a block after restoring its full-page image: the left child of a
/// PAGE_UPDATE (block 1) or PAGE_SPLIT (block 0) still gets its NSN and follow-right change,
/// which the image (taken before the primary made it) does not hold.
pub fn after_image(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let child = match rec.rmgr_info() {
        XLOG_GIST_PAGE_UPDATE => blk.id == 1,
        XLOG_GIST_PAGE_SPLIT => blk.id == 0,
        _ => false,
    };
    if child && !page::is_new(p) {
        clear_follow_right(p, rec.end_lsn.0)?;
    }
    Ok(())
}

/// `gistRedoClearFollowRight`: the left half of a child split now has its downlink.
fn clear_follow_right(p: &mut Page, lsn: u64) -> PResult<()> {
    set_nsn(p, lsn)?;
    update_flags(p, 0, F_FOLLOW_RIGHT)?;
    page::set_lsn(p, lsn);
    Ok(())
}

/// `GistPageSetDeleted`: flag the (empty) page and keep the deleting xid as its contents.
fn set_deleted(p: &mut Page, xid: u64) -> PResult<()> {
    update_flags(p, F_DELETED, 0)?;
    let contents = page::maxalign(page::SIZE_OF_PAGE_HEADER);
    page::set_lower(p, contents + 8);
    match p.get_mut(contents..contents + 8) {
        Some(s) => s.copy_from_slice(&xid.to_le_bytes()),
        None => return perr!("no room for deleteXid"),
    }
    Ok(())
}

/// `gistxlogPageSplit`, 24 bytes: origrlink, (pad), orignsn, origleaf, (pad), npage,
/// markfollowright.
struct Split {
    origrlink: u32,
    orignsn: u64,
    origleaf: bool,
    npage: u16,
    markfollowright: bool,
}

fn parse_split(main: &[u8]) -> PResult<Split> {
    let w = "PAGE_SPLIT";
    Ok(Split {
        origrlink: u32::from_le_bytes(bytes(main, 0, w)?),
        orignsn: u64::from_le_bytes(bytes(main, 8, w)?),
        origleaf: bytes::<1>(main, 16, w)?[0] != 0,
        npage: u16::from_le_bytes(bytes(main, 18, w)?),
        markfollowright: bytes::<1>(main, 20, w)?[0] != 0,
    })
}

/// One page of a split (block `i + 1` holds the split's page `i`): rebuilt from its tuples.
fn split_page(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let x = parse_split(rec.main_data())?;
    let i = blk.id as usize - 1;
    let npage = x.npage as usize;
    if i >= npage {
        return perr!("block {} beyond the split's {npage} pages", blk.id);
    }
    let isrootsplit = rec.block(1).is_some_and(|b| b.blkno == ROOT_BLKNO);
    let data = rec.block_data(blk);
    let num = i32::from_le_bytes(bytes(data, 0, "PAGE_SPLIT page")?);
    let tuples = split_tuples(&data[4..])?;
    if usize::try_from(num).ok() != Some(tuples.len()) {
        return perr!(
            "split page says {num} tuples, its data holds {}",
            tuples.len()
        );
    }
    let is_root = blk.blkno == ROOT_BLKNO;
    init_page(p, if x.origleaf && !is_root { F_LEAF } else { 0 })?;
    append_tuples(p, &tuples)?;
    set_nsn(p, x.orignsn)?;
    let last = i + 1 == npage;
    if is_root {
        set_rightlink(p, INVALID_BLOCK)?;
    } else {
        let next = if last {
            x.origrlink
        } else {
            match blk.id.checked_add(1).and_then(|id| rec.block(id)) {
                Some(b) => b.blkno,
                None => return perr!("split page {i} of {npage} has no next block"),
            }
        };
        set_rightlink(p, next)?;
        if !last && !isrootsplit && x.markfollowright {
            update_flags(p, F_FOLLOW_RIGHT, 0)?;
        }
    }
    page::set_lsn(p, rec.end_lsn.0);
    Ok(())
}

/// This resource manager's `rm_mask` (`gist_mask`).
pub fn mask(p: &mut Page) {
    use super::mask;
    mask::mask_page_lsn_and_checksum(p);
    mask::mask_page_hint_bits(p);
    mask::mask_unused_space(p);
    let _ = set_nsn(p, 0);
    // Primary and redo set follow-right on the left child at different moments.
    let _ = update_flags(p, F_FOLLOW_RIGHT, 0);
    if flags(p).is_ok_and(|f| f & F_LEAF != 0) {
        // gistkillitems marks leaf tuples dead without WAL.
        mask::mask_lp_flags(p);
    }
    // Redo never sets F_HAS_GARBAGE. F_TUPLES_DELETED is masked too: redo of DELETE sets it
    // (gistRedoDeleteRecord) where the primary's gistprunepage does not, and nothing reads it.
    let _ = update_flags(p, 0, F_HAS_GARBAGE | F_TUPLES_DELETED);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index tuple of `len` bytes (MAXALIGNed) whose bytes after the header are `fill`.
    fn tuple(len: usize, fill: u8) -> Vec<u8> {
        let mut t = vec![fill; len];
        t[..6].fill(0);
        t[6..8].copy_from_slice(&(len as u16).to_le_bytes());
        t
    }

    fn leaf_with(n: usize) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, F_LEAF).unwrap();
        let data: Vec<u8> = (0..n).flat_map(|i| tuple(16, i as u8 + 1)).collect();
        page_update(&mut p, &data, 0, n).unwrap();
        p
    }

    #[test]
    fn update_appends_deletes_and_overwrites() {
        let mut p = leaf_with(3);
        assert_eq!(page::max_offset(&p), 3);
        assert_eq!(flags(&p).unwrap(), F_LEAF);
        // Delete offsets 1 and 3, append one tuple: the survivor moves to offset 1.
        let mut data = vec![1, 0, 3, 0];
        data.extend(tuple(24, 9));
        page_update(&mut p, &data, 2, 1).unwrap();
        assert_eq!(page::max_offset(&p), 2);
        assert_eq!(p[page::item_range(&p, 1).unwrap()][8], 2);
        assert_eq!(p[page::item_range(&p, 2).unwrap()][8], 9);
        assert_eq!(flags(&p).unwrap(), F_LEAF | F_TUPLES_DELETED);
        // One for one replaces in place.
        let mut data = vec![2, 0];
        data.extend(tuple(32, 7));
        page_update(&mut p, &data, 1, 1).unwrap();
        assert_eq!(page::max_offset(&p), 2);
        assert_eq!(page::item_id(&p, 2).unwrap().len, 32);
    }

    #[test]
    fn deleted_page_keeps_its_xid() {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, F_LEAF).unwrap();
        set_deleted(&mut p, 0x1_0000_0002).unwrap();
        assert_eq!(page::lower(&p), 32);
        assert_eq!(flags(&p).unwrap(), F_LEAF | F_DELETED);
        assert_eq!(&p[24..32], &0x1_0000_0002u64.to_le_bytes());
    }

    #[test]
    fn mask_hides_what_postgres_hides() {
        let mut a = leaf_with(2);
        let mut b = a.clone();
        set_nsn(&mut b, 0x42).unwrap();
        update_flags(&mut b, F_FOLLOW_RIGHT | F_HAS_GARBAGE, 0).unwrap();
        let mut id = page::item_id(&b, 1).unwrap();
        id.flags = page::LP_DEAD;
        page::set_item_id(&mut b, 1, id).unwrap();
        mask(&mut a);
        mask(&mut b);
        assert_eq!(a[..], b[..]);
        // Line pointer flags of inner pages are compared.
        let mut c = leaf_with(2);
        update_flags(&mut c, 0, F_LEAF).unwrap();
        let mut d = c.clone();
        page::set_item_id(&mut d, 1, id).unwrap();
        mask(&mut c);
        mask(&mut d);
        assert_ne!(c[..], d[..]);
    }

    #[test]
    fn malformed_data_is_an_error_not_a_panic() {
        // A small xorshift generator: arbitrary record data against a real page.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let len = round % 64;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 7) as u8
                })
                .collect();
            let mut p = leaf_with(4);
            let _ = page_update(&mut p, &data, round % 5, round % 3);
            let _ = split_tuples(&data);
            let _ = parse_split(&data);
        }
        // A page without room for the opaque area.
        let mut p = Box::new([0u8; BLCKSZ]);
        page::init(&mut p, 0);
        assert!(flags(&p).is_err());
        assert!(clear_follow_right(&mut p, 1).is_err());
        mask(&mut p);
    }
}
