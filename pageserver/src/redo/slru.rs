//! Redo of Strata's own SLRU records: the small "set these entries" records that ingest stores
//! under `pg_xact` and `pg_multixact` page keys instead of the raw Postgres records.
//!
//! A Postgres commit record names a transaction tree, not pages; one record can touch several
//! CLOG pages, and a MultiXact CREATE_ID touches an offsets page (two, when `mid + 1` starts the
//! next page) and one or more members pages. Ingest therefore splits each such record per page
//! and stores, per page, only what changes on that page. This module defines those records'
//! encoding (shared by ingest and the read path) and applies them to a page.
//!
//! Every record starts from the page as it was, or from zeroes if the page has no history:
//! Postgres's recovery reads a missing SLRU page as zeroes too (`SlruPhysicalReadPage` in
//! recovery), which is what happens after `pg_resetwal` or when a page's `ZERO*` record
//! precedes the timeline's start.
//!
//! Layouts (PostgreSQL 15, `clog.c`, `multixact.c`):
//! - CLOG: 2 status bits per xid, 4 xids per byte, 32,768 xids per page; xid `x` is in byte
//!   `(x % 32768) / 4` at bit shift `(x % 4) * 2`.
//! - MultiXact offsets: one little-endian `u32` per multixact, 2,048 per page.
//! - MultiXact members: groups of 4 members, each group 4 flag bytes then 4 xids (20 bytes),
//!   409 groups per page (1,636 members; the last 12 bytes of a page are unused).

use super::Page;
use walproto::consts::BLCKSZ;

/// Record kind: set the CLOG status of xids on one page. Data: status `u8`, then `u32` xids.
pub const KIND_CLOG_SET: u8 = 1;
/// Record kind: set multixact offsets entries on one page. Data: pairs of `u32` (entry index in
/// the page, offset value).
pub const KIND_MXOFF_SET: u8 = 2;
/// Record kind: set multixact members on one page. Data: triples of `u32` (member offset, xid,
/// status).
pub const KIND_MXMEMBER_SET: u8 = 3;

/// `TRANSACTION_STATUS_COMMITTED`.
pub const CLOG_COMMITTED: u8 = 0x01;
/// `TRANSACTION_STATUS_ABORTED`.
pub const CLOG_ABORTED: u8 = 0x02;
/// `TRANSACTION_STATUS_SUB_COMMITTED` (never the final state after redo of a commit).
pub const CLOG_SUB_COMMITTED: u8 = 0x03;

/// `CLOG_XACTS_PER_PAGE`.
pub const CLOG_XACTS_PER_PAGE: u32 = (BLCKSZ as u32) * 4;
/// `SLRU_PAGES_PER_SEGMENT`.
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;
/// `MULTIXACT_OFFSETS_PER_PAGE`.
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = (BLCKSZ as u32) / 4;
/// `MULTIXACT_MEMBERGROUP_SIZE`: 4 flag bytes + 4 xids.
pub const MULTIXACT_MEMBERGROUP_SIZE: u32 = 20;
/// `MULTIXACT_MEMBERGROUPS_PER_PAGE`.
pub const MULTIXACT_MEMBERGROUPS_PER_PAGE: u32 = (BLCKSZ as u32) / MULTIXACT_MEMBERGROUP_SIZE;
/// `MULTIXACT_MEMBERS_PER_PAGE`.
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 = MULTIXACT_MEMBERGROUPS_PER_PAGE * 4;

/// Why a Strata SLRU record could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlruRedoError {
    #[error("Strata SLRU record kind {0} is unknown")]
    UnknownKind(u8),
    #[error("Strata SLRU record kind {kind}: {len} bytes of data is not a whole record")]
    BadLength { kind: u8, len: usize },
    #[error("Strata SLRU record kind {kind}: {what}")]
    Invalid { kind: u8, what: String },
}

/// Encodes a [`KIND_CLOG_SET`] record.
pub fn encode_clog_set(status: u8, xids: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 4 * xids.len());
    v.push(status);
    for x in xids {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Encodes a [`KIND_MXOFF_SET`] record from (entry in page, offset) pairs.
pub fn encode_mxoff_set(entries: &[(u32, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 * entries.len());
    for (e, off) in entries {
        v.extend_from_slice(&e.to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
    }
    v
}

/// Encodes a [`KIND_MXMEMBER_SET`] record from (member offset, xid, status) triples.
pub fn encode_mxmember_set(members: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 * members.len());
    for (off, xid, status) in members {
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(&xid.to_le_bytes());
        v.extend_from_slice(&status.to_le_bytes());
    }
    v
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn put_u32(p: &mut Page, at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Sets the 2-bit CLOG status of `xid` in its page (`TransactionIdSetStatusBit`).
pub fn clog_set_status(page: &mut Page, xid: u32, status: u8) {
    let idx = (xid % CLOG_XACTS_PER_PAGE) as usize;
    let (byte, shift) = (idx / 4, (idx % 4) * 2);
    page[byte] = (page[byte] & !(0x03 << shift)) | ((status & 0x03) << shift);
}

/// The 2-bit CLOG status of `xid` in its page.
pub fn clog_get_status(page: &Page, xid: u32) -> u8 {
    let idx = (xid % CLOG_XACTS_PER_PAGE) as usize;
    (page[idx / 4] >> ((idx % 4) * 2)) & 0x03
}

/// Byte offsets of member `offset`'s flag word and xid in its page, and its flag bit shift
/// (`MXOffsetToFlagsOffset`, `MXOffsetToMemberOffset`, `MXOffsetToFlagsBitShift`).
pub fn member_position(offset: u32) -> (usize, usize, u32) {
    let group = (offset / 4) % MULTIXACT_MEMBERGROUPS_PER_PAGE;
    let flags = (group * MULTIXACT_MEMBERGROUP_SIZE) as usize;
    let member = flags + 4 + (offset % 4) as usize * 4;
    (flags, member, (offset % 4) * 8)
}

/// Applies Strata SLRU record `kind` with `data` to `page`; a missing page starts as zeroes.
/// Never panics on bad input: a malformed record is an error and leaves `page` unchanged.
pub fn apply(kind: u8, data: &[u8], page: &mut Option<Box<Page>>) -> Result<(), SlruRedoError> {
    // pg_commit_ts records are defined with the rest of the commit timestamp state.
    if kind == crate::ingest::nonpage::commit_ts::KIND_COMMIT_TS_SET {
        return crate::ingest::nonpage::commit_ts::apply_set(data, page);
    }
    let bad_len = || SlruRedoError::BadLength {
        kind,
        len: data.len(),
    };
    // Validate completely before changing anything.
    match kind {
        KIND_CLOG_SET => {
            if data.is_empty() || !(data.len() - 1).is_multiple_of(4) {
                return Err(bad_len());
            }
            if !matches!(data[0], CLOG_COMMITTED | CLOG_ABORTED | CLOG_SUB_COMMITTED) {
                return Err(SlruRedoError::Invalid {
                    kind,
                    what: format!("status {} is not a CLOG status", data[0]),
                });
            }
        }
        KIND_MXOFF_SET => {
            if !data.len().is_multiple_of(8) {
                return Err(bad_len());
            }
            for c in data.chunks_exact(8) {
                let e = u32_at(c, 0);
                if e >= MULTIXACT_OFFSETS_PER_PAGE {
                    return Err(SlruRedoError::Invalid {
                        kind,
                        what: format!("offsets entry {e} is past the page"),
                    });
                }
            }
        }
        KIND_MXMEMBER_SET => {
            if !data.len().is_multiple_of(12) {
                return Err(bad_len());
            }
            for c in data.chunks_exact(12) {
                let status = u32_at(c, 8);
                if status > 0xFF {
                    return Err(SlruRedoError::Invalid {
                        kind,
                        what: format!("member status {status} does not fit its 8 flag bits"),
                    });
                }
            }
        }
        k => return Err(SlruRedoError::UnknownKind(k)),
    }
    let p = page.get_or_insert_with(|| Box::new([0u8; BLCKSZ]));
    match kind {
        KIND_CLOG_SET => {
            for c in data[1..].chunks_exact(4) {
                clog_set_status(p, u32_at(c, 0), data[0]);
            }
        }
        KIND_MXOFF_SET => {
            for c in data.chunks_exact(8) {
                put_u32(p, u32_at(c, 0) as usize * 4, u32_at(c, 4));
            }
        }
        _ => {
            for c in data.chunks_exact(12) {
                let (off, xid, status) = (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8));
                let (flags_at, member_at, shift) = member_position(off);
                put_u32(p, member_at, xid);
                let mut flags = u32_at(&p[..], flags_at);
                flags &= !(0xFF << shift);
                flags |= status << shift;
                put_u32(p, flags_at, flags);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clog_bits() {
        let mut p = None;
        apply(
            KIND_CLOG_SET,
            &encode_clog_set(CLOG_COMMITTED, &[5, 6]),
            &mut p,
        )
        .unwrap();
        apply(KIND_CLOG_SET, &encode_clog_set(CLOG_ABORTED, &[7]), &mut p).unwrap();
        let p = p.unwrap();
        // xids 4..8 are byte 1: 5 -> bits 2..3, 6 -> 4..5, 7 -> 6..7.
        assert_eq!(p[1], 0b10_01_01_00);
        assert_eq!(clog_get_status(&p, 32768 + 6), CLOG_COMMITTED);
    }

    #[test]
    fn members_layout() {
        // Member 5: group 1 (bytes 20..40), flags at 20, xid at 20 + 4 + 4.
        assert_eq!(member_position(5), (20, 28, 8));
        assert_eq!(MULTIXACT_MEMBERS_PER_PAGE, 1636);
        let mut p = None;
        apply(
            KIND_MXMEMBER_SET,
            &encode_mxmember_set(&[(5, 0xAABBCCDD, 3)]),
            &mut p,
        )
        .unwrap();
        let p = p.unwrap();
        assert_eq!(&p[28..32], &0xAABBCCDDu32.to_le_bytes());
        assert_eq!(p[21], 3);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut p = None;
        assert!(apply(KIND_CLOG_SET, &[], &mut p).is_err());
        assert!(apply(KIND_CLOG_SET, &[9, 0, 0, 0, 0], &mut p).is_err());
        assert!(apply(KIND_MXOFF_SET, &encode_mxoff_set(&[(4096, 1)]), &mut p).is_err());
        assert!(apply(KIND_MXMEMBER_SET, &[1, 2, 3], &mut p).is_err());
        assert!(apply(99, &[], &mut p).is_err());
        assert!(p.is_none());
    }
}
