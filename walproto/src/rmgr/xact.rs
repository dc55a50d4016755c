//! Transaction resource manager records (`access/xact.h`, `access/twophase.c`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{
    desc_invalidations, fmt_lsn, push_list, relpathperm, timestamptz_to_str, Reader,
    SIZE_OF_SHARED_INVAL_MSG,
};
use super::RmgrError;
use crate::lsn::Lsn;
use crate::record::RelFileNode;

pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
pub const XLOG_XACT_ASSIGNMENT: u8 = 0x50;
pub const XLOG_XACT_INVALIDATIONS: u8 = 0x60;
pub const XLOG_XACT_OPMASK: u8 = 0x70;
/// The record carries an `xl_xact_xinfo` after the timestamp.
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;

pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
pub const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
pub const XACT_XINFO_HAS_AE_LOCKS: u32 = 1 << 6;
pub const XACT_XINFO_HAS_GID: u32 = 1 << 7;
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
pub const XACT_COMPLETION_APPLY_FEEDBACK: u32 = 1 << 29;
pub const XACT_COMPLETION_UPDATE_RELCACHE_FILE: u32 = 1 << 30;
pub const XACT_COMPLETION_FORCE_SYNC_COMMIT: u32 = 1 << 31;

/// `TWOPHASE_MAGIC`, the first word of a PREPARE record.
pub const TWOPHASE_MAGIC: u32 = 0x57F9_4534;
/// `sizeof(TwoPhaseFileHeader)` (`xl_xact_prepare`) on 64-bit platforms.
pub const SIZE_OF_XACT_PREPARE: usize = 72;
/// `sizeof(xl_xact_stats_item)`.
pub const SIZE_OF_XACT_STATS_ITEM: usize = 12;

/// `rm_identify` of Transaction: only the opcode bits count.
pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => "COMMIT",
        XLOG_XACT_PREPARE => "PREPARE",
        XLOG_XACT_ABORT => "ABORT",
        XLOG_XACT_COMMIT_PREPARED => "COMMIT_PREPARED",
        XLOG_XACT_ABORT_PREPARED => "ABORT_PREPARED",
        XLOG_XACT_ASSIGNMENT => "ASSIGNMENT",
        XLOG_XACT_INVALIDATIONS => "INVALIDATION",
        _ => return None,
    })
}

/// One `xl_xact_stats_item`: statistics of a dropped object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedStats {
    pub kind: i32,
    pub dboid: u32,
    pub objoid: u32,
}

/// A commit or abort record (`xl_xact_parsed_commit` / `xl_xact_parsed_abort`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct XactParsed {
    pub xact_time: i64,
    /// `XACT_XINFO_*` and `XACT_COMPLETION_*` flags; 0 without `XLOG_XACT_HAS_INFO`.
    pub xinfo: u32,
    pub db_id: u32,
    pub ts_id: u32,
    pub subxacts: Vec<u32>,
    /// Relations whose files are dropped with the transaction.
    pub rels: Vec<RelFileNode>,
    pub dropped_stats: Vec<DroppedStats>,
    /// Number of invalidation messages (commits only).
    pub ninval_msgs: usize,
    /// The raw `SharedInvalidationMessage`s; decode with [`super::util::inval_messages`].
    pub inval_msgs: Bytes,
    /// Xid of the prepared transaction (COMMIT/ABORT PREPARED), else 0.
    pub twophase_xid: u32,
    pub gid: Option<String>,
    pub origin_lsn: Lsn,
    pub origin_timestamp: i64,
}

impl XactParsed {
    pub fn relcache_init_file_inval(&self) -> bool {
        self.xinfo & XACT_COMPLETION_UPDATE_RELCACHE_FILE != 0
    }
    pub fn force_sync_commit(&self) -> bool {
        self.xinfo & XACT_COMPLETION_FORCE_SYNC_COMMIT != 0
    }
    pub fn apply_feedback(&self) -> bool {
        self.xinfo & XACT_COMPLETION_APPLY_FEEDBACK != 0
    }
    pub fn has_origin(&self) -> bool {
        self.xinfo & XACT_XINFO_HAS_ORIGIN != 0
    }
}

/// A PREPARE record: the two-phase state file (`TwoPhaseFileHeader` and what follows).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct XactPrepare {
    pub magic: u32,
    pub total_len: u32,
    pub xid: u32,
    pub database: u32,
    pub prepared_at: i64,
    pub owner: u32,
    pub initfileinval: bool,
    pub gid: String,
    pub origin_lsn: Lsn,
    pub origin_timestamp: i64,
    pub subxacts: Vec<u32>,
    pub commit_rels: Vec<RelFileNode>,
    pub abort_rels: Vec<RelFileNode>,
    pub commit_stats: Vec<DroppedStats>,
    pub abort_stats: Vec<DroppedStats>,
    pub ninval_msgs: usize,
    pub inval_msgs: Bytes,
}

/// A Transaction record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XactRecord {
    Commit(XactParsed),
    Abort(XactParsed),
    CommitPrepared(XactParsed),
    AbortPrepared(XactParsed),
    Prepare(XactPrepare),
    /// `xl_xact_assignment`: subtransactions assigned to `xtop`.
    Assignment {
        xtop: u32,
        subxacts: Vec<u32>,
    },
    /// `xl_xact_invals`.
    Invalidations {
        nmsgs: usize,
        msgs: Bytes,
    },
}

fn record_name(op: u8) -> &'static str {
    match op {
        XLOG_XACT_COMMIT => "Transaction/COMMIT",
        XLOG_XACT_PREPARE => "Transaction/PREPARE",
        XLOG_XACT_ABORT => "Transaction/ABORT",
        XLOG_XACT_COMMIT_PREPARED => "Transaction/COMMIT_PREPARED",
        XLOG_XACT_ABORT_PREPARED => "Transaction/ABORT_PREPARED",
        XLOG_XACT_ASSIGNMENT => "Transaction/ASSIGNMENT",
        XLOG_XACT_INVALIDATIONS => "Transaction/INVALIDATION",
        _ => "Transaction",
    }
}

fn read_stats(r: &mut Reader<'_>, n: usize) -> Result<Vec<DroppedStats>, RmgrError> {
    r.ensure_items(n, SIZE_OF_XACT_STATS_ITEM, "dropped stats items")?;
    (0..n)
        .map(|_| {
            Ok(DroppedStats {
                kind: r.i32("stats kind")?,
                dboid: r.u32("stats dboid")?,
                objoid: r.u32("stats objoid")?,
            })
        })
        .collect()
}

fn read_invals(r: &mut Reader<'_>, n: usize) -> Result<Bytes, RmgrError> {
    r.ensure_items(n, SIZE_OF_SHARED_INVAL_MSG, "invalidation messages")?;
    r.bytes(n * SIZE_OF_SHARED_INVAL_MSG, "invalidation messages")
}

/// `ParseCommitRecord` / `ParseAbortRecord`.
fn parse_commit_abort(
    info: u8,
    data: &Bytes,
    commit: bool,
    name: &'static str,
) -> Result<XactParsed, RmgrError> {
    let mut r = Reader::new(data, name);
    let mut p = XactParsed {
        xact_time: r.i64("xact_time")?,
        ..Default::default()
    };
    if info & XLOG_XACT_HAS_INFO != 0 {
        p.xinfo = r.u32("xinfo")?;
    }
    if p.xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        p.db_id = r.u32("dbinfo dbId")?;
        p.ts_id = r.u32("dbinfo tsId")?;
    }
    if p.xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = r.count("nsubxacts")?;
        p.subxacts = r.u32_array(n, "subxacts")?;
    }
    if p.xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = r.count("nrels")?;
        p.rels = r.rel_array(n, "relfilenodes")?;
    }
    if p.xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = r.count("dropped stats nitems")?;
        p.dropped_stats = read_stats(&mut r, n)?;
    }
    if commit && p.xinfo & XACT_XINFO_HAS_INVALS != 0 {
        p.ninval_msgs = r.count("nmsgs")?;
        p.inval_msgs = read_invals(&mut r, p.ninval_msgs)?;
    }
    if p.xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        p.twophase_xid = r.u32("twophase xid")?;
        if p.xinfo & XACT_XINFO_HAS_GID != 0 {
            p.gid = Some(r.cstring("gid")?);
        }
    }
    // No alignment is guaranteed from here on.
    if p.xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
        p.origin_lsn = Lsn(r.u64("origin_lsn")?);
        p.origin_timestamp = r.i64("origin_timestamp")?;
    }
    Ok(p)
}

/// `ParsePrepareRecord`: the header, then MAXALIGNed arrays.
fn parse_prepare(data: &Bytes) -> Result<XactPrepare, RmgrError> {
    let mut r = Reader::new(data, "Transaction/PREPARE");
    let mut p = XactPrepare {
        magic: r.u32("magic")?,
        total_len: r.u32("total_len")?,
        xid: r.u32("xid")?,
        database: r.u32("database")?,
        prepared_at: r.i64("prepared_at")?,
        owner: r.u32("owner")?,
        ..Default::default()
    };
    let nsubxacts = r.count("nsubxacts")?;
    let ncommitrels = r.count("ncommitrels")?;
    let nabortrels = r.count("nabortrels")?;
    let ncommitstats = r.count("ncommitstats")?;
    let nabortstats = r.count("nabortstats")?;
    p.ninval_msgs = r.count("ninvalmsgs")?;
    p.initfileinval = r.bool("initfileinval")?;
    r.skip(1, "padding")?;
    let gidlen = r.u16("gidlen")? as usize;
    p.origin_lsn = Lsn(r.u64("origin_lsn")?);
    p.origin_timestamp = r.i64("origin_timestamp")?;
    debug_assert_eq!(r.pos(), SIZE_OF_XACT_PREPARE);
    let gid = r.bytes(gidlen, "gid")?;
    p.gid = super::util::c_str_lossy(&gid);
    r.align(8);
    p.subxacts = r.u32_array(nsubxacts, "subxacts")?;
    r.align(8);
    p.commit_rels = r.rel_array(ncommitrels, "commit relfilenodes")?;
    r.align(8);
    p.abort_rels = r.rel_array(nabortrels, "abort relfilenodes")?;
    r.align(8);
    p.commit_stats = read_stats(&mut r, ncommitstats)?;
    r.align(8);
    p.abort_stats = read_stats(&mut r, nabortstats)?;
    r.align(8);
    p.inval_msgs = read_invals(&mut r, p.ninval_msgs)?;
    Ok(p)
}

impl XactRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<XactRecord, RmgrError> {
        let op = info & XLOG_XACT_OPMASK;
        let name = record_name(op);
        Ok(match op {
            XLOG_XACT_COMMIT => XactRecord::Commit(parse_commit_abort(info, data, true, name)?),
            XLOG_XACT_ABORT => XactRecord::Abort(parse_commit_abort(info, data, false, name)?),
            XLOG_XACT_COMMIT_PREPARED => {
                XactRecord::CommitPrepared(parse_commit_abort(info, data, true, name)?)
            }
            XLOG_XACT_ABORT_PREPARED => {
                XactRecord::AbortPrepared(parse_commit_abort(info, data, false, name)?)
            }
            XLOG_XACT_PREPARE => XactRecord::Prepare(parse_prepare(data)?),
            XLOG_XACT_ASSIGNMENT => {
                let mut r = Reader::new(data, name);
                let xtop = r.u32("xtop")?;
                let n = r.count("nsubxacts")?;
                XactRecord::Assignment {
                    xtop,
                    subxacts: r.u32_array(n, "subxacts")?,
                }
            }
            XLOG_XACT_INVALIDATIONS => {
                let mut r = Reader::new(data, name);
                let nmsgs = r.count("nmsgs")?;
                XactRecord::Invalidations {
                    nmsgs,
                    msgs: read_invals(&mut r, nmsgs)?,
                }
            }
            _ => {
                return Err(RmgrError::UnknownInfo {
                    rmgr: "Transaction",
                    info,
                })
            }
        })
    }

    /// `xact_desc`. `origin` is the record's replication origin (0 if none).
    pub fn describe(&self, origin: u16, out: &mut String) {
        match self {
            XactRecord::Commit(p) | XactRecord::CommitPrepared(p) => {
                desc_head(out, p);
                desc_relations(out, "rels", &p.rels);
                desc_subxacts(out, &p.subxacts);
                desc_stats(out, "", &p.dropped_stats);
                desc_invalidations(
                    out,
                    &p.inval_msgs,
                    p.db_id,
                    p.ts_id,
                    p.relcache_init_file_inval(),
                );
                if p.apply_feedback() {
                    out.push_str("; apply_feedback");
                }
                if p.force_sync_commit() {
                    out.push_str("; sync");
                }
                if p.has_origin() {
                    desc_origin(out, origin, p.origin_lsn, p.origin_timestamp);
                }
            }
            XactRecord::Abort(p) | XactRecord::AbortPrepared(p) => {
                desc_head(out, p);
                desc_relations(out, "rels", &p.rels);
                desc_subxacts(out, &p.subxacts);
                if p.has_origin() {
                    desc_origin(out, origin, p.origin_lsn, p.origin_timestamp);
                }
                desc_stats(out, "", &p.dropped_stats);
            }
            XactRecord::Prepare(p) => {
                let _ = write!(out, "gid {}: {}", p.gid, timestamptz_to_str(p.prepared_at));
                desc_relations(out, "rels(commit)", &p.commit_rels);
                desc_relations(out, "rels(abort)", &p.abort_rels);
                desc_stats(out, "commit ", &p.commit_stats);
                desc_stats(out, "abort ", &p.abort_stats);
                desc_subxacts(out, &p.subxacts);
                desc_invalidations(out, &p.inval_msgs, p.database, 0, p.initfileinval);
                if origin != 0 {
                    desc_origin(out, origin, p.origin_lsn, p.origin_timestamp);
                }
            }
            XactRecord::Assignment { xtop, subxacts } => {
                let _ = write!(out, "xtop {xtop}: subxacts:");
                push_list(out, subxacts);
            }
            XactRecord::Invalidations { msgs, .. } => desc_invalidations(out, msgs, 0, 0, false),
        }
    }
}

fn desc_head(out: &mut String, p: &XactParsed) {
    if p.twophase_xid != 0 {
        let _ = write!(out, "{}: ", p.twophase_xid);
    }
    out.push_str(&timestamptz_to_str(p.xact_time));
}

fn desc_relations(out: &mut String, label: &str, rels: &[RelFileNode]) {
    if !rels.is_empty() {
        let _ = write!(out, "; {label}:");
        for rel in rels {
            let _ = write!(out, " {}", relpathperm(rel, 0));
        }
    }
}

fn desc_subxacts(out: &mut String, subxacts: &[u32]) {
    if !subxacts.is_empty() {
        out.push_str("; subxacts:");
        push_list(out, subxacts);
    }
}

fn desc_stats(out: &mut String, label: &str, stats: &[DroppedStats]) {
    if !stats.is_empty() {
        let _ = write!(out, "; {label}dropped stats:");
        for s in stats {
            let _ = write!(out, " {}/{}/{}", s.kind, s.dboid, s.objoid);
        }
    }
}

fn desc_origin(out: &mut String, origin: u16, lsn: Lsn, ts: i64) {
    let _ = write!(
        out,
        "; origin: node {}, lsn {}, at {}",
        origin,
        fmt_lsn(lsn.0),
        timestamptz_to_str(ts)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::{record, Buf};
    use crate::rmgr::util::{inval_messages, SharedInvalMsg};
    use crate::rmgr::{describe, parse, ParsedRecord, RM_XACT_ID};

    const TS: i64 = 848_607_449_188_036; // 2026-11-21 20:17:29.188036 UTC

    fn inval_catcache(id: i8) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[0] = id as u8;
        m[4..8].copy_from_slice(&5u32.to_le_bytes());
        m[8..12].copy_from_slice(&0xdeadu32.to_le_bytes());
        m
    }

    fn inval_relcache(rel: u32) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[0] = (-2i8) as u8;
        m[4..8].copy_from_slice(&5u32.to_le_bytes());
        m[8..12].copy_from_slice(&rel.to_le_bytes());
        m
    }

    #[test]
    fn identify_uses_opmask() {
        assert_eq!(identify(0x00), Some("COMMIT"));
        assert_eq!(identify(0x80), Some("COMMIT"));
        assert_eq!(identify(0x30 | 0x80), Some("COMMIT_PREPARED"));
        assert_eq!(identify(0x40), Some("ABORT_PREPARED"));
        assert_eq!(identify(0x60), Some("INVALIDATION"));
        assert_eq!(identify(0x70), None);
    }

    #[test]
    fn plain_commit_without_xinfo() {
        let data = Buf::new().i64(TS).build();
        let rec = XactRecord::parse(XLOG_XACT_COMMIT, &data).unwrap();
        let XactRecord::Commit(p) = &rec else {
            panic!()
        };
        assert_eq!(p.xact_time, TS);
        assert_eq!(p.xinfo, 0);
        let mut s = String::new();
        rec.describe(0, &mut s);
        assert_eq!(s, "2026-11-21 20:17:29.188036 UTC");
    }

    #[test]
    fn commit_with_everything() {
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILENODES
            | XACT_XINFO_HAS_DROPPED_STATS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE
            | XACT_XINFO_HAS_GID
            | XACT_XINFO_HAS_ORIGIN
            | XACT_COMPLETION_UPDATE_RELCACHE_FILE
            | XACT_COMPLETION_FORCE_SYNC_COMMIT;
        let data = Buf::new()
            .i64(TS)
            .u32(xinfo)
            .u32(5) // dbId
            .u32(1663) // tsId
            .i32(2)
            .u32(801)
            .u32(802) // subxacts
            .i32(1)
            .rel(1663, 5, 16384) // rels
            .i32(1)
            .i32(2)
            .u32(5)
            .u32(16404) // dropped stats
            .i32(2)
            .bytes(&inval_catcache(80))
            .bytes(&inval_relcache(16384))
            .u32(735) // twophase xid
            .bytes(b"gx1\0")
            .u64(0x1_0000_0100) // origin lsn, unaligned
            .i64(0)
            .build();
        let rec = XactRecord::parse(XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, &data).unwrap();
        let XactRecord::CommitPrepared(p) = &rec else {
            panic!("{rec:?}")
        };
        assert_eq!((p.db_id, p.ts_id), (5, 1663));
        assert_eq!(p.subxacts, vec![801, 802]);
        assert_eq!(
            p.rels,
            vec![RelFileNode {
                spc: 1663,
                db: 5,
                rel: 16384
            }]
        );
        assert_eq!(
            p.dropped_stats,
            vec![DroppedStats {
                kind: 2,
                dboid: 5,
                objoid: 16404
            }]
        );
        assert_eq!(p.ninval_msgs, 2);
        let msgs: Vec<_> = inval_messages(&p.inval_msgs).collect();
        assert_eq!(msgs[1], SharedInvalMsg::Relcache { db: 5, rel: 16384 });
        assert_eq!(p.twophase_xid, 735);
        assert_eq!(p.gid.as_deref(), Some("gx1"));
        assert_eq!(p.origin_lsn, Lsn(0x1_0000_0100));
        let mut s = String::new();
        rec.describe(3, &mut s);
        assert_eq!(
            s,
            "735: 2026-11-21 20:17:29.188036 UTC; rels: base/5/16384; subxacts: 801 802; \
             dropped stats: 2/5/16404; relcache init file inval dbid 5 tsid 1663; \
             inval msgs: catcache 80 relcache 16384; sync; origin: node 3, lsn 1/100, at \
             2000-01-01 00:00:00.000000 UTC"
        );
        // Every truncation is an error, never a panic.
        for len in 0..data.len() {
            let err = XactRecord::parse(0x30 | 0x80, &data.slice(..len)).unwrap_err();
            assert!(err.to_string().contains("COMMIT_PREPARED"), "{err}");
        }
    }

    #[test]
    fn abort_skips_invals_and_reads_stats() {
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_DROPPED_STATS
            | XACT_XINFO_HAS_TWOPHASE;
        let data = Buf::new()
            .i64(TS)
            .u32(xinfo)
            .u32(5)
            .u32(1663)
            .i32(1)
            .u32(741)
            .i32(1)
            .i32(1)
            .u32(16395)
            .u32(0)
            .u32(736)
            .build();
        let rec = XactRecord::parse(XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO, &data).unwrap();
        let XactRecord::AbortPrepared(p) = &rec else {
            panic!()
        };
        assert_eq!(p.twophase_xid, 736);
        assert_eq!(p.subxacts, vec![741]);
        let mut s = String::new();
        rec.describe(0, &mut s);
        assert_eq!(
            s,
            "736: 2026-11-21 20:17:29.188036 UTC; subxacts: 741; dropped stats: 1/16395/0"
        );
    }

    #[test]
    fn prepare_record() {
        let data = Buf::new()
            .u32(TWOPHASE_MAGIC)
            .u32(300)
            .u32(735) // xid
            .u32(5) // database
            .i64(TS) // prepared_at
            .u32(10) // owner
            .i32(1) // nsubxacts
            .i32(1) // ncommitrels
            .i32(0) // nabortrels
            .i32(0) // ncommitstats
            .i32(1) // nabortstats
            .i32(1) // ninvalmsgs
            .u8(0) // initfileinval
            .u8(0)
            .u16(4) // gidlen
            .u64(0)
            .i64(0)
            .bytes(b"gx1\0")
            .pad_to(8)
            .u32(736)
            .pad_to(8)
            .rel(1663, 5, 16400)
            .pad_to(8)
            .i32(2)
            .u32(5)
            .u32(16400)
            .pad_to(8)
            .bytes(&inval_catcache(7))
            .bytes(&[0xAA; 40]) // 2PC records follow
            .build();
        let rec = XactRecord::parse(XLOG_XACT_PREPARE, &data).unwrap();
        let XactRecord::Prepare(p) = &rec else {
            panic!()
        };
        assert_eq!(p.magic, TWOPHASE_MAGIC);
        assert_eq!((p.xid, p.database, p.owner), (735, 5, 10));
        assert_eq!(p.prepared_at, TS);
        assert_eq!(p.gid, "gx1");
        assert_eq!(p.subxacts, vec![736]);
        assert_eq!(p.commit_rels[0].rel, 16400);
        assert!(p.abort_rels.is_empty());
        assert_eq!(p.abort_stats[0].objoid, 16400);
        assert_eq!(p.ninval_msgs, 1);
        let mut s = String::new();
        rec.describe(0, &mut s);
        assert_eq!(
            s,
            "gid gx1: 2026-11-21 20:17:29.188036 UTC; rels(commit): base/5/16400; \
             abort dropped stats: 2/5/16400; subxacts: 736; inval msgs: catcache 7"
        );
    }

    #[test]
    fn assignment_and_invalidations_via_top_level() {
        let data = Buf::new()
            .u32(900)
            .i32(3)
            .u32(901)
            .u32(902)
            .u32(903)
            .build();
        let rec = record(RM_XACT_ID, XLOG_XACT_ASSIGNMENT, data, None);
        assert_eq!(
            parse(&rec).unwrap(),
            Some(ParsedRecord::Xact(XactRecord::Assignment {
                xtop: 900,
                subxacts: vec![901, 902, 903]
            }))
        );
        assert_eq!(describe(&rec), "xtop 900: subxacts: 901 902 903");

        let data = Buf::new()
            .i32(2)
            .bytes(&inval_catcache(55))
            .bytes(&inval_relcache(16387))
            .build();
        let rec = record(RM_XACT_ID, XLOG_XACT_INVALIDATIONS, data, None);
        assert_eq!(describe(&rec), "; inval msgs: catcache 55 relcache 16387");

        // A huge count must not allocate or panic.
        let data = Buf::new().u32(1).i32(i32::MAX).build();
        let rec = record(RM_XACT_ID, XLOG_XACT_ASSIGNMENT, data, None);
        assert!(parse(&rec).is_err());
        let data = Buf::new().u32(1).i32(-1).build();
        let rec = record(RM_XACT_ID, XLOG_XACT_ASSIGNMENT, data, None);
        assert!(matches!(parse(&rec), Err(RmgrError::Invalid { .. })));
    }
}
