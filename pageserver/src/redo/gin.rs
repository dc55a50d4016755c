//! Redo of GIN (`access/gin/ginxlog.c`) records, one block at a time.

use walproto::record::{BlockRef, DecodedRecord};

use super::page::{perr, PResult, Page};

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let _ = (rec, blk, p);
    perr!("not implemented yet")
}

/// This resource manager's `rm_mask`.
pub fn mask(p: &mut Page) {
    super::mask::mask_page_lsn_and_checksum(p);
}
