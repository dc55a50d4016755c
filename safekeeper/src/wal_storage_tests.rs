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

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
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
