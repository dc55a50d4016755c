//! B-tree records (`access/nbtxlog.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;
use crate::record::{DecodedRecord, RelFileNode};

pub const XLOG_BTREE_INSERT_LEAF: u8 = 0x00;
pub const XLOG_BTREE_INSERT_UPPER: u8 = 0x10;
pub const XLOG_BTREE_INSERT_META: u8 = 0x20;
pub const XLOG_BTREE_SPLIT_L: u8 = 0x30;
pub const XLOG_BTREE_SPLIT_R: u8 = 0x40;
pub const XLOG_BTREE_INSERT_POST: u8 = 0x50;
pub const XLOG_BTREE_DEDUP: u8 = 0x60;
pub const XLOG_BTREE_DELETE: u8 = 0x70;
pub const XLOG_BTREE_UNLINK_PAGE: u8 = 0x80;
pub const XLOG_BTREE_UNLINK_PAGE_META: u8 = 0x90;
pub const XLOG_BTREE_NEWROOT: u8 = 0xA0;
pub const XLOG_BTREE_MARK_PAGE_HALFDEAD: u8 = 0xB0;
pub const XLOG_BTREE_VACUUM: u8 = 0xC0;
pub const XLOG_BTREE_REUSE_PAGE: u8 = 0xD0;
pub const XLOG_BTREE_META_CLEANUP: u8 = 0xE0;

/// `sizeof(xl_btree_metadata)`, registered as block data of the metapage.
pub const SIZE_OF_BTREE_METADATA: usize = 28;

pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & !XLR_INFO_MASK {
        XLOG_BTREE_INSERT_LEAF => "INSERT_LEAF",
        XLOG_BTREE_INSERT_UPPER => "INSERT_UPPER",
        XLOG_BTREE_INSERT_META => "INSERT_META",
        XLOG_BTREE_SPLIT_L => "SPLIT_L",
        XLOG_BTREE_SPLIT_R => "SPLIT_R",
        XLOG_BTREE_INSERT_POST => "INSERT_POST",
        XLOG_BTREE_DEDUP => "DEDUP",
        XLOG_BTREE_DELETE => "DELETE",
        XLOG_BTREE_UNLINK_PAGE => "UNLINK_PAGE",
        XLOG_BTREE_UNLINK_PAGE_META => "UNLINK_PAGE_META",
        XLOG_BTREE_NEWROOT => "NEWROOT",
        XLOG_BTREE_MARK_PAGE_HALFDEAD => "MARK_PAGE_HALFDEAD",
        XLOG_BTREE_VACUUM => "VACUUM",
        XLOG_BTREE_REUSE_PAGE => "REUSE_PAGE",
        XLOG_BTREE_META_CLEANUP => "META_CLEANUP",
        _ => return None,
    })
}

/// `xl_btree_split`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtreeSplit {
    pub level: u32,
    pub firstrightoff: u16,
    pub newitemoff: u16,
    pub postingoff: u16,
}

/// `xl_btree_unlink_page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtreeUnlinkPage {
    pub leftsib: u32,
    pub rightsib: u32,
    pub level: u32,
    /// `FullTransactionId`.
    pub safexid: u64,
    pub leafleftsib: u32,
    pub leafrightsib: u32,
    pub leaftopparent: u32,
}

/// `xl_btree_metadata`: the new contents of the metapage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtreeMetadata {
    pub version: u32,
    pub root: u32,
    pub level: u32,
    pub fastroot: u32,
    pub fastlevel: u32,
    pub last_cleanup_num_delpages: u32,
    pub allequalimage: bool,
}

impl BtreeMetadata {
    /// Decodes the struct from a metapage block's data.
    pub fn decode(data: &Bytes, record: &'static str) -> Result<BtreeMetadata, RmgrError> {
        let mut r = Reader::new(data, record);
        Ok(BtreeMetadata {
            version: r.u32("metadata version")?,
            root: r.u32("metadata root")?,
            level: r.u32("metadata level")?,
            fastroot: r.u32("metadata fastroot")?,
            fastlevel: r.u32("metadata fastlevel")?,
            last_cleanup_num_delpages: r.u32("metadata last_cleanup_num_delpages")?,
            allequalimage: r.bool("metadata allequalimage")?,
        })
    }
}

/// A Btree record's main data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BtreeRecord {
    /// `xl_btree_insert` for INSERT_LEAF, INSERT_UPPER, INSERT_META, INSERT_POST (`op` tells).
    Insert { op: u8, offnum: u16 },
    /// SPLIT_L (`left` true: the new item goes to the left half) or SPLIT_R.
    Split { left: bool, split: BtreeSplit },
    /// `xl_btree_dedup`.
    Dedup { nintervals: u16 },
    /// `xl_btree_delete`.
    Delete {
        latest_removed_xid: u32,
        ndeleted: u16,
        nupdated: u16,
    },
    /// `xl_btree_vacuum`.
    Vacuum { ndeleted: u16, nupdated: u16 },
    /// `xl_btree_mark_page_halfdead`.
    MarkPageHalfdead {
        poffset: u16,
        leafblk: u32,
        leftblk: u32,
        rightblk: u32,
        topparent: u32,
    },
    /// UNLINK_PAGE or UNLINK_PAGE_META (`meta` true; the metadata is block 4's data).
    UnlinkPage { meta: bool, unlink: BtreeUnlinkPage },
    /// `xl_btree_newroot`.
    NewRoot { rootblk: u32, level: u32 },
    /// `xl_btree_reuse_page`.
    ReusePage {
        node: RelFileNode,
        block: u32,
        latest_removed_full_xid: u64,
    },
    /// META_CLEANUP: no main data; block 0 carries the metadata.
    MetaCleanup(Option<BtreeMetadata>),
}

fn record_name(op: u8) -> &'static str {
    match op {
        XLOG_BTREE_INSERT_LEAF => "Btree/INSERT_LEAF",
        XLOG_BTREE_INSERT_UPPER => "Btree/INSERT_UPPER",
        XLOG_BTREE_INSERT_META => "Btree/INSERT_META",
        XLOG_BTREE_SPLIT_L => "Btree/SPLIT_L",
        XLOG_BTREE_SPLIT_R => "Btree/SPLIT_R",
        XLOG_BTREE_INSERT_POST => "Btree/INSERT_POST",
        XLOG_BTREE_DEDUP => "Btree/DEDUP",
        XLOG_BTREE_DELETE => "Btree/DELETE",
        XLOG_BTREE_UNLINK_PAGE => "Btree/UNLINK_PAGE",
        XLOG_BTREE_UNLINK_PAGE_META => "Btree/UNLINK_PAGE_META",
        XLOG_BTREE_NEWROOT => "Btree/NEWROOT",
        XLOG_BTREE_MARK_PAGE_HALFDEAD => "Btree/MARK_PAGE_HALFDEAD",
        XLOG_BTREE_VACUUM => "Btree/VACUUM",
        XLOG_BTREE_REUSE_PAGE => "Btree/REUSE_PAGE",
        XLOG_BTREE_META_CLEANUP => "Btree/META_CLEANUP",
        _ => "Btree",
    }
}

impl BtreeRecord {
    /// Parses the main data. META_CLEANUP's metadata lives in block 0; use
    /// [`BtreeRecord::parse_record`] to get it.
    pub fn parse(info: u8, data: &Bytes) -> Result<BtreeRecord, RmgrError> {
        let op = info & !XLR_INFO_MASK;
        let mut r = Reader::new(data, record_name(op));
        Ok(match op {
            XLOG_BTREE_INSERT_LEAF
            | XLOG_BTREE_INSERT_UPPER
            | XLOG_BTREE_INSERT_META
            | XLOG_BTREE_INSERT_POST => BtreeRecord::Insert {
                op,
                offnum: r.u16("offnum")?,
            },
            XLOG_BTREE_SPLIT_L | XLOG_BTREE_SPLIT_R => BtreeRecord::Split {
                left: op == XLOG_BTREE_SPLIT_L,
                split: BtreeSplit {
                    level: r.u32("level")?,
                    firstrightoff: r.u16("firstrightoff")?,
                    newitemoff: r.u16("newitemoff")?,
                    postingoff: r.u16("postingoff")?,
                },
            },
            XLOG_BTREE_DEDUP => BtreeRecord::Dedup {
                nintervals: r.u16("nintervals")?,
            },
            XLOG_BTREE_DELETE => BtreeRecord::Delete {
                latest_removed_xid: r.u32("latestRemovedXid")?,
                ndeleted: r.u16("ndeleted")?,
                nupdated: r.u16("nupdated")?,
            },
            XLOG_BTREE_VACUUM => BtreeRecord::Vacuum {
                ndeleted: r.u16("ndeleted")?,
                nupdated: r.u16("nupdated")?,
            },
            XLOG_BTREE_MARK_PAGE_HALFDEAD => {
                let poffset = r.u16("poffset")?;
                r.skip(2, "padding")?;
                BtreeRecord::MarkPageHalfdead {
                    poffset,
                    leafblk: r.u32("leafblk")?,
                    leftblk: r.u32("leftblk")?,
                    rightblk: r.u32("rightblk")?,
                    topparent: r.u32("topparent")?,
                }
            }
            XLOG_BTREE_UNLINK_PAGE | XLOG_BTREE_UNLINK_PAGE_META => {
                let leftsib = r.u32("leftsib")?;
                let rightsib = r.u32("rightsib")?;
                let level = r.u32("level")?;
                r.skip(4, "padding")?;
                BtreeRecord::UnlinkPage {
                    meta: op == XLOG_BTREE_UNLINK_PAGE_META,
                    unlink: BtreeUnlinkPage {
                        leftsib,
                        rightsib,
                        level,
                        safexid: r.u64("safexid")?,
                        leafleftsib: r.u32("leafleftsib")?,
                        leafrightsib: r.u32("leafrightsib")?,
                        leaftopparent: r.u32("leaftopparent")?,
                    },
                }
            }
            XLOG_BTREE_NEWROOT => BtreeRecord::NewRoot {
                rootblk: r.u32("rootblk")?,
                level: r.u32("level")?,
            },
            XLOG_BTREE_REUSE_PAGE => {
                let node = r.rel("node")?;
                let block = r.u32("block")?;
                BtreeRecord::ReusePage {
                    node,
                    block,
                    latest_removed_full_xid: r.u64("latestRemovedFullXid")?,
                }
            }
            XLOG_BTREE_META_CLEANUP => BtreeRecord::MetaCleanup(None),
            _ => {
                return Err(RmgrError::UnknownInfo {
                    rmgr: "Btree",
                    info,
                })
            }
        })
    }

    /// Parses a whole record: the main data, plus META_CLEANUP's metadata from block 0.
    pub fn parse_record(rec: &DecodedRecord) -> Result<BtreeRecord, RmgrError> {
        let parsed = Self::parse(rec.header.info, &rec.main_data_bytes())?;
        if let BtreeRecord::MetaCleanup(_) = parsed {
            let block = rec.block(0).ok_or_else(|| RmgrError::Invalid {
                record: "Btree/META_CLEANUP",
                msg: "no block 0 (metapage)".into(),
            })?;
            let meta = BtreeMetadata::decode(&rec.block_data_bytes(block), "Btree/META_CLEANUP")?;
            return Ok(BtreeRecord::MetaCleanup(Some(meta)));
        }
        Ok(parsed)
    }

    /// `btree_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            BtreeRecord::Insert { offnum, .. } => write!(out, "off {offnum}"),
            BtreeRecord::Split { split: s, .. } => write!(
                out,
                "level {}, firstrightoff {}, newitemoff {}, postingoff {}",
                s.level, s.firstrightoff, s.newitemoff, s.postingoff
            ),
            BtreeRecord::Dedup { nintervals } => write!(out, "nintervals {nintervals}"),
            BtreeRecord::Vacuum { ndeleted, nupdated } => {
                write!(out, "ndeleted {ndeleted}; nupdated {nupdated}")
            }
            BtreeRecord::Delete {
                latest_removed_xid,
                ndeleted,
                nupdated,
            } => write!(
                out,
                "latestRemovedXid {latest_removed_xid}; ndeleted {ndeleted}; nupdated {nupdated}"
            ),
            BtreeRecord::MarkPageHalfdead {
                leafblk,
                leftblk,
                rightblk,
                topparent,
                ..
            } => write!(
                out,
                "topparent {topparent}; leaf {leafblk}; left {leftblk}; right {rightblk}"
            ),
            BtreeRecord::UnlinkPage { unlink: u, .. } => write!(
                out,
                "left {}; right {}; level {}; safexid {}:{}; leafleft {}; leafright {}; \
                 leaftopparent {}",
                u.leftsib,
                u.rightsib,
                u.level,
                u.safexid >> 32,
                u.safexid as u32,
                u.leafleftsib,
                u.leafrightsib,
                u.leaftopparent
            ),
            BtreeRecord::NewRoot { level, .. } => write!(out, "lev {level}"),
            BtreeRecord::ReusePage {
                node,
                latest_removed_full_xid,
                ..
            } => write!(
                out,
                "rel {}/{}/{}; latestRemovedXid {}:{}",
                node.spc,
                node.db,
                node.rel,
                latest_removed_full_xid >> 32,
                *latest_removed_full_xid as u32
            ),
            BtreeRecord::MetaCleanup(meta) => match meta {
                Some(m) => write!(
                    out,
                    "last_cleanup_num_delpages {}",
                    m.last_cleanup_num_delpages
                ),
                None => Ok(()),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::{record, Buf};
    use crate::rmgr::{describe, parse, ParsedRecord, RM_BTREE_ID};

    fn desc(info: u8, data: Bytes) -> (BtreeRecord, String) {
        let rec = BtreeRecord::parse(info, &data).unwrap();
        let mut s = String::new();
        rec.describe(&mut s);
        (rec, s)
    }

    #[test]
    fn identify_table() {
        let names = [
            "INSERT_LEAF",
            "INSERT_UPPER",
            "INSERT_META",
            "SPLIT_L",
            "SPLIT_R",
            "INSERT_POST",
            "DEDUP",
            "DELETE",
            "UNLINK_PAGE",
            "UNLINK_PAGE_META",
            "NEWROOT",
            "MARK_PAGE_HALFDEAD",
            "VACUUM",
            "REUSE_PAGE",
            "META_CLEANUP",
        ];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(identify((i as u8) << 4), Some(*name));
        }
        assert_eq!(identify(0xF0), None);
    }

    #[test]
    fn simple_records() {
        let (rec, s) = desc(XLOG_BTREE_INSERT_UPPER, Buf::new().u16(3).build());
        assert_eq!(
            rec,
            BtreeRecord::Insert {
                op: XLOG_BTREE_INSERT_UPPER,
                offnum: 3
            }
        );
        assert_eq!(s, "off 3");
        let data = Buf::new().u32(0).u16(367).u16(408).u16(0).build();
        let (rec, s) = desc(XLOG_BTREE_SPLIT_R, data);
        assert_eq!(
            rec,
            BtreeRecord::Split {
                left: false,
                split: BtreeSplit {
                    level: 0,
                    firstrightoff: 367,
                    newitemoff: 408,
                    postingoff: 0
                }
            }
        );
        assert_eq!(
            s,
            "level 0, firstrightoff 367, newitemoff 408, postingoff 0"
        );
        let (_, s) = desc(XLOG_BTREE_DEDUP, Buf::new().u16(40).build());
        assert_eq!(s, "nintervals 40");
        let (_, s) = desc(XLOG_BTREE_DELETE, Buf::new().u32(0).u16(8).u16(40).build());
        assert_eq!(s, "latestRemovedXid 0; ndeleted 8; nupdated 40");
        let (_, s) = desc(XLOG_BTREE_VACUUM, Buf::new().u16(55).u16(34).build());
        assert_eq!(s, "ndeleted 55; nupdated 34");
        let (rec, s) = desc(XLOG_BTREE_NEWROOT, Buf::new().u32(3).u32(1).build());
        assert_eq!(
            rec,
            BtreeRecord::NewRoot {
                rootblk: 3,
                level: 1
            }
        );
        assert_eq!(s, "lev 1");
    }

    #[test]
    fn page_deletion_records() {
        let data = Buf::new()
            .u16(2)
            .u16(0)
            .u32(10)
            .u32(9)
            .u32(11)
            .u32(4)
            .build();
        let (rec, s) = desc(XLOG_BTREE_MARK_PAGE_HALFDEAD, data);
        assert_eq!(
            rec,
            BtreeRecord::MarkPageHalfdead {
                poffset: 2,
                leafblk: 10,
                leftblk: 9,
                rightblk: 11,
                topparent: 4
            }
        );
        assert_eq!(s, "topparent 4; leaf 10; left 9; right 11");

        let data = Buf::new()
            .u32(9)
            .u32(11)
            .u32(0)
            .pad_to(8)
            .u64((1u64 << 32) | 800)
            .u32(9)
            .u32(11)
            .u32(0)
            .build();
        assert_eq!(data.len(), 36);
        let (rec, s) = desc(XLOG_BTREE_UNLINK_PAGE_META, data.clone());
        let BtreeRecord::UnlinkPage { meta, unlink } = rec else {
            panic!()
        };
        assert!(meta);
        assert_eq!(unlink.safexid, (1u64 << 32) | 800);
        assert_eq!(
            s,
            "left 9; right 11; level 0; safexid 1:800; leafleft 9; leafright 11; leaftopparent 0"
        );
        let err = BtreeRecord::parse(XLOG_BTREE_UNLINK_PAGE, &data.slice(..30)).unwrap_err();
        assert!(matches!(
            err,
            RmgrError::Truncated {
                record: "Btree/UNLINK_PAGE",
                what: "leafrightsib",
                ..
            }
        ));

        let data = Buf::new()
            .rel(1663, 5, 16389)
            .u32(7)
            .u64((2u64 << 32) | 900)
            .build();
        let (rec, s) = desc(XLOG_BTREE_REUSE_PAGE, data);
        let BtreeRecord::ReusePage { block, .. } = rec else {
            panic!()
        };
        assert_eq!(block, 7);
        assert_eq!(s, "rel 1663/5/16389; latestRemovedXid 2:900");
    }

    #[test]
    fn meta_cleanup_reads_block_data() {
        let meta = Buf::new()
            .u32(4)
            .u32(3)
            .u32(1)
            .u32(3)
            .u32(1)
            .u32(17)
            .u8(1)
            .pad_to(4)
            .build();
        assert_eq!(meta.len(), SIZE_OF_BTREE_METADATA);
        let rec = record(
            RM_BTREE_ID,
            XLOG_BTREE_META_CLEANUP,
            Bytes::new(),
            Some(meta),
        );
        let Some(ParsedRecord::Btree(BtreeRecord::MetaCleanup(Some(m)))) = parse(&rec).unwrap()
        else {
            panic!()
        };
        assert_eq!((m.version, m.root, m.last_cleanup_num_delpages), (4, 3, 17));
        assert!(m.allequalimage);
        assert_eq!(describe(&rec), "last_cleanup_num_delpages 17");
        let rec = record(RM_BTREE_ID, XLOG_BTREE_META_CLEANUP, Bytes::new(), None);
        assert!(parse(&rec).is_err());
    }
}
