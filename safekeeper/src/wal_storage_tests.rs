//! WAL storage on real files: segment boundaries, truncation, end-of-WAL recovery.

use super::*;
use crate::testing::WalGen;

const SYSID: u64 = 7_000_000_000_000_000_002;
const SEG: u64 = WAL_SEGMENT_SIZE;
/// Four pages before the end of segment 1, so a few records cross into segment 2.
const START: Lsn = Lsn(2 * SEG - 4 * 8192);

fn read_all(dir: &Path, from: Lsn, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = read_wal(dir, 1, Lsn(from.0 + pos as u64), &mut out[pos..]).unwrap();
        assert!(n > 0);
        pos += n;
    }
    out
}

/// The segment files in `dir` (not the next segment being zero-filled in the background).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != PREALLOC_FILE)
        .collect();
    v.sort();
    v
}

/// Writes `wal` from START in `chunk`-byte pieces (not aligned to records) and flushes.
fn write_chunked(s: &mut WalStorage, wal: &[u8], chunk: usize) {
    let mut at = START;
    for c in wal.chunks(chunk) {
        s.write(at, c).unwrap();
        at = Lsn(at.0 + c.len() as u64);
    }
    assert_eq!(s.flush().unwrap(), at);
}

#[test]
fn writes_across_segments_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let (wal, _) = WalGen::new(SYSID, 1, START).records(40, 3000);
    assert!(START.0 + wal.len() as u64 > 2 * SEG);
    write_chunked(&mut s, &wal, 7001);
    assert_eq!(read_all(dir.path(), START, wal.len()), wal);
    assert_eq!(
        names(dir.path()),
        [
            "000000010000000000000001",
            "000000010000000000000002.partial"
        ]
    );
    // Writes must be contiguous.
    assert!(matches!(
        s.write(Lsn(3 * SEG), b"x"),
        Err(WalError::NotContiguous { .. })
    ));
    // Reopening with a stale persisted flush LSN finds the end by decoding.
    drop(s);
    let s = WalStorage::open(dir.path(), 1, START, START).unwrap();
    assert_eq!(s.flush_lsn(), Lsn(START.0 + wal.len() as u64));
}

#[test]
fn truncate_zeroes_the_tail_and_removes_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let (wal, ends) = WalGen::new(SYSID, 1, START).records(40, 3000);
    write_chunked(&mut s, &wal, 65536);
    let end = s.flush_lsn();
    let cut = ends[3];
    assert!(cut.segment_number() == 1 && end.segment_number() == 2);
    s.truncate(cut).unwrap();
    assert_eq!((s.write_lsn(), s.flush_lsn()), (cut, cut));
    assert_eq!(names(dir.path()), ["000000010000000000000001.partial"]);
    let keep = (cut.0 - START.0) as usize;
    assert_eq!(read_all(dir.path(), START, keep), wal[..keep]);
    let tail = read_all(dir.path(), cut, (2 * SEG - cut.0) as usize);
    assert!(tail.iter().all(|&b| b == 0));
    assert!(s.truncate(Lsn(cut.0 + 8)).is_err(), "beyond the end");
    assert!(s.truncate(Lsn(START.0 - 8)).is_err(), "before the start");
    // New WAL continues from the cut, and recovery agrees.
    let rest = &wal[keep..];
    s.write(cut, rest).unwrap();
    s.flush().unwrap();
    drop(s);
    let s = WalStorage::open(dir.path(), 1, START, cut).unwrap();
    assert_eq!(s.flush_lsn(), end);
    assert_eq!(read_all(dir.path(), START, wal.len()), wal);
}

#[test]
fn recovery_stops_at_the_last_complete_valid_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let (wal, ends) = WalGen::new(SYSID, 1, START).records(40, 3000);
    // Torn: only part of the last record reached the disk.
    let torn_len = (ends[38].0 - START.0) as usize + 1000;
    write_chunked(&mut s, &wal[..torn_len], 4096);
    drop(s);
    let s = WalStorage::open(dir.path(), 1, START, START).unwrap();
    assert_eq!(s.flush_lsn(), ends[38]);
    drop(s);
    // The partial record's bytes are zeroed: a second recovery gives the same answer.
    let tail = read_all(dir.path(), ends[38], 1000);
    assert!(tail.iter().all(|&b| b == 0));

    // Garbage in the middle of record 30 (a torn sector): recovery ends before it.
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let mut bad = wal.clone();
    let mid = (ends[29].0 - START.0) as usize + 500;
    bad[mid] ^= 0x55;
    write_chunked(&mut s, &bad, 1 << 20);
    drop(s);
    let s = WalStorage::open(dir.path(), 1, START, START).unwrap();
    assert_eq!(s.flush_lsn(), ends[29]);
    drop(s);

    // A persisted (durable) flush LSN inside the torn record is kept: it was acknowledged.
    let acked = Lsn(ends[29].0 + 100);
    let s = WalStorage::open(dir.path(), 1, START, acked).unwrap();
    assert_eq!(s.flush_lsn(), acked);
}

#[test]
fn read_of_a_missing_segment_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(read_wal(dir.path(), 1, Lsn(5 * SEG), &mut buf).unwrap(), 0);
}

/// Blocks allocated to `path`, in bytes (a sparse file has fewer than its length).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn next_segment_is_zero_filled_ahead_and_switched_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let mut gen = WalGen::new(SYSID, 1, START);
    // Into segment 2 and past its middle: segment 3 is zero-filled in the background.
    let mut wal = Vec::new();
    while START.0 + (wal.len() as u64) < 2 * SEG + SEG / 2 + 8192 {
        wal.extend(gen.records(100, 8000).0);
    }
    write_chunked(&mut s, &wal, 1 << 20);
    let prealloc = dir.path().join(PREALLOC_FILE);
    let t = std::time::Instant::now();
    while !s.prealloc.as_ref().is_some_and(|p| p.thread.is_finished()) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "zero-fill never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(prealloc.exists());
    // Segment 2 was created sparse (nothing was ready), the next one is all real zeros.
    assert_eq!(s.preallocated(), 0);
    // Cross into segment 3: it is the preallocated file, renamed into place.
    let mut at = Lsn(START.0 + wal.len() as u64);
    let mut more = Vec::new();
    while at.0 + (more.len() as u64) < 3 * SEG + 65536 {
        more.extend(gen.records(100, 8000).0);
    }
    for c in more.chunks(1 << 20) {
        s.write(at, c).unwrap();
        at = Lsn(at.0 + c.len() as u64);
    }
    assert_eq!(s.flush().unwrap(), at);
    assert_eq!(s.preallocated(), 1);
    assert!(!prealloc.exists());
    let seg3 = dir.path().join("000000010000000000000003.partial");
    assert!(allocated(&seg3) >= SEG, "segment 3 is not fully allocated");
    assert_eq!(fs::metadata(&seg3).unwrap().len(), SEG);
    wal.extend_from_slice(&more);
    assert_eq!(read_all(dir.path(), START, wal.len()), wal);
    // Past the last record, the preallocated segment reads as zeros: the end of WAL.
    let tail = read_all(dir.path(), at, 8192);
    assert!(tail.iter().all(|&b| b == 0));
    drop(s);
    // A leftover preallocated file (a crash while zero-filling) is removed on open, and the
    // end of WAL is found by decoding as before.
    fs::write(&prealloc, b"not WAL").unwrap();
    let s = WalStorage::open(dir.path(), 1, START, START).unwrap();
    assert_eq!(s.flush_lsn(), at);
    assert!(!prealloc.exists());
    assert_eq!(
        names(dir.path()),
        [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial"
        ]
    );
}

#[test]
fn truncate_and_reset_cancel_the_zero_fill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    let start = Lsn(SEG + SEG / 2);
    s.reset(start).unwrap();
    let (wal, ends) = WalGen::new(SYSID, 1, start).records(10, 3000);
    s.write(start, &wal).unwrap();
    s.flush().unwrap();
    assert!(s.prealloc.is_some(), "past the middle of the segment");
    s.truncate(ends[4]).unwrap();
    assert!(s.prealloc.is_none());
    assert!(!dir.path().join(PREALLOC_FILE).exists());
    s.write(ends[4], &wal[(ends[4].0 - start.0) as usize..])
        .unwrap();
    assert!(s.prealloc.is_some());
    s.reset(Lsn(4 * SEG)).unwrap();
    assert!(s.prealloc.is_none());
    assert!(names(dir.path()).is_empty());
    assert!(!dir.path().join(PREALLOC_FILE).exists());
}

/// Issue 17, wedge 1: WAL that ends exactly on a segment boundary (a WAL switch). The flush
/// that makes the boundary durable completes the segment (final name, file closed), so WAL
/// removal up to the boundary takes a finished file and the writer goes on into the next one.
#[test]
fn a_flush_on_a_segment_boundary_completes_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let boundary = Lsn(2 * SEG);
    // Records, then zeros to the end of the segment (as an XLOG_SWITCH leaves it).
    let (mut wal, _) = WalGen::new(SYSID, 1, START).records(3, 3000);
    wal.resize((boundary.0 - START.0) as usize, 0);
    write_chunked(&mut s, &wal, 8192);
    assert_eq!(s.flush_lsn(), boundary);
    assert_eq!(names(dir.path()), ["000000010000000000000001"]);
    // Removal up to the boundary (the flush LSN's segment_start) takes segment 1.
    assert_eq!(remove_segments(dir.path(), 1, 1..2).unwrap(), 1);
    let (more, _) = WalGen::new(SYSID, 1, boundary).records(3, 3000);
    s.write(boundary, &more).unwrap();
    let end = Lsn(boundary.0 + more.len() as u64);
    assert_eq!(
        s.flush().unwrap(),
        end,
        "the writer goes on after the removal"
    );
    assert_eq!(names(dir.path()), ["000000010000000000000002.partial"]);
    assert_eq!(read_all(dir.path(), boundary, more.len()), more);
}

/// After a failed write the storage is cut back to its flush LSN: later segments go, the
/// tail of the flush LSN's segment is zeroed, and writing goes on from there.
#[test]
fn recover_cuts_back_to_the_flush_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let mut gen = WalGen::new(SYSID, 1, START);
    let (wal, _) = gen.records(5, 3000);
    write_chunked(&mut s, &wal, 4096);
    let flushed = s.flush_lsn();
    // Unflushed WAL into the next segment, then (say) ENOSPC: recover.
    let (unflushed, _) = gen.records(20, 3000);
    s.write(flushed, &unflushed).unwrap();
    assert!(s.write_lsn().segment_number() > flushed.segment_number());
    assert_eq!(s.recover().unwrap(), flushed);
    assert_eq!((s.write_lsn(), s.flush_lsn()), (flushed, flushed));
    assert_eq!(names(dir.path()), ["000000010000000000000001.partial"]);
    let tail = read_all(dir.path(), flushed, (2 * SEG - flushed.0) as usize);
    assert!(tail.iter().all(|&b| b == 0));
    s.write(flushed, &unflushed).unwrap();
    let end = Lsn(flushed.0 + unflushed.len() as u64);
    assert_eq!(s.flush().unwrap(), end);
    drop(s);
    assert_eq!(
        WalStorage::open(dir.path(), 1, START, end)
            .unwrap()
            .flush_lsn(),
        end
    );
}

/// A crash after the control file moved the WAL start but before the segments below it were
/// removed: they are removed on open.
#[test]
fn segments_below_the_start_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(dir.path(), 1, Lsn(0), Lsn(0)).unwrap();
    s.reset(START).unwrap();
    let mut wal = Vec::new();
    let mut gen = WalGen::new(SYSID, 1, START);
    while START.0 + (wal.len() as u64) < 3 * SEG + 8192 {
        wal.extend(gen.records(100, 8000).0);
    }
    write_chunked(&mut s, &wal, 1 << 20);
    let end = s.flush_lsn();
    drop(s);
    let s = WalStorage::open(dir.path(), 1, Lsn(3 * SEG), end).unwrap();
    assert_eq!(s.flush_lsn(), end);
    assert_eq!(names(dir.path()), ["000000010000000000000003.partial"]);
}
