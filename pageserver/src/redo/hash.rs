//! Redo of hash index (`access/hash/hash_xlog.c`) records, one block at a time.
//!
//! Every block a hash record registers is either rewritten from what the record carries
//! (fresh metapage, bitmap, bucket and overflow pages; tuples added or removed; opaque links
//! and flags; metapage counters) or registered only so that replay takes a cleanup lock on
//! the primary bucket page. The latter are left exactly as they are, LSN included.

pub mod layout;

use walproto::record::{BlockRef, DecodedRecord};

use self::layout::*;
use super::fields::Fields;
use super::itup::IndexTuple;
use super::page::{self, perr, AddItem, PResult, Page};

const INIT_META_PAGE: u8 = 0x00;
const INIT_BITMAP_PAGE: u8 = 0x10;
const INSERT: u8 = 0x20;
const ADD_OVFL_PAGE: u8 = 0x30;
const SPLIT_ALLOCATE_PAGE: u8 = 0x40;
const SPLIT_PAGE: u8 = 0x50;
const SPLIT_COMPLETE: u8 = 0x60;
const MOVE_PAGE_CONTENTS: u8 = 0x70;
const SQUEEZE_PAGE: u8 = 0x80;
const DELETE: u8 = 0x90;
const SPLIT_CLEANUP: u8 = 0xA0;
const UPDATE_META_PAGE: u8 = 0xB0;
const VACUUM_ONE_PAGE: u8 = 0xC0;

/// `xl_hash_split_allocate_page.flags`: which metapage fields block 2's data carries.
const SPLIT_META_UPDATE_MASKS: u8 = 1 << 0;
const SPLIT_META_UPDATE_SPLITPOINT: u8 = 1 << 1;

/// Hash redo never shuffles or overwrites line pointers when it adds tuples.
const PLAIN_ADD: AddItem = AddItem {
    overwrite: false,
    is_heap: false,
};

fn main_fields(rec: &DecodedRecord) -> Fields<'_> {
    Fields {
        data: rec.main_data(),
        what: "main data",
    }
}

fn block_fields<'a>(rec: &'a DecodedRecord, blk: &BlockRef) -> Fields<'a> {
    Fields {
        data: rec.block_data(blk),
        what: "block data",
    }
}

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    let id = blk.id;
    let main = main_fields(rec);
    let info = rec.rmgr_info() & 0xF0;
    if id == 0 && matches!(info, MOVE_PAGE_CONTENTS | SQUEEZE_PAGE | DELETE) {
        // Block 0 is the primary bucket page, registered (when it is not the page written)
        // only so that replay holds its cleanup lock: Postgres leaves it untouched.
        return Ok(());
    }
    match info {
        INIT_META_PAGE => match id {
            0 => init_meta(p, main.f64(0)?, main.u32(8)?, main.u16(12)?),
            _ => return unexpected(id),
        },
        INIT_BITMAP_PAGE => match id {
            0 => init_bitmap(p, main.u16(0)?),
            1 => {
                // The first bitmap page follows the metapage and the initial buckets.
                let maxbucket = meta_u32(p, meta::MAXBUCKET)?;
                push_bitmap_page(p, maxbucket.wrapping_add(2))
            }
            _ => return unexpected(id),
        },
        INSERT => match id {
            0 => page::add_item(p, rec.block_data(blk), main.u16(0)? as usize, PLAIN_ADD).map(drop),
            1 => {
                set_meta_ntuples(p, meta_ntuples(p) + 1.0);
                Ok(())
            }
            _ => return unexpected(id),
        },
        ADD_OVFL_PAGE => add_ovfl_page(rec, blk, p),
        SPLIT_ALLOCATE_PAGE => split_allocate_page(rec, blk, p),
        SPLIT_PAGE => {
            // The primary always logs the page as an image, which is applied before redo.
            return perr!("split record without a full-page image");
        }
        SPLIT_COMPLETE => {
            let flag = match id {
                0 => main.u16(0)?,
                1 => main.u16(2)?,
                _ => return unexpected(id),
            };
            update_opaque(p, |o| o.flag = flag)
        }
        MOVE_PAGE_CONTENTS => {
            let ntups = main.u16(0)?;
            match id {
                1 => add_moved_tuples(rec.block_data(blk), ntups, p),
                2 => delete_offsets(p, rec.block_data(blk)),
                _ => return unexpected(id),
            }
        }
        SQUEEZE_PAGE => squeeze_page(rec, blk, p),
        DELETE => match id {
            1 => {
                delete_offsets(p, rec.block_data(blk))?;
                if main.flag(0)? {
                    update_opaque(p, |o| o.flag &= !LH_PAGE_HAS_DEAD_TUPLES)?;
                }
                Ok(())
            }
            _ => return unexpected(id),
        },
        SPLIT_CLEANUP => match id {
            0 => update_opaque(p, |o| o.flag &= !LH_BUCKET_NEEDS_SPLIT_CLEANUP),
            _ => return unexpected(id),
        },
        UPDATE_META_PAGE => match id {
            0 => {
                set_meta_ntuples(p, main.f64(0)?);
                Ok(())
            }
            _ => return unexpected(id),
        },
        VACUUM_ONE_PAGE => {
            let ntuples = main.u32(4)? as i32;
            match id {
                0 => vacuum_one_page(p, main.data, ntuples),
                1 => {
                    set_meta_ntuples(p, meta_ntuples(p) - f64::from(ntuples));
                    Ok(())
                }
                _ => return unexpected(id),
            }
        }
        info => return perr!("unknown hash record type {info:#04x}"),
    }?;
    page::set_lsn(p, lsn);
    Ok(())
}

fn unexpected(id: u8) -> PResult<()> {
    perr!("unexpected block {id}")
}

/// ADD_OVFL_PAGE: block 0 is the new overflow page, 1 the page it is chained after, 2 the
/// bitmap page marking it used, 3 a new bitmap page, 4 the metapage.
fn add_ovfl_page(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let data = block_fields(rec, blk);
    match blk.id {
        0 => {
            let left = rec.block(1).map_or(INVALID_BLOCK, |b| b.blkno);
            init_page(
                p,
                Opaque {
                    prev: left,
                    next: INVALID_BLOCK,
                    bucket: data.u32(0)?,
                    flag: LH_OVERFLOW_PAGE,
                    page_id: HASHO_PAGE_ID,
                },
            )
        }
        1 => {
            let ovfl = rec.block(0).map_or(INVALID_BLOCK, |b| b.blkno);
            update_opaque(p, |o| o.next = ovfl)
        }
        2 => set_bitmap_bit(p, data.u32(0)?, true),
        3 => init_bitmap(p, main_fields(rec).u16(0)?),
        4 => {
            set_meta_u32(p, meta::FIRSTFREE, data.u32(0)?)?;
            if !main_fields(rec).flag(2)? {
                bump_current_spare(p)?;
                if let Some(newmap) = rec.block(3) {
                    push_bitmap_page(p, newmap.blkno)?;
                    bump_current_spare(p)?;
                }
            }
            Ok(())
        }
        id => unexpected(id),
    }
}

/// SPLIT_ALLOCATE_PAGE: block 0 is the old bucket's primary page, 1 the new bucket's, 2 the
/// metapage.
fn split_allocate_page(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let main = main_fields(rec);
    let new_bucket = main.u32(0)?;
    match blk.id {
        0 => {
            let flag = main.u16(4)?;
            update_opaque(p, |o| {
                o.flag = flag;
                o.prev = new_bucket;
            })
        }
        1 => init_page(
            p,
            Opaque {
                prev: new_bucket,
                next: INVALID_BLOCK,
                bucket: new_bucket,
                flag: main.u16(6)?,
                page_id: HASHO_PAGE_ID,
            },
        ),
        2 => {
            let flags = main.u8(8)?;
            let data = block_fields(rec, blk);
            set_meta_u32(p, meta::MAXBUCKET, new_bucket)?;
            let mut pos = 0;
            if flags & SPLIT_META_UPDATE_MASKS != 0 {
                set_meta_u32(p, meta::LOWMASK, data.u32(0)?)?;
                set_meta_u32(p, meta::HIGHMASK, data.u32(4)?)?;
                pos = 8;
            }
            if flags & SPLIT_META_UPDATE_SPLITPOINT != 0 {
                let ovflpoint = data.u32(pos)?;
                set_meta_u32(p, spare_pos(ovflpoint)?, data.u32(pos + 4)?)?;
                set_meta_u32(p, meta::OVFLPOINT, ovflpoint)?;
            }
            Ok(())
        }
        id => unexpected(id),
    }
}

/// SQUEEZE_PAGE: tuples of an overflow page move to an earlier page of the chain (block 1),
/// the emptied page (2) becomes unused and is unlinked from its neighbours (3, 4), its bit
/// in the bitmap (5) is cleared and the metapage's first free page (6) may move back.
fn squeeze_page(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let main = main_fields(rec);
    let prevblkno = main.u32(0)?;
    let nextblkno = main.u32(4)?;
    let ntups = main.u16(8)?;
    let write_is_prev = main.flag(11)?;
    match blk.id {
        1 => {
            add_moved_tuples(rec.block_data(blk), ntups, p)?;
            if write_is_prev {
                update_opaque(p, |o| o.next = nextblkno)?;
            }
            Ok(())
        }
        2 => init_page(p, Opaque::standalone(LH_UNUSED_PAGE)),
        3 => update_opaque(p, |o| o.next = nextblkno),
        4 => update_opaque(p, |o| o.prev = prevblkno),
        5 => set_bitmap_bit(p, block_fields(rec, blk).u32(0)?, false),
        6 => set_meta_u32(p, meta::FIRSTFREE, block_fields(rec, blk).u32(0)?),
        id => unexpected(id),
    }
}

/// The write page of MOVE_PAGE_CONTENTS and SQUEEZE_PAGE: `ntups` target offsets, then the
/// tuples (each MAXALIGNed), added at those offsets in order.
fn add_moved_tuples(data: &[u8], ntups: u16, p: &mut Page) -> PResult<()> {
    if ntups == 0 {
        return Ok(());
    }
    let n = ntups as usize;
    let offs = Fields {
        data,
        what: "moved tuples data",
    };
    offs.need(2 * n)?;
    let mut pos = 2 * n;
    let mut added = 0;
    while pos < data.len() {
        if added == n {
            return perr!("more tuples than the {n} target offsets");
        }
        let size = page::maxalign(IndexTuple(&data[pos..]).size()?);
        let Some(tup) = data.get(pos..pos + size).filter(|_| size > 0) else {
            return perr!(
                "tuple of {size} bytes at {pos} overruns {} bytes",
                data.len()
            );
        };
        page::add_item(p, tup, offs.u16(2 * added)? as usize, PLAIN_ADD)?;
        pos += size;
        added += 1;
    }
    if added != n {
        return perr!("{added} tuples for {n} target offsets");
    }
    Ok(())
}

/// Deletes the items whose offsets the block data lists (`PageIndexMultiDelete`).
fn delete_offsets(p: &mut Page, data: &[u8]) -> PResult<()> {
    let offs: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if !offs.is_empty() {
        page::index_multi_delete(p, &offs)?;
    }
    Ok(())
}

/// VACUUM_ONE_PAGE on the bucket page: the LP_DEAD items listed after the 8-byte header of
/// the main data go, and the page no longer has dead tuples.
fn vacuum_one_page(p: &mut Page, main: &[u8], ntuples: i32) -> PResult<()> {
    const HEADER: usize = 8;
    if main.len() > HEADER {
        let Ok(n) = usize::try_from(ntuples) else {
            return perr!("negative tuple count {ntuples}");
        };
        let Some(list) = main.get(HEADER..HEADER + 2 * n) else {
            return perr!("{n} offsets do not fit {} bytes of main data", main.len());
        };
        let offs: Vec<u16> = list
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        page::index_multi_delete(p, &offs)?;
    }
    update_opaque(p, |o| o.flag &= !LH_PAGE_HAS_DEAD_TUPLES)
}

/// This resource manager's `rm_mask` (`hash_mask`).
pub fn mask(p: &mut Page) {
    use super::mask::*;
    mask_page_lsn_and_checksum(p);
    mask_page_hint_bits(p);
    mask_unused_space(p);
    // Postgres locates the opaque data before masking anything further.
    let Some(pos) = opaque_pos(p) else { return };
    let flag_pos = pos + 12;
    let flag = u16::from_le_bytes([p[flag_pos], p[flag_pos + 1]]);
    match flag & LH_PAGE_TYPE {
        LH_UNUSED_PAGE => mask_page_content(p),
        // Line pointers may become LP_DEAD without WAL (killed index items).
        LH_BUCKET_PAGE | LH_OVERFLOW_PAGE => mask_lp_flags(p),
        _ => {}
    }
    // The dead-tuples hint may be set without WAL too.
    let flag = u16::from_le_bytes([p[flag_pos], p[flag_pos + 1]]) & !LH_PAGE_HAS_DEAD_TUPLES;
    p[flag_pos..flag_pos + 2].copy_from_slice(&flag.to_le_bytes());
}
