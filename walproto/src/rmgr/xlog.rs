//! XLOG resource manager records (`catalog/pg_control.h`, `access/xlog_internal.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{c_str_lossy, fmt_lsn, timestamptz_to_str, Reader};
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;
use crate::lsn::Lsn;

pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_NOOP: u8 = 0x20;
pub const XLOG_NEXTOID: u8 = 0x30;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_BACKUP_END: u8 = 0x50;
pub const XLOG_PARAMETER_CHANGE: u8 = 0x60;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_FPW_CHANGE: u8 = 0x80;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
pub const XLOG_FPI_FOR_HINT: u8 = 0xA0;
pub const XLOG_FPI: u8 = 0xB0;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// `sizeof(CheckPoint)` on 64-bit platforms: 16 fixed bytes, `bool` padded to 8, the
/// 8-byte `nextXid`, seven 4-byte fields padded to 8, `time`, three xids padded to 8.
pub const SIZE_OF_CHECKPOINT: usize = 88;
/// `MAXFNAMELEN`, the size of `xl_restore_point.rp_name`.
pub const MAXFNAMELEN: usize = 64;

/// `wal_level` values (`access/xlog.h`).
pub const WAL_LEVEL_MINIMAL: i32 = 0;
pub const WAL_LEVEL_REPLICA: i32 = 1;
pub const WAL_LEVEL_LOGICAL: i32 = 2;

/// `rm_identify` of XLOG.
pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & !XLR_INFO_MASK {
        XLOG_CHECKPOINT_SHUTDOWN => "CHECKPOINT_SHUTDOWN",
        XLOG_CHECKPOINT_ONLINE => "CHECKPOINT_ONLINE",
        XLOG_NOOP => "NOOP",
        XLOG_NEXTOID => "NEXTOID",
        XLOG_SWITCH => "SWITCH",
        XLOG_BACKUP_END => "BACKUP_END",
        XLOG_PARAMETER_CHANGE => "PARAMETER_CHANGE",
        XLOG_RESTORE_POINT => "RESTORE_POINT",
        XLOG_FPW_CHANGE => "FPW_CHANGE",
        XLOG_END_OF_RECOVERY => "END_OF_RECOVERY",
        XLOG_FPI_FOR_HINT => "FPI_FOR_HINT",
        XLOG_FPI => "FPI",
        XLOG_OVERWRITE_CONTRECORD => "OVERWRITE_CONTRECORD",
        _ => return None,
    })
}

/// PostgreSQL 15's `CheckPoint` (pg_control.h), the body of checkpoint records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CheckPoint {
    pub redo: Lsn,
    pub this_timeline_id: u32,
    pub prev_timeline_id: u32,
    pub full_page_writes: bool,
    /// `FullTransactionId`: epoch in the high 32 bits.
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
    /// `pg_time_t`: seconds since the Unix epoch.
    pub time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
}

impl CheckPoint {
    /// Decodes the 88-byte C struct (also the layout inside `pg_control`).
    pub fn decode(data: &Bytes) -> Result<CheckPoint, RmgrError> {
        Self::read(&mut Reader::new(data, "XLOG/CHECKPOINT"))
    }

    fn read(r: &mut Reader<'_>) -> Result<CheckPoint, RmgrError> {
        let redo = Lsn(r.u64("redo")?);
        let this_timeline_id = r.u32("ThisTimeLineID")?;
        let prev_timeline_id = r.u32("PrevTimeLineID")?;
        let full_page_writes = r.bool("fullPageWrites")?;
        r.align(8);
        let next_xid = r.u64("nextXid")?;
        let next_oid = r.u32("nextOid")?;
        let next_multi = r.u32("nextMulti")?;
        let next_multi_offset = r.u32("nextMultiOffset")?;
        let oldest_xid = r.u32("oldestXid")?;
        let oldest_xid_db = r.u32("oldestXidDB")?;
        let oldest_multi = r.u32("oldestMulti")?;
        let oldest_multi_db = r.u32("oldestMultiDB")?;
        r.align(8);
        let time = r.i64("time")?;
        let oldest_commit_ts_xid = r.u32("oldestCommitTsXid")?;
        let newest_commit_ts_xid = r.u32("newestCommitTsXid")?;
        let oldest_active_xid = r.u32("oldestActiveXid")?;
        Ok(CheckPoint {
            redo,
            this_timeline_id,
            prev_timeline_id,
            full_page_writes,
            next_xid,
            next_oid,
            next_multi,
            next_multi_offset,
            oldest_xid,
            oldest_xid_db,
            oldest_multi,
            oldest_multi_db,
            time,
            oldest_commit_ts_xid,
            newest_commit_ts_xid,
            oldest_active_xid,
        })
    }

    /// Encodes the C struct (padding zeroed).
    pub fn encode(&self) -> [u8; SIZE_OF_CHECKPOINT] {
        let mut b = [0u8; SIZE_OF_CHECKPOINT];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0, &self.redo.0.to_le_bytes());
        put(8, &self.this_timeline_id.to_le_bytes());
        put(12, &self.prev_timeline_id.to_le_bytes());
        put(16, &[self.full_page_writes as u8]);
        put(24, &self.next_xid.to_le_bytes());
        put(32, &self.next_oid.to_le_bytes());
        put(36, &self.next_multi.to_le_bytes());
        put(40, &self.next_multi_offset.to_le_bytes());
        put(44, &self.oldest_xid.to_le_bytes());
        put(48, &self.oldest_xid_db.to_le_bytes());
        put(52, &self.oldest_multi.to_le_bytes());
        put(56, &self.oldest_multi_db.to_le_bytes());
        put(64, &self.time.to_le_bytes());
        put(72, &self.oldest_commit_ts_xid.to_le_bytes());
        put(76, &self.newest_commit_ts_xid.to_le_bytes());
        put(80, &self.oldest_active_xid.to_le_bytes());
        b
    }
}

/// `xl_parameter_change`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParameterChange {
    pub max_connections: i32,
    pub max_worker_processes: i32,
    pub max_wal_senders: i32,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub track_commit_timestamp: bool,
}

/// `xl_end_of_recovery`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndOfRecovery {
    pub end_time: i64,
    pub this_timeline_id: u32,
    pub prev_timeline_id: u32,
}

/// An XLOG record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XlogRecord {
    CheckpointShutdown(CheckPoint),
    CheckpointOnline(CheckPoint),
    Noop,
    NextOid(u32),
    Switch,
    BackupEnd {
        start_point: Lsn,
    },
    ParameterChange(ParameterChange),
    RestorePoint {
        time: i64,
        name: String,
    },
    /// New value of `full_page_writes`.
    FpwChange(bool),
    EndOfRecovery(EndOfRecovery),
    /// The page image is in block 0.
    FpiForHint,
    /// Page images are in the blocks.
    Fpi,
    OverwriteContrecord {
        overwritten_lsn: Lsn,
        overwrite_time: i64,
    },
}

impl XlogRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<XlogRecord, RmgrError> {
        let op = info & !XLR_INFO_MASK;
        let name = match identify(info) {
            Some(_) => record_name(op),
            None => {
                return Err(RmgrError::UnknownInfo { rmgr: "XLOG", info });
            }
        };
        let mut r = Reader::new(data, name);
        Ok(match op {
            XLOG_CHECKPOINT_SHUTDOWN => XlogRecord::CheckpointShutdown(CheckPoint::read(&mut r)?),
            XLOG_CHECKPOINT_ONLINE => XlogRecord::CheckpointOnline(CheckPoint::read(&mut r)?),
            XLOG_NOOP => XlogRecord::Noop,
            XLOG_NEXTOID => XlogRecord::NextOid(r.u32("next oid")?),
            XLOG_SWITCH => XlogRecord::Switch,
            XLOG_BACKUP_END => XlogRecord::BackupEnd {
                start_point: Lsn(r.u64("backup start point")?),
            },
            XLOG_PARAMETER_CHANGE => XlogRecord::ParameterChange(ParameterChange {
                max_connections: r.i32("MaxConnections")?,
                max_worker_processes: r.i32("max_worker_processes")?,
                max_wal_senders: r.i32("max_wal_senders")?,
                max_prepared_xacts: r.i32("max_prepared_xacts")?,
                max_locks_per_xact: r.i32("max_locks_per_xact")?,
                wal_level: r.i32("wal_level")?,
                wal_log_hints: r.bool("wal_log_hints")?,
                track_commit_timestamp: r.bool("track_commit_timestamp")?,
            }),
            XLOG_RESTORE_POINT => {
                let time = r.i64("rp_time")?;
                let name = r.bytes(MAXFNAMELEN, "rp_name")?;
                XlogRecord::RestorePoint {
                    time,
                    name: c_str_lossy(&name),
                }
            }
            XLOG_FPW_CHANGE => XlogRecord::FpwChange(r.bool("fpw flag")?),
            XLOG_END_OF_RECOVERY => XlogRecord::EndOfRecovery(EndOfRecovery {
                end_time: r.i64("end_time")?,
                this_timeline_id: r.u32("ThisTimeLineID")?,
                prev_timeline_id: r.u32("PrevTimeLineID")?,
            }),
            XLOG_FPI_FOR_HINT => XlogRecord::FpiForHint,
            XLOG_FPI => XlogRecord::Fpi,
            XLOG_OVERWRITE_CONTRECORD => XlogRecord::OverwriteContrecord {
                overwritten_lsn: Lsn(r.u64("overwritten_lsn")?),
                overwrite_time: r.i64("overwrite_time")?,
            },
            _ => return Err(RmgrError::UnknownInfo { rmgr: "XLOG", info }),
        })
    }

    /// `xlog_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            XlogRecord::CheckpointShutdown(c) | XlogRecord::CheckpointOnline(c) => {
                let shutdown = matches!(self, XlogRecord::CheckpointShutdown(_));
                write!(
                    out,
                    "redo {}; tli {}; prev tli {}; fpw {}; xid {}:{}; oid {}; multi {}; offset {}; \
                     oldest xid {} in DB {}; oldest multi {} in DB {}; \
                     oldest/newest commit timestamp xid: {}/{}; oldest running xid {}; {}",
                    fmt_lsn(c.redo.0),
                    c.this_timeline_id,
                    c.prev_timeline_id,
                    c.full_page_writes,
                    c.next_xid >> 32,
                    c.next_xid as u32,
                    c.next_oid,
                    c.next_multi,
                    c.next_multi_offset,
                    c.oldest_xid,
                    c.oldest_xid_db,
                    c.oldest_multi,
                    c.oldest_multi_db,
                    c.oldest_commit_ts_xid,
                    c.newest_commit_ts_xid,
                    c.oldest_active_xid,
                    if shutdown { "shutdown" } else { "online" }
                )
            }
            XlogRecord::NextOid(oid) => write!(out, "{oid}"),
            XlogRecord::RestorePoint { name, .. } => write!(out, "{name}"),
            XlogRecord::BackupEnd { start_point } => write!(out, "{}", fmt_lsn(start_point.0)),
            XlogRecord::ParameterChange(p) => {
                let wal_level = match p.wal_level {
                    WAL_LEVEL_MINIMAL => "minimal",
                    WAL_LEVEL_REPLICA => "replica",
                    WAL_LEVEL_LOGICAL => "logical",
                    _ => "?",
                };
                write!(
                    out,
                    "max_connections={} max_worker_processes={} max_wal_senders={} \
                     max_prepared_xacts={} max_locks_per_xact={} wal_level={} \
                     wal_log_hints={} track_commit_timestamp={}",
                    p.max_connections,
                    p.max_worker_processes,
                    p.max_wal_senders,
                    p.max_prepared_xacts,
                    p.max_locks_per_xact,
                    wal_level,
                    on_off(p.wal_log_hints),
                    on_off(p.track_commit_timestamp)
                )
            }
            XlogRecord::FpwChange(fpw) => write!(out, "{fpw}"),
            XlogRecord::EndOfRecovery(e) => write!(
                out,
                "tli {}; prev tli {}; time {}",
                e.this_timeline_id,
                e.prev_timeline_id,
                timestamptz_to_str(e.end_time)
            ),
            XlogRecord::OverwriteContrecord {
                overwritten_lsn,
                overwrite_time,
            } => write!(
                out,
                "lsn {}; time {}",
                fmt_lsn(overwritten_lsn.0),
                timestamptz_to_str(*overwrite_time)
            ),
            XlogRecord::Noop | XlogRecord::Switch | XlogRecord::FpiForHint | XlogRecord::Fpi => {
                Ok(())
            }
        };
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn record_name(op: u8) -> &'static str {
    match op {
        XLOG_CHECKPOINT_SHUTDOWN => "XLOG/CHECKPOINT_SHUTDOWN",
        XLOG_CHECKPOINT_ONLINE => "XLOG/CHECKPOINT_ONLINE",
        XLOG_NOOP => "XLOG/NOOP",
        XLOG_NEXTOID => "XLOG/NEXTOID",
        XLOG_SWITCH => "XLOG/SWITCH",
        XLOG_BACKUP_END => "XLOG/BACKUP_END",
        XLOG_PARAMETER_CHANGE => "XLOG/PARAMETER_CHANGE",
        XLOG_RESTORE_POINT => "XLOG/RESTORE_POINT",
        XLOG_FPW_CHANGE => "XLOG/FPW_CHANGE",
        XLOG_END_OF_RECOVERY => "XLOG/END_OF_RECOVERY",
        XLOG_FPI_FOR_HINT => "XLOG/FPI_FOR_HINT",
        XLOG_FPI => "XLOG/FPI",
        XLOG_OVERWRITE_CONTRECORD => "XLOG/OVERWRITE_CONTRECORD",
        _ => "XLOG",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    fn sample_checkpoint() -> CheckPoint {
        CheckPoint {
            redo: Lsn(0x15007B8),
            this_timeline_id: 1,
            prev_timeline_id: 1,
            full_page_writes: true,
            next_xid: 724,
            next_oid: 13572,
            next_multi: 1,
            next_multi_offset: 0,
            oldest_xid: 716,
            oldest_xid_db: 1,
            oldest_multi: 1,
            oldest_multi_db: 1,
            time: 1_795_292_249,
            oldest_commit_ts_xid: 0,
            newest_commit_ts_xid: 0,
            oldest_active_xid: 724,
        }
    }

    #[test]
    fn checkpoint_layout_by_hand() {
        // Built field by field with the x86_64 padding.
        let data = Buf::new()
            .u64(0x1_0000_0028) // redo
            .u32(3) // ThisTimeLineID
            .u32(2) // PrevTimeLineID
            .u8(1) // fullPageWrites
            .pad_to(8)
            .u64((5u64 << 32) | 1000) // nextXid
            .u32(24576) // nextOid
            .u32(7) // nextMulti
            .u32(11) // nextMultiOffset
            .u32(716) // oldestXid
            .u32(1) // oldestXidDB
            .u32(2) // oldestMulti
            .u32(13) // oldestMultiDB
            .pad_to(8)
            .i64(1_700_000_000) // time
            .u32(100) // oldestCommitTsXid
            .u32(200) // newestCommitTsXid
            .u32(999) // oldestActiveXid
            .pad_to(8)
            .build();
        assert_eq!(data.len(), SIZE_OF_CHECKPOINT);
        let rec = XlogRecord::parse(XLOG_CHECKPOINT_SHUTDOWN, &data).unwrap();
        let XlogRecord::CheckpointShutdown(c) = &rec else {
            panic!("{rec:?}")
        };
        assert_eq!(c.redo, Lsn(0x1_0000_0028));
        assert_eq!((c.this_timeline_id, c.prev_timeline_id), (3, 2));
        assert!(c.full_page_writes);
        assert_eq!(c.next_xid, (5u64 << 32) | 1000);
        assert_eq!(c.next_oid, 24576);
        assert_eq!((c.next_multi, c.next_multi_offset), (7, 11));
        assert_eq!((c.oldest_xid, c.oldest_xid_db), (716, 1));
        assert_eq!((c.oldest_multi, c.oldest_multi_db), (2, 13));
        assert_eq!(c.time, 1_700_000_000);
        assert_eq!(
            (
                c.oldest_commit_ts_xid,
                c.newest_commit_ts_xid,
                c.oldest_active_xid
            ),
            (100, 200, 999)
        );
        assert_eq!(&c.encode()[..], &data[..]);
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(
            s,
            "redo 1/28; tli 3; prev tli 2; fpw true; xid 5:1000; oid 24576; multi 7; offset 11; \
             oldest xid 716 in DB 1; oldest multi 2 in DB 13; oldest/newest commit timestamp \
             xid: 100/200; oldest running xid 999; shutdown"
        );
    }

    #[test]
    fn checkpoint_online_desc_matches_pg_waldump() {
        let c = sample_checkpoint();
        let data = Bytes::copy_from_slice(&c.encode());
        let rec = XlogRecord::parse(XLOG_CHECKPOINT_ONLINE, &data).unwrap();
        assert_eq!(rec, XlogRecord::CheckpointOnline(c));
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(
            s,
            "redo 0/15007B8; tli 1; prev tli 1; fpw true; xid 0:724; oid 13572; multi 1; \
             offset 0; oldest xid 716 in DB 1; oldest multi 1 in DB 1; oldest/newest commit \
             timestamp xid: 0/0; oldest running xid 724; online"
        );
        // One byte short: an error naming the record and the field.
        let short = data.slice(..83); // trailing padding may be absent, fields may not
        let err = XlogRecord::parse(XLOG_CHECKPOINT_ONLINE, &short).unwrap_err();
        assert!(matches!(
            err,
            RmgrError::Truncated {
                record: "XLOG/CHECKPOINT_ONLINE",
                what: "oldestActiveXid",
                ..
            }
        ));
    }

    #[test]
    fn small_records() {
        let rec = XlogRecord::parse(XLOG_NEXTOID | 0x01, &Buf::new().u32(24576).build());
        assert_eq!(rec.unwrap(), XlogRecord::NextOid(24576));

        let mut name = b"myrp".to_vec();
        name.resize(MAXFNAMELEN, 0);
        let data = Buf::new().i64(12345).bytes(&name).build();
        let rec = XlogRecord::parse(XLOG_RESTORE_POINT, &data).unwrap();
        assert_eq!(
            rec,
            XlogRecord::RestorePoint {
                time: 12345,
                name: "myrp".into()
            }
        );
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "myrp");

        let data = Buf::new()
            .i32(100)
            .i32(8)
            .i32(10)
            .i32(5)
            .i32(64)
            .i32(WAL_LEVEL_LOGICAL)
            .u8(1)
            .u8(0)
            .pad_to(4)
            .build();
        let rec = XlogRecord::parse(XLOG_PARAMETER_CHANGE, &data).unwrap();
        let XlogRecord::ParameterChange(p) = rec.clone() else {
            panic!()
        };
        assert_eq!(p.max_prepared_xacts, 5);
        assert!(p.wal_log_hints && !p.track_commit_timestamp);
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(
            s,
            "max_connections=100 max_worker_processes=8 max_wal_senders=10 \
             max_prepared_xacts=5 max_locks_per_xact=64 wal_level=logical wal_log_hints=on \
             track_commit_timestamp=off"
        );

        let data = Buf::new().i64(0).u32(2).u32(1).build();
        let rec = XlogRecord::parse(XLOG_END_OF_RECOVERY, &data).unwrap();
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "tli 2; prev tli 1; time 2000-01-01 00:00:00.000000 UTC");

        let data = Buf::new().u64(0x2_0000_1000).i64(0).build();
        let rec = XlogRecord::parse(XLOG_OVERWRITE_CONTRECORD, &data).unwrap();
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "lsn 2/1000; time 2000-01-01 00:00:00.000000 UTC");

        let rec = XlogRecord::parse(XLOG_BACKUP_END, &Buf::new().u64(0x3000028).build());
        assert_eq!(
            rec.unwrap(),
            XlogRecord::BackupEnd {
                start_point: Lsn(0x3000028)
            }
        );
        let rec = XlogRecord::parse(XLOG_FPW_CHANGE, &Buf::new().u8(0).build()).unwrap();
        assert_eq!(rec, XlogRecord::FpwChange(false));
        assert_eq!(
            XlogRecord::parse(XLOG_FPI, &Bytes::new()).unwrap(),
            XlogRecord::Fpi
        );
        assert_eq!(
            XlogRecord::parse(0xC0, &Bytes::new()).unwrap_err(),
            RmgrError::UnknownInfo {
                rmgr: "XLOG",
                info: 0xC0
            }
        );
    }
}
