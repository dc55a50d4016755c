//! Redo of Heap2 records (`heap2_redo` in `access/heap/heapam.c`): pruning, vacuuming,
//! freezing, all-visible marking, multi-inserts and locks of updated tuple versions.

use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::heap::*;

use super::heap::set_visibility_flags;
use super::htup::{form_tuple, Htup};
use super::page::{self, perr, AddItem, ItemId, PResult, Page, LP_DEAD, LP_REDIRECT};
use super::vm;

/// `XLH_FREEZE_XVAC` / `XLH_INVALID_XVAC` of `xl_heap_freeze_tuple.frzflags`.
const XLH_FREEZE_XVAC: u8 = 0x02;
const XLH_INVALID_XVAC: u8 = 0x04;
/// `sizeof(xl_heap_freeze_tuple)` in PG15: xmax, offset, t_infomask2, t_infomask, frzflags,
/// padded to 4-byte alignment.
const SIZE_OF_FREEZE_TUPLE: usize = 12;
/// `SizeOfMultiInsertTuple`: datalen, t_infomask2, t_infomask, t_hoff.
const SIZE_OF_MULTI_INSERT_TUPLE: usize = 7;
/// `FrozenTransactionId`.
const FROZEN_XID: u32 = 2;

pub fn parse(rec: &DecodedRecord) -> PResult<Heap2Record> {
    Heap2Record::parse(rec.header.info, &rec.main_data_bytes())
        .map_err(|e| page::PageError(e.to_string()))
}

fn offsets(data: &[u8], from: usize, n: usize, what: &str) -> PResult<Vec<u16>> {
    let end = from + 2 * n;
    if end > data.len() {
        return perr!(
            "{what}: {n} offsets need {end} bytes of block data, {} present",
            data.len()
        );
    }
    (0..n).map(|i| page::get_u16(data, from + 2 * i)).collect()
}

/// Applies a Heap2 record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let lsn = rec.end_lsn.0;
    match parse(rec)? {
        Heap2Record::Prune {
            nredirected, ndead, ..
        } => {
            let data = rec.block_data(blk);
            let nred = nredirected as usize * 2;
            let redirected = offsets(data, 0, nred, "redirected")?;
            let dead = offsets(data, nred * 2, ndead as usize, "dead")?;
            let unused_from = (nred + ndead as usize) * 2;
            let nunused = (data.len().saturating_sub(unused_from)) / 2;
            let unused = offsets(data, unused_from, nunused, "unused")?;
            for pair in redirected.chunks(2) {
                page::set_item_id(
                    p,
                    check_off(p, pair[0])?,
                    ItemId {
                        off: pair[1] as usize,
                        flags: LP_REDIRECT,
                        len: 0,
                    },
                )?;
            }
            for off in dead {
                let dead = ItemId {
                    off: 0,
                    flags: LP_DEAD,
                    len: 0,
                };
                page::set_item_id(p, check_off(p, off)?, dead)?;
            }
            for off in unused {
                page::set_item_id(p, check_off(p, off)?, ItemId::UNUSED)?;
            }
            page::repair_fragmentation(p)?;
            page::set_lsn(p, lsn);
            Ok(())
        }
        Heap2Record::Vacuum { nunused } => {
            let data = rec.block_data(blk);
            for off in offsets(data, 0, nunused as usize, "unused")? {
                page::set_item_id(p, check_off(p, off)?, ItemId::UNUSED)?;
            }
            page::truncate_line_pointer_array(p)?;
            page::set_lsn(p, lsn);
            Ok(())
        }
        Heap2Record::FreezePage { ntuples, .. } => {
            let data = rec.block_data(blk);
            let n = ntuples as usize;
            if data.len() < n * SIZE_OF_FREEZE_TUPLE {
                return perr!(
                    "{n} freeze tuples need {} bytes, {} present",
                    n * SIZE_OF_FREEZE_TUPLE,
                    data.len()
                );
            }
            for f in data.chunks_exact(SIZE_OF_FREEZE_TUPLE).take(n) {
                let xmax = page::get_u32(f, 0)?;
                let off = page::get_u16(f, 4)?;
                let infomask2 = page::get_u16(f, 6)?;
                let infomask = page::get_u16(f, 8)?;
                let frzflags = f[10];
                let r = page::item_range(p, off as usize)?;
                let mut h = Htup::new(&mut p[r])?;
                h.set_xmax(xmax);
                if frzflags & XLH_FREEZE_XVAC != 0 {
                    h.set_field3(FROZEN_XID);
                }
                if frzflags & XLH_INVALID_XVAC != 0 {
                    h.set_field3(0);
                }
                h.set_infomask(infomask);
                h.set_infomask2(infomask2);
            }
            page::set_lsn(p, lsn);
            Ok(())
        }
        Heap2Record::Visible { flags, .. } => {
            if blk.id == 0 {
                // The VM page: set the bits of the heap block (block 1).
                let heap_blk = rec
                    .block(1)
                    .map(|b| b.blkno)
                    .ok_or_else(|| page::PageError("VISIBLE without heap block 1".into()))?;
                vm::init_if_new(p);
                vm::set(p, heap_blk, flags & vm::VISIBILITYMAP_VALID_BITS, lsn);
            } else {
                // The heap page. Strata clusters run with data checksums, so
                // XLogHintBitIsNeeded() holds and the LSN moves.
                page::set_flags(p, page::flags(p) | page::PD_ALL_VISIBLE);
                page::set_lsn(p, lsn);
            }
            Ok(())
        }
        Heap2Record::MultiInsert {
            init,
            flags,
            ntuples,
            offsets,
        } => {
            if init {
                page::init(p, 0);
            }
            let data = rec.block_data(blk);
            let mut pos = 0usize;
            for i in 0..ntuples as usize {
                let offnum = if init {
                    i as u16 + 1
                } else {
                    *offsets
                        .get(i)
                        .ok_or_else(|| page::PageError("missing offset".into()))?
                };
                if page::max_offset(p) + 1 < offnum as usize {
                    return perr!("invalid max offset number for offnum {offnum}");
                }
                pos = page::shortalign(pos);
                if pos + SIZE_OF_MULTI_INSERT_TUPLE > data.len() {
                    return perr!("tuple {i} header beyond the block data");
                }
                let datalen = page::get_u16(data, pos)? as usize;
                let infomask2 = page::get_u16(data, pos + 2)?;
                let infomask = page::get_u16(data, pos + 4)?;
                let hoff = data[pos + 6];
                pos += SIZE_OF_MULTI_INSERT_TUPLE;
                let Some(body) = data.get(pos..pos + datalen) else {
                    return perr!("tuple {i} data beyond the block data");
                };
                pos += datalen;
                let t = form_tuple(
                    infomask2,
                    infomask,
                    hoff,
                    &[body],
                    rec.xid(),
                    blk.blkno,
                    offnum,
                );
                let opts = AddItem {
                    overwrite: true,
                    is_heap: true,
                };
                page::add_item(p, &t, offnum as usize, opts)?;
            }
            if pos != data.len() {
                return perr!(
                    "total tuple length mismatch: used {pos} of {} bytes",
                    data.len()
                );
            }
            page::set_lsn(p, lsn);
            set_visibility_flags(p, flags);
            Ok(())
        }
        Heap2Record::LockUpdated {
            xmax,
            offnum,
            infobits_set,
            ..
        } => {
            let r = page::normal_item_range(p, offnum as usize)?;
            let mut h = Htup::new(&mut p[r])?;
            h.reset_xmax_bits(infobits_set);
            h.set_xmax(xmax);
            page::set_lsn(p, lsn);
            Ok(())
        }
        Heap2Record::NewCid(_) | Heap2Record::Rewrite(_) => Ok(()),
    }
}

fn check_off(p: &Page, off: u16) -> PResult<usize> {
    page::item_id(p, off as usize).map(|_| off as usize)
}
