//! Standby records (`storage/standbydefs.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{desc_invalidations, push_list, Reader, SIZE_OF_SHARED_INVAL_MSG};
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_STANDBY_LOCK: u8 = 0x00;
pub const XLOG_RUNNING_XACTS: u8 = 0x10;
pub const XLOG_INVALIDATIONS: u8 = 0x20;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_STANDBY_LOCK => Some("LOCK"),
        XLOG_RUNNING_XACTS => Some("RUNNING_XACTS"),
        XLOG_INVALIDATIONS => Some("INVALIDATIONS"),
        _ => None,
    }
}

/// `xl_standby_lock`: an AccessExclusiveLock held by `xid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyLock {
    pub xid: u32,
    pub db_oid: u32,
    pub rel_oid: u32,
}

/// `xl_running_xacts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningXacts {
    pub subxid_overflow: bool,
    pub next_xid: u32,
    pub oldest_running_xid: u32,
    pub latest_completed_xid: u32,
    /// The `xcnt` top-level xids.
    pub xids: Vec<u32>,
    /// The `subxcnt` subtransaction xids that follow them.
    pub subxids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyRecord {
    Lock(Vec<StandbyLock>),
    RunningXacts(RunningXacts),
    /// `xl_invalidations`.
    Invalidations {
        db_id: u32,
        ts_id: u32,
        relcache_init_file_inval: bool,
        nmsgs: usize,
        /// Raw `SharedInvalidationMessage`s.
        msgs: Bytes,
    },
}

impl StandbyRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<StandbyRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_STANDBY_LOCK => {
                let mut r = Reader::new(data, "Standby/LOCK");
                let n = r.count("nlocks")?;
                r.ensure_items(n, 12, "locks")?;
                let locks = (0..n)
                    .map(|_| {
                        Ok(StandbyLock {
                            xid: r.u32("lock xid")?,
                            db_oid: r.u32("lock dbOid")?,
                            rel_oid: r.u32("lock relOid")?,
                        })
                    })
                    .collect::<Result<_, RmgrError>>()?;
                Ok(StandbyRecord::Lock(locks))
            }
            XLOG_RUNNING_XACTS => {
                let mut r = Reader::new(data, "Standby/RUNNING_XACTS");
                let xcnt = r.count("xcnt")?;
                let subxcnt = r.count("subxcnt")?;
                let subxid_overflow = r.bool("subxid_overflow")?;
                r.skip(3, "padding")?;
                let next_xid = r.u32("nextXid")?;
                let oldest_running_xid = r.u32("oldestRunningXid")?;
                let latest_completed_xid = r.u32("latestCompletedXid")?;
                let xids = r.u32_array(xcnt, "xids")?;
                let subxids = r.u32_array(subxcnt, "subxids")?;
                Ok(StandbyRecord::RunningXacts(RunningXacts {
                    subxid_overflow,
                    next_xid,
                    oldest_running_xid,
                    latest_completed_xid,
                    xids,
                    subxids,
                }))
            }
            XLOG_INVALIDATIONS => {
                let mut r = Reader::new(data, "Standby/INVALIDATIONS");
                let db_id = r.u32("dbId")?;
                let ts_id = r.u32("tsId")?;
                let relcache_init_file_inval = r.bool("relcacheInitFileInval")?;
                r.skip(3, "padding")?;
                let nmsgs = r.count("nmsgs")?;
                r.ensure_items(nmsgs, SIZE_OF_SHARED_INVAL_MSG, "invalidation messages")?;
                let msgs = r.bytes(nmsgs * SIZE_OF_SHARED_INVAL_MSG, "invalidation messages")?;
                Ok(StandbyRecord::Invalidations {
                    db_id,
                    ts_id,
                    relcache_init_file_inval,
                    nmsgs,
                    msgs,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "Standby",
                info,
            }),
        }
    }

    /// `standby_desc`.
    pub fn describe(&self, out: &mut String) {
        match self {
            StandbyRecord::Lock(locks) => {
                for l in locks {
                    let _ = write!(out, "xid {} db {} rel {} ", l.xid, l.db_oid, l.rel_oid);
                }
            }
            StandbyRecord::RunningXacts(x) => {
                let _ = write!(
                    out,
                    "nextXid {} latestCompletedXid {} oldestRunningXid {}",
                    x.next_xid, x.latest_completed_xid, x.oldest_running_xid
                );
                if !x.xids.is_empty() {
                    let _ = write!(out, "; {} xacts:", x.xids.len());
                    push_list(out, &x.xids);
                }
                if x.subxid_overflow {
                    out.push_str("; subxid overflowed");
                }
                if !x.subxids.is_empty() {
                    let _ = write!(out, "; {} subxacts:", x.subxids.len());
                    push_list(out, &x.subxids);
                }
            }
            StandbyRecord::Invalidations {
                db_id,
                ts_id,
                relcache_init_file_inval,
                msgs,
                ..
            } => desc_invalidations(out, msgs, *db_id, *ts_id, *relcache_init_file_inval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    fn desc(r: &StandbyRecord) -> String {
        let mut s = String::new();
        r.describe(&mut s);
        s
    }

    #[test]
    fn lock() {
        let data = Buf::new()
            .i32(2)
            .u32(724)
            .u32(5)
            .u32(16384)
            .u32(724)
            .u32(5)
            .u32(16387)
            .build();
        let rec = StandbyRecord::parse(XLOG_STANDBY_LOCK, &data).unwrap();
        let StandbyRecord::Lock(locks) = &rec else {
            panic!()
        };
        assert_eq!(
            locks[1],
            StandbyLock {
                xid: 724,
                db_oid: 5,
                rel_oid: 16387
            }
        );
        assert_eq!(desc(&rec), "xid 724 db 5 rel 16384 xid 724 db 5 rel 16387 ");
        assert!(StandbyRecord::parse(XLOG_STANDBY_LOCK, &data.slice(..25)).is_err());
    }

    #[test]
    fn running_xacts() {
        let data = Buf::new()
            .i32(1)
            .i32(2)
            .u8(1)
            .pad_to(4)
            .u32(743)
            .u32(742)
            .u32(741)
            .u32(742)
            .u32(745)
            .u32(746)
            .build();
        let rec = StandbyRecord::parse(XLOG_RUNNING_XACTS, &data).unwrap();
        let StandbyRecord::RunningXacts(x) = &rec else {
            panic!()
        };
        assert_eq!(
            (x.next_xid, x.oldest_running_xid, x.latest_completed_xid),
            (743, 742, 741)
        );
        assert_eq!(x.xids, vec![742]);
        assert_eq!(x.subxids, vec![745, 746]);
        assert!(x.subxid_overflow);
        assert_eq!(
            desc(&rec),
            "nextXid 743 latestCompletedXid 741 oldestRunningXid 742; 1 xacts: 742; \
             subxid overflowed; 2 subxacts: 745 746"
        );
        let empty = Buf::new()
            .i32(0)
            .i32(0)
            .u32(0)
            .u32(724)
            .u32(724)
            .u32(723)
            .build();
        let rec = StandbyRecord::parse(XLOG_RUNNING_XACTS, &empty).unwrap();
        assert_eq!(
            desc(&rec),
            "nextXid 724 latestCompletedXid 723 oldestRunningXid 724"
        );
        let err = StandbyRecord::parse(XLOG_RUNNING_XACTS, &data.slice(..28)).unwrap_err();
        assert!(err.to_string().contains("xids"), "{err}");
    }

    #[test]
    fn invalidations() {
        let mut m1 = [0u8; 16];
        m1[0] = 55;
        let mut m2 = [0u8; 16];
        m2[0] = (-2i8) as u8;
        m2[8..12].copy_from_slice(&16389u32.to_le_bytes());
        let data = Buf::new()
            .u32(5)
            .u32(1663)
            .u8(1)
            .pad_to(4)
            .i32(2)
            .bytes(&m1)
            .bytes(&m2)
            .build();
        let rec = StandbyRecord::parse(XLOG_INVALIDATIONS, &data).unwrap();
        let StandbyRecord::Invalidations { db_id, nmsgs, .. } = &rec else {
            panic!()
        };
        assert_eq!((*db_id, *nmsgs), (5, 2));
        assert_eq!(
            desc(&rec),
            "; relcache init file inval dbid 5 tsid 1663; inval msgs: catcache 55 relcache 16389"
        );
        assert_eq!(identify(0x20), Some("INVALIDATIONS"));
        assert_eq!(identify(0x30), None);
    }
}
