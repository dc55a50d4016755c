//! Resource managers: names, record type names (pg_waldump's `rm_identify`), descriptions and
//! typed parsers of the records the pageserver needs.
//!
//! * [`identify`] / [`desc_type_name`]: the record type name pg_waldump prints first in `desc:`.
//! * [`describe`]: the rest of pg_waldump's `desc:` (the rmgr's `rm_desc`).
//! * [`parse`]: a typed view of the main data of XLOG, Transaction, Storage, CLOG, Database,
//!   MultiXact, RelMap, Standby, Heap, Heap2, Btree and Sequence records.
//!
//! All parsing is bounds-checked: malformed input yields an [`RmgrError`], never a panic.

use crate::record::DecodedRecord;

pub mod btree;
pub mod clog;
pub mod committs;
pub mod dbase;
pub mod heap;
pub mod multixact;
pub mod other;
pub mod relmap;
pub mod replorigin;
pub mod seq;
pub mod smgr;
pub mod standby;
pub mod tblspc;
pub mod util;
pub mod xact;
pub mod xlog;

pub use util::{relpathperm, timestamptz_to_str, SharedInvalMsg};

/// Resource manager ids of PostgreSQL 15 (`access/rmgrlist.h`).
pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_CLOG_ID: u8 = 3;
pub const RM_DBASE_ID: u8 = 4;
pub const RM_TBLSPC_ID: u8 = 5;
pub const RM_MULTIXACT_ID: u8 = 6;
pub const RM_RELMAP_ID: u8 = 7;
pub const RM_STANDBY_ID: u8 = 8;
pub const RM_HEAP2_ID: u8 = 9;
pub const RM_HEAP_ID: u8 = 10;
pub const RM_BTREE_ID: u8 = 11;
pub const RM_HASH_ID: u8 = 12;
pub const RM_GIN_ID: u8 = 13;
pub const RM_GIST_ID: u8 = 14;
pub const RM_SEQ_ID: u8 = 15;
pub const RM_SPGIST_ID: u8 = 16;
pub const RM_BRIN_ID: u8 = 17;
pub const RM_COMMIT_TS_ID: u8 = 18;
pub const RM_REPLORIGIN_ID: u8 = 19;
pub const RM_GENERIC_ID: u8 = 20;
pub const RM_LOGICALMSG_ID: u8 = 21;
pub const RM_MAX_BUILTIN_ID: u8 = RM_LOGICALMSG_ID;
/// Ids 128..=255 are reserved for custom resource managers.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Postgres would accept a record with this rmgr id.
pub fn rmid_is_valid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

const NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// The name pg_waldump prints for a resource manager.
pub fn rmgr_name(rmid: u8) -> Option<&'static str> {
    NAMES.get(rmid as usize).copied()
}

/// Why a record's main data cannot be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RmgrError {
    /// The main data ends before a field. `record` is `Rmgr/TYPE`.
    #[error("{record} record too short: missing {what} (needs {need} bytes of data, has {have})")]
    Truncated {
        record: &'static str,
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// The rmgr has no record type with this `xl_info`.
    #[error("{rmgr} record with unknown info 0x{info:02X}")]
    UnknownInfo { rmgr: &'static str, info: u8 },
    /// A field holds an impossible value.
    #[error("{record} record is invalid: {msg}")]
    Invalid { record: &'static str, msg: String },
}

/// A typed record of one of the resource managers the pageserver interprets.
#[derive(Clone, Debug, PartialEq)]
pub enum ParsedRecord {
    Xlog(xlog::XlogRecord),
    Xact(xact::XactRecord),
    Smgr(smgr::SmgrRecord),
    Clog(clog::ClogRecord),
    Dbase(dbase::DbaseRecord),
    MultiXact(multixact::MultiXactRecord),
    RelMap(relmap::RelMapUpdate),
    Standby(standby::StandbyRecord),
    Heap(heap::HeapRecord),
    Heap2(heap::Heap2Record),
    Btree(btree::BtreeRecord),
    Seq(seq::SeqRecord),
}

/// Parses the main data of `rec`. `Ok(None)` for resource managers without a typed parser
/// (their structural decode in [`DecodedRecord`] is all there is).
pub fn parse(rec: &DecodedRecord) -> Result<Option<ParsedRecord>, RmgrError> {
    let info = rec.header.info;
    let data = &rec.main_data_bytes();
    Ok(Some(match rec.rmid() {
        RM_XLOG_ID => ParsedRecord::Xlog(xlog::XlogRecord::parse(info, data)?),
        RM_XACT_ID => ParsedRecord::Xact(xact::XactRecord::parse(info, data)?),
        RM_SMGR_ID => ParsedRecord::Smgr(smgr::SmgrRecord::parse(info, data)?),
        RM_CLOG_ID => ParsedRecord::Clog(clog::ClogRecord::parse(info, data)?),
        RM_DBASE_ID => ParsedRecord::Dbase(dbase::DbaseRecord::parse(info, data)?),
        RM_MULTIXACT_ID => ParsedRecord::MultiXact(multixact::MultiXactRecord::parse(info, data)?),
        RM_RELMAP_ID => ParsedRecord::RelMap(relmap::RelMapUpdate::parse(info, data)?),
        RM_STANDBY_ID => ParsedRecord::Standby(standby::StandbyRecord::parse(info, data)?),
        RM_HEAP_ID => ParsedRecord::Heap(heap::HeapRecord::parse(info, data)?),
        RM_HEAP2_ID => ParsedRecord::Heap2(heap::Heap2Record::parse(info, data)?),
        RM_BTREE_ID => ParsedRecord::Btree(btree::BtreeRecord::parse_record(rec)?),
        RM_SEQ_ID => ParsedRecord::Seq(seq::SeqRecord::parse(info, data)?),
        _ => return Ok(None),
    }))
}

/// The record type name pg_waldump prints first in `desc:` (the rmgr's `rm_identify`), or
/// `None` where Postgres's would return NULL. `info` is the full `xl_info`.
pub fn identify(rmid: u8, info: u8) -> Option<&'static str> {
    match rmid {
        RM_XLOG_ID => xlog::identify(info),
        RM_XACT_ID => xact::identify(info),
        RM_SMGR_ID => smgr::identify(info),
        RM_CLOG_ID => clog::identify(info),
        RM_DBASE_ID => dbase::identify(info),
        RM_MULTIXACT_ID => multixact::identify(info),
        RM_RELMAP_ID => relmap::identify(info),
        RM_STANDBY_ID => standby::identify(info),
        RM_HEAP2_ID => heap::heap2_identify(info),
        RM_HEAP_ID => heap::heap_identify(info),
        RM_BTREE_ID => btree::identify(info),
        RM_SEQ_ID => seq::identify(info),
        _ => other::identify(rmid, info),
    }
}

/// What pg_waldump prints right after `desc: `: the type name, or `UNKNOWN (%x)` (with the
/// rmgr's bits of `xl_info`) where `rm_identify` returns NULL.
pub fn desc_type_name(rmid: u8, info: u8) -> String {
    match identify(rmid, info) {
        Some(id) => id.to_string(),
        None => format!("UNKNOWN ({:x})", info & crate::consts::XLR_RMGR_INFO_MASK),
    }
}

/// `Rmgr/TYPE` of a record, as pg_waldump names it (`custom/…` for a custom resource
/// manager): how errors and reports name a record.
pub fn record_name(rec: &DecodedRecord) -> String {
    format!(
        "{}/{}",
        rmgr_name(rec.rmid()).unwrap_or("custom"),
        desc_type_name(rec.rmid(), rec.header.info)
    )
}

/// The rest of the description after the type name (the rmgr's `rm_desc`). A record whose main
/// data is malformed is described as `<error: ...>`.
pub fn describe(rec: &DecodedRecord) -> String {
    let mut out = String::new();
    let res = match rec.rmid() {
        RM_XLOG_ID | RM_XACT_ID | RM_SMGR_ID | RM_CLOG_ID | RM_DBASE_ID | RM_MULTIXACT_ID
        | RM_RELMAP_ID | RM_STANDBY_ID | RM_HEAP_ID | RM_HEAP2_ID | RM_BTREE_ID | RM_SEQ_ID => {
            parse(rec).map(|p| {
                if let Some(p) = p {
                    p.describe(rec, &mut out)
                }
            })
        }
        rmid => other::describe(rmid, rec, &mut out),
    };
    if let Err(e) = res {
        out.clear();
        out.push_str(&format!("<error: {e}>"));
    }
    out
}

impl ParsedRecord {
    /// Appends the rm_desc text. `rec` supplies what lives outside the main data (the
    /// replication origin of a commit).
    pub fn describe(&self, rec: &DecodedRecord, out: &mut String) {
        match self {
            ParsedRecord::Xlog(r) => r.describe(out),
            ParsedRecord::Xact(r) => r.describe(rec.origin.unwrap_or(0), out),
            ParsedRecord::Smgr(r) => r.describe(out),
            ParsedRecord::Clog(r) => r.describe(out),
            ParsedRecord::Dbase(r) => r.describe(out),
            ParsedRecord::MultiXact(r) => r.describe(out),
            ParsedRecord::RelMap(r) => r.describe(out),
            ParsedRecord::Standby(r) => r.describe(out),
            ParsedRecord::Heap(r) => r.describe(out),
            ParsedRecord::Heap2(r) => r.describe(out),
            ParsedRecord::Btree(r) => r.describe(out),
            ParsedRecord::Seq(r) => r.describe(out),
        }
    }
}

/// Builds records by hand for the parsers' tests.
#[cfg(test)]
pub(crate) mod testutil {
    use bytes::Bytes;

    use crate::lsn::Lsn;
    use crate::record::{BlockRef, DecodedRecord, RelFileNode, XLogRecordHeader};

    /// Little-endian byte builder following C struct layout by hand.
    #[derive(Default)]
    pub struct Buf(pub Vec<u8>);

    impl Buf {
        pub fn new() -> Self {
            Buf(Vec::new())
        }
        pub fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn f64(self, v: f64) -> Self {
            self.u64(v.to_bits())
        }
        pub fn rel(self, spc: u32, db: u32, rel: u32) -> Self {
            self.u32(spc).u32(db).u32(rel)
        }
        pub fn bytes(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        pub fn pad_to(mut self, align: usize) -> Self {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
        pub fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    /// A record of `rmid` with `info` and `main_data`, plus block 0 data if given.
    pub fn record(rmid: u8, info: u8, main_data: Bytes, block0: Option<Bytes>) -> DecodedRecord {
        let mut raw = main_data.to_vec();
        let main_data_range = 0..raw.len() as u32;
        let blocks = block0
            .map(|data| {
                let start = raw.len() as u32;
                raw.extend_from_slice(&data);
                vec![BlockRef {
                    id: 0,
                    rel: RelFileNode {
                        spc: 1663,
                        db: 5,
                        rel: 16389,
                    },
                    fork: 0,
                    blkno: 0,
                    flags: crate::consts::BKPBLOCK_HAS_DATA,
                    data_range: start..raw.len() as u32,
                    image: None,
                }]
            })
            .unwrap_or_default();
        let header = XLogRecordHeader {
            tot_len: 0,
            xid: 0,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        };
        DecodedRecord::from_parts(header, blocks, main_data_range, Bytes::from(raw))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::testutil::{record, Buf};
    use super::*;

    /// Every builtin rmgr's record type names, as PostgreSQL 15's rm_identify returns them.
    #[test]
    fn identify_all_builtin_rmgrs() {
        let table: &[(u8, &[(u8, &str)])] = &[
            (
                RM_XLOG_ID,
                &[
                    (0x00, "CHECKPOINT_SHUTDOWN"),
                    (0x10, "CHECKPOINT_ONLINE"),
                    (0x20, "NOOP"),
                    (0x30, "NEXTOID"),
                    (0x40, "SWITCH"),
                    (0x50, "BACKUP_END"),
                    (0x60, "PARAMETER_CHANGE"),
                    (0x70, "RESTORE_POINT"),
                    (0x80, "FPW_CHANGE"),
                    (0x90, "END_OF_RECOVERY"),
                    (0xA0, "FPI_FOR_HINT"),
                    (0xB0, "FPI"),
                    (0xD0, "OVERWRITE_CONTRECORD"),
                ],
            ),
            (
                RM_XACT_ID,
                &[
                    (0x00, "COMMIT"),
                    (0x10, "PREPARE"),
                    (0x20, "ABORT"),
                    (0x30, "COMMIT_PREPARED"),
                    (0x40, "ABORT_PREPARED"),
                    (0x50, "ASSIGNMENT"),
                    (0x60, "INVALIDATION"),
                ],
            ),
            (RM_SMGR_ID, &[(0x10, "CREATE"), (0x20, "TRUNCATE")]),
            (RM_CLOG_ID, &[(0x00, "ZEROPAGE"), (0x10, "TRUNCATE")]),
            (
                RM_DBASE_ID,
                &[
                    (0x00, "CREATE_FILE_COPY"),
                    (0x10, "CREATE_WAL_LOG"),
                    (0x20, "DROP"),
                ],
            ),
            (RM_TBLSPC_ID, &[(0x00, "CREATE"), (0x10, "DROP")]),
            (
                RM_MULTIXACT_ID,
                &[
                    (0x00, "ZERO_OFF_PAGE"),
                    (0x10, "ZERO_MEM_PAGE"),
                    (0x20, "CREATE_ID"),
                    (0x30, "TRUNCATE_ID"),
                ],
            ),
            (RM_RELMAP_ID, &[(0x00, "UPDATE")]),
            (
                RM_STANDBY_ID,
                &[
                    (0x00, "LOCK"),
                    (0x10, "RUNNING_XACTS"),
                    (0x20, "INVALIDATIONS"),
                ],
            ),
            (
                RM_HEAP2_ID,
                &[
                    (0x00, "REWRITE"),
                    (0x10, "PRUNE"),
                    (0x20, "VACUUM"),
                    (0x30, "FREEZE_PAGE"),
                    (0x40, "VISIBLE"),
                    (0x50, "MULTI_INSERT"),
                    (0xD0, "MULTI_INSERT+INIT"),
                    (0x60, "LOCK_UPDATED"),
                    (0x70, "NEW_CID"),
                ],
            ),
            (
                RM_HEAP_ID,
                &[
                    (0x00, "INSERT"),
                    (0x80, "INSERT+INIT"),
                    (0x10, "DELETE"),
                    (0x20, "UPDATE"),
                    (0xA0, "UPDATE+INIT"),
                    (0x30, "TRUNCATE"),
                    (0x40, "HOT_UPDATE"),
                    (0xC0, "HOT_UPDATE+INIT"),
                    (0x50, "HEAP_CONFIRM"),
                    (0x60, "LOCK"),
                    (0x70, "INPLACE"),
                ],
            ),
            (
                RM_BTREE_ID,
                &[
                    (0x00, "INSERT_LEAF"),
                    (0x10, "INSERT_UPPER"),
                    (0x20, "INSERT_META"),
                    (0x30, "SPLIT_L"),
                    (0x40, "SPLIT_R"),
                    (0x50, "INSERT_POST"),
                    (0x60, "DEDUP"),
                    (0x70, "DELETE"),
                    (0x80, "UNLINK_PAGE"),
                    (0x90, "UNLINK_PAGE_META"),
                    (0xA0, "NEWROOT"),
                    (0xB0, "MARK_PAGE_HALFDEAD"),
                    (0xC0, "VACUUM"),
                    (0xD0, "REUSE_PAGE"),
                    (0xE0, "META_CLEANUP"),
                ],
            ),
            (
                RM_HASH_ID,
                &[
                    (0x00, "INIT_META_PAGE"),
                    (0x10, "INIT_BITMAP_PAGE"),
                    (0x20, "INSERT"),
                    (0x30, "ADD_OVFL_PAGE"),
                    (0x40, "SPLIT_ALLOCATE_PAGE"),
                    (0x50, "SPLIT_PAGE"),
                    (0x60, "SPLIT_COMPLETE"),
                    (0x70, "MOVE_PAGE_CONTENTS"),
                    (0x80, "SQUEEZE_PAGE"),
                    (0x90, "DELETE"),
                    (0xA0, "SPLIT_CLEANUP"),
                    (0xB0, "UPDATE_META_PAGE"),
                    (0xC0, "VACUUM_ONE_PAGE"),
                ],
            ),
            (
                RM_GIN_ID,
                &[
                    (0x10, "CREATE_PTREE"),
                    (0x20, "INSERT"),
                    (0x30, "SPLIT"),
                    (0x40, "VACUUM_PAGE"),
                    (0x50, "DELETE_PAGE"),
                    (0x60, "UPDATE_META_PAGE"),
                    (0x70, "INSERT_LISTPAGE"),
                    (0x80, "DELETE_LISTPAGE"),
                    (0x90, "VACUUM_DATA_LEAF_PAGE"),
                ],
            ),
            (
                RM_GIST_ID,
                &[
                    (0x00, "PAGE_UPDATE"),
                    (0x10, "DELETE"),
                    (0x20, "PAGE_REUSE"),
                    (0x30, "PAGE_SPLIT"),
                    (0x60, "PAGE_DELETE"),
                    (0x70, "ASSIGN_LSN"),
                ],
            ),
            (RM_SEQ_ID, &[(0x00, "LOG")]),
            (
                RM_SPGIST_ID,
                &[
                    (0x10, "ADD_LEAF"),
                    (0x20, "MOVE_LEAFS"),
                    (0x30, "ADD_NODE"),
                    (0x40, "SPLIT_TUPLE"),
                    (0x50, "PICKSPLIT"),
                    (0x60, "VACUUM_LEAF"),
                    (0x70, "VACUUM_ROOT"),
                    (0x80, "VACUUM_REDIRECT"),
                ],
            ),
            (
                RM_BRIN_ID,
                &[
                    (0x00, "CREATE_INDEX"),
                    (0x10, "INSERT"),
                    (0x90, "INSERT+INIT"),
                    (0x20, "UPDATE"),
                    (0xA0, "UPDATE+INIT"),
                    (0x30, "SAMEPAGE_UPDATE"),
                    (0x40, "REVMAP_EXTEND"),
                    (0x50, "DESUMMARIZE"),
                ],
            ),
            (RM_COMMIT_TS_ID, &[(0x00, "ZEROPAGE"), (0x10, "TRUNCATE")]),
            (RM_REPLORIGIN_ID, &[(0x00, "SET"), (0x10, "DROP")]),
            (RM_LOGICALMSG_ID, &[(0x00, "MESSAGE")]),
        ];
        assert_eq!(table.len(), 21); // Generic is checked below
        for (rmid, names) in table {
            for info in 0..=255u8 {
                // Transaction ignores XLOG_XACT_HAS_INFO; all others compare all 4 bits.
                let key = if *rmid == RM_XACT_ID {
                    info & 0x70
                } else {
                    info & 0xF0
                };
                let want = names.iter().find(|(i, _)| *i == key).map(|(_, n)| *n);
                assert_eq!(
                    identify(*rmid, info),
                    want,
                    "{} info {info:#04x}",
                    rmgr_name(*rmid).unwrap()
                );
            }
        }
        for info in 0..=255u8 {
            assert_eq!(identify(RM_GENERIC_ID, info), Some("Generic"));
            assert_eq!(identify(22, info), None);
            assert_eq!(identify(RM_MIN_CUSTOM_ID, info), None);
        }
    }

    #[test]
    fn unknown_type_names() {
        assert_eq!(desc_type_name(RM_HEAP_ID, 0x80), "INSERT+INIT");
        assert_eq!(desc_type_name(RM_HEAP_ID, 0x91), "UNKNOWN (90)");
        assert_eq!(desc_type_name(RM_XLOG_ID, 0xC0), "UNKNOWN (c0)");
        assert_eq!(desc_type_name(RM_CLOG_ID, 0x23), "UNKNOWN (20)");
        assert_eq!(desc_type_name(200, 0x00), "UNKNOWN (0)");
    }

    #[test]
    fn parse_dispatch_and_describe() {
        let rec = record(RM_HEAP_ID, 0x00, Buf::new().u16(2).u8(0).build(), None);
        assert_eq!(
            parse(&rec).unwrap(),
            Some(ParsedRecord::Heap(heap::HeapRecord::Insert {
                init: false,
                offnum: 2,
                flags: 0
            }))
        );
        assert_eq!(describe(&rec), "off 2 flags 0x00");
        // Rmgrs without a typed parser.
        let rec = record(RM_GIN_ID, 0x20, Bytes::from_static(&[1, 2, 3]), None);
        assert_eq!(parse(&rec).unwrap(), None);
        let rec = record(RM_GENERIC_ID, 0x00, Bytes::new(), None);
        assert_eq!(parse(&rec).unwrap(), None);
        // A short record describes its error instead of panicking.
        let rec = record(RM_HEAP_ID, 0x00, Bytes::from_static(&[2]), None);
        assert!(matches!(
            parse(&rec),
            Err(RmgrError::Truncated {
                record: "Heap/INSERT",
                what: "offnum",
                need: 2,
                have: 1
            })
        ));
        assert_eq!(
            describe(&rec),
            "<error: Heap/INSERT record too short: missing offnum (needs 2 bytes of data, has 1)>"
        );
        let rec = record(RM_XLOG_ID, 0xC0, Bytes::new(), None);
        assert_eq!(
            parse(&rec),
            Err(RmgrError::UnknownInfo {
                rmgr: "XLOG",
                info: 0xC0
            })
        );
    }

    /// No input may panic: every rmgr and info byte, with garbage and truncated data.
    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for rmid in (0..=RM_MAX_BUILTIN_ID).chain([RM_MIN_CUSTOM_ID, 255]) {
            for info in 0..=255u8 {
                for len in [
                    0usize, 1, 2, 3, 4, 7, 8, 12, 16, 20, 24, 30, 40, 64, 88, 100, 300,
                ] {
                    // Mostly small values, so counts are sometimes plausible.
                    let data: Vec<u8> = (0..len)
                        .map(|_| {
                            let r = next();
                            if r % 4 == 0 {
                                (r >> 8) as u8
                            } else {
                                (r % 3) as u8
                            }
                        })
                        .collect();
                    let block: Vec<u8> =
                        (0..(next() % 40) as usize).map(|_| next() as u8).collect();
                    let rec = record(rmid, info, Bytes::from(data), Some(Bytes::from(block)));
                    let _ = parse(&rec);
                    let _ = describe(&rec);
                    let _ = desc_type_name(rmid, info);
                }
                // All-0xFF: negative counts, huge sizes.
                let rec = record(rmid, info, Bytes::from(vec![0xFF; 96]), None);
                let _ = parse(&rec);
                let _ = describe(&rec);
            }
        }
    }
}
