//! Page masking for comparisons with consistency-check images, as PostgreSQL 15 does it
//! (`access/common/bufmask.c` and each resource manager's `rm_mask`): everything redo is
//! allowed to leave different from the primary (LSN, checksum, hint bits, free space, ...) is
//! overwritten with `MASK_MARKER` (0) on both pages before comparing.

use super::btree::{self, BTP_HAS_GARBAGE, BTP_LEAF, BTP_SPLIT_END};
use super::htup::{self, Htup};
use super::page::{self, ItemId, Page};

/// `mask_page_lsn_and_checksum`.
pub fn mask_page_lsn_and_checksum(p: &mut Page) {
    page::set_lsn(p, 0);
    page::set_checksum(p, 0);
}

/// `mask_page_hint_bits`: pd_prune_xid, PD_PAGE_FULL, PD_HAS_FREE_LINES, PD_ALL_VISIBLE.
pub fn mask_page_hint_bits(p: &mut Page) {
    page::set_prune_xid(p, 0);
    let f = page::flags(p) & !(page::PD_PAGE_FULL | page::PD_HAS_FREE_LINES | page::PD_ALL_VISIBLE);
    page::set_flags(p, f);
}

/// `mask_unused_space`: the hole between pd_lower and pd_upper. Postgres errors on a page
/// whose pointers are inconsistent; here such a page is left as it is (it then differs).
pub fn mask_unused_space(p: &mut Page) {
    let (l, u, s) = (page::lower(p), page::upper(p), page::special(p));
    if l > u || s < u || l < page::SIZE_OF_PAGE_HEADER || s > p.len() {
        return;
    }
    p[l..u].fill(0);
}

/// `mask_lp_flags`: used line pointers become LP_UNUSED (flags only).
pub fn mask_lp_flags(p: &mut Page) {
    for off in 1..=page::max_offset(p) {
        if let Ok(mut id) = page::item_id(p, off) {
            if id.is_used() {
                id.flags = page::LP_UNUSED;
                let _ = page::set_item_id(p, off, id);
            }
        }
    }
}

/// `mask_page_content`: everything after the header, and pd_lower / pd_upper.
pub fn mask_page_content(p: &mut Page) {
    p[page::SIZE_OF_PAGE_HEADER..].fill(0);
    page::set_lower(p, 0);
    page::set_upper(p, 0);
}

/// `heap_mask` (Heap and Heap2, so also the VM page of Heap2 VISIBLE).
pub fn heap_mask(p: &mut Page, blkno: u32) {
    mask_page_lsn_and_checksum(p);
    mask_page_hint_bits(p);
    mask_unused_space(p);
    for off in 1..=page::max_offset(p) {
        let Ok(id) = page::item_id(p, off) else {
            continue;
        };
        if id.is_normal() && id.off + htup::SIZEOF_HEAP_TUPLE_HEADER <= p.len() {
            let Ok(mut h) = Htup::new(&mut p[id.off..]) else {
                continue;
            };
            let m = h.infomask();
            if m & htup::HEAP_XMIN_FROZEN != htup::HEAP_XMIN_FROZEN {
                h.set_infomask(m & !htup::HEAP_XACT_MASK);
            } else {
                h.set_infomask(m & !(htup::HEAP_XMAX_INVALID | htup::HEAP_XMAX_COMMITTED));
            }
            h.set_field3(0);
            if h.ctid_offset() == htup::SPEC_TOKEN_OFFSET_NUMBER {
                h.set_ctid(blkno, off as u16);
            }
        }
        mask_padding(p, id);
    }
}

/// The padding after an item whose length is not MAXALIGNed.
fn mask_padding(p: &mut Page, id: ItemId) {
    if id.has_storage() {
        let end = (id.off + id.len).min(p.len());
        let pad_end = page::maxalign(id.off + id.len).min(p.len());
        p[end..pad_end].fill(0);
    }
}

/// `btree_mask`.
pub fn btree_mask(p: &mut Page) {
    mask_page_lsn_and_checksum(p);
    mask_page_hint_bits(p);
    mask_unused_space(p);
    let Ok(mut o) = btree::opaque(p) else { return };
    if o.flags & BTP_LEAF != 0 {
        mask_lp_flags(p);
    }
    o.flags &= !(BTP_HAS_GARBAGE | BTP_SPLIT_END);
    o.cycleid = 0;
    let _ = btree::set_opaque(p, o);
}

/// `seq_mask`.
pub fn seq_mask(p: &mut Page) {
    mask_page_lsn_and_checksum(p);
    mask_unused_space(p);
}

/// Masks `p` with the `rm_mask` of resource manager `rmid`; false if it has none here.
pub fn mask_for_rmgr(rmid: u8, p: &mut Page, blkno: u32) -> bool {
    use walproto::rmgr::{
        RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP2_ID,
        RM_HEAP_ID, RM_SEQ_ID, RM_SPGIST_ID,
    };
    match rmid {
        RM_HEAP_ID | RM_HEAP2_ID => heap_mask(p, blkno),
        RM_BTREE_ID => btree_mask(p),
        RM_HASH_ID => super::hash::mask(p),
        RM_GIN_ID => super::gin::mask(p),
        RM_GIST_ID => super::gist::mask(p),
        RM_SEQ_ID => seq_mask(p),
        RM_SPGIST_ID => super::spgist::mask(p),
        RM_BRIN_ID => super::brin::mask(p),
        RM_GENERIC_ID => super::generic::mask(p),
        _ => return false,
    }
    true
}
