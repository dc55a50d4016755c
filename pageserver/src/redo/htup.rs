//! Heap tuple header (`access/htup_details.h`) fields and the infomask manipulations the heap
//! redo routines share.
//!
//! `HeapTupleHeaderData` (23 bytes): `t_xmin` 0, `t_xmax` 4, `t_cid`/`t_xvac` 8, `t_ctid` 12
//! (`bi_hi`, `bi_lo`, `ip_posid`), `t_infomask2` 18, `t_infomask` 20, `t_hoff` 22.

use super::page::{get_u16, get_u32, put_u16, put_u32, PResult};

pub const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;

pub const HEAP_COMBOCID: u16 = 0x0020;
pub const HEAP_XMAX_KEYSHR_LOCK: u16 = 0x0010;
pub const HEAP_XMAX_EXCL_LOCK: u16 = 0x0040;
pub const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
pub const HEAP_XMAX_SHR_LOCK: u16 = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
pub const HEAP_LOCK_MASK: u16 = HEAP_XMAX_SHR_LOCK | HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
pub const HEAP_XMIN_COMMITTED: u16 = 0x0100;
pub const HEAP_XMIN_INVALID: u16 = 0x0200;
pub const HEAP_XMIN_FROZEN: u16 = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID;
pub const HEAP_XMAX_COMMITTED: u16 = 0x0400;
pub const HEAP_XMAX_INVALID: u16 = 0x0800;
pub const HEAP_XMAX_IS_MULTI: u16 = 0x1000;
pub const HEAP_MOVED: u16 = 0x4000 | 0x8000;
pub const HEAP_XACT_MASK: u16 = 0xFFF0;
pub const HEAP_XMAX_BITS: u16 = HEAP_XMAX_COMMITTED
    | HEAP_XMAX_INVALID
    | HEAP_XMAX_IS_MULTI
    | HEAP_LOCK_MASK
    | HEAP_XMAX_LOCK_ONLY;

pub const HEAP_KEYS_UPDATED: u16 = 0x2000;
pub const HEAP_HOT_UPDATED: u16 = 0x4000;

/// `SpecTokenOffsetNumber`: t_ctid's offset while a speculative insertion is unconfirmed.
pub const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xFFFE;
/// `MovedPartitionsOffsetNumber` / `MovedPartitionsBlockNumber`.
pub const MOVED_PARTITIONS_OFFSET_NUMBER: u16 = 0xFFFD;
pub const MOVED_PARTITIONS_BLOCK_NUMBER: u32 = 0xFFFF_FFFF;

/// `infobits_set` bits of the WAL records (`XLHL_*`).
pub const XLHL_XMAX_IS_MULTI: u8 = 0x01;
pub const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
pub const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
pub const XLHL_XMAX_KEYSHR_LOCK: u8 = 0x08;
pub const XLHL_KEYS_UPDATED: u8 = 0x10;

/// A mutable view of a tuple header at the start of `t` (at least 23 bytes, checked).
pub struct Htup<'a> {
    pub t: &'a mut [u8],
}

impl<'a> Htup<'a> {
    pub fn new(t: &'a mut [u8]) -> PResult<Htup<'a>> {
        if t.len() < SIZEOF_HEAP_TUPLE_HEADER {
            return super::page::perr!(
                "heap tuple of {} bytes is shorter than its header",
                t.len()
            );
        }
        Ok(Htup { t })
    }
    pub fn infomask(&self) -> u16 {
        get_u16(self.t, 20).unwrap_or(0)
    }
    pub fn set_infomask(&mut self, v: u16) {
        let _ = put_u16(self.t, 20, v);
    }
    pub fn infomask2(&self) -> u16 {
        get_u16(self.t, 18).unwrap_or(0)
    }
    pub fn set_infomask2(&mut self, v: u16) {
        let _ = put_u16(self.t, 18, v);
    }
    pub fn hoff(&self) -> usize {
        self.t[22] as usize
    }
    pub fn set_xmin(&mut self, xid: u32) {
        let _ = put_u32(self.t, 0, xid);
    }
    pub fn set_xmax(&mut self, xid: u32) {
        let _ = put_u32(self.t, 4, xid);
    }
    /// `t_cid`, `t_xvac` share this field.
    pub fn set_field3(&mut self, v: u32) {
        let _ = put_u32(self.t, 8, v);
    }
    /// `HeapTupleHeaderSetCmin` / `SetCmax(.., false)`: the cid, and not a combo cid.
    pub fn set_cid(&mut self, cid: u32) {
        self.set_field3(cid);
        let m = self.infomask() & !HEAP_COMBOCID;
        self.set_infomask(m);
    }
    pub fn set_ctid(&mut self, blk: u32, off: u16) {
        let _ = put_u16(self.t, 12, (blk >> 16) as u16);
        let _ = put_u16(self.t, 14, blk as u16);
        let _ = put_u16(self.t, 16, off);
    }
    pub fn ctid_offset(&self) -> u16 {
        get_u16(self.t, 16).unwrap_or(0)
    }
    pub fn xmin(&self) -> u32 {
        get_u32(self.t, 0).unwrap_or(0)
    }

    /// The common start of DELETE, UPDATE (old tuple), LOCK and LOCK_UPDATED redo: forget the
    /// old xmax state, then set the lock/update bits the record carries
    /// (`fix_infomask_from_infobits`).
    pub fn reset_xmax_bits(&mut self, infobits: u8) {
        let mut m = self.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut m2 = self.infomask2() & !HEAP_KEYS_UPDATED;
        m &= !(HEAP_XMAX_IS_MULTI
            | HEAP_XMAX_LOCK_ONLY
            | HEAP_XMAX_KEYSHR_LOCK
            | HEAP_XMAX_EXCL_LOCK);
        if infobits & XLHL_XMAX_IS_MULTI != 0 {
            m |= HEAP_XMAX_IS_MULTI;
        }
        if infobits & XLHL_XMAX_LOCK_ONLY != 0 {
            m |= HEAP_XMAX_LOCK_ONLY;
        }
        if infobits & XLHL_XMAX_EXCL_LOCK != 0 {
            m |= HEAP_XMAX_EXCL_LOCK;
        }
        if infobits & XLHL_XMAX_KEYSHR_LOCK != 0 {
            m |= HEAP_XMAX_KEYSHR_LOCK;
        }
        if infobits & XLHL_KEYS_UPDATED != 0 {
            m2 |= HEAP_KEYS_UPDATED;
        }
        self.set_infomask(m);
        self.set_infomask2(m2);
    }

    pub fn set_hot_updated(&mut self, on: bool) {
        let m2 = self.infomask2();
        self.set_infomask2(if on {
            m2 | HEAP_HOT_UPDATED
        } else {
            m2 & !HEAP_HOT_UPDATED
        });
    }
}

/// `HEAP_XMAX_IS_LOCKED_ONLY`.
pub fn xmax_is_locked_only(infomask: u16) -> bool {
    infomask & HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK) == HEAP_XMAX_EXCL_LOCK
}

/// Builds a new heap tuple as the insert-type redo routines do: a zeroed 23-byte header with
/// the logged infomask fields, then `body` (null bitmap, padding, data), xmin = the record's
/// xid, cmin = FirstCommandId, t_ctid = (blk, off).
pub fn form_tuple(
    infomask2: u16,
    infomask: u16,
    hoff: u8,
    body: &[&[u8]],
    xid: u32,
    blk: u32,
    off: u16,
) -> Vec<u8> {
    let len: usize = body.iter().map(|b| b.len()).sum();
    let mut t = vec![0u8; SIZEOF_HEAP_TUPLE_HEADER + len];
    let mut pos = SIZEOF_HEAP_TUPLE_HEADER;
    for b in body {
        t[pos..pos + b.len()].copy_from_slice(b);
        pos += b.len();
    }
    let mut h = Htup { t: &mut t };
    h.set_infomask2(infomask2);
    h.set_infomask(infomask);
    h.t[22] = hoff;
    h.set_xmin(xid);
    h.set_cid(0);
    h.set_ctid(blk, off);
    t
}
