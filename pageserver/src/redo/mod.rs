//! Native redo of PostgreSQL 15 WAL records: given a page as it was before a record, produce
//! the page after it, exactly as Postgres's redo routines would.
//!
//! Entry points:
//! - [`redo_block`]: apply a record to one of its block references.
//! - [`extra_targets`] / [`redo_extra`]: pages a record changes that are *not* among its block
//!   references. In PG15, heap records clear visibility-map bits by reading the VM page
//!   themselves (`visibilitymap_clear`), and SMGR TRUNCATE clears the tail of the last VM page;
//!   Strata must produce those page versions too.
//! - [`mask`]: PG15's page masking, to compare a redo result with a consistency-check image.
//! - [`verify`]: replays a WAL directory over a base data directory ([`store`]) and checks
//!   every page against the images `wal_consistency_checking` attached; [`datadir`] compares
//!   the end state with Postgres's own files after a clean shutdown.
//!
//! Limits, on purpose: the heap page LSN of Heap2 VISIBLE is set as with data checksums or
//! `wal_log_hints` (`XLogHintBitIsNeeded`), which Strata requires; FSM pages are not redone
//! (Postgres does not WAL-log them either, except as full-page images).
//!
//! Every built-in resource manager that changes relation pages has native redo, one module
//! each: heap, heap2, btree, hash, gin, gist, seq, spgist, brin, generic, and XLOG (full-page
//! images). A custom resource manager's records (ids 128..=255, from extensions) are
//! [`RedoError::Unsupported`] unless the block carries an image to apply.

pub mod brin;
pub mod btree;
mod btree_dedup;
pub mod datadir;
pub mod diff;
pub mod extra;
mod fields;
pub mod generic;
pub mod gin;
pub mod gist;
pub mod hash;
pub mod heap;
pub mod heap2;
pub mod htup;
pub mod itup;
pub mod mask;
pub mod page;
mod page_compact;
pub mod seq;
pub mod slru;
pub mod spgist;
pub mod store;
pub mod verify;
pub mod vm;

use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::{
    self, RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP2_ID,
    RM_HEAP_ID, RM_SEQ_ID, RM_SPGIST_ID, RM_XLOG_ID,
};
use walproto::Lsn;

pub use extra::{extra_targets, redo_extra, ExtraOp, ExtraTarget};
pub use page::Page;

/// Why a record could not be applied to a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedoError {
    /// The record or the page does not allow what the record says (a malformed record, or a
    /// page that is not the version the record applies to).
    #[error("{record} at {lsn}, {block}: {problem}")]
    Malformed {
        /// `Rmgr/TYPE`.
        record: String,
        lsn: Lsn,
        /// Which block: id and (rel, fork, blkno).
        block: String,
        problem: String,
    },
    /// Strata has no native redo for this resource manager and the block carries no image.
    #[error("no native redo for {rmgr}/{record_type} at {lsn}")]
    Unsupported {
        rmgr: &'static str,
        record_type: String,
        lsn: Lsn,
    },
    /// The record has no block reference with this id.
    #[error("{record} at {lsn} has no block {block_id}")]
    NoSuchBlock {
        record: String,
        lsn: Lsn,
        block_id: u8,
    },
}

/// Moved to walproto, beside the names it joins; re-exported for redo's callers.
pub use walproto::rmgr::record_name;

/// Resource managers whose page changes Strata computes itself.
pub fn has_native_redo(rmid: u8) -> bool {
    matches!(
        rmid,
        RM_HEAP_ID
            | RM_HEAP2_ID
            | RM_BTREE_ID
            | RM_HASH_ID
            | RM_GIN_ID
            | RM_GIST_ID
            | RM_SEQ_ID
            | RM_SPGIST_ID
            | RM_BRIN_ID
            | RM_GENERIC_ID
            | RM_XLOG_ID
    )
}

/// Whether a block the record references may be absent (then redo starts from a zeroed page):
/// the record initializes it, restores an image into it, or is Heap2 VISIBLE's VM page, which
/// Postgres reads with `RBM_ZERO_ON_ERROR` and initializes. Any other absent block means the
/// page store is missing a page the record needs.
pub fn may_create(rec: &DecodedRecord, blk: &BlockRef) -> bool {
    blk.will_init()
        || blk.applies_image()
        || (rec.rmid() == RM_HEAP2_ID
            && rec.rmgr_info() & walproto::rmgr::heap::XLOG_HEAP_OPMASK
                == walproto::rmgr::heap::XLOG_HEAP2_VISIBLE
            && blk.id == 0)
}

/// The page a block's image gives after the record: the image, with the record's end LSN as
/// `pd_lsn` unless it is an all-zero page (what `XLogReadBufferForRedoExtended` does; a
/// consistency image is taken before the primary sets it). An image that applies to a GiST
/// split's left child is then changed as Postgres changes it after restoring (NSN,
/// F_FOLLOW_RIGHT): the primary made that change after taking the image.
pub fn restore_image(rec: &DecodedRecord, blk: &BlockRef, page: &mut Page) -> page::PResult<()> {
    let Some(image) = blk.image.as_ref() else {
        return page::perr!("block {} has no image", blk.id);
    };
    image
        .restore_into(page)
        .map_err(|e| page::PageError(format!("restoring the image: {e}")))?;
    if !page::is_new(page) {
        page::set_lsn(page, rec.end_lsn.0);
    }
    if rec.rmid() == RM_GIST_ID && blk.applies_image() {
        gist::after_image(rec, blk, page)?;
    }
    Ok(())
}

/// Applies `rec` to its block `block_id`. `page` is the block as it was before the record
/// (zeroed if the record initializes it, or if it did not exist and [`may_create`] allows it).
///
/// An image marked to apply (`BKPIMAGE_APPLY`) replaces the page, and the page LSN becomes the
/// record's end unless the image is an all-zero page (what `XLogReadBufferForRedoExtended`
/// does). Otherwise the rmgr's redo runs; for rmgrs without native redo this is
/// [`RedoError::Unsupported`], and the caller uses a consistency image if the block has one.
pub fn redo_block(rec: &DecodedRecord, block_id: u8, page: &mut Page) -> Result<(), RedoError> {
    let Some(blk) = rec.block(block_id) else {
        return Err(RedoError::NoSuchBlock {
            record: record_name(rec),
            lsn: rec.lsn,
            block_id,
        });
    };
    let fail = |problem: String| RedoError::Malformed {
        record: record_name(rec),
        lsn: rec.lsn,
        block: format!(
            "block {} ({} fork {} blk {})",
            blk.id, blk.rel, blk.fork, blk.blkno
        ),
        problem,
    };
    if blk.applies_image() {
        return restore_image(rec, blk, page).map_err(|e| fail(e.0));
    }
    let res = match rec.rmid() {
        RM_HEAP_ID => heap::redo(rec, blk, page),
        RM_HEAP2_ID => heap2::redo(rec, blk, page),
        RM_BTREE_ID => btree::redo(rec, blk, page),
        RM_HASH_ID => hash::redo(rec, blk, page),
        RM_GIN_ID => gin::redo(rec, blk, page),
        RM_GIST_ID => gist::redo(rec, blk, page),
        RM_SEQ_ID => seq::redo(rec, page),
        RM_SPGIST_ID => spgist::redo(rec, blk, page),
        RM_BRIN_ID => brin::redo(rec, blk, page),
        RM_GENERIC_ID => generic::redo(rec, blk, page),
        RM_XLOG_ID => Err(page::PageError(
            "XLOG record block without an image to restore".into(),
        )),
        rmid => {
            return Err(RedoError::Unsupported {
                rmgr: rmgr::rmgr_name(rmid).unwrap_or("custom"),
                record_type: rmgr::desc_type_name(rmid, rec.header.info),
                lsn: rec.lsn,
            })
        }
    };
    res.map_err(|e| fail(e.0))
}
