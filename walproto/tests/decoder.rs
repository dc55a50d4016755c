//! The streaming decoder against WAL laid out by the encoder: records across pages and
//! segments, arbitrary chunking, continuation at the start, XLOG_SWITCH, and every kind of
//! damage. (The comparison with pg_waldump on real Postgres WAL is in the `tests` crate.)

use proptest::prelude::*;
use walproto::consts::*;
use walproto::encoder::{build_record, WalWriter};
use walproto::{Decoded, DecodedRecord, Lsn, WalStreamDecoder};

const SEG: u64 = WAL_SEGMENT_SIZE;
const SYSID: u64 = 7_300_000_000_000_000_001;

/// A heap-ish record: rmid 10, with `len` bytes of main data.
fn record(len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    build_record(10, 0x00, 1000 + seed as u32, Lsn(0), &[], &data)
}

/// Writes records of the given sizes from the start of segment 1; returns the WAL and the
/// (start, end) of each record.
fn write_wal(sizes: &[usize]) -> (Vec<u8>, Vec<(Lsn, Lsn)>) {
    let start = Lsn(SEG);
    let mut w = WalWriter::new(SYSID, 1, start, Lsn(SEG - 0x100));
    let spans = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| w.append(&record(len, i as u8)))
        .collect();
    // Zeroes after the last record: the normal end of WAL.
    let end = Lsn(w.next_lsn().0 + 64);
    w.pad_to(end);
    (w.into_bytes(), spans)
}

/// Decodes `wal` fed in chunks of the given sizes (cycled), until the end or an error.
fn decode_chunked(
    start: Lsn,
    wal: &[u8],
    chunks: &[usize],
) -> (
    Vec<DecodedRecord>,
    Result<Option<Lsn>, walproto::DecodeError>,
) {
    let mut dec = WalStreamDecoder::new(start);
    let mut records = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    loop {
        match dec.next() {
            Ok(Decoded::Record(r)) => records.push(r),
            Ok(Decoded::EndOfWal { lsn, .. }) => return (records, Ok(Some(lsn))),
            Ok(Decoded::NeedMore) => {
                if fed == wal.len() {
                    return (records, Ok(None));
                }
                let n = chunks[i % chunks.len()].max(1).min(wal.len() - fed);
                dec.feed(&wal[fed..fed + n]);
                fed += n;
                i += 1;
            }
            Err(e) => return (records, Err(e)),
        }
    }
}

#[test]
fn records_across_pages_and_segments() {
    // Enough large records to cross many pages and one segment boundary.
    let sizes: Vec<usize> = (0..1600)
        .map(|i| [40, 8000, 30_000, 3, 16_384][i % 5])
        .collect();
    let (wal, spans) = write_wal(&sizes);
    assert!(
        wal.len() as u64 > SEG,
        "the WAL must cross a segment boundary"
    );
    let (records, end) = decode_chunked(Lsn(SEG), &wal, &[wal.len()]);
    assert_eq!(records.len(), sizes.len());
    for (i, (rec, (start, end))) in records.iter().zip(&spans).enumerate() {
        assert_eq!(rec.lsn, *start, "record {i}");
        assert_eq!(rec.end_lsn, *end, "record {i}");
        assert_eq!(rec.main_data().len(), sizes[i], "record {i}");
        assert_eq!(rec.header.xid, 1000 + (i as u8) as u32);
        if i > 0 {
            assert_eq!(rec.header.prev, spans[i - 1].0);
        }
    }
    assert_eq!(end, Ok(Some(spans.last().unwrap().1)));
}

#[test]
fn starting_on_a_page_that_continues_a_record_skips_the_continuation() {
    let sizes = vec![100, 20_000, 50, 60];
    let (wal, spans) = write_wal(&sizes);
    // The 20,000-byte record starts on page 0 and covers pages 1 and 2 entirely.
    let page = Lsn(SEG + 2 * WAL_PAGE_SIZE);
    assert!(spans[1].0 < page && spans[1].1 > page);
    let offset = (page.0 - SEG) as usize;
    let (records, end) = decode_chunked(page, &wal[offset..], &[7, 100, 8192]);
    let lsns: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns, vec![spans[2].0, spans[3].0]);
    assert_eq!(end, Ok(Some(spans[3].1)));
}

#[test]
fn xlog_switch_jumps_to_the_next_segment() {
    let mut w = WalWriter::new(SYSID, 1, Lsn(SEG), Lsn(0));
    w.append(&record(10, 1));
    let (switch_start, switch_end) = w.append(&build_record(RM_XLOG, 0x40, 0, Lsn(0), &[], &[]));
    assert_eq!(switch_end.segment_offset() % 8, 0);
    // Postgres leaves the rest of the segment unused; the next record opens the next segment.
    w.pad_to(Lsn(2 * SEG));
    let (after, _) = w.append(&record(10, 2));
    w.pad_to(Lsn(w.next_lsn().0 + 8));
    let wal = w.into_bytes();
    let (records, end) = decode_chunked(Lsn(SEG), &wal, &[65_536]);
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].lsn, switch_start);
    assert_eq!(
        records[1].end_lsn,
        Lsn(2 * SEG),
        "a switch record ends at the segment end"
    );
    assert_eq!(records[2].lsn, after);
    assert_eq!(after, Lsn(2 * SEG + SIZE_OF_LONG_PAGE_HEADER as u64));
    assert!(matches!(end, Ok(Some(_))));
}

const RM_XLOG: u8 = 0;

/// Decodes the whole buffer at once and returns the error, if any.
fn decode_error(wal: &[u8]) -> Option<walproto::DecodeError> {
    decode_chunked(Lsn(SEG), wal, &[wal.len()]).1.err()
}

#[test]
fn flipped_byte_in_a_record_is_a_crc_error() {
    let (mut wal, spans) = write_wal(&[100, 200, 300]);
    let at = (spans[1].0 .0 - SEG) as usize + 60;
    wal[at] ^= 0x01;
    let err = decode_error(&wal).expect("corruption must be detected");
    assert_eq!(err.lsn, spans[1].0);
    assert!(err.reason.contains("checksum"), "{err}");
}

#[test]
fn wrong_prev_link_is_an_error() {
    let (mut wal, spans) = write_wal(&[100, 200, 300]);
    let at = (spans[2].0 .0 - SEG) as usize + 8;
    wal[at] ^= 0x08;
    let err = decode_error(&wal).expect("bad xl_prev must be detected");
    assert_eq!(err.lsn, spans[2].0);
    assert!(err.reason.contains("prev-link"), "{err}");
}

#[test]
fn impossible_length_is_an_error() {
    let (mut wal, spans) = write_wal(&[100, 200]);
    let at = (spans[1].0 .0 - SEG) as usize;
    wal[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    let err = decode_error(&wal).unwrap();
    assert!(err.reason.contains("invalid record length"), "{err}");
    wal[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_error(&wal).unwrap();
    assert!(err.reason.contains("larger than 1 GiB"), "{err}");
}

#[test]
fn bad_page_magic_and_address_are_errors() {
    let (wal, _) = write_wal(&[9000, 9000, 9000]);
    let page1 = WAL_PAGE_SIZE as usize;
    let mut bad_magic = wal.clone();
    bad_magic[page1] ^= 0xFF;
    let err = decode_error(&bad_magic).unwrap();
    assert_eq!(err.lsn, Lsn(SEG + WAL_PAGE_SIZE));
    assert!(err.reason.contains("magic"), "{err}");

    let mut future_addr = wal.clone();
    let addr = SEG + 5 * WAL_PAGE_SIZE;
    future_addr[page1 + 8..page1 + 16].copy_from_slice(&addr.to_le_bytes());
    let err = decode_error(&future_addr).unwrap();
    assert!(err.reason.contains("unexpected page address"), "{err}");

    let mut no_contrecord = wal.clone();
    no_contrecord[page1 + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8);
    let err = decode_error(&no_contrecord).unwrap();
    assert!(err.reason.contains("contrecord"), "{err}");
}

#[test]
fn recycled_and_zeroed_pages_are_the_end_of_wal() {
    let (wal, spans) = write_wal(&[100, 30_000]);
    // The second record runs into page 2. Make page 2 look like an old, recycled segment's.
    let page2 = 2 * WAL_PAGE_SIZE as usize;
    let mut recycled = wal.clone();
    let old = page2 as u64; // the same page of segment 0: an older address
    recycled[page2 + 8..page2 + 16].copy_from_slice(&old.to_le_bytes());
    let (records, end) = decode_chunked(Lsn(SEG), &recycled, &[4096]);
    assert_eq!(records.len(), 1);
    assert_eq!(
        end,
        Ok(Some(spans[1].0)),
        "the torn record is where the WAL ends"
    );

    let mut zeroed = wal.clone();
    zeroed[page2..page2 + WAL_PAGE_SIZE as usize].fill(0);
    let (records, end) = decode_chunked(Lsn(SEG), &zeroed, &[4096]);
    assert_eq!(records.len(), 1);
    assert_eq!(end, Ok(Some(spans[1].0)));
}

#[test]
fn truncated_input_just_needs_more() {
    let (wal, spans) = write_wal(&[100, 20_000, 30]);
    let cut = (spans[1].0 .0 - SEG) as usize + 10_000;
    let (records, end) = decode_chunked(Lsn(SEG), &wal[..cut], &[333]);
    assert_eq!(records.len(), 1);
    assert_eq!(end, Ok(None));
}

#[test]
fn errors_and_ends_are_sticky() {
    let (mut wal, _) = write_wal(&[100]);
    wal[60] ^= 1;
    let mut dec = WalStreamDecoder::new(Lsn(SEG));
    dec.feed(&wal);
    let first = dec.next().unwrap_err();
    assert_eq!(dec.next().unwrap_err(), first);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking of the input gives the same records.
    #[test]
    fn chunking_does_not_matter(
        sizes in prop::collection::vec(0usize..20_000, 1..40),
        chunks in prop::collection::vec(1usize..20_000, 1..10),
    ) {
        let (wal, spans) = write_wal(&sizes);
        let (records, end) = decode_chunked(Lsn(SEG), &wal, &chunks);
        prop_assert_eq!(records.len(), sizes.len());
        for (rec, span) in records.iter().zip(&spans) {
            prop_assert_eq!(rec.lsn, span.0);
            prop_assert_eq!(rec.end_lsn, span.1);
        }
        prop_assert_eq!(end, Ok(Some(spans.last().unwrap().1)));
    }

    /// No damage makes the decoder panic; it returns records, an end, or an error.
    #[test]
    fn damage_never_panics(
        sizes in prop::collection::vec(0usize..12_000, 1..12),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        chunk in 1usize..10_000,
    ) {
        let (mut wal, _) = write_wal(&sizes);
        for (idx, mask) in flips {
            let i = idx.index(wal.len());
            wal[i] ^= mask;
        }
        let _ = decode_chunked(Lsn(SEG), &wal, &[chunk]);
    }
}
