//! Pages a record changes beyond its block references.
//!
//! PG15 heap records with `XLH_*_ALL_VISIBLE_CLEARED` (or `XLH_LOCK_ALL_FROZEN_CLEARED`) do
//! not register the visibility-map page: redo pins it with `visibilitymap_pin` (extending the
//! fork with initialized pages if needed) and clears the heap block's bits, without setting the
//! VM page's LSN. SMGR TRUNCATE of a heap with the VM flag clears the bits of the truncated
//! heap blocks on the last remaining VM page (`visibilitymap_prepare_truncate`). Strata's
//! ingest turns each of these into a page version of the VM fork.

use walproto::consts::VISIBILITYMAP_FORKNUM;
use walproto::record::{DecodedRecord, RelFileNode};
use walproto::rmgr::heap::*;
use walproto::rmgr::smgr::{SmgrRecord, SMGR_TRUNCATE_VM};
use walproto::rmgr::{RM_HEAP2_ID, RM_HEAP_ID, RM_SMGR_ID};

use super::page::Page;
use super::{heap, heap2, record_name, vm, RedoError};

/// What to do to the extra page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraOp {
    /// `visibilitymap_clear(heap_blk, flags)`; a missing page is created initialized.
    VmClear { heap_blk: u32, flags: u8 },
    /// `visibilitymap_prepare_truncate(nheapblocks)`; applies only if the page exists.
    VmTruncate { nheapblocks: u32 },
}

/// One page a record changes that is not one of its block references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraTarget {
    pub rel: RelFileNode,
    pub fork: u8,
    pub blkno: u32,
    pub op: ExtraOp,
}

fn vm_clear(rel: RelFileNode, heap_blk: u32, flags: u8) -> ExtraTarget {
    ExtraTarget {
        rel,
        fork: VISIBILITYMAP_FORKNUM,
        blkno: vm::heapblk_to_mapblock(heap_blk),
        op: ExtraOp::VmClear { heap_blk, flags },
    }
}

/// The extra pages `rec` changes, in the order Postgres's redo changes them.
pub fn extra_targets(rec: &DecodedRecord) -> Result<Vec<ExtraTarget>, RedoError> {
    let fail = |problem: String| RedoError::Malformed {
        record: record_name(rec),
        lsn: rec.lsn,
        block: "main data".into(),
        problem,
    };
    let all = vm::VISIBILITYMAP_VALID_BITS;
    let mut out = Vec::new();
    let b0 = rec.block(0);
    match rec.rmid() {
        RM_HEAP_ID => {
            let Some(b0) = b0 else { return Ok(out) };
            match heap::parse(rec).map_err(|e| fail(e.0))? {
                HeapRecord::Insert { flags, .. } if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 => {
                    out.push(vm_clear(b0.rel, b0.blkno, all))
                }
                HeapRecord::Delete { flags, .. } if flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 => {
                    out.push(vm_clear(b0.rel, b0.blkno, all))
                }
                HeapRecord::Update(u) => {
                    let oldblk = rec.block(1).map_or(b0.blkno, |b| b.blkno);
                    if u.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
                        out.push(vm_clear(b0.rel, oldblk, all));
                    }
                    if u.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
                        out.push(vm_clear(b0.rel, b0.blkno, all));
                    }
                }
                HeapRecord::Lock { flags, .. } if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 => {
                    out.push(vm_clear(b0.rel, b0.blkno, vm::VISIBILITYMAP_ALL_FROZEN))
                }
                _ => {}
            }
        }
        RM_HEAP2_ID => {
            let Some(b0) = b0 else { return Ok(out) };
            match heap2::parse(rec).map_err(|e| fail(e.0))? {
                Heap2Record::MultiInsert { flags, .. }
                    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 =>
                {
                    out.push(vm_clear(b0.rel, b0.blkno, all))
                }
                Heap2Record::LockUpdated { flags, .. }
                    if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 =>
                {
                    out.push(vm_clear(b0.rel, b0.blkno, vm::VISIBILITYMAP_ALL_FROZEN))
                }
                _ => {}
            }
        }
        RM_SMGR_ID => {
            let parsed = SmgrRecord::parse(rec.header.info, &rec.main_data_bytes())
                .map_err(|e| fail(e.to_string()))?;
            if let SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            } = parsed
            {
                if flags & SMGR_TRUNCATE_VM != 0
                    && vm::truncated_nblocks(blkno) > vm::heapblk_to_mapblock(blkno)
                {
                    out.push(ExtraTarget {
                        rel: rnode,
                        fork: VISIBILITYMAP_FORKNUM,
                        blkno: vm::heapblk_to_mapblock(blkno),
                        op: ExtraOp::VmTruncate { nheapblocks: blkno },
                    });
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Applies an extra target to its page. `page` is `None` if the page does not exist; the
/// result is the new page, or `None` if nothing is written (a truncation of an absent page).
pub fn redo_extra(target: &ExtraTarget, page: Option<&Page>) -> Option<Box<Page>> {
    match target.op {
        ExtraOp::VmClear { heap_blk, flags } => {
            let mut p = Box::new(page.copied().unwrap_or([0; 8192]));
            vm::clear(&mut p, heap_blk, flags);
            Some(p)
        }
        ExtraOp::VmTruncate { nheapblocks } => {
            let mut p = Box::new(*page?);
            vm::truncate_tail(&mut p, nheapblocks);
            Some(p)
        }
    }
}
