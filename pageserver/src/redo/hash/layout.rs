//! On-page layout of hash index pages (`access/hash.h`): the special space every hash page
//! carries, the metapage fields and the overflow bitmap pages.

use super::super::page::{self, perr, PResult, Page, SIZE_OF_PAGE_HEADER};

/// `hasho_flag` page types and bucket state bits.
pub const LH_UNUSED_PAGE: u16 = 0;
pub const LH_OVERFLOW_PAGE: u16 = 1 << 0;
pub const LH_BUCKET_PAGE: u16 = 1 << 1;
pub const LH_BITMAP_PAGE: u16 = 1 << 2;
pub const LH_META_PAGE: u16 = 1 << 3;
pub const LH_BUCKET_BEING_POPULATED: u16 = 1 << 4;
pub const LH_BUCKET_BEING_SPLIT: u16 = 1 << 5;
pub const LH_BUCKET_NEEDS_SPLIT_CLEANUP: u16 = 1 << 6;
pub const LH_PAGE_HAS_DEAD_TUPLES: u16 = 1 << 7;
pub const LH_PAGE_TYPE: u16 = LH_OVERFLOW_PAGE | LH_BUCKET_PAGE | LH_BITMAP_PAGE | LH_META_PAGE;
/// `hasho_page_id`, so tools can tell hash pages from other AMs' pages.
pub const HASHO_PAGE_ID: u16 = 0xFF80;
pub const INVALID_BLOCK: u32 = 0xFFFF_FFFF;
pub const INVALID_BUCKET: u32 = 0xFFFF_FFFF;
/// `sizeof(HashPageOpaqueData)`.
pub const OPAQUE_SIZE: usize = 16;

const HASH_MAGIC: u32 = 0x0644_0640;
const HASH_VERSION: u32 = 4;
/// `HASH_MAX_SPLITPOINTS` (size of `hashm_spares`) and `HASH_MAX_BITMAPS` (of `hashm_mapp`).
pub const MAX_SPLITPOINTS: usize = 98;
pub const MAX_BITMAPS: usize = 1024;
const SPLITPOINT_PHASE_BITS: u32 = 2;
const SPLITPOINT_PHASE_MASK: u32 = (1 << SPLITPOINT_PHASE_BITS) - 1;
const SPLITPOINT_GROUPS_WITH_ONE_PHASE: u32 = 10;

/// `HashPageOpaqueData` at `pd_special`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opaque {
    pub prev: u32,
    pub next: u32,
    pub bucket: u32,
    pub flag: u16,
    pub page_id: u16,
}

impl Opaque {
    /// The special space of a page that is not part of any bucket chain.
    pub fn standalone(flag: u16) -> Opaque {
        Opaque {
            prev: INVALID_BLOCK,
            next: INVALID_BLOCK,
            bucket: INVALID_BUCKET,
            flag,
            page_id: HASHO_PAGE_ID,
        }
    }
}

/// Where the opaque data lies, if `pd_special` leaves room for it.
pub fn opaque_pos(p: &Page) -> Option<usize> {
    let s = page::special(p);
    (s + OPAQUE_SIZE <= p.len()).then_some(s)
}

fn checked_opaque_pos(p: &Page) -> PResult<usize> {
    match opaque_pos(p) {
        Some(s) => Ok(s),
        None => perr!(
            "pd_special {} leaves no room for the hash opaque data",
            page::special(p)
        ),
    }
}

pub fn opaque(p: &Page) -> PResult<Opaque> {
    let s = checked_opaque_pos(p)?;
    Ok(Opaque {
        prev: page::get_u32(p, s)?,
        next: page::get_u32(p, s + 4)?,
        bucket: page::get_u32(p, s + 8)?,
        flag: page::get_u16(p, s + 12)?,
        page_id: page::get_u16(p, s + 14)?,
    })
}

pub fn set_opaque(p: &mut Page, o: Opaque) -> PResult<()> {
    let s = checked_opaque_pos(p)?;
    page::put_u32(p, s, o.prev)?;
    page::put_u32(p, s + 4, o.next)?;
    page::put_u32(p, s + 8, o.bucket)?;
    page::put_u16(p, s + 12, o.flag)?;
    page::put_u16(p, s + 14, o.page_id)
}

/// Reads the opaque data, lets `f` change it, writes it back.
pub fn update_opaque(p: &mut Page, f: impl FnOnce(&mut Opaque)) -> PResult<()> {
    let mut o = opaque(p)?;
    f(&mut o);
    set_opaque(p, o)
}

/// `_hash_pageinit` then the special space set to `o` (`_hash_initbuf` with initpage).
pub fn init_page(p: &mut Page, o: Opaque) -> PResult<()> {
    page::init(p, OPAQUE_SIZE);
    set_opaque(p, o)
}

/// Byte offsets in the page of the `HashMetaPageData` fields (it starts at
/// `PageGetContents`, right after the 24-byte header).
pub mod meta {
    const BASE: usize = super::SIZE_OF_PAGE_HEADER;
    pub const MAGIC: usize = BASE;
    pub const VERSION: usize = BASE + 4;
    pub const NTUPLES: usize = BASE + 8;
    pub const FFACTOR: usize = BASE + 16;
    pub const BSIZE: usize = BASE + 18;
    pub const BMSIZE: usize = BASE + 20;
    pub const BMSHIFT: usize = BASE + 22;
    pub const MAXBUCKET: usize = BASE + 24;
    pub const HIGHMASK: usize = BASE + 28;
    pub const LOWMASK: usize = BASE + 32;
    pub const OVFLPOINT: usize = BASE + 36;
    pub const FIRSTFREE: usize = BASE + 40;
    pub const NMAPS: usize = BASE + 44;
    pub const PROCID: usize = BASE + 48;
    pub const SPARES: usize = BASE + 52;
    pub const MAPP: usize = SPARES + 4 * super::MAX_SPLITPOINTS;
    /// `sizeof(HashMetaPageData)`, padded to the alignment of its double.
    pub const SIZE: usize = (MAPP + 4 * super::MAX_BITMAPS - BASE + 7) & !7;
}

pub fn meta_ntuples(p: &Page) -> f64 {
    f64::from_le_bytes(p[meta::NTUPLES..meta::NTUPLES + 8].try_into().unwrap())
}

pub fn set_meta_ntuples(p: &mut Page, v: f64) {
    p[meta::NTUPLES..meta::NTUPLES + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn meta_u32(p: &Page, field: usize) -> PResult<u32> {
    page::get_u32(p, field)
}

pub fn set_meta_u32(p: &mut Page, field: usize, v: u32) -> PResult<()> {
    page::put_u32(p, field, v)
}

/// The byte offset of `hashm_spares[i]`.
pub fn spare_pos(i: u32) -> PResult<usize> {
    match usize::try_from(i) {
        Ok(i) if i < MAX_SPLITPOINTS => Ok(meta::SPARES + 4 * i),
        _ => perr!("splitpoint {i} beyond hashm_spares"),
    }
}

/// Appends `blkno` to `hashm_mapp` (the list of bitmap pages).
pub fn push_bitmap_page(p: &mut Page, blkno: u32) -> PResult<()> {
    let nmaps = meta_u32(p, meta::NMAPS)?;
    match usize::try_from(nmaps) {
        Ok(n) if n < MAX_BITMAPS => {
            set_meta_u32(p, meta::MAPP + 4 * n, blkno)?;
            set_meta_u32(p, meta::NMAPS, nmaps + 1)
        }
        _ => perr!("hashm_nmaps {nmaps}: no room for another bitmap page"),
    }
}

/// `hashm_spares[hashm_ovflpoint]++`.
pub fn bump_current_spare(p: &mut Page) -> PResult<()> {
    let pos = spare_pos(meta_u32(p, meta::OVFLPOINT)?)?;
    let v = meta_u32(p, pos)?;
    set_meta_u32(p, pos, v.wrapping_add(1))
}

/// `pg_ceil_log2_32`.
fn ceil_log2(n: u32) -> u32 {
    if n < 2 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// `_hash_spareindex`: the splitpoint phase in which bucket count `nbuckets` is reached.
fn spare_index(nbuckets: u32) -> u32 {
    let group = ceil_log2(nbuckets);
    if group < SPLITPOINT_GROUPS_WITH_ONE_PHASE {
        return group;
    }
    SPLITPOINT_GROUPS_WITH_ONE_PHASE
        + ((group - SPLITPOINT_GROUPS_WITH_ONE_PHASE) << SPLITPOINT_PHASE_BITS)
        + (((nbuckets - 1) >> (group - (SPLITPOINT_PHASE_BITS + 1))) & SPLITPOINT_PHASE_MASK)
}

/// `_hash_get_totalbuckets`: buckets allocated up to and including a splitpoint phase.
fn total_buckets(phase: u32) -> u32 {
    if phase < SPLITPOINT_GROUPS_WITH_ONE_PHASE {
        return 1 << phase;
    }
    let group = SPLITPOINT_GROUPS_WITH_ONE_PHASE
        + ((phase - SPLITPOINT_GROUPS_WITH_ONE_PHASE) >> SPLITPOINT_PHASE_BITS);
    let before = 1u32.wrapping_shl(group - 1);
    let phases_in_group = ((phase - SPLITPOINT_GROUPS_WITH_ONE_PHASE) & SPLITPOINT_PHASE_MASK) + 1;
    before.wrapping_add((before >> SPLITPOINT_PHASE_BITS).wrapping_mul(phases_in_group))
}

/// `_hash_init_metabuffer` on a fresh page: the bucket count follows from the expected
/// number of tuples and the fill factor.
pub fn init_meta(p: &mut Page, num_tuples: f64, procid: u32, ffactor: u16) -> PResult<()> {
    let want = num_tuples / f64::from(ffactor);
    let nbuckets: u32 = if want <= 2.0 {
        2
    } else if want >= f64::from(0x4000_0000u32) {
        0x4000_0000
    } else {
        // C passes the double to a uint32 parameter: truncation.
        total_buckets(spare_index(want as u32))
    };
    let spare = spare_index(nbuckets);
    init_page(p, Opaque::standalone(LH_META_PAGE))?;
    // The largest power-of-two bitmap that fits between header and special space.
    let bsize =
        (p.len() - page::maxalign(SIZE_OF_PAGE_HEADER) - page::maxalign(OPAQUE_SIZE)) as u16;
    let lshift = 15 - bsize.leading_zeros() as u16;
    set_meta_u32(p, meta::MAGIC, HASH_MAGIC)?;
    set_meta_u32(p, meta::VERSION, HASH_VERSION)?;
    set_meta_ntuples(p, 0.0);
    page::put_u16(p, meta::FFACTOR, ffactor)?;
    page::put_u16(p, meta::BSIZE, bsize)?;
    page::put_u16(p, meta::BMSIZE, 1 << lshift)?;
    page::put_u16(p, meta::BMSHIFT, lshift + 3)?;
    set_meta_u32(p, meta::PROCID, procid)?;
    set_meta_u32(p, meta::MAXBUCKET, nbuckets - 1)?;
    let highmask = (nbuckets + 1).next_power_of_two() - 1;
    set_meta_u32(p, meta::HIGHMASK, highmask)?;
    set_meta_u32(p, meta::LOWMASK, highmask >> 1)?;
    set_meta_u32(p, spare_pos(spare)?, 1)?;
    set_meta_u32(p, meta::OVFLPOINT, spare)?;
    set_meta_u32(p, meta::FIRSTFREE, 0)?;
    set_meta_u32(p, meta::NMAPS, 0)?;
    page::set_lower(p, SIZE_OF_PAGE_HEADER + meta::SIZE);
    Ok(())
}

/// `_hash_initbitmapbuffer` on a fresh page: `bmsize` bytes of bits, all "in use".
pub fn init_bitmap(p: &mut Page, bmsize: u16) -> PResult<()> {
    init_page(p, Opaque::standalone(LH_BITMAP_PAGE))?;
    let end = SIZE_OF_PAGE_HEADER + bmsize as usize;
    if end > page::special(p) {
        return perr!("bitmap of {bmsize} bytes does not fit the page");
    }
    p[SIZE_OF_PAGE_HEADER..end].fill(0xFF);
    page::set_lower(p, end);
    Ok(())
}

/// Sets (`SETBIT`) or clears (`CLRBIT`) bit `bit` of a bitmap page.
pub fn set_bitmap_bit(p: &mut Page, bit: u32, on: bool) -> PResult<()> {
    let word = SIZE_OF_PAGE_HEADER + 4 * (bit / 32) as usize;
    if word + 4 > page::special(p) {
        return perr!("bitmap bit {bit} beyond the bitmap page contents");
    }
    let mask = 1u32 << (bit % 32);
    let v = page::get_u32(p, word)?;
    page::put_u32(p, word, if on { v | mask } else { v & !mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitpoints() {
        assert_eq!(spare_index(2), 1);
        assert_eq!(spare_index(512), 9);
        assert_eq!(spare_index(513), 10);
        assert_eq!(spare_index(641), 11);
        assert_eq!(spare_index(1024), 13);
        assert_eq!(spare_index(1025), 14);
        assert_eq!(total_buckets(3), 8);
        assert_eq!(total_buckets(10), 640);
        assert_eq!(total_buckets(13), 1024);
        assert_eq!(total_buckets(14), 1280);
        assert_eq!(meta::SIZE, 4544);
    }
}
