//! WAL decode throughput on real pgbench WAL, CRC checks included.
//!
//! The sample is made by `scripts/gen-wal-sample.sh` (pgbench against a throwaway Postgres 15)
//! into `target/wal-sample`, or wherever `STRATA_WAL_SAMPLE` points.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walproto::{Decoded, Lsn, WalStreamDecoder};

/// Complete segments of the sample, in order, with the LSN of the first.
fn load_sample() -> (Lsn, Vec<u8>) {
    let dir = std::env::var_os("STRATA_WAL_SAMPLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wal-sample"));
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "no WAL sample at {} ({e}): run scripts/gen-wal-sample.sh first",
                dir.display()
            )
        })
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (_, segno) = walproto::lsn::parse_segment_file_name(&name)?;
            (!name.ends_with(".partial")).then_some((segno, e.path()))
        })
        .collect();
    segs.sort();
    assert!(!segs.is_empty(), "no WAL segments in {}", dir.display());
    // Only a contiguous run of segments decodes as one stream.
    let first = segs[0].0;
    let mut wal = Vec::new();
    for (i, (segno, path)) in segs.iter().enumerate() {
        if *segno != first + i as u64 {
            break;
        }
        wal.extend_from_slice(&std::fs::read(path).unwrap());
    }
    (Lsn(first * walproto::consts::WAL_SEGMENT_SIZE), wal)
}

/// Decodes everything, feeding 1 MiB at a time as a segment reader would; returns
/// (records, bytes of records).
fn decode_all(start: Lsn, wal: &[u8]) -> (u64, u64) {
    let mut dec = WalStreamDecoder::new(start);
    let mut chunks = wal.chunks(1 << 20);
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        match dec.next().expect("sample WAL decodes") {
            Decoded::Record(r) => {
                n += 1;
                bytes += r.header.tot_len as u64;
            }
            Decoded::NeedMore => match chunks.next() {
                Some(c) => dec.feed(c),
                None => return (n, bytes),
            },
            Decoded::EndOfWal { .. } => return (n, bytes),
        }
    }
}

fn bench_decode(c: &mut Criterion) {
    let (start, wal) = load_sample();
    let (records, record_bytes) = decode_all(start, &wal);
    eprintln!(
        "WAL sample: {} MiB, {records} records, {:.0} bytes/record on average",
        wal.len() >> 20,
        record_bytes as f64 / records as f64
    );
    let mut g = c.benchmark_group("wal_decode");
    g.throughput(Throughput::Bytes(wal.len() as u64));
    g.sample_size(10);
    g.bench_function("pgbench_sample", |b| b.iter(|| decode_all(start, &wal)));
    // The floor: just the CRC over the same bytes.
    g.bench_function("crc32c_only", |b| b.iter(|| crc32c::crc32c(&wal)));
    g.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
