//! Redo of generic WAL (`access/transam/generic_xlog.c`) records, one block at a time.
//!
//! Extensions without a resource manager of their own (contrib `bloom`, ...) log page changes
//! as a delta per block: a sequence of fragments, each `offset: u16, length: u16` followed by
//! `length` bytes to copy at `offset`. Pages logged whole carry a full-page image instead,
//! which the framework restores before we are called.

use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};

use super::page::{self, perr, PResult, Page};

/// `FRAGMENT_HEADER_SIZE`.
const FRAGMENT_HEADER: usize = 4;

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    apply_delta(p, rec.block_data(blk))?;
    // The delta says nothing about the hole, which GenericXLogFinish left zeroed.
    let (l, u) = (page::lower(p), page::upper(p));
    if l > u || u > BLCKSZ {
        return perr!("generic WAL left pd_lower {l} above pd_upper {u}");
    }
    p[l..u].fill(0);
    page::set_lsn(p, rec.end_lsn.0);
    Ok(())
}

/// `applyPageRedo`, with every fragment checked against the delta and the page.
fn apply_delta(p: &mut Page, mut delta: &[u8]) -> PResult<()> {
    while !delta.is_empty() {
        if delta.len() < FRAGMENT_HEADER {
            return perr!("generic WAL delta ends inside a fragment header");
        }
        let offset = page::get_u16(delta, 0)? as usize;
        let length = page::get_u16(delta, 2)? as usize;
        let rest = &delta[FRAGMENT_HEADER..];
        if length > rest.len() {
            return perr!(
                "generic WAL fragment of {length} bytes at {offset} has {} bytes of data",
                rest.len()
            );
        }
        let Some(dst) = p.get_mut(offset..offset + length) else {
            return perr!("generic WAL fragment of {length} bytes at {offset} beyond the page");
        };
        dst.copy_from_slice(&rest[..length]);
        delta = &rest[length..];
    }
    Ok(())
}

/// This resource manager's `rm_mask` (`generic_mask`).
pub fn mask(p: &mut Page) {
    super::mask::mask_page_lsn_and_checksum(p);
    super::mask::mask_unused_space(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_apply_in_order() {
        let mut p: Box<Page> = Box::new([0; BLCKSZ]);
        let delta = [100u8, 0, 3, 0, 1, 2, 3, 101, 0, 1, 0, 9];
        apply_delta(&mut p, &delta).unwrap();
        assert_eq!(&p[100..103], &[1, 9, 3]);
        assert!(apply_delta(&mut p, &[0xFF, 0x1F, 2, 0, 1, 2]).is_err());
        assert!(apply_delta(&mut p, &[0, 0, 5, 0, 1]).is_err());
        assert!(apply_delta(&mut p, &[0, 0, 5]).is_err());
    }
}
