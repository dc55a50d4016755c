//! Heap and Heap2 records (`access/heapam_xlog.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{push_list, Reader};
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;
use crate::record::RelFileNode;

// Heap opcodes.
pub const XLOG_HEAP_INSERT: u8 = 0x00;
pub const XLOG_HEAP_DELETE: u8 = 0x10;
pub const XLOG_HEAP_UPDATE: u8 = 0x20;
pub const XLOG_HEAP_TRUNCATE: u8 = 0x30;
pub const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
pub const XLOG_HEAP_CONFIRM: u8 = 0x50;
pub const XLOG_HEAP_LOCK: u8 = 0x60;
pub const XLOG_HEAP_INPLACE: u8 = 0x70;
pub const XLOG_HEAP_OPMASK: u8 = 0x70;
/// The page is (re)initialized before the operation is applied.
pub const XLOG_HEAP_INIT_PAGE: u8 = 0x80;

// Heap2 opcodes.
pub const XLOG_HEAP2_REWRITE: u8 = 0x00;
pub const XLOG_HEAP2_PRUNE: u8 = 0x10;
pub const XLOG_HEAP2_VACUUM: u8 = 0x20;
pub const XLOG_HEAP2_FREEZE_PAGE: u8 = 0x30;
pub const XLOG_HEAP2_VISIBLE: u8 = 0x40;
pub const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
pub const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
pub const XLOG_HEAP2_NEW_CID: u8 = 0x70;

// xl_heap_insert / xl_heap_multi_insert flags.
pub const XLH_INSERT_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_INSERT_LAST_IN_MULTI: u8 = 1 << 1;
pub const XLH_INSERT_IS_SPECULATIVE: u8 = 1 << 2;
pub const XLH_INSERT_CONTAINS_NEW_TUPLE: u8 = 1 << 3;
pub const XLH_INSERT_ON_TOAST_RELATION: u8 = 1 << 4;
pub const XLH_INSERT_ALL_FROZEN_SET: u8 = 1 << 5;

// xl_heap_update flags.
pub const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED: u8 = 1 << 1;
pub const XLH_UPDATE_CONTAINS_OLD_TUPLE: u8 = 1 << 2;
pub const XLH_UPDATE_CONTAINS_OLD_KEY: u8 = 1 << 3;
pub const XLH_UPDATE_CONTAINS_NEW_TUPLE: u8 = 1 << 4;
pub const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 1 << 5;
pub const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 1 << 6;

// xl_heap_delete flags.
pub const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_DELETE_CONTAINS_OLD_TUPLE: u8 = 1 << 1;
pub const XLH_DELETE_CONTAINS_OLD_KEY: u8 = 1 << 2;
pub const XLH_DELETE_IS_SUPER: u8 = 1 << 3;
pub const XLH_DELETE_IS_PARTITION_MOVE: u8 = 1 << 4;

// xl_heap_lock flags.
pub const XLH_LOCK_ALL_FROZEN_CLEARED: u8 = 0x01;

// infobits_set bits.
pub const XLHL_XMAX_IS_MULTI: u8 = 0x01;
pub const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
pub const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
pub const XLHL_XMAX_KEYSHR_LOCK: u8 = 0x08;
pub const XLHL_KEYS_UPDATED: u8 = 0x10;

// xl_heap_truncate flags.
pub const XLH_TRUNCATE_CASCADE: u8 = 1 << 0;
pub const XLH_TRUNCATE_RESTART_SEQS: u8 = 1 << 1;

// xl_heap_visible flags (VISIBILITYMAP_*).
pub const VISIBILITYMAP_ALL_VISIBLE: u8 = 0x01;
pub const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;

/// `heap_identify`: the init bit only counts for INSERT, UPDATE and HOT_UPDATE.
pub fn heap_identify(info: u8) -> Option<&'static str> {
    const INIT: u8 = XLOG_HEAP_INIT_PAGE;
    Some(match info & !XLR_INFO_MASK {
        XLOG_HEAP_INSERT => "INSERT",
        x if x == XLOG_HEAP_INSERT | INIT => "INSERT+INIT",
        XLOG_HEAP_DELETE => "DELETE",
        XLOG_HEAP_UPDATE => "UPDATE",
        x if x == XLOG_HEAP_UPDATE | INIT => "UPDATE+INIT",
        XLOG_HEAP_HOT_UPDATE => "HOT_UPDATE",
        x if x == XLOG_HEAP_HOT_UPDATE | INIT => "HOT_UPDATE+INIT",
        XLOG_HEAP_TRUNCATE => "TRUNCATE",
        XLOG_HEAP_CONFIRM => "HEAP_CONFIRM",
        XLOG_HEAP_LOCK => "LOCK",
        XLOG_HEAP_INPLACE => "INPLACE",
        _ => return None,
    })
}

/// `heap2_identify`: the init bit only counts for MULTI_INSERT.
pub fn heap2_identify(info: u8) -> Option<&'static str> {
    Some(match info & !XLR_INFO_MASK {
        XLOG_HEAP2_REWRITE => "REWRITE",
        XLOG_HEAP2_PRUNE => "PRUNE",
        XLOG_HEAP2_VACUUM => "VACUUM",
        XLOG_HEAP2_FREEZE_PAGE => "FREEZE_PAGE",
        XLOG_HEAP2_VISIBLE => "VISIBLE",
        XLOG_HEAP2_MULTI_INSERT => "MULTI_INSERT",
        x if x == XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE => "MULTI_INSERT+INIT",
        XLOG_HEAP2_LOCK_UPDATED => "LOCK_UPDATED",
        XLOG_HEAP2_NEW_CID => "NEW_CID",
        _ => return None,
    })
}

/// `xl_heap_update`, shared by UPDATE and HOT_UPDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapUpdate {
    /// The record is a HOT update (new tuple on the same page, no index entries).
    pub hot: bool,
    /// The new tuple's page is initialized (`XLOG_HEAP_INIT_PAGE`).
    pub init: bool,
    pub old_xmax: u32,
    pub old_offnum: u16,
    pub old_infobits_set: u8,
    pub flags: u8,
    pub new_xmax: u32,
    pub new_offnum: u16,
}

/// A Heap record's main data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeapRecord {
    /// `xl_heap_insert`; the tuple is block 0's data.
    Insert {
        init: bool,
        offnum: u16,
        flags: u8,
    },
    /// `xl_heap_delete`.
    Delete {
        xmax: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    Update(HeapUpdate),
    /// `xl_heap_truncate`.
    Truncate {
        db_id: u32,
        flags: u8,
        relids: Vec<u32>,
    },
    /// `xl_heap_confirm`: a speculative insertion succeeded.
    Confirm {
        offnum: u16,
    },
    /// `xl_heap_lock`.
    Lock {
        locking_xid: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    /// `xl_heap_inplace`; the new tuple is block 0's data.
    Inplace {
        offnum: u16,
    },
}

fn heap_record_name(info: u8) -> &'static str {
    match info & !XLR_INFO_MASK {
        0x00 => "Heap/INSERT",
        0x80 => "Heap/INSERT+INIT",
        0x10 | 0x90 => "Heap/DELETE",
        0x20 => "Heap/UPDATE",
        0xA0 => "Heap/UPDATE+INIT",
        0x30 | 0xB0 => "Heap/TRUNCATE",
        0x40 => "Heap/HOT_UPDATE",
        0xC0 => "Heap/HOT_UPDATE+INIT",
        0x50 | 0xD0 => "Heap/HEAP_CONFIRM",
        0x60 | 0xE0 => "Heap/LOCK",
        _ => "Heap/INPLACE",
    }
}

impl HeapRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<HeapRecord, RmgrError> {
        let mut r = Reader::new(data, heap_record_name(info));
        let init = info & XLOG_HEAP_INIT_PAGE != 0;
        Ok(match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP_INSERT => HeapRecord::Insert {
                init,
                offnum: r.u16("offnum")?,
                flags: r.u8("flags")?,
            },
            XLOG_HEAP_DELETE => HeapRecord::Delete {
                xmax: r.u32("xmax")?,
                offnum: r.u16("offnum")?,
                infobits_set: r.u8("infobits_set")?,
                flags: r.u8("flags")?,
            },
            op @ (XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => HeapRecord::Update(HeapUpdate {
                hot: op == XLOG_HEAP_HOT_UPDATE,
                init,
                old_xmax: r.u32("old_xmax")?,
                old_offnum: r.u16("old_offnum")?,
                old_infobits_set: r.u8("old_infobits_set")?,
                flags: r.u8("flags")?,
                new_xmax: r.u32("new_xmax")?,
                new_offnum: r.u16("new_offnum")?,
            }),
            XLOG_HEAP_TRUNCATE => {
                let db_id = r.u32("dbId")?;
                let nrelids = r.u32("nrelids")? as usize;
                let flags = r.u8("flags")?;
                r.skip(3, "padding")?;
                HeapRecord::Truncate {
                    db_id,
                    flags,
                    relids: r.u32_array(nrelids, "relids")?,
                }
            }
            XLOG_HEAP_CONFIRM => HeapRecord::Confirm {
                offnum: r.u16("offnum")?,
            },
            XLOG_HEAP_LOCK => HeapRecord::Lock {
                locking_xid: r.u32("locking_xid")?,
                offnum: r.u16("offnum")?,
                infobits_set: r.u8("infobits_set")?,
                flags: r.u8("flags")?,
            },
            _ => HeapRecord::Inplace {
                offnum: r.u16("offnum")?,
            },
        })
    }

    /// `heap_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            HeapRecord::Insert { offnum, flags, .. } => {
                write!(out, "off {offnum} flags 0x{flags:02X}")
            }
            HeapRecord::Delete {
                offnum,
                infobits_set,
                flags,
                ..
            } => {
                let _ = write!(out, "off {offnum} flags 0x{flags:02X} ");
                out_infobits(out, *infobits_set);
                Ok(())
            }
            HeapRecord::Update(u) => {
                let _ = write!(
                    out,
                    "off {} xmax {} flags 0x{:02X} ",
                    u.old_offnum, u.old_xmax, u.flags
                );
                out_infobits(out, u.old_infobits_set);
                write!(out, "; new off {} xmax {}", u.new_offnum, u.new_xmax)
            }
            HeapRecord::Truncate { flags, relids, .. } => {
                if flags & XLH_TRUNCATE_CASCADE != 0 {
                    out.push_str("cascade ");
                }
                if flags & XLH_TRUNCATE_RESTART_SEQS != 0 {
                    out.push_str("restart_seqs ");
                }
                let _ = write!(out, "nrelids {} relids", relids.len());
                push_list(out, relids);
                Ok(())
            }
            HeapRecord::Confirm { offnum } | HeapRecord::Inplace { offnum } => {
                write!(out, "off {offnum}")
            }
            HeapRecord::Lock {
                locking_xid,
                offnum,
                infobits_set,
                flags,
            } => {
                let _ = write!(out, "off {offnum}: xid {locking_xid}: flags 0x{flags:02X} ");
                out_infobits(out, *infobits_set);
                Ok(())
            }
        };
    }
}

/// `out_infobits` of heapdesc.c.
fn out_infobits(out: &mut String, infobits: u8) {
    for (bit, name) in [
        (XLHL_XMAX_IS_MULTI, "IS_MULTI "),
        (XLHL_XMAX_LOCK_ONLY, "LOCK_ONLY "),
        (XLHL_XMAX_EXCL_LOCK, "EXCL_LOCK "),
        (XLHL_XMAX_KEYSHR_LOCK, "KEYSHR_LOCK "),
        (XLHL_KEYS_UPDATED, "KEYS_UPDATED "),
    ] {
        if infobits & bit != 0 {
            out.push_str(name);
        }
    }
}

/// `xl_heap_rewrite_mapping`: logical-decoding mapping file contents written by CLUSTER/VACUUM
/// FULL of a catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteMapping {
    pub mapped_xid: u32,
    pub mapped_db: u32,
    pub mapped_rel: u32,
    pub offset: i64,
    pub num_mappings: u32,
    pub start_lsn: u64,
    /// `num_mappings` `LogicalRewriteMappingData` entries.
    pub mappings: Bytes,
}

/// `xl_heap_new_cid`: command ids of a catalog tuple, for logical decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewCid {
    pub top_xid: u32,
    pub cmin: u32,
    pub cmax: u32,
    pub combocid: u32,
    pub target_node: RelFileNode,
    pub target_block: u32,
    pub target_offnum: u16,
}

/// A Heap2 record's main data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heap2Record {
    Rewrite(RewriteMapping),
    /// `xl_heap_prune`; the offset arrays are block 0's data.
    Prune {
        latest_removed_xid: u32,
        nredirected: u16,
        ndead: u16,
    },
    /// `xl_heap_vacuum`; the unused offsets are block 0's data.
    Vacuum {
        nunused: u16,
    },
    /// `xl_heap_freeze_page`; the freeze plans are block 0's data.
    FreezePage {
        cutoff_xid: u32,
        ntuples: u16,
    },
    /// `xl_heap_visible`: block 0 is the VM page, block 1 the heap page.
    Visible {
        cutoff_xid: u32,
        flags: u8,
    },
    /// `xl_heap_multi_insert`; `offsets` is empty when the page is initialized (the tuples then
    /// go to offsets 1..=ntuples).
    MultiInsert {
        init: bool,
        flags: u8,
        ntuples: u16,
        offsets: Vec<u16>,
    },
    /// `xl_heap_lock_updated`.
    LockUpdated {
        xmax: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    NewCid(NewCid),
}

fn heap2_record_name(info: u8) -> &'static str {
    match info & !XLR_INFO_MASK & XLOG_HEAP_OPMASK {
        XLOG_HEAP2_REWRITE => "Heap2/REWRITE",
        XLOG_HEAP2_PRUNE => "Heap2/PRUNE",
        XLOG_HEAP2_VACUUM => "Heap2/VACUUM",
        XLOG_HEAP2_FREEZE_PAGE => "Heap2/FREEZE_PAGE",
        XLOG_HEAP2_VISIBLE => "Heap2/VISIBLE",
        XLOG_HEAP2_MULTI_INSERT => "Heap2/MULTI_INSERT",
        XLOG_HEAP2_LOCK_UPDATED => "Heap2/LOCK_UPDATED",
        _ => "Heap2/NEW_CID",
    }
}

impl Heap2Record {
    pub fn parse(info: u8, data: &Bytes) -> Result<Heap2Record, RmgrError> {
        let mut r = Reader::new(data, heap2_record_name(info));
        let init = info & XLOG_HEAP_INIT_PAGE != 0;
        Ok(match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP2_REWRITE => {
                let mapped_xid = r.u32("mapped_xid")?;
                let mapped_db = r.u32("mapped_db")?;
                let mapped_rel = r.u32("mapped_rel")?;
                r.skip(4, "padding")?;
                let offset = r.i64("offset")?;
                let num_mappings = r.u32("num_mappings")?;
                r.skip(4, "padding")?;
                let start_lsn = r.u64("start_lsn")?;
                // Each LogicalRewriteMappingData is a RelFileNode and two ItemPointerData.
                let n = num_mappings as usize;
                r.ensure_items(n, 24, "mappings")?;
                let mappings = r.bytes(n * 24, "mappings")?;
                Heap2Record::Rewrite(RewriteMapping {
                    mapped_xid,
                    mapped_db,
                    mapped_rel,
                    offset,
                    num_mappings,
                    start_lsn,
                    mappings,
                })
            }
            XLOG_HEAP2_PRUNE => Heap2Record::Prune {
                latest_removed_xid: r.u32("latestRemovedXid")?,
                nredirected: r.u16("nredirected")?,
                ndead: r.u16("ndead")?,
            },
            XLOG_HEAP2_VACUUM => Heap2Record::Vacuum {
                nunused: r.u16("nunused")?,
            },
            XLOG_HEAP2_FREEZE_PAGE => Heap2Record::FreezePage {
                cutoff_xid: r.u32("cutoff_xid")?,
                ntuples: r.u16("ntuples")?,
            },
            XLOG_HEAP2_VISIBLE => Heap2Record::Visible {
                cutoff_xid: r.u32("cutoff_xid")?,
                flags: r.u8("flags")?,
            },
            XLOG_HEAP2_MULTI_INSERT => {
                let flags = r.u8("flags")?;
                r.skip(1, "padding")?;
                let ntuples = r.u16("ntuples")?;
                let offsets = if init {
                    Vec::new()
                } else {
                    r.u16_array(ntuples as usize, "offsets")?
                };
                Heap2Record::MultiInsert {
                    init,
                    flags,
                    ntuples,
                    offsets,
                }
            }
            XLOG_HEAP2_LOCK_UPDATED => Heap2Record::LockUpdated {
                xmax: r.u32("xmax")?,
                offnum: r.u16("offnum")?,
                infobits_set: r.u8("infobits_set")?,
                flags: r.u8("flags")?,
            },
            _ => {
                let top_xid = r.u32("top_xid")?;
                let cmin = r.u32("cmin")?;
                let cmax = r.u32("cmax")?;
                let combocid = r.u32("combocid")?;
                let target_node = r.rel("target_node")?;
                let hi = r.u16("target_tid block hi")?;
                let lo = r.u16("target_tid block lo")?;
                let target_offnum = r.u16("target_tid offnum")?;
                Heap2Record::NewCid(NewCid {
                    top_xid,
                    cmin,
                    cmax,
                    combocid,
                    target_node,
                    target_block: ((hi as u32) << 16) | lo as u32,
                    target_offnum,
                })
            }
        })
    }

    /// `heap2_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            Heap2Record::Rewrite(_) => Ok(()),
            Heap2Record::Prune {
                latest_removed_xid,
                nredirected,
                ndead,
            } => write!(
                out,
                "latestRemovedXid {latest_removed_xid} nredirected {nredirected} ndead {ndead}"
            ),
            Heap2Record::Vacuum { nunused } => write!(out, "nunused {nunused}"),
            Heap2Record::FreezePage {
                cutoff_xid,
                ntuples,
            } => write!(out, "cutoff xid {cutoff_xid} ntuples {ntuples}"),
            Heap2Record::Visible { cutoff_xid, flags } => {
                write!(out, "cutoff xid {cutoff_xid} flags 0x{flags:02X}")
            }
            Heap2Record::MultiInsert { flags, ntuples, .. } => {
                write!(out, "{ntuples} tuples flags 0x{flags:02X}")
            }
            Heap2Record::LockUpdated {
                xmax,
                offnum,
                infobits_set,
                flags,
            } => {
                let _ = write!(out, "off {offnum}: xmax {xmax}: flags 0x{flags:02X} ");
                out_infobits(out, *infobits_set);
                Ok(())
            }
            Heap2Record::NewCid(c) => write!(
                out,
                "rel {}/{}/{}; tid {}/{}; cmin: {}, cmax: {}, combo: {}",
                c.target_node.spc,
                c.target_node.db,
                c.target_node.rel,
                c.target_block,
                c.target_offnum,
                c.cmin,
                c.cmax,
                c.combocid
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    fn desc_heap(info: u8, data: Bytes) -> (HeapRecord, String) {
        let rec = HeapRecord::parse(info, &data).unwrap();
        let mut s = String::new();
        rec.describe(&mut s);
        (rec, s)
    }

    fn desc_heap2(info: u8, data: Bytes) -> (Heap2Record, String) {
        let rec = Heap2Record::parse(info, &data).unwrap();
        let mut s = String::new();
        rec.describe(&mut s);
        (rec, s)
    }

    #[test]
    fn identify_tables() {
        let heap = [
            (0x00, Some("INSERT")),
            (0x80, Some("INSERT+INIT")),
            (0x10, Some("DELETE")),
            (0x90, None),
            (0x20, Some("UPDATE")),
            (0xA0, Some("UPDATE+INIT")),
            (0x30, Some("TRUNCATE")),
            (0x40, Some("HOT_UPDATE")),
            (0xC0, Some("HOT_UPDATE+INIT")),
            (0x50, Some("HEAP_CONFIRM")),
            (0x60, Some("LOCK")),
            (0x70, Some("INPLACE")),
            (0xF0, None),
        ];
        for (info, want) in heap {
            assert_eq!(heap_identify(info), want, "heap {info:#x}");
            assert_eq!(
                heap_identify(info | 0x0F),
                want,
                "heap {info:#x} with low bits"
            );
        }
        let heap2 = [
            (0x00, Some("REWRITE")),
            (0x10, Some("PRUNE")),
            (0x20, Some("VACUUM")),
            (0x30, Some("FREEZE_PAGE")),
            (0x40, Some("VISIBLE")),
            (0x50, Some("MULTI_INSERT")),
            (0xD0, Some("MULTI_INSERT+INIT")),
            (0x60, Some("LOCK_UPDATED")),
            (0x70, Some("NEW_CID")),
            (0x80, None),
            (0x90, None),
        ];
        for (info, want) in heap2 {
            assert_eq!(heap2_identify(info), want, "heap2 {info:#x}");
        }
    }

    #[test]
    fn insert_delete_update() {
        let (rec, s) = desc_heap(0x80, Buf::new().u16(1).u8(0x08).build());
        assert_eq!(
            rec,
            HeapRecord::Insert {
                init: true,
                offnum: 1,
                flags: XLH_INSERT_CONTAINS_NEW_TUPLE
            }
        );
        assert_eq!(s, "off 1 flags 0x08");

        let data = Buf::new()
            .u32(729)
            .u16(56)
            .u8(XLHL_KEYS_UPDATED)
            .u8(0x04)
            .build();
        let (rec, s) = desc_heap(XLOG_HEAP_DELETE, data);
        assert_eq!(
            rec,
            HeapRecord::Delete {
                xmax: 729,
                offnum: 56,
                infobits_set: XLHL_KEYS_UPDATED,
                flags: XLH_DELETE_CONTAINS_OLD_KEY
            }
        );
        assert_eq!(s, "off 56 flags 0x04 KEYS_UPDATED ");

        let data = Buf::new()
            .u32(727)
            .u16(2)
            .u8(0)
            .u8(0x10)
            .u32(0)
            .u16(75)
            .build();
        let (rec, s) = desc_heap(XLOG_HEAP_UPDATE, data.clone());
        let HeapRecord::Update(u) = rec else { panic!() };
        assert!(!u.hot && !u.init);
        assert_eq!((u.old_xmax, u.old_offnum, u.new_offnum), (727, 2, 75));
        assert_eq!(s, "off 2 xmax 727 flags 0x10 ; new off 75 xmax 0");
        let (rec, _) = desc_heap(XLOG_HEAP_HOT_UPDATE | XLOG_HEAP_INIT_PAGE, data.clone());
        let HeapRecord::Update(u) = rec else { panic!() };
        assert!(u.hot && u.init);
        let err = HeapRecord::parse(XLOG_HEAP_HOT_UPDATE, &data.slice(..12)).unwrap_err();
        assert_eq!(
            err,
            RmgrError::Truncated {
                record: "Heap/HOT_UPDATE",
                what: "new_offnum",
                need: 14,
                have: 12
            }
        );
    }

    #[test]
    fn truncate_lock_confirm_inplace() {
        let data = Buf::new()
            .u32(5)
            .u32(2)
            .u8(XLH_TRUNCATE_CASCADE | XLH_TRUNCATE_RESTART_SEQS)
            .pad_to(4)
            .u32(16384)
            .u32(16390)
            .build();
        let (rec, s) = desc_heap(XLOG_HEAP_TRUNCATE, data);
        assert_eq!(
            rec,
            HeapRecord::Truncate {
                db_id: 5,
                flags: 3,
                relids: vec![16384, 16390]
            }
        );
        assert_eq!(s, "cascade restart_seqs nrelids 2 relids 16384 16390");

        let data = Buf::new()
            .u32(727)
            .u16(2)
            .u8(XLHL_XMAX_LOCK_ONLY | XLHL_XMAX_EXCL_LOCK)
            .u8(0)
            .build();
        let (_, s) = desc_heap(XLOG_HEAP_LOCK, data);
        assert_eq!(s, "off 2: xid 727: flags 0x00 LOCK_ONLY EXCL_LOCK ");

        let (rec, s) = desc_heap(XLOG_HEAP_CONFIRM, Buf::new().u16(9).build());
        assert_eq!(rec, HeapRecord::Confirm { offnum: 9 });
        assert_eq!(s, "off 9");
        let (rec, s) = desc_heap(XLOG_HEAP_INPLACE, Buf::new().u16(3).build());
        assert_eq!(rec, HeapRecord::Inplace { offnum: 3 });
        assert_eq!(s, "off 3");
    }

    #[test]
    fn heap2_records() {
        let (rec, s) = desc_heap2(XLOG_HEAP2_PRUNE, Buf::new().u32(727).u16(1).u16(48).build());
        assert_eq!(
            rec,
            Heap2Record::Prune {
                latest_removed_xid: 727,
                nredirected: 1,
                ndead: 48
            }
        );
        assert_eq!(s, "latestRemovedXid 727 nredirected 1 ndead 48");

        let (_, s) = desc_heap2(XLOG_HEAP2_VACUUM, Buf::new().u16(56).build());
        assert_eq!(s, "nunused 56");
        let (_, s) = desc_heap2(XLOG_HEAP2_FREEZE_PAGE, Buf::new().u32(730).u16(51).build());
        assert_eq!(s, "cutoff xid 730 ntuples 51");
        let (rec, s) = desc_heap2(XLOG_HEAP2_VISIBLE, Buf::new().u32(728).u8(1).build());
        assert_eq!(
            rec,
            Heap2Record::Visible {
                cutoff_xid: 728,
                flags: VISIBILITYMAP_ALL_VISIBLE
            }
        );
        assert_eq!(s, "cutoff xid 728 flags 0x01");

        let data = Buf::new()
            .u8(0x03)
            .u8(0)
            .u16(3)
            .u16(4)
            .u16(5)
            .u16(6)
            .build();
        let (rec, s) = desc_heap2(XLOG_HEAP2_MULTI_INSERT, data.clone());
        assert_eq!(
            rec,
            Heap2Record::MultiInsert {
                init: false,
                flags: 3,
                ntuples: 3,
                offsets: vec![4, 5, 6]
            }
        );
        assert_eq!(s, "3 tuples flags 0x03");
        let (rec, _) = desc_heap2(
            XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE,
            data.slice(..4),
        );
        assert_eq!(
            rec,
            Heap2Record::MultiInsert {
                init: true,
                flags: 3,
                ntuples: 3,
                offsets: vec![]
            }
        );
        let err = Heap2Record::parse(XLOG_HEAP2_MULTI_INSERT, &data.slice(..8)).unwrap_err();
        assert!(err.to_string().contains("Heap2/MULTI_INSERT"), "{err}");
        assert!(err.to_string().contains("offsets"), "{err}");

        let data = Buf::new()
            .u32(800)
            .u16(4)
            .u8(XLHL_XMAX_IS_MULTI)
            .u8(1)
            .build();
        let (_, s) = desc_heap2(XLOG_HEAP2_LOCK_UPDATED, data);
        assert_eq!(s, "off 4: xmax 800: flags 0x01 IS_MULTI ");

        let data = Buf::new()
            .u32(724)
            .u32(0)
            .u32(u32::MAX)
            .u32(u32::MAX)
            .rel(1663, 5, 1247)
            .u16(0)
            .u16(14)
            .u16(10)
            .build();
        let (rec, s) = desc_heap2(XLOG_HEAP2_NEW_CID, data);
        let Heap2Record::NewCid(c) = rec else {
            panic!()
        };
        assert_eq!((c.top_xid, c.target_block, c.target_offnum), (724, 14, 10));
        assert_eq!(
            s,
            "rel 1663/5/1247; tid 14/10; cmin: 0, cmax: 4294967295, combo: 4294967295"
        );

        let data = Buf::new()
            .u32(900)
            .u32(5)
            .u32(1259)
            .pad_to(8)
            .i64(48)
            .u32(1)
            .pad_to(8)
            .u64(0x1500_0000)
            .bytes(&[7; 24])
            .build();
        let (rec, s) = desc_heap2(XLOG_HEAP2_REWRITE, data);
        let Heap2Record::Rewrite(m) = rec else {
            panic!()
        };
        assert_eq!((m.mapped_xid, m.mapped_rel, m.offset), (900, 1259, 48));
        assert_eq!(
            (m.num_mappings, m.start_lsn, m.mappings.len()),
            (1, 0x1500_0000, 24)
        );
        assert_eq!(s, "");
    }
}
