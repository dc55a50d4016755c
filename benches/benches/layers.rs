//! Layer file micro-benchmarks: write throughput, image point lookups, delta chain lookups,
//! next to the physical floor (copying / checksumming 8 KiB), and the per-page lz4 (and zstd)
//! numbers behind the image compression decision in `layer_format::compress`.
//!
//! Run: `cargo bench -p strata-benches --bench layers -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use layer_format::sample_pages::{
    btree_int4_leaf_page, pgbench_accounts_page, random_page, sparse_heap_page, SplitMix,
};
use layer_format::{
    Compression, DeltaLayerReader, DeltaLayerWriter, ImageLayerReader, ImageLayerWriter, Key, Lsn,
    RelFileNode, Value,
};

const REL: RelFileNode = RelFileNode {
    spc: 1663,
    db: 5,
    rel: 16384,
};

fn key(blk: u32) -> Key {
    Key::rel_block(REL, 0, blk)
}

fn range() -> std::ops::Range<Key> {
    Key::rel_fork_range(REL, 0)
}

/// A mix of pgbench pages: 3/4 heap pages (some after updates), 1/4 b-tree leaves.
fn page(blk: u32) -> Vec<u8> {
    match blk % 4 {
        0 => btree_int4_leaf_page(blk + 1),
        1 => pgbench_accounts_page(blk, 1, 0.5),
        _ => pgbench_accounts_page(blk, 1, 0.0),
    }
}

/// A ~150-byte WAL record body (heap update-like: header, block ref, tuple with blanks).
fn record(i: u64) -> Vec<u8> {
    let mut r = vec![b' '; 150];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r[8..16].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    r
}

fn write_image_layer(dir: &Path, pages: &[Vec<u8>], compression: Compression) -> u64 {
    let mut w = ImageLayerWriter::with_compression(dir, range(), Lsn(0x1000), compression).unwrap();
    for (i, p) in pages.iter().enumerate() {
        w.put(key(i as u32), p).unwrap();
    }
    let written = w.finish().unwrap();
    let size = written.file_size;
    std::fs::remove_file(written.path).unwrap();
    size
}

fn write_delta_layer(dir: &Path, keys: u32, versions: u64) -> std::path::PathBuf {
    let mut w = DeltaLayerWriter::new(dir, range(), Lsn(0x1000)..Lsn(0x100_0000)).unwrap();
    for k in 0..keys {
        for v in 0..versions {
            let lsn = Lsn(0x1000 + v * 0x100 + u64::from(k % 256));
            let val = Value::pg_record(v == 0, record(u64::from(k) * versions + v));
            w.put(key(k), lsn, &val).unwrap();
        }
    }
    w.finish().unwrap().path
}

fn bench_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("write");
    g.sample_size(10);

    let pages: Vec<Vec<u8>> = (0..2048).map(page).collect();
    let bytes: u64 = pages.iter().map(|p| p.len() as u64).sum();
    g.throughput(Throughput::Bytes(bytes));
    for (name, comp) in [("lz4", Compression::Lz4), ("raw", Compression::None)] {
        let size = write_image_layer(dir.path(), &pages, comp);
        eprintln!("image layer of 2048 pgbench pages ({name}): {size} bytes ({bytes} raw)");
        g.bench_function(format!("image_layer_16MiB_{name}"), |b| {
            b.iter(|| write_image_layer(dir.path(), &pages, comp))
        });
    }

    let n = 50_000u64;
    let records: Vec<Value> = (0..n).map(|i| Value::pg_record(false, record(i))).collect();
    g.throughput(Throughput::Bytes(n * 150));
    g.bench_function("delta_layer_50k_150B_records", |b| {
        b.iter(|| {
            let mut w =
                DeltaLayerWriter::new(dir.path(), range(), Lsn(0x1000)..Lsn(0x1000_0000)).unwrap();
            for (i, v) in records.iter().enumerate() {
                let i = i as u64;
                w.put(key((i / 10) as u32), Lsn(0x1000 + i), v).unwrap();
            }
            let written = w.finish().unwrap();
            std::fs::remove_file(written.path).unwrap();
        })
    });
    g.finish();
}

fn bench_image_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let n = 8192u32; // 64 MiB of pages
    let mut g = c.benchmark_group("image_get");
    g.throughput(Throughput::Elements(1));
    for (name, comp) in [("lz4", Compression::Lz4), ("raw", Compression::None)] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let mut w = ImageLayerWriter::with_compression(&sub, range(), Lsn(0x1000), comp).unwrap();
        for blk in 0..n {
            w.put(key(blk), &page(blk)).unwrap();
        }
        let path = w.finish().unwrap().path;
        let r = ImageLayerReader::open(&path).unwrap();
        // Warm: touch every page once (page cache, verified-index-block bits).
        for blk in 0..n {
            black_box(r.get(key(blk)).unwrap());
        }
        let mut rng = SplitMix::new(42);
        g.bench_function(format!("random_key_{name}"), |b| {
            b.iter(|| {
                let blk = (rng.next_u64() % u64::from(n)) as u32;
                let img = r.get(key(blk)).unwrap().unwrap();
                black_box(img);
            })
        });
    }
    let sub = dir.path().join("raw");
    let r = ImageLayerReader::open(
        &std::fs::read_dir(&sub)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let mut rng = SplitMix::new(43);
    g.bench_function("missing_key", |b| {
        b.iter(|| {
            let blk = n + (rng.next_u64() % 1000) as u32;
            black_box(r.get(key(blk)).unwrap());
        })
    });
    g.finish();
}

fn bench_delta_chain(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let keys = 20_000u32;
    let path = write_delta_layer(dir.path(), keys, 10);
    let r = DeltaLayerReader::open(&path).unwrap();
    for e in r.entries() {
        e.unwrap();
    }
    let mut g = c.benchmark_group("delta_chain");
    g.throughput(Throughput::Elements(1));
    let mut rng = SplitMix::new(7);
    let mut chain = Vec::with_capacity(16);
    g.bench_function("collect_10_versions_no_values", |b| {
        b.iter(|| {
            let k = key((rng.next_u64() % u64::from(keys)) as u32);
            chain.clear();
            let complete = r.collect_chain(k, Lsn(0x100_0000), &mut chain).unwrap();
            black_box(complete);
        })
    });
    g.bench_function("collect_10_versions_and_read_values", |b| {
        b.iter(|| {
            let k = key((rng.next_u64() % u64::from(keys)) as u32);
            chain.clear();
            r.collect_chain(k, Lsn(0x100_0000), &mut chain).unwrap();
            for e in &chain {
                black_box(r.read_value(&e.handle).unwrap());
            }
        })
    });
    g.bench_function("collect_at_middle_lsn", |b| {
        b.iter(|| {
            let k = key((rng.next_u64() % u64::from(keys)) as u32);
            chain.clear();
            r.collect_chain(k, Lsn(0x1000 + 5 * 0x100), &mut chain)
                .unwrap();
            black_box(chain.len());
        })
    });
    g.finish();
}

fn bench_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor_8KiB");
    let p = pgbench_accounts_page(1, 1, 0.0);
    g.throughput(Throughput::Bytes(8192));
    g.bench_function("copy_to_bytes", |b| {
        b.iter(|| black_box(Bytes::copy_from_slice(black_box(&p))))
    });
    g.bench_function("crc32c", |b| {
        b.iter(|| black_box(crc32c::crc32c(black_box(&p))))
    });
    g.finish();
}

fn bench_codecs(c: &mut Criterion) {
    let pages: [(&str, Vec<u8>); 5] = [
        ("accounts_heap_fresh", pgbench_accounts_page(7, 1, 0.0)),
        ("accounts_heap_updated", pgbench_accounts_page(7, 1, 1.0)),
        ("btree_int4_leaf", btree_int4_leaf_page(7)),
        ("sparse_heap", sparse_heap_page(7)),
        ("random", random_page(7)),
    ];
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(8192));
    for (name, p) in &pages {
        let lz4 = lz4_flex::block::compress_prepend_size(p);
        let z1 = zstd::bulk::compress(p, 1).unwrap();
        let z3 = zstd::bulk::compress(p, 3).unwrap();
        eprintln!(
            "{name}: 8192 -> lz4 {} ({:.1}%), zstd-1 {} ({:.1}%), zstd-3 {} ({:.1}%)",
            lz4.len(),
            lz4.len() as f64 * 100.0 / 8192.0,
            z1.len(),
            z1.len() as f64 * 100.0 / 8192.0,
            z3.len(),
            z3.len() as f64 * 100.0 / 8192.0
        );
        g.bench_function(format!("lz4_compress/{name}"), |b| {
            b.iter(|| black_box(lz4_flex::block::compress_prepend_size(black_box(p))))
        });
        g.bench_function(format!("lz4_decompress/{name}"), |b| {
            b.iter(|| {
                black_box(lz4_flex::block::decompress_size_prepended(black_box(&lz4)).unwrap())
            })
        });
        if *name == "accounts_heap_fresh" || *name == "btree_int4_leaf" {
            g.bench_function(format!("zstd1_compress/{name}"), |b| {
                b.iter(|| black_box(zstd::bulk::compress(black_box(p), 1).unwrap()))
            });
            let mut dec = zstd::bulk::Decompressor::new().unwrap();
            g.bench_function(format!("zstd_decompress/{name}"), |b| {
                b.iter_batched_ref(
                    || (),
                    |_| black_box(dec.decompress(black_box(&z1), 8192).unwrap()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_codecs,
    bench_floor,
    bench_image_get,
    bench_delta_chain,
    bench_write
);
criterion_main!(benches);
