//! Which SLRU segments exist, and how many pages each has: what a basebackup needs to write
//! `pg_xact/XXXX` and `pg_multixact/*/XXXX` files without scanning keys.
//!
//! A page written by a record extends its segment; TRUNCATE records remove whole segments.
//! Every change is stored twice: the segment's own size key (`u32` LE pages, or an empty
//! image once removed) and the SLRU's segment directory ([`super::keys::slru_dir`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use layer_format::{Key, Lsn, SlruKind, Value};

use super::counters::{multi_precedes, xid_precedes};
use crate::redo::slru::{
    CLOG_XACTS_PER_PAGE, MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE,
    SLRU_PAGES_PER_SEGMENT,
};
use crate::timeline::{Timeline, TimelineError};

pub const KINDS: [SlruKind; 4] = [
    SlruKind::Clog,
    SlruKind::MultiXactOffsets,
    SlruKind::MultiXactMembers,
    SlruKind::CommitTs,
];

/// Segment number → pages in it, per SLRU.
///
/// Shared copy-on-write: ingest clones the non-page state for every commit record, and a
/// commit almost never changes the segments (only the first write to a new CLOG page does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlruSegments {
    segs: Arc<BTreeMap<SlruKind, BTreeMap<u32, u32>>>,
}

/// Encodes a segment directory: (segno, pages) pairs of `u32` LE.
pub fn encode_dir(d: &BTreeMap<u32, u32>) -> Bytes {
    let mut v = Vec::with_capacity(8 * d.len());
    for (s, n) in d {
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
    }
    Bytes::from(v)
}

pub fn decode_dir(b: &[u8]) -> Result<BTreeMap<u32, u32>, String> {
    if !b.len().is_multiple_of(8) {
        return Err(format!("SLRU segment directory of {} bytes", b.len()));
    }
    Ok(b.chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

/// `CLOGPagePrecedes`.
pub fn clog_page_precedes(p1: u32, p2: u32) -> bool {
    let x1 = p1.wrapping_mul(CLOG_XACTS_PER_PAGE).wrapping_add(4);
    let x2 = p2.wrapping_mul(CLOG_XACTS_PER_PAGE).wrapping_add(4);
    xid_precedes(x1, x2) && xid_precedes(x1, x2.wrapping_add(CLOG_XACTS_PER_PAGE - 1))
}

/// `MultiXactOffsetPagePrecedes`.
pub fn offsets_page_precedes(p1: u32, p2: u32) -> bool {
    let m1 = p1.wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE).wrapping_add(2);
    let m2 = p2.wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE).wrapping_add(2);
    multi_precedes(m1, m2) && multi_precedes(m1, m2.wrapping_add(MULTIXACT_OFFSETS_PER_PAGE - 1))
}

impl SlruSegments {
    pub fn load(tl: &Timeline, lsn: Lsn) -> Result<SlruSegments, TimelineError> {
        let mut s = SlruSegments::default();
        for k in KINDS {
            let key = super::keys::slru_dir(k);
            if let Some(b) = tl.get_image_value(key, lsn)? {
                let d = decode_dir(&b).map_err(|reason| TimelineError::Reconstruct {
                    key,
                    lsn,
                    reason,
                })?;
                Arc::make_mut(&mut s.segs).insert(k, d);
            }
        }
        Ok(s)
    }

    /// The segments of `slru`.
    pub fn of(&self, slru: SlruKind) -> BTreeMap<u32, u32> {
        self.segs.get(&slru).cloned().unwrap_or_default()
    }

    /// Page `pageno` of `slru` is written: its segment grows to hold it. Returns its key.
    pub fn touch(&mut self, slru: SlruKind, pageno: u32) -> Key {
        let (segno, blk) = (
            pageno / SLRU_PAGES_PER_SEGMENT,
            pageno % SLRU_PAGES_PER_SEGMENT,
        );
        let have = self.segs.get(&slru).and_then(|d| d.get(&segno));
        if have.is_none_or(|&n| n <= blk) {
            let segs = Arc::make_mut(&mut self.segs);
            segs.entry(slru).or_default().insert(segno, blk + 1);
        }
        Key::slru_block(slru, segno, blk)
    }

    /// `SimpleLruTruncate(cutoff)`: removes the segments all of whose pages precede the
    /// cutoff page's segment.
    pub fn truncate(&mut self, slru: SlruKind, cutoff: u32, precedes: fn(u32, u32) -> bool) {
        let cutoff = cutoff - cutoff % SLRU_PAGES_PER_SEGMENT;
        if let Some(d) = Arc::make_mut(&mut self.segs).get_mut(&slru) {
            d.retain(|&segno, _| {
                let first = segno.wrapping_mul(SLRU_PAGES_PER_SEGMENT);
                let last = first.wrapping_add(SLRU_PAGES_PER_SEGMENT - 1);
                !(precedes(first, cutoff) && precedes(last, cutoff))
            });
        }
    }

    /// `DeactivateCommitTs`: every segment of `slru` goes.
    pub fn remove_all(&mut self, slru: SlruKind) {
        if self.segs.get(&slru).is_some_and(|d| !d.is_empty()) {
            Arc::make_mut(&mut self.segs).insert(slru, BTreeMap::new());
        }
    }

    /// Whether page `pageno` of `slru` exists (`SimpleLruDoesPhysicalPageExist`).
    pub fn has_page(&self, slru: SlruKind, pageno: u32) -> bool {
        let (segno, blk) = (
            pageno / SLRU_PAGES_PER_SEGMENT,
            pageno % SLRU_PAGES_PER_SEGMENT,
        );
        self.segs
            .get(&slru)
            .and_then(|d| d.get(&segno))
            .is_some_and(|&n| blk < n)
    }

    /// `PerformMembersTruncation`: removes the members segments from the one holding `start`
    /// up to (not including) the one holding `end`, wrapping at the last segment.
    pub fn truncate_members(&mut self, start: u32, end: u32) {
        let seg = |off: u32| off / MULTIXACT_MEMBERS_PER_PAGE / SLRU_PAGES_PER_SEGMENT;
        let max = seg(u32::MAX);
        let Some(d) = Arc::make_mut(&mut self.segs).get_mut(&SlruKind::MultiXactMembers) else {
            return;
        };
        let (mut s, e) = (seg(start), seg(end));
        // Bounded: at most every segment once.
        for _ in 0..=max {
            if s == e {
                break;
            }
            d.remove(&s);
            s = if s == max { 0 } else { s + 1 };
        }
    }

    /// Values for what changed since `old`: size keys and directories.
    pub(crate) fn emit_changes(&self, old: &SlruSegments, out: &mut super::Out) {
        if Arc::ptr_eq(&self.segs, &old.segs) {
            return;
        }
        let none = BTreeMap::new();
        for k in KINDS {
            let a = old.segs.get(&k).unwrap_or(&none);
            let b = self.segs.get(&k).unwrap_or(&none);
            if a == b {
                continue;
            }
            for (segno, n) in b {
                if a.get(segno) != Some(n) {
                    out.put(
                        Key::slru_segment_size(k, *segno),
                        Value::image(Bytes::copy_from_slice(&n.to_le_bytes())),
                    );
                }
            }
            for segno in a.keys().filter(|s| !b.contains_key(s)) {
                out.put(
                    Key::slru_segment_size(k, *segno),
                    Value::image(Bytes::new()),
                );
            }
            out.put(super::keys::slru_dir(k), Value::image(encode_dir(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_clog() {
        let mut s = SlruSegments::default();
        for p in [0, 33, 70] {
            s.touch(SlruKind::Clog, p);
        }
        // Cutoff page 70 (segment 2): segments 0 and 1 go.
        s.truncate(SlruKind::Clog, 70, clog_page_precedes);
        assert_eq!(
            s.of(SlruKind::Clog).keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn truncate_members_wraps() {
        let mut s = SlruSegments::default();
        s.touch(SlruKind::MultiXactMembers, 0);
        s.touch(SlruKind::MultiXactMembers, 32);
        s.truncate_members(0, MULTIXACT_MEMBERS_PER_PAGE * 32);
        assert_eq!(
            s.of(SlruKind::MultiXactMembers)
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1]
        );
    }
}
