//! Record boundaries: which state an LSN that is not a record boundary denotes.
//!
//! Postgres's `recovery_target_lsn` with `recovery_target_inclusive = off` stops before the
//! first record whose *start* is at or after the target (`recoveryStopsBefore` in
//! `xlogrecovery.c`): every record starting before the target is replayed, including one that
//! contains it. Strata gives an LSN the same meaning. An LSN inside a record therefore
//! denotes the state after that record, at its end; a record boundary denotes itself.
//!
//! The pageserver keeps no WAL, so ingest indexes the records that cross a WAL page
//! boundary: for every page start strictly inside a record, the record's start and end
//! ([`keys::record_crossing`], one small image per page, stored at the record's end LSN).
//! That answers every page- or segment-aligned LSN (where a branch used to wedge: its
//! compute's checkpoint went after the page header and ingest waited for a record at the
//! page start), every LSN inside a page header and every LSN inside a record that crosses
//! a page. An 8-byte aligned LSN inside a record that lies within one page cannot be told
//! from a boundary: it stays as given (the state before that record). Timelines ingested
//! before the index existed have no entries and keep every LSN as given.

use bytes::Bytes;
use layer_format::{Lsn, Value};
use walproto::consts::{SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER, WAL_PAGE_SIZE};

use super::{Result, Timeline, TimelineError};
use crate::ingest::nonpage::keys;

/// Size of the page header of the page starting at `page`.
pub fn page_header_size(page: Lsn) -> u64 {
    if page.is_segment_start() {
        SIZE_OF_LONG_PAGE_HEADER as u64
    } else {
        SIZE_OF_SHORT_PAGE_HEADER as u64
    }
}

/// Where the first record of WAL beginning at the record boundary `lsn` starts: past the
/// page header if `lsn` starts a page (a branch at a page start: its compute writes the
/// checkpoint record after the header), else `lsn`.
pub fn first_record_lsn(lsn: Lsn) -> Lsn {
    if lsn.is_page_start() {
        Lsn(lsn.0.saturating_add(page_header_size(lsn)))
    } else {
        lsn
    }
}

/// The index values for a record `[start, end)`: one per page start strictly inside it.
pub fn crossing_values(start: Lsn, end: Lsn) -> impl Iterator<Item = (layer_format::Key, Value)> {
    let first_page = start.0 / WAL_PAGE_SIZE + 1;
    // Pages whose start is < end.
    let last_page = end.0.saturating_sub(1) / WAL_PAGE_SIZE;
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&start.0.to_le_bytes());
    value.extend_from_slice(&end.0.to_le_bytes());
    let value = Value::image(Bytes::from(value));
    (first_page..=last_page)
        .filter(move |_| end > start)
        .map(move |page| (keys::record_crossing(page), value.clone()))
}

/// The record crossing into WAL page number `page`, as of the timeline's tip: (start, end).
fn crossing_into(tl: &Timeline, page: u64) -> Result<Option<(Lsn, Lsn)>> {
    let key = keys::record_crossing(page);
    let Some(b) = tl.get_image_value(key, tl.last_record_end())? else {
        return Ok(None);
    };
    let field = |at: usize| {
        b.get(at..at + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    match (field(0), field(8), b.len()) {
        (Some(s), Some(e), 16) if s < e => Ok(Some((Lsn(s), Lsn(e)))),
        _ => Err(TimelineError::Reconstruct {
            key,
            lsn: tl.last_record_end(),
            reason: format!(
                "a record crossing entry of {} bytes is not (start, end)",
                b.len()
            ),
        }),
    }
}

/// How an LSN was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// The LSN is a record boundary (or cannot be told from one: see the module doc).
    AsGiven(Lsn),
    /// The LSN is inside the record `start..end`: it denotes the state at `end`.
    InsideRecord { lsn: Lsn, start: Lsn, end: Lsn },
    /// The LSN is inside the header of the page starting at `page`, which no record
    /// continues onto: it denotes the state at the page start.
    InPageHeader { lsn: Lsn, page: Lsn },
}

impl Boundary {
    /// The record boundary.
    pub fn lsn(&self) -> Lsn {
        match *self {
            Boundary::AsGiven(l) => l,
            Boundary::InsideRecord { end, .. } => end,
            Boundary::InPageHeader { page, .. } => page,
        }
    }

    /// A phrase for logs and messages, if the LSN moved.
    pub fn describe(&self) -> Option<String> {
        match *self {
            Boundary::AsGiven(_) => None,
            Boundary::InsideRecord { lsn, start, end } => Some(format!(
                "LSN {lsn} is inside the record {start}..{end}: it means the state after that \
                 record (as recovery_target_lsn with recovery_target_inclusive = off), at {end}"
            )),
            Boundary::InPageHeader { lsn, page } => Some(format!(
                "LSN {lsn} is inside the WAL page header at {page}: it means the state at {page}"
            )),
        }
    }
}

/// The record boundary `lsn` denotes on `tl` (see the module doc). `lsn` must be at most the
/// timeline's last record end (callers check the range first).
pub fn resolve(tl: &Timeline, lsn: Lsn) -> Result<Boundary> {
    let page = lsn.0 / WAL_PAGE_SIZE;
    if let Some((start, end)) = crossing_into(tl, page)? {
        // The record continuing onto this page covers its start and header.
        if start < lsn && lsn < end {
            return Ok(Boundary::InsideRecord { lsn, start, end });
        }
    }
    let page_start = lsn.page_start();
    if lsn != page_start && lsn.page_offset() < page_header_size(page_start) {
        return Ok(Boundary::InPageHeader {
            lsn,
            page: page_start,
        });
    }
    if let Some(next) = page.checked_add(1) {
        if let Some((start, end)) = crossing_into(tl, next)? {
            if start < lsn && lsn < end {
                return Ok(Boundary::InsideRecord { lsn, start, end });
            }
        }
    }
    Ok(Boundary::AsGiven(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_cover_inner_page_starts_only() {
        let pages = |s: u64, e: u64| -> Vec<u64> {
            crossing_values(Lsn(s), Lsn(e))
                .map(|(k, _)| {
                    let b = k.as_bytes();
                    (u64::from(u32::from_be_bytes([b[9], b[10], b[11], b[12]])) << 32)
                        | u64::from(u32::from_be_bytes([b[14], b[15], b[16], b[17]]))
                })
                .collect()
        };
        assert!(pages(0x2000_0100, 0x2000_0200).is_empty(), "within a page");
        assert!(
            pages(0x2000_1f00, 0x2000_2000).is_empty(),
            "ends at the page end"
        );
        assert_eq!(pages(0x2000_1f00, 0x2000_2008), [0x2000_2000 / 8192]);
        assert_eq!(
            pages(0x2000_1f00, 0x2000_6010),
            [0x2000_2000 / 8192, 0x2000_4000 / 8192, 0x2000_6000 / 8192]
        );
        assert!(pages(0x10, 0x10).is_empty());
    }

    #[test]
    fn first_record_skips_a_page_header() {
        assert_eq!(first_record_lsn(Lsn(0x100_0000)), Lsn(0x100_0000 + 40));
        assert_eq!(first_record_lsn(Lsn(0x100_2000)), Lsn(0x100_2000 + 24));
        assert_eq!(first_record_lsn(Lsn(0x100_2018)), Lsn(0x100_2018));
    }
}
