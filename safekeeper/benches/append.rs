//! Safekeeper append throughput with fsync, beside the disk's own fsync'd sequential write rate
//! measured in the same run with the same sizes.
//!
//! - `raw_write_fdatasync/128KiB`: `pwrite` 128 KiB at the end of a file, `fdatasync`, repeat;
//! - `acceptor_append_wait/128KiB`: the acceptor's append path (term and contiguity checks,
//!   the group-commit writer thread, segment files) with each append waited on until durable:
//!   one fsync per append, directly comparable to the raw loop;
//! - `raw_write_fdatasync/128KiBx32`: 32 writes of 128 KiB, then one `fdatasync`;
//! - `acceptor_append_pipelined/128KiBx32`: 32 appends queued, then waited on: group commit
//!   lets one fsync cover many appends, as with a proposer that pipelines.
//!
//! Before the criterion runs, an interleaved A/B report alternates all four variants round by
//! round and prints median MiB/s: on a shared machine the disk's fsync latency drifts, and
//! alternating keeps the comparison fair.
//!
//! Files live under the target directory (a real disk, not tmpfs). Every 256 MiB the files are
//! recreated outside the timed region, so the benchmark does not fill the disk.
//!
//! Run: `cargo bench -p safekeeper --bench append`

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use safekeeper::acceptor::{Acceptor, GreetingInfo};
use safekeeper::ids::TenantTimeline;
use safekeeper::term_history::{TermHistory, TermSwitch};
use walproto::Lsn;

const CHUNK: usize = 128 * 1024;
const PIPELINE: usize = 32;
const RESET_EVERY: u64 = 256 << 20;
const START: Lsn = Lsn(0x0100_0000);

fn tmp_root() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// A fresh acceptor elected in term 1 with WAL starting at START.
fn fresh_acceptor(dir: &Path) -> Acceptor {
    let id = TenantTimeline {
        tenant: "00000000000000000000000000000001".parse().unwrap(),
        timeline: "00000000000000000000000000000002".parse().unwrap(),
    };
    let g = GreetingInfo {
        system_id: 1,
        pg_timeline: 1,
        wal_seg_size: 16 << 20,
    };
    let mut a = Acceptor::open_or_create(dir, id, &g).unwrap();
    a.vote(1).unwrap();
    let h = TermHistory(vec![TermSwitch {
        term: 1,
        start: START,
    }]);
    a.elected(1, h, START, START).unwrap();
    a
}

/// An acceptor writing WAL, kept across timed calls; a fresh one every RESET_EVERY bytes
/// (outside the timed region), so the benchmark does not fill the disk.
struct AcceptorWriter {
    run: Option<AcceptorRun>,
}

/// One acceptor's life in [`AcceptorWriter`].
struct AcceptorRun {
    _dir: tempfile::TempDir,
    acceptor: Acceptor,
    /// The end of its WAL.
    at: Lsn,
    /// Timed rounds so far, each of which must have reached the disk.
    rounds: u64,
}

impl AcceptorWriter {
    fn new() -> Self {
        AcceptorWriter { run: None }
    }

    /// Times `iters` rounds of `batch` appends each (waiting for durability after each round).
    fn rounds(&mut self, iters: u64, batch: usize, data: &Bytes) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self
                .run
                .as_ref()
                .is_none_or(|r| r.at.0 - START.0 >= RESET_EVERY)
            {
                self.finish();
                let dir = tempfile::tempdir_in(tmp_root()).unwrap();
                self.run = Some(AcceptorRun {
                    acceptor: fresh_acceptor(dir.path()),
                    _dir: dir,
                    at: START,
                    rounds: 0,
                });
            }
            let r = self.run.as_mut().unwrap();
            let t = Instant::now();
            for _ in 0..batch {
                r.acceptor
                    .append(1, r.at, data.clone(), Lsn(0), Lsn(0))
                    .unwrap();
                r.at = Lsn(r.at.0 + data.len() as u64);
            }
            let durable = r.acceptor.wal().flush_blocking().unwrap();
            total += t.elapsed();
            assert_eq!(durable, r.at);
            r.rounds += 1;
        }
        total
    }

    /// Checks that every round really reached the disk (at least one fdatasync each).
    fn finish(&mut self) {
        if let Some(r) = self.run.take() {
            let fsyncs = r.acceptor.wal().stats().fsyncs.load(Ordering::Relaxed);
            assert!(
                fsyncs >= r.rounds,
                "{fsyncs} fsyncs for {} rounds",
                r.rounds
            );
        }
    }
}

/// Times `iters` rounds of `batch` appends each on a fresh acceptor.
fn acceptor_rounds(iters: u64, batch: usize, data: &Bytes) -> Duration {
    let mut w = AcceptorWriter::new();
    let d = w.rounds(iters, batch, data);
    w.finish();
    d
}

/// The disk's own rate: `pwrite` at the end of a file and `fdatasync`, kept across timed calls
/// like [`AcceptorWriter`].
struct RawWriter {
    state: Option<(tempfile::TempDir, std::fs::File, u64)>,
}

impl RawWriter {
    fn new() -> Self {
        RawWriter { state: None }
    }

    fn rounds(&mut self, iters: u64, batch: usize, data: &[u8]) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self
                .state
                .as_ref()
                .is_none_or(|(_, _, off)| *off >= RESET_EVERY)
            {
                let dir = tempfile::tempdir_in(tmp_root()).unwrap();
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(dir.path().join("raw"))
                    .unwrap();
                self.state = Some((dir, f, 0));
            }
            let (_, f, off) = self.state.as_mut().unwrap();
            let t = Instant::now();
            for _ in 0..batch {
                f.write_all_at(data, *off).unwrap();
                *off += data.len() as u64;
            }
            f.sync_data().unwrap();
            total += t.elapsed();
        }
        total
    }
}

fn raw_rounds(iters: u64, batch: usize, data: &[u8]) -> Duration {
    RawWriter::new().rounds(iters, batch, data)
}

/// The disk's fsync latency drifts on shared machines, so criterion's one-after-another runs can
/// mislead; this report alternates the variants round by round and prints median MiB/s. Each
/// variant keeps its writer across rounds, so (as in criterion's long runs) the rounds measure
/// steady streaming, segments zero-filled ahead, and not a fresh acceptor's first segment.
fn interleaved_report(data: &[u8], bytes: &Bytes) {
    const ROUNDS: usize = 9;
    let mut results: [Vec<f64>; 4] = Default::default();
    let (mut raw_one, mut raw_batch) = (RawWriter::new(), RawWriter::new());
    let (mut acc_one, mut acc_batch) = (AcceptorWriter::new(), AcceptorWriter::new());
    // Warm-up, untimed: past each acceptor's first segment.
    acc_one.rounds(160, 1, bytes);
    acc_batch.rounds(5, PIPELINE, bytes);
    for _ in 0..ROUNDS {
        let runs: [(u64, usize, Duration); 4] = [
            (64, 1, raw_one.rounds(64, 1, data)),
            (64, 1, acc_one.rounds(64, 1, bytes)),
            (8, PIPELINE, raw_batch.rounds(8, PIPELINE, data)),
            (8, PIPELINE, acc_batch.rounds(8, PIPELINE, bytes)),
        ];
        for (i, (iters, batch, d)) in runs.into_iter().enumerate() {
            let mib = (iters as usize * batch * CHUNK) as f64 / (1 << 20) as f64;
            results[i].push(mib / d.as_secs_f64());
        }
    }
    let names = [
        "raw write+fdatasync, 128 KiB",
        "acceptor append, wait durable, 128 KiB",
        "raw 32 x 128 KiB writes + 1 fdatasync",
        "acceptor 32 x 128 KiB pipelined appends",
    ];
    acc_one.finish();
    acc_batch.finish();
    println!("interleaved A/B ({ROUNDS} rounds), median MiB/s:");
    for (name, mut r) in names.into_iter().zip(results) {
        r.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {name:<42} {:>8.1}  (min {:.1}, max {:.1})",
            r[ROUNDS / 2],
            r[0],
            r[ROUNDS - 1]
        );
    }
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    let bytes = Bytes::from(data.clone());
    interleaved_report(&data, &bytes);
    let mut g = c.benchmark_group("wal_append_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function(BenchmarkId::new("raw_write_fdatasync", "128KiB"), |b| {
        b.iter_custom(|iters| raw_rounds(iters, 1, &data))
    });
    g.bench_function(BenchmarkId::new("acceptor_append_wait", "128KiB"), |b| {
        b.iter_custom(|iters| acceptor_rounds(iters, 1, &bytes))
    });
    g.throughput(Throughput::Bytes((CHUNK * PIPELINE) as u64));
    g.bench_function(
        BenchmarkId::new("raw_write_fdatasync", format!("128KiBx{PIPELINE}")),
        |b| b.iter_custom(|iters| raw_rounds(iters, PIPELINE, &data)),
    );
    g.bench_function(
        BenchmarkId::new("acceptor_append_pipelined", format!("128KiBx{PIPELINE}")),
        |b| b.iter_custom(|iters| acceptor_rounds(iters, PIPELINE, &bytes)),
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
