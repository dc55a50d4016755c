//! The `pg_wal` of a basebackup: the segment holding a generated shutdown checkpoint record
//! at the basebackup's LSN (and the next segment too, in the rare case the record crosses
//! into it).
//!
//! Postgres reads the checkpoint record by random access: it validates the long header of
//! the segment's first page and the header of each page the record is on, and requires the
//! record's `xl_prev` to be below it. Bytes before the record are not Strata's to repeat, so
//! the record's page says in its header that a continuation of `LSN - page data start` bytes
//! opens the page: a reader walking the page from its top (Strata's decoder, pg_waldump)
//! skips them and lands on the record. Pages between the segment's first page and the
//! record's page are zeros; nothing reads them.

use layer_format::Lsn;
use walproto::consts::{
    SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER, WAL_PAGE_SIZE, WAL_SEGMENT_SIZE,
    XLOG_PAGE_MAGIC, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
use walproto::encoder::{build_record, WalWriter};
use walproto::rmgr::xlog::{CheckPoint, XLOG_CHECKPOINT_SHUTDOWN};
use walproto::rmgr::RM_XLOG_ID;

/// The generated WAL.
pub struct CheckpointWal {
    /// (file name, 16 MiB of contents).
    pub segments: Vec<(String, Vec<u8>)>,
    /// Where the checkpoint record starts (its own redo LSN).
    pub record_lsn: Lsn,
    /// Where it ends: where the new server writes its first record.
    pub end_lsn: Lsn,
    pub checkpoint: CheckPoint,
}

fn header_size(page: Lsn) -> u64 {
    if page.is_segment_start() {
        SIZE_OF_LONG_PAGE_HEADER as u64
    } else {
        SIZE_OF_SHORT_PAGE_HEADER as u64
    }
}

/// Writes the header of the page at `page` into `seg` (the segment's bytes).
fn write_page_header(seg: &mut [u8], sysid: u64, tli: u32, page: Lsn, rem_len: u32) {
    let at = page.segment_offset() as usize;
    let mut info = 0u16;
    if rem_len > 0 {
        info |= XLP_FIRST_IS_CONTRECORD;
    }
    let long = page.is_segment_start();
    if long {
        info |= XLP_LONG_HEADER;
    }
    let mut h = Vec::with_capacity(SIZE_OF_LONG_PAGE_HEADER);
    h.extend_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
    h.extend_from_slice(&info.to_le_bytes());
    h.extend_from_slice(&tli.to_le_bytes());
    h.extend_from_slice(&page.0.to_le_bytes());
    h.extend_from_slice(&rem_len.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    if long {
        h.extend_from_slice(&sysid.to_le_bytes());
        h.extend_from_slice(&(WAL_SEGMENT_SIZE as u32).to_le_bytes());
        h.extend_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
    }
    seg[at..at + h.len()].copy_from_slice(&h);
}

/// A shutdown checkpoint record at `lsn` (after the page header if `lsn` starts a page) whose
/// `xl_prev` is `prev`; `make` builds the checkpoint from its redo LSN (the record's own).
pub fn checkpoint_wal(
    sysid: u64,
    tli: u32,
    lsn: Lsn,
    prev: Lsn,
    make: impl FnOnce(Lsn) -> CheckPoint,
) -> CheckpointWal {
    let record_lsn = if lsn.is_page_start() {
        Lsn(lsn.0 + header_size(lsn))
    } else {
        lsn
    };
    let mut checkpoint = make(record_lsn);
    checkpoint.redo = record_lsn;
    let rec = build_record(
        RM_XLOG_ID,
        XLOG_CHECKPOINT_SHUTDOWN,
        0,
        prev,
        &[],
        &checkpoint.encode(),
    );
    let mut w = WalWriter::new(sysid, tli, lsn, prev);
    let (start, end_lsn) = w.append(&rec);
    debug_assert_eq!(start, record_lsn);
    let bytes = w.into_bytes();

    let first_seg = lsn.segment_number();
    let last_seg = Lsn(lsn.0 + bytes.len() as u64 - 1).segment_number();
    let mut segs: Vec<Vec<u8>> = (first_seg..=last_seg)
        .map(|_| vec![0u8; WAL_SEGMENT_SIZE as usize])
        .collect();
    // The record's bytes (with the page headers WalWriter wrote for pages it started).
    for (i, chunk) in bytes.chunks(1024).enumerate() {
        let mut pos = Lsn(lsn.0 + (i * 1024) as u64);
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let seg = &mut segs[(pos.segment_number() - first_seg) as usize];
            let off = pos.segment_offset() as usize;
            let n = chunk.len().min(seg.len() - off);
            seg[off..off + n].copy_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            pos = Lsn(pos.0 + n as u64);
        }
    }
    let page = lsn.page_start();
    if !lsn.is_page_start() {
        let rem = lsn.0 - page.0 - header_size(page);
        write_page_header(&mut segs[0], sysid, tli, page, rem as u32);
    }
    let seg_start = lsn.segment_start();
    if page != seg_start {
        write_page_header(&mut segs[0], sysid, tli, seg_start, 0);
    }
    let segments = segs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let segno = first_seg + i as u64;
            (walproto::lsn::segment_file_name(tli, segno), s)
        })
        .collect();
    CheckpointWal {
        segments,
        record_lsn,
        end_lsn,
        checkpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walproto::walfiles::WalDirReader;

    fn read_back(lsn: Lsn) -> (CheckpointWal, Vec<walproto::record::DecodedRecord>) {
        let wal = checkpoint_wal(42, 1, lsn, Lsn(lsn.0.saturating_sub(64)), |_| CheckPoint {
            next_oid: 16384,
            this_timeline_id: 1,
            prev_timeline_id: 1,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in &wal.segments {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let mut r = WalDirReader::open(dir.path(), lsn, None, Some(1)).unwrap();
        let mut recs = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            recs.push(rec);
        }
        (wal, recs)
    }

    #[test]
    fn record_reads_back_mid_page_page_start_and_segment_end() {
        let seg = WAL_SEGMENT_SIZE;
        for lsn in [
            Lsn(seg + 8192 + 200),
            Lsn(seg + 8192),
            Lsn(seg),
            Lsn(seg + 40),
            Lsn(2 * seg - 48),
        ] {
            let (wal, recs) = read_back(lsn);
            assert_eq!(recs.len(), 1, "one record at {lsn}");
            assert_eq!(recs[0].lsn, wal.record_lsn);
            assert_eq!(recs[0].end_lsn, wal.end_lsn);
            assert_eq!(wal.checkpoint.redo, wal.record_lsn);
            let parsed = walproto::rmgr::parse(&recs[0]).unwrap();
            assert!(matches!(
                parsed,
                Some(walproto::rmgr::ParsedRecord::Xlog(
                    walproto::rmgr::xlog::XlogRecord::CheckpointShutdown(cp)
                )) if cp == wal.checkpoint
            ));
        }
        assert_eq!(read_back(Lsn(2 * seg - 48)).0.segments.len(), 2);
    }
}
