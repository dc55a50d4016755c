//! Visibility map pages (`access/heap/visibilitymap.c`): two bits per heap block
//! (all-visible, all-frozen) in the contents area of a standard page with no line pointers.

use super::page::{self, Page, SIZE_OF_PAGE_HEADER};
use walproto::consts::BLCKSZ;

/// `MAPSIZE`: bytes of bitmap per VM page (the page minus its MAXALIGNed header).
pub const MAPSIZE: usize = BLCKSZ - SIZE_OF_PAGE_HEADER;
/// Two bits per heap block, four heap blocks per byte.
pub const HEAPBLOCKS_PER_BYTE: u32 = 4;
/// `HEAPBLOCKS_PER_PAGE` = 32672 for 8 KiB pages.
pub const HEAPBLOCKS_PER_PAGE: u32 = MAPSIZE as u32 * HEAPBLOCKS_PER_BYTE;

pub const VISIBILITYMAP_ALL_VISIBLE: u8 = 0x01;
pub const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;
pub const VISIBILITYMAP_VALID_BITS: u8 = 0x03;

/// `HEAPBLK_TO_MAPBLOCK`: the VM block holding a heap block's bits.
pub fn heapblk_to_mapblock(heap_blk: u32) -> u32 {
    heap_blk / HEAPBLOCKS_PER_PAGE
}

/// `HEAPBLK_TO_MAPBYTE` (index into the map, not the page) and `HEAPBLK_TO_OFFSET`.
fn position(heap_blk: u32) -> (usize, u32) {
    let byte = (heap_blk % HEAPBLOCKS_PER_PAGE) / HEAPBLOCKS_PER_BYTE;
    let shift = (heap_blk % HEAPBLOCKS_PER_BYTE) * 2;
    (SIZE_OF_PAGE_HEADER + byte as usize, shift)
}

/// `vm_readbuf`/`heap_xlog_visible`: a VM page read as zeros (absent, or past the end) is
/// initialized before use.
pub fn init_if_new(p: &mut Page) {
    if page::is_new(p) {
        page::init(p, 0);
    }
}

/// The bits of `heap_blk`.
pub fn get_bits(p: &Page, heap_blk: u32) -> u8 {
    let (byte, shift) = position(heap_blk);
    (p[byte] >> shift) & VISIBILITYMAP_VALID_BITS
}

/// `visibilitymap_clear`: clears `flags` of `heap_blk`. Postgres does not set the VM page's LSN
/// for this. Returns whether a bit changed.
pub fn clear(p: &mut Page, heap_blk: u32, flags: u8) -> bool {
    init_if_new(p);
    let (byte, shift) = position(heap_blk);
    let mask = (flags & VISIBILITYMAP_VALID_BITS) << shift;
    let changed = p[byte] & mask != 0;
    p[byte] &= !mask;
    changed
}

/// `visibilitymap_set` during redo: sets `flags`; if that changed anything, the VM page's LSN
/// becomes the record's.
pub fn set(p: &mut Page, heap_blk: u32, flags: u8, lsn: u64) {
    init_if_new(p);
    let (byte, shift) = position(heap_blk);
    let flags = flags & VISIBILITYMAP_VALID_BITS;
    if flags != (p[byte] >> shift) & VISIBILITYMAP_VALID_BITS {
        p[byte] |= flags << shift;
        page::set_lsn(p, lsn);
    }
}

/// `visibilitymap_prepare_truncate`: when the heap is truncated to `nheapblocks`, the bits of
/// the removed heap blocks on the last remaining VM page are cleared. Returns the number of VM
/// blocks that remain and whether `page` (that last block) is modified.
pub fn truncate_tail(p: &mut Page, nheapblocks: u32) -> bool {
    let (byte, shift) = position(nheapblocks);
    if byte == SIZE_OF_PAGE_HEADER && shift == 0 {
        return false;
    }
    p[byte + 1..].fill(0);
    p[byte] &= ((1u32 << shift) - 1) as u8;
    true
}

/// How many VM blocks remain after truncating the heap to `nheapblocks`.
pub fn truncated_nblocks(nheapblocks: u32) -> u32 {
    let (byte, shift) = position(nheapblocks);
    let blk = heapblk_to_mapblock(nheapblocks);
    if byte != SIZE_OF_PAGE_HEADER || shift != 0 {
        blk + 1
    } else {
        blk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_bits() {
        assert_eq!(HEAPBLOCKS_PER_PAGE, 32672);
        assert_eq!(heapblk_to_mapblock(32671), 0);
        assert_eq!(heapblk_to_mapblock(32672), 1);
        let mut p = Box::new([0u8; BLCKSZ]);
        set(&mut p, 5, VISIBILITYMAP_VALID_BITS, 0x1234);
        assert_eq!(page::lower(&p), 24);
        assert_eq!(p[24 + 1], 0b11 << 2);
        assert_eq!(page::lsn(&p), 0x1234);
        assert!(clear(&mut p, 5, VISIBILITYMAP_ALL_FROZEN));
        assert_eq!(get_bits(&p, 5), VISIBILITYMAP_ALL_VISIBLE);
        assert!(!clear(&mut p, 5, VISIBILITYMAP_ALL_FROZEN));
        set(&mut p, 7, 1, 0);
        assert!(truncate_tail(&mut p, 6));
        assert_eq!(get_bits(&p, 5), 1);
        assert_eq!(get_bits(&p, 7), 0);
        assert_eq!(truncated_nblocks(0), 0);
        assert_eq!(truncated_nblocks(1), 1);
        assert_eq!(truncated_nblocks(32672), 1);
    }
}
