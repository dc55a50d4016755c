//! The checkpoint counters the WAL implies, as Postgres's own redo moves them
//! (`xlogrecovery.c`, `xact_redo`, `multixact_redo`, `xlog_redo` in PostgreSQL 15).
//!
//! A basebackup at LSN L writes a shutdown checkpoint whose counters must be the ones a
//! server replaying the WAL up to L would have; the control file's copy is stale. The state is
//! stored as a small versioned image at `Key::checkpoint()`, one version per record that
//! changes it. nextXid is the one exception: between checkpoint records ingest keeps it
//! rounded up to a multiple of [`XID_STRIDE`] (see [`CheckpointState::reserve_next_xid_past`]),
//! so it changes once per 1,024 transactions instead of with each.

use bytes::Bytes;

/// Encoding version of [`CheckpointState`].
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 8 + 4 * 7;
/// Stored nextXid values are multiples of this ([`CheckpointState::reserve_next_xid_past`]).
pub const XID_STRIDE: u64 = 1024;
/// `FirstNormalTransactionId`.
const FIRST_NORMAL_XID: u32 = 3;
/// `FirstMultiXactId`.
const FIRST_MULTI: u32 = 1;

/// The counters of a checkpoint that the WAL implies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointState {
    /// `nextXid` with its epoch (`FullTransactionId`).
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
}

/// `TransactionIdPrecedes`: modulo-2^32 comparison for normal xids.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    if a < FIRST_NORMAL_XID || b < FIRST_NORMAL_XID {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `MultiXactIdPrecedes` (and `MultiXactOffsetPrecedes`): plain modulo-2^32 comparison.
pub fn multi_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl CheckpointState {
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(ENCODED_LEN);
        v.push(VERSION);
        v.extend_from_slice(&self.next_xid.to_le_bytes());
        for x in [
            self.next_oid,
            self.next_multi,
            self.next_multi_offset,
            self.oldest_xid,
            self.oldest_xid_db,
            self.oldest_multi,
            self.oldest_multi_db,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Result<CheckpointState, String> {
        if b.first() != Some(&VERSION) || b.len() != ENCODED_LEN {
            return Err(format!(
                "checkpoint state of {} bytes, version {:?}: expected version {VERSION}, {ENCODED_LEN} bytes",
                b.len(),
                b.first()
            ));
        }
        let u = |i: usize| {
            let at = 9 + 4 * i;
            u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        };
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[1..9]);
        Ok(CheckpointState {
            next_xid: u64::from_le_bytes(x),
            next_oid: u(0),
            next_multi: u(1),
            next_multi_offset: u(2),
            oldest_xid: u(3),
            oldest_xid_db: u(4),
            oldest_multi: u(5),
            oldest_multi_db: u(6),
        })
    }

    /// `AdvanceNextFullTransactionIdPastXid`: nextXid moves past `xid` if `xid` follows or
    /// equals it, keeping the epoch unless the 32-bit xid wrapped.
    pub fn advance_next_xid_past(&mut self, xid: u32) {
        if xid == 0 {
            return;
        }
        let next = self.next_xid as u32;
        if xid_precedes(xid, next) {
            return;
        }
        let mut new = xid.wrapping_add(1);
        if new < FIRST_NORMAL_XID {
            new = FIRST_NORMAL_XID;
        }
        let mut epoch = (self.next_xid >> 32) as u32;
        if new < next {
            epoch = epoch.wrapping_add(1);
        }
        self.next_xid = ((epoch as u64) << 32) | new as u64;
    }

    /// What ingest stores: nextXid moved past `xid` as [`Self::advance_next_xid_past`] does,
    /// then rounded up to a multiple of [`XID_STRIDE`]. nextXid changes with nearly every
    /// transaction, and storing each change would cost a value per transaction; rounded, it
    /// changes once per 1,024 xids. A basebackup's nextXid is then up to 1,023 above Postgres's
    /// own (never below, so no xid in the WAL is handed out again): xids a new primary skips
    /// are simply never used, as after Postgres's own prefetch of OIDs. The rounding stays on
    /// the CLOG page of the xids before it, or lands on the first xid of the next page (1,024
    /// divides `CLOG_XACTS_PER_PAGE`), so the page Postgres reads at startup (`TrimCLOG`)
    /// exists.
    pub fn reserve_next_xid_past(&mut self, xid: u32) {
        let before = self.next_xid;
        self.advance_next_xid_past(xid);
        if self.next_xid == before {
            return;
        }
        let epoch = self.next_xid >> 32;
        let rounded = (self.next_xid & 0xFFFF_FFFF).next_multiple_of(XID_STRIDE);
        self.next_xid = if rounded > u32::MAX as u64 {
            // Past the last xid: the next epoch's first normal xid.
            ((epoch + 1) << 32) | FIRST_NORMAL_XID as u64
        } else {
            (epoch << 32) | rounded
        };
    }

    /// `MultiXactAdvanceNextMXact`: both counters only move forward.
    pub fn advance_multi(&mut self, next_multi: u32, next_offset: u32) {
        if multi_precedes(self.next_multi, next_multi) {
            self.next_multi = next_multi;
        }
        if multi_precedes(self.next_multi_offset, next_offset) {
            self.next_multi_offset = next_offset;
        }
    }

    /// `MultiXactAdvanceOldest`.
    pub fn advance_oldest_multi(&mut self, oldest: u32, db: u32) {
        if multi_precedes(self.oldest_multi, oldest) {
            self.oldest_multi = oldest;
            self.oldest_multi_db = db;
        }
    }

    /// `SetTransactionIdLimit` when the new oldest xid follows the current one.
    pub fn advance_oldest_xid(&mut self, oldest: u32, db: u32) {
        if self.oldest_xid == 0 || xid_precedes(self.oldest_xid, oldest) {
            self.oldest_xid = oldest;
            self.oldest_xid_db = db;
        }
    }

    /// A shutdown checkpoint sets every counter (`xlog_redo`, `XLOG_CHECKPOINT_SHUTDOWN`).
    pub fn apply_shutdown_checkpoint(&mut self, cp: &walproto::rmgr::xlog::CheckPoint) {
        self.next_xid = cp.next_xid;
        self.next_oid = cp.next_oid;
        self.next_multi = cp.next_multi;
        self.next_multi_offset = cp.next_multi_offset;
        self.oldest_xid = cp.oldest_xid;
        self.oldest_xid_db = cp.oldest_xid_db;
        self.oldest_multi = cp.oldest_multi;
        self.oldest_multi_db = cp.oldest_multi_db;
    }

    /// An online checkpoint only moves counters forward, and its nextOid is ignored: it was
    /// read when the checkpoint started and may be older than later `XLOG/NEXTOID` records.
    pub fn apply_online_checkpoint(&mut self, cp: &walproto::rmgr::xlog::CheckPoint) {
        if self.next_xid < cp.next_xid {
            self.next_xid = cp.next_xid;
        }
        if self.next_oid == 0 {
            // Nothing tracked yet (a timeline whose first checkpoint is online).
            self.next_oid = cp.next_oid;
        }
        self.advance_multi(cp.next_multi, cp.next_multi_offset);
        if self.oldest_multi == 0 {
            self.oldest_multi = cp.oldest_multi;
            self.oldest_multi_db = cp.oldest_multi_db;
        }
        self.advance_oldest_multi(cp.oldest_multi, cp.oldest_multi_db);
        self.advance_oldest_xid(cp.oldest_xid, cp.oldest_xid_db);
    }

    /// nextXid's 32-bit xid.
    pub fn next_xid32(&self) -> u32 {
        self.next_xid as u32
    }
}

/// `PreviousMultiXactId`.
pub fn previous_multi(m: u32) -> u32 {
    if m == FIRST_MULTI {
        u32::MAX
    } else {
        m.wrapping_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_bad_input() {
        let s = CheckpointState {
            next_xid: (2 << 32) | 77,
            next_oid: 16384,
            next_multi: 5,
            next_multi_offset: 9,
            oldest_xid: 3,
            oldest_xid_db: 1,
            oldest_multi: 1,
            oldest_multi_db: 1,
        };
        assert_eq!(CheckpointState::decode(&s.encode()).unwrap(), s);
        assert!(CheckpointState::decode(&[]).is_err());
        assert!(CheckpointState::decode(&[2; ENCODED_LEN]).is_err());
    }

    #[test]
    fn next_xid_epoch() {
        let mut s = CheckpointState {
            next_xid: 100,
            ..Default::default()
        };
        s.advance_next_xid_past(50);
        assert_eq!(s.next_xid, 100);
        s.advance_next_xid_past(100);
        assert_eq!(s.next_xid, 101);
        s.next_xid = u32::MAX as u64 - 1;
        s.advance_next_xid_past(u32::MAX);
        assert_eq!(s.next_xid, (1 << 32) | 3);
    }

    #[test]
    fn reserved_next_xid_rounds_up_to_the_stride() {
        let mut s = CheckpointState {
            next_xid: (5 << 32) | 100,
            ..Default::default()
        };
        s.reserve_next_xid_past(50);
        assert_eq!(s.next_xid, (5 << 32) | 100, "an older xid changes nothing");
        s.reserve_next_xid_past(100);
        assert_eq!(s.next_xid, (5 << 32) | 1024);
        s.reserve_next_xid_past(1023);
        assert_eq!(s.next_xid, (5 << 32) | 1024, "inside the reserved stride");
        s.reserve_next_xid_past(1024);
        assert_eq!(s.next_xid, (5 << 32) | 2048);
        // The last stride of an epoch rounds to the next epoch's first normal xid.
        s.next_xid = (5 << 32) | (u32::MAX as u64 - 10);
        s.reserve_next_xid_past(u32::MAX - 5);
        assert_eq!(s.next_xid, (6 << 32) | 3);
        s.reserve_next_xid_past(3);
        assert_eq!(s.next_xid, (6 << 32) | 1024);
    }
}
