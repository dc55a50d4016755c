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

/// Whether a record may change a page beyond its block references, read without parsing
/// it (most records are heap records that clear nothing; the parse showed in ingest's
/// profile). Heap and Heap2 records say so in a flags byte at a fixed offset of their
/// fixed-size struct (`heapam_xlog.h`): a struct that is all there with none of the clearing
/// bits set changes nothing more. Heap and Heap2 operations without such a flag never do.
/// Anything else, a short struct included, goes to the full parse, which reports what is
/// wrong. (Malformed heap records are otherwise redo's to report, as ingest does not parse
/// them.)
fn may_clear_vm(rmid: u8, info: u8, main: &[u8]) -> bool {
    let op = info & XLOG_HEAP_OPMASK;
    // (size of the struct, offset of its flags byte, the bits that clear VM bits)
    let (size, at, bits) = match (rmid, op) {
        // xl_heap_insert: offnum u16, flags u8.
        (RM_HEAP_ID, XLOG_HEAP_INSERT) => (3, 2, XLH_INSERT_ALL_VISIBLE_CLEARED),
        // xl_heap_delete: xmax u32, offnum u16, infobits_set u8, flags u8.
        (RM_HEAP_ID, XLOG_HEAP_DELETE) => (8, 7, XLH_DELETE_ALL_VISIBLE_CLEARED),
        // xl_heap_update: old_xmax u32, old_offnum u16, old_infobits_set u8, flags u8,
        // new_xmax u32, new_offnum u16.
        (RM_HEAP_ID, XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => (
            14,
            7,
            XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
        ),
        // xl_heap_lock: locking_xid u32, offnum u16, infobits_set u8, flags u8.
        (RM_HEAP_ID, XLOG_HEAP_LOCK) => (8, 7, XLH_LOCK_ALL_FROZEN_CLEARED),
        (RM_HEAP_ID, _) => return false,
        // xl_heap_multi_insert: flags u8, padding, ntuples u16, then offsets the parse checks.
        (RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT) => return true,
        // xl_heap_lock_updated: xmax u32, offnum u16, infobits_set u8, flags u8.
        (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED) => (8, 7, XLH_LOCK_ALL_FROZEN_CLEARED),
        (RM_HEAP2_ID, _) => return false,
        _ => return true,
    };
    main.len() < size || main[at] & bits != 0
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
    if !may_clear_vm(rec.rmid(), rec.header.info, rec.main_data()) {
        return Ok(out);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The VM-clearing flags the full parse finds, or `None` for a record it rejects.
    fn parsed_clear_bits(rmid: u8, info: u8, data: &Bytes) -> Option<u8> {
        Some(if rmid == RM_HEAP_ID {
            match HeapRecord::parse(info, data).ok()? {
                HeapRecord::Insert { flags, .. } => flags & XLH_INSERT_ALL_VISIBLE_CLEARED,
                HeapRecord::Delete { flags, .. } => flags & XLH_DELETE_ALL_VISIBLE_CLEARED,
                HeapRecord::Update(u) => {
                    u.flags
                        & (XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED)
                }
                HeapRecord::Lock { flags, .. } => flags & XLH_LOCK_ALL_FROZEN_CLEARED,
                _ => 0,
            }
        } else {
            match Heap2Record::parse(info, data).ok()? {
                Heap2Record::MultiInsert { flags, .. } => flags & XLH_INSERT_ALL_VISIBLE_CLEARED,
                Heap2Record::LockUpdated { flags, .. } => flags & XLH_LOCK_ALL_FROZEN_CLEARED,
                _ => 0,
            }
        })
    }

    #[test]
    fn the_flags_shortcut_skips_only_records_the_parse_finds_clearing_nothing() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut skipped, mut parsed) = (0, 0);
        for rmid in [RM_HEAP_ID, RM_HEAP2_ID] {
            for op in (0..8u8).map(|o| o << 4) {
                for _ in 0..2_000 {
                    let len = (next() % 24) as usize;
                    // Flags bytes with and without the clearing bits.
                    let data: Vec<u8> = (0..len).map(|_| (next() % 4) as u8).collect();
                    let info = op
                        | if next() % 2 == 0 {
                            XLOG_HEAP_INIT_PAGE
                        } else {
                            0
                        };
                    let bits = parsed_clear_bits(rmid, info, &Bytes::from(data.clone()));
                    if may_clear_vm(rmid, info, &data) {
                        parsed += 1;
                    } else {
                        skipped += 1;
                        // Skipped: the parse clears nothing, or (for an operation that has
                        // no clearing flag) the record is redo's to reject.
                        assert!(
                            bits.is_none_or(|b| b == 0),
                            "rmid {rmid} info {info:#x} {data:?}: skipped, parse says {bits:?}"
                        );
                        let has_flag = matches!(
                            (rmid, op),
                            (RM_HEAP_ID, XLOG_HEAP_INSERT)
                                | (RM_HEAP_ID, XLOG_HEAP_DELETE)
                                | (RM_HEAP_ID, XLOG_HEAP_UPDATE)
                                | (RM_HEAP_ID, XLOG_HEAP_HOT_UPDATE)
                                | (RM_HEAP_ID, XLOG_HEAP_LOCK)
                                | (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED)
                        );
                        if has_flag {
                            assert_eq!(bits, Some(0), "{rmid} {info:#x} {data:?}");
                        }
                    }
                }
            }
        }
        assert!(skipped > 1_000 && parsed > 1_000, "{skipped} {parsed}");
    }
}
