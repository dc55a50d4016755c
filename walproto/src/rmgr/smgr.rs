//! Storage manager records (`catalog/storage_xlog.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{relpathperm, Reader};
use super::RmgrError;
use crate::consts::{MAIN_FORKNUM, XLR_INFO_MASK};
use crate::record::RelFileNode;

pub const XLOG_SMGR_CREATE: u8 = 0x10;
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;

/// `xl_smgr_truncate.flags`: which forks to truncate.
pub const SMGR_TRUNCATE_HEAP: i32 = 0x0001;
pub const SMGR_TRUNCATE_VM: i32 = 0x0002;
pub const SMGR_TRUNCATE_FSM: i32 = 0x0004;
pub const SMGR_TRUNCATE_ALL: i32 = SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_SMGR_CREATE => Some("CREATE"),
        XLOG_SMGR_TRUNCATE => Some("TRUNCATE"),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmgrRecord {
    /// `xl_smgr_create`.
    Create { rnode: RelFileNode, fork: i32 },
    /// `xl_smgr_truncate`: truncate the forks in `flags` to `blkno` blocks.
    Truncate {
        blkno: u32,
        rnode: RelFileNode,
        flags: i32,
    },
}

impl SmgrRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<SmgrRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_SMGR_CREATE => {
                let mut r = Reader::new(data, "Storage/CREATE");
                Ok(SmgrRecord::Create {
                    rnode: r.rel("rnode")?,
                    fork: r.i32("forkNum")?,
                })
            }
            XLOG_SMGR_TRUNCATE => {
                let mut r = Reader::new(data, "Storage/TRUNCATE");
                Ok(SmgrRecord::Truncate {
                    blkno: r.u32("blkno")?,
                    rnode: r.rel("rnode")?,
                    flags: r.i32("flags")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "Storage",
                info,
            }),
        }
    }

    /// `smgr_desc`.
    pub fn describe(&self, out: &mut String) {
        match self {
            SmgrRecord::Create { rnode, fork } => {
                let fork = u8::try_from(*fork).unwrap_or(u8::MAX);
                out.push_str(&relpathperm(rnode, fork));
            }
            SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            } => {
                let _ = write!(
                    out,
                    "{} to {} blocks flags {}",
                    relpathperm(rnode, MAIN_FORKNUM),
                    blkno,
                    flags
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    #[test]
    fn create_and_truncate() {
        let data = Buf::new().rel(1663, 5, 16384).i32(1).build();
        let rec = SmgrRecord::parse(XLOG_SMGR_CREATE, &data).unwrap();
        let rnode = RelFileNode {
            spc: 1663,
            db: 5,
            rel: 16384,
        };
        assert_eq!(rec, SmgrRecord::Create { rnode, fork: 1 });
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "base/5/16384_fsm");

        let data = Buf::new()
            .u32(42)
            .rel(1663, 5, 16384)
            .i32(SMGR_TRUNCATE_ALL)
            .build();
        let rec = SmgrRecord::parse(XLOG_SMGR_TRUNCATE, &data).unwrap();
        assert_eq!(
            rec,
            SmgrRecord::Truncate {
                blkno: 42,
                rnode,
                flags: 7
            }
        );
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "base/5/16384 to 42 blocks flags 7");

        let err = SmgrRecord::parse(XLOG_SMGR_TRUNCATE, &data.slice(..16)).unwrap_err();
        assert!(matches!(
            err,
            RmgrError::Truncated {
                record: "Storage/TRUNCATE",
                what: "flags",
                ..
            }
        ));
        assert_eq!(identify(0x10), Some("CREATE"));
        assert_eq!(identify(0x21), Some("TRUNCATE"));
        assert_eq!(identify(0x00), None);
    }
}
