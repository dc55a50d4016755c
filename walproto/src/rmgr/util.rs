//! Helpers shared by the resource-manager parsers: a bounds-checked reader over main data,
//! and the formatting conventions of PostgreSQL's `rm_desc` routines.

use std::fmt::Write as _;

use bytes::Bytes;

use super::RmgrError;
use crate::consts::fork_name;
use crate::record::RelFileNode;

/// `GLOBALTABLESPACE_OID` and `DEFAULTTABLESPACE_OID` (pg_tablespace.dat).
pub const GLOBALTABLESPACE_OID: u32 = 1664;
pub const DEFAULTTABLESPACE_OID: u32 = 1663;
/// `TABLESPACE_VERSION_DIRECTORY` of PostgreSQL 15 ("PG_" major "_" CATALOG_VERSION_NO).
pub const TABLESPACE_VERSION_DIRECTORY: &str = "PG_15_202209061";

/// Size of a `SharedInvalidationMessage`.
pub const SIZE_OF_SHARED_INVAL_MSG: usize = 16;

/// A little-endian, bounds-checked cursor over a record's main data. Every read names the
/// field it wants, so a short record yields an error saying what is missing.
pub(crate) struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    record: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a Bytes, record: &'static str) -> Self {
        Reader {
            data,
            pos: 0,
            record,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str, len: usize) -> RmgrError {
        RmgrError::Truncated {
            record: self.record,
            what,
            need: self.pos.saturating_add(len),
            have: self.data.len(),
        }
    }

    pub(crate) fn invalid(&self, msg: impl Into<String>) -> RmgrError {
        RmgrError::Invalid {
            record: self.record,
            msg: msg.into(),
        }
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], RmgrError> {
        let data: &'a Bytes = self.data;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.truncated(what, len))?;
        let slice = data
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(what, len))?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RmgrError> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, RmgrError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, RmgrError> {
        Ok(self.u8(what)? != 0)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, RmgrError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, RmgrError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, RmgrError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, RmgrError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, RmgrError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn rel(&mut self, what: &'static str) -> Result<RelFileNode, RmgrError> {
        let b = self.take(12, what)?;
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(RelFileNode {
            spc: w(0),
            db: w(4),
            rel: w(8),
        })
    }

    /// Skips `len` bytes, which must be present.
    pub(crate) fn skip(&mut self, len: usize, what: &'static str) -> Result<(), RmgrError> {
        self.take(len, what).map(|_| ())
    }

    /// Skips padding up to the next multiple of `align` (relative to the start of the data).
    /// Padding at the very end need not be present.
    pub(crate) fn align(&mut self, align: usize) {
        let rem = self.pos % align;
        if rem != 0 {
            self.pos = (self.pos + align - rem).min(self.data.len().max(self.pos));
        }
    }

    /// `len` bytes as a zero-copy slice of the record.
    pub(crate) fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, RmgrError> {
        let start = self.pos;
        self.take(len, what)?;
        Ok(self.data.slice(start..self.pos))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        self.data.slice(start..)
    }

    /// A count field declared as C `int`: negative counts are malformed.
    pub(crate) fn count(&mut self, what: &'static str) -> Result<usize, RmgrError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| self.invalid(format!("negative {what} {n}")))
    }

    /// Checks that `n` items of `size` bytes each are present before anything is allocated.
    pub(crate) fn ensure_items(
        &self,
        n: usize,
        size: usize,
        what: &'static str,
    ) -> Result<(), RmgrError> {
        match n.checked_mul(size) {
            Some(len) if len <= self.remaining() => Ok(()),
            _ => Err(RmgrError::Truncated {
                record: self.record,
                what,
                need: self.pos.saturating_add(n.saturating_mul(size)),
                have: self.data.len(),
            }),
        }
    }

    pub(crate) fn u32_array(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<Vec<u32>, RmgrError> {
        self.ensure_items(n, 4, what)?;
        (0..n).map(|_| self.u32(what)).collect()
    }

    pub(crate) fn u16_array(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<Vec<u16>, RmgrError> {
        self.ensure_items(n, 2, what)?;
        (0..n).map(|_| self.u16(what)).collect()
    }

    pub(crate) fn rel_array(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<Vec<RelFileNode>, RmgrError> {
        self.ensure_items(n, 12, what)?;
        (0..n).map(|_| self.rel(what)).collect()
    }

    /// A NUL-terminated C string that must end within the data.
    pub(crate) fn cstring(&mut self, what: &'static str) -> Result<String, RmgrError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        match rest.iter().position(|&b| b == 0) {
            Some(nul) => {
                let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
                self.pos += nul + 1;
                Ok(s)
            }
            None => Err(self.truncated(what, rest.len() + 1)),
        }
    }
}

/// The text of a fixed-size `char[]` field: up to its first NUL.
pub(crate) fn c_str_lossy(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `LSN_FORMAT_ARGS` printed with `%X/%X`, as the desc routines do (no zero padding).
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// Microseconds between the Unix epoch (1970-01-01) and the Postgres epoch (2000-01-01).
const POSTGRES_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// pg_waldump's `timestamptz_to_str` for a `TimestampTz` (microseconds since 2000-01-01 UTC),
/// rendered in UTC: `2026-11-21 20:31:05.123456 UTC`.
pub fn timestamptz_to_str(t: i64) -> String {
    // Same arithmetic as the frontend: seconds truncate toward zero, the remainder keeps its sign.
    let secs = t / 1_000_000 + POSTGRES_EPOCH_UNIX_SECS;
    let frac = t % 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06} UTC",
        y,
        m,
        d,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        frac
    )
}

/// Proleptic Gregorian date of a day number counted from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `relpathperm(rnode, fork)`: the path of a permanent relation's fork, relative to PGDATA.
pub fn relpathperm(rnode: &RelFileNode, fork: u8) -> String {
    let mut path = if rnode.spc == GLOBALTABLESPACE_OID {
        format!("global/{}", rnode.rel)
    } else if rnode.spc == DEFAULTTABLESPACE_OID {
        format!("base/{}/{}", rnode.db, rnode.rel)
    } else {
        format!(
            "pg_tblspc/{}/{}/{}/{}",
            rnode.spc, TABLESPACE_VERSION_DIRECTORY, rnode.db, rnode.rel
        )
    };
    if fork != 0 {
        match fork_name(fork) {
            Some(name) => {
                let _ = write!(path, "_{name}");
            }
            None => {
                let _ = write!(path, "_{fork}");
            }
        }
    }
    path
}

/// One `SharedInvalidationMessage` (storage/sinval.h), as far as the desc routines look at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedInvalMsg {
    /// `id >= 0`: a catcache entry (the id is the cache id).
    Catcache {
        id: i8,
        db: u32,
        hash: u32,
    },
    Catalog {
        db: u32,
        cat: u32,
    },
    Relcache {
        db: u32,
        rel: u32,
    },
    Smgr {
        backend: i32,
        rnode: RelFileNode,
    },
    Relmap {
        db: u32,
    },
    Snapshot {
        db: u32,
        rel: u32,
    },
    Unknown {
        id: i8,
    },
}

pub const SHAREDINVALCATALOG_ID: i8 = -1;
pub const SHAREDINVALRELCACHE_ID: i8 = -2;
pub const SHAREDINVALSMGR_ID: i8 = -3;
pub const SHAREDINVALRELMAP_ID: i8 = -4;
pub const SHAREDINVALSNAPSHOT_ID: i8 = -5;

impl SharedInvalMsg {
    /// Decodes one 16-byte message.
    pub fn decode(m: &[u8; SIZE_OF_SHARED_INVAL_MSG]) -> SharedInvalMsg {
        let w = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let id = m[0] as i8;
        match id {
            id if id >= 0 => SharedInvalMsg::Catcache {
                id,
                db: w(4),
                hash: w(8),
            },
            SHAREDINVALCATALOG_ID => SharedInvalMsg::Catalog {
                db: w(4),
                cat: w(8),
            },
            SHAREDINVALRELCACHE_ID => SharedInvalMsg::Relcache {
                db: w(4),
                rel: w(8),
            },
            SHAREDINVALSMGR_ID => SharedInvalMsg::Smgr {
                backend: ((m[1] as i8 as i32) << 16) | u16::from_le_bytes([m[2], m[3]]) as i32,
                rnode: RelFileNode {
                    spc: w(4),
                    db: w(8),
                    rel: w(12),
                },
            },
            SHAREDINVALRELMAP_ID => SharedInvalMsg::Relmap { db: w(4) },
            SHAREDINVALSNAPSHOT_ID => SharedInvalMsg::Snapshot {
                db: w(4),
                rel: w(8),
            },
            id => SharedInvalMsg::Unknown { id },
        }
    }
}

/// Decodes a packed array of invalidation messages (a trailing partial message is ignored).
pub fn inval_messages(raw: &[u8]) -> impl Iterator<Item = SharedInvalMsg> + '_ {
    raw.chunks_exact(SIZE_OF_SHARED_INVAL_MSG).map(|c| {
        let mut m = [0u8; SIZE_OF_SHARED_INVAL_MSG];
        m.copy_from_slice(c);
        SharedInvalMsg::decode(&m)
    })
}

/// `standby_desc_invalidations`: shared by Transaction and Standby records.
pub(crate) fn desc_invalidations(
    out: &mut String,
    msgs: &[u8],
    db_id: u32,
    ts_id: u32,
    relcache_init_file_inval: bool,
) {
    if msgs.len() < SIZE_OF_SHARED_INVAL_MSG {
        return;
    }
    if relcache_init_file_inval {
        let _ = write!(out, "; relcache init file inval dbid {db_id} tsid {ts_id}");
    }
    out.push_str("; inval msgs:");
    for msg in inval_messages(msgs) {
        let _ = match msg {
            SharedInvalMsg::Catcache { id, .. } => write!(out, " catcache {id}"),
            SharedInvalMsg::Catalog { cat, .. } => write!(out, " catalog {cat}"),
            SharedInvalMsg::Relcache { rel, .. } => write!(out, " relcache {rel}"),
            SharedInvalMsg::Smgr { .. } => write!(out, " smgr"),
            SharedInvalMsg::Relmap { db } => write!(out, " relmap db {db}"),
            SharedInvalMsg::Snapshot { rel, .. } => write!(out, " snapshot {rel}"),
            SharedInvalMsg::Unknown { id } => write!(out, " unknown id {id}"),
        };
    }
}

/// Appends `" %u"` for each value, as the desc routines print id lists.
pub(crate) fn push_list(out: &mut String, items: &[u32]) {
    for x in items {
        let _ = write!(out, " {x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_like_pg_waldump() {
        assert_eq!(timestamptz_to_str(0), "2000-01-01 00:00:00.000000 UTC");
        // 2026-11-21 20:17:29.188036 UTC, as seen in real WAL.
        let unix = 1_795_292_249i64;
        let t = (unix - POSTGRES_EPOCH_UNIX_SECS) * 1_000_000 + 188_036;
        assert_eq!(timestamptz_to_str(t), "2026-11-21 20:17:29.188036 UTC");
        assert_eq!(timestamptz_to_str(-1), "2000-01-01 00:00:00.-00001 UTC");
        assert_eq!(
            timestamptz_to_str(-86_400_000_000),
            "1999-12-31 00:00:00.000000 UTC"
        );
        // Extremes must not panic.
        let _ = timestamptz_to_str(i64::MIN);
        let _ = timestamptz_to_str(i64::MAX);
    }

    #[test]
    fn relpaths() {
        let r = |spc, db, rel| RelFileNode { spc, db, rel };
        assert_eq!(relpathperm(&r(1663, 5, 16384), 0), "base/5/16384");
        assert_eq!(relpathperm(&r(1663, 5, 16384), 1), "base/5/16384_fsm");
        assert_eq!(relpathperm(&r(1664, 0, 1262), 2), "global/1262_vm");
        assert_eq!(
            relpathperm(&r(16500, 5, 16384), 3),
            "pg_tblspc/16500/PG_15_202209061/5/16384_init"
        );
        assert_eq!(fmt_lsn(0x1_0150_07B8), "1/15007B8");
    }

    #[test]
    fn reader_reports_what_is_missing() {
        let data = Bytes::from_static(&[1, 0, 0]);
        let mut r = Reader::new(&data, "Heap/INSERT");
        assert_eq!(r.u16("offnum").unwrap(), 1);
        let err = r.u16("flags").unwrap_err();
        assert_eq!(
            err,
            RmgrError::Truncated {
                record: "Heap/INSERT",
                what: "flags",
                need: 4,
                have: 3
            }
        );
        assert!(err.to_string().contains("Heap/INSERT"));
        assert!(err.to_string().contains("flags"));
        let mut r = Reader::new(&data, "X");
        assert!(r.u32_array(usize::MAX / 2, "xids").is_err());
    }
}
