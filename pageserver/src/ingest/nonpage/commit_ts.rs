//! Commit timestamps (`pg_commit_ts`), kept as a standby replaying the WAL would keep them
//! (PostgreSQL 15 `commit_ts.c`, `xact_redo_commit`).
//!
//! The SLRU holds a 10-byte entry per xid: the commit time (`TimestampTz`, little-endian
//! `i64`) then the replication origin (`u16`); 819 entries per 8 KiB page. Its pages live
//! under `Key::slru_block(SlruKind::CommitTs, ..)` like the other SLRUs: ZEROPAGE is a zero
//! image, a commit is one [`KIND_COMMIT_TS_SET`] Strata record per page the transaction
//! tree touches, TRUNCATE removes segments.
//!
//! Besides the pages, Postgres keeps three things in shared memory that a basebackup must
//! carry in its checkpoint and control file ([`CommitTsState`]): whether the module is active
//! (`track_commit_timestamp` as the WAL last set it, `XLOG/PARAMETER_CHANGE`), and the oldest
//! and newest xids whose timestamps may be asked for. Outside that range
//! `pg_xact_commit_timestamp` returns NULL, so they must be the values a replaying server has.

use bytes::Bytes;
use layer_format::Lsn;

use super::counters::xid_precedes;
use super::keys;
use crate::import::info::ImportInfo;
use crate::redo::slru::SlruRedoError;
use crate::redo::Page;
use crate::timeline::{Timeline, TimelineError};
use walproto::consts::BLCKSZ;

/// Strata SLRU record kind: set the commit time and origin of xids on one `pg_commit_ts`
/// page. Data: time `i64`, origin `u16`, then `u32` xids (all little-endian).
pub const KIND_COMMIT_TS_SET: u8 = 4;
/// `SizeOfCommitTimestampEntry`.
pub const ENTRY_SIZE: u32 = 10;
/// `COMMIT_TS_XACTS_PER_PAGE`.
pub const XACTS_PER_PAGE: u32 = BLCKSZ as u32 / ENTRY_SIZE;
const HEADER: usize = 10;

/// `TransactionIdToCTsPage`.
pub fn page_of(xid: u32) -> u32 {
    xid / XACTS_PER_PAGE
}

/// `CommitTsPagePrecedes`.
pub fn page_precedes(p1: u32, p2: u32) -> bool {
    let x1 = p1.wrapping_mul(XACTS_PER_PAGE).wrapping_add(4);
    let x2 = p2.wrapping_mul(XACTS_PER_PAGE).wrapping_add(4);
    xid_precedes(x1, x2) && xid_precedes(x1, x2.wrapping_add(XACTS_PER_PAGE - 1))
}

/// Encodes a [`KIND_COMMIT_TS_SET`] record.
pub fn encode_set(time: i64, origin: u16, xids: &[u32]) -> Bytes {
    let mut v = Vec::with_capacity(HEADER + 4 * xids.len());
    v.extend_from_slice(&time.to_le_bytes());
    v.extend_from_slice(&origin.to_le_bytes());
    for x in xids {
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// Applies a [`KIND_COMMIT_TS_SET`] record (`TransactionIdSetCommitTs` for each xid); a page
/// without history starts as zeroes. A malformed record changes nothing.
pub fn apply_set(data: &[u8], page: &mut Option<Box<Page>>) -> Result<(), SlruRedoError> {
    if data.len() < HEADER || !(data.len() - HEADER).is_multiple_of(4) {
        return Err(SlruRedoError::BadLength {
            kind: KIND_COMMIT_TS_SET,
            len: data.len(),
        });
    }
    let entry = &data[..HEADER];
    let p = page.get_or_insert_with(|| Box::new([0u8; BLCKSZ]));
    for c in data[HEADER..].chunks_exact(4) {
        let xid = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        // Always inside the page: entry < 819, 819 * 10 + 10 <= 8192.
        let at = ((xid % XACTS_PER_PAGE) * ENTRY_SIZE) as usize;
        p[at..at + HEADER].copy_from_slice(entry);
    }
    Ok(())
}

/// The commit timestamp module's shared state that outlives the pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitTsState {
    /// `commitTsActive`: commits record their time.
    pub active: bool,
    /// `oldestCommitTsXid` (0: none).
    pub oldest: u32,
    /// `newestCommitTsXid` (0: none).
    pub newest: u32,
}

const VERSION: u8 = 1;
const ENCODED_LEN: usize = 10;

impl CommitTsState {
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(ENCODED_LEN);
        v.push(VERSION);
        v.push(self.active as u8);
        v.extend_from_slice(&self.oldest.to_le_bytes());
        v.extend_from_slice(&self.newest.to_le_bytes());
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Result<CommitTsState, String> {
        if b.len() != ENCODED_LEN || b[0] != VERSION || b[1] > 1 {
            return Err(format!("commit timestamp state of {} bytes", b.len()));
        }
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Ok(CommitTsState {
            active: b[1] == 1,
            oldest: u(2),
            newest: u(6),
        })
    }

    /// What a server starting from the imported control file has: `SetCommitTsLimit` with
    /// the checkpoint's values, then `StartupCommitTs` if the control file says the module
    /// was on.
    pub fn at_import(info: &ImportInfo) -> CommitTsState {
        let mut s = CommitTsState::default();
        if let Ok(cp) = info.control.checkpoint() {
            s.oldest = cp.oldest_commit_ts_xid;
            s.newest = cp.newest_commit_ts_xid;
            if info.control.settings().track_commit_timestamp {
                s.activate(cp.next_xid as u32);
            }
        }
        s
    }

    /// `ActivateCommitTs` (the caller zeroes nextXid's page if it does not exist). With no
    /// range yet, timestamps are kept from `next_xid` on.
    pub fn activate(&mut self, next_xid: u32) {
        if self.active {
            return;
        }
        if self.oldest == 0 {
            self.oldest = next_xid;
            self.newest = next_xid;
        }
        self.active = true;
    }

    /// `DeactivateCommitTs` (the caller removes every segment).
    pub fn deactivate(&mut self) {
        *self = CommitTsState::default();
    }

    /// The end of `TransactionTreeSetCommitTsData`: `newest` moves up to the tree's latest
    /// xid.
    pub fn committed(&mut self, latest: u32) {
        if xid_precedes(self.newest, latest) {
            self.newest = latest;
        }
    }

    /// `AdvanceOldestCommitTsXid`.
    pub fn advance_oldest(&mut self, oldest: u32) {
        if self.oldest != 0 && xid_precedes(self.oldest, oldest) {
            self.oldest = oldest;
        }
    }
}

/// The commit timestamp state at `lsn`: the stored one, or the import's if no record has
/// changed it.
pub fn state_at(tl: &Timeline, lsn: Lsn) -> Result<CommitTsState, TimelineError> {
    let key = keys::commit_ts_state();
    if let Some(b) = tl.get_image_value(key, lsn)? {
        return CommitTsState::decode(&b).map_err(|reason| TimelineError::Reconstruct {
            key,
            lsn,
            reason,
        });
    }
    Ok(ImportInfo::load(tl, lsn)?
        .map(|i| CommitTsState::at_import(&i))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_entries_and_state() {
        let mut page = None;
        let rec = encode_set(0x0102_0304_0506_0708, 7, &[819 + 1, 819 + 818]);
        apply_set(&rec, &mut page).unwrap();
        let p = page.unwrap();
        assert_eq!(&p[10..18], &0x0102_0304_0506_0708i64.to_le_bytes());
        assert_eq!(&p[18..20], &7u16.to_le_bytes());
        assert_eq!(&p[8180..8188], &0x0102_0304_0506_0708i64.to_le_bytes());
        let mut none = None;
        assert!(apply_set(&rec[..12], &mut none).is_err());
        assert!(none.is_none());

        let mut s = CommitTsState::default();
        s.committed(50);
        assert_eq!(s.newest, 50);
        s.activate(1000);
        assert_eq!((s.oldest, s.newest), (1000, 1000));
        s.committed(1005);
        s.advance_oldest(1002);
        assert_eq!(CommitTsState::decode(&s.encode()).unwrap(), s);
        assert_eq!((s.oldest, s.newest, s.active), (1002, 1005, true));
        assert!(page_precedes(0, 1));
        assert!(!page_precedes(1, 0));
    }
}
