//! pgbench TPS and commit latency (p50/p99) at 1 and 16 clients, one run each, side by side:
//! no replication; Postgres's native quorum synchronous replication to three
//! `pg_receivewal --synchronous` (`synchronous_standby_names = 'ANY 2 (rw1, rw2, rw3)'`, the
//! same 2-of-3 fsync durability); and Strata (three safekeepers + the walproposer).
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p compute --bench pgbench_quorum
//! ```
//! `STRATA_BENCH_SECS` (default 10) sets each pgbench run's duration, `STRATA_BENCH_SCALE`
//! (default 10) the pgbench scale, `STRATA_BENCH_ONLY=<word>` runs only the setups whose name
//! contains it (`strata`, `native`, `no replication`). `STRATA_BENCH_ORDER=reverse` runs the
//! setups in the opposite order (Strata first): the setup order shifts the numbers on a shared
//! disk, so compare both orders. Between setups the page cache is written back (`sync`) and the
//! machine gets a few seconds to settle, so one setup's writeback does not land in the next
//! one's measurement.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strata_tests::{InitOptions, PgCluster};

#[path = "../tests/common/mod.rs"]
mod common;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    NoReplication,
    NativeQuorum,
    Strata,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::NoReplication => "no replication",
            Setup::NativeQuorum => "native ANY 2 of 3 pg_receivewal",
            Setup::Strata => "Strata 3 safekeepers",
        }
    }
}

struct Row {
    setup: Setup,
    clients: u32,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    txns: usize,
}

/// Processes kept alive for one setup (held only to be dropped at its end).
#[allow(dead_code)]
enum Replicas {
    None,
    Receivers(Vec<Child>),
    Strata(Vec<common::Sk>, common::Wp, tempfile::TempDir),
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if let Replicas::Receivers(children) = self {
            for c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn start(setup: Setup) -> (PgCluster, Replicas) {
    let mut opts = InitOptions::default()
        .set("max_wal_senders", "10")
        .set("wal_keep_size", "2GB")
        .set("shared_buffers", "256MB")
        .set("max_wal_size", "4GB")
        .set("synchronous_commit", "on");
    opts = match setup {
        Setup::NoReplication => opts,
        Setup::NativeQuorum => opts.set("synchronous_standby_names", "ANY 2 (rw1, rw2, rw3)"),
        Setup::Strata => opts.set("synchronous_standby_names", "strata"),
    };
    let pg = PgCluster::init(&opts).expect("initdb");
    pg.start().expect("start Postgres");
    let replicas = match setup {
        Setup::NoReplication => Replicas::None,
        Setup::NativeQuorum => {
            let mut children = Vec::new();
            for i in 1..=3 {
                let dir = pg
                    .make_postgres_dir(&format!("receivewal{i}"))
                    .expect("receivewal dir");
                let child = pg
                    .command("pg_receivewal")
                    .arg("-d")
                    .arg(format!(
                        "host={} port={} user=postgres application_name=rw{i}",
                        pg.socket_dir().display(),
                        pg.port()
                    ))
                    .arg("-D")
                    .arg(&dir)
                    .args(["--synchronous", "-n"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start pg_receivewal");
                children.push(child);
            }
            Replicas::Receivers(children)
        }
        Setup::Strata => {
            let tmp = tempfile::tempdir().expect("tempdir");
            let sks: Vec<common::Sk> = (1..=3).map(|i| common::Sk::new(tmp.path(), i)).collect();
            let wp = common::Wp::start(&pg, &sks, &tmp.path().join("wp.log"), &[]);
            Replicas::Strata(sks, wp, tmp)
        }
    };
    // The first commit goes through once the standbys are connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.psql("CREATE TABLE IF NOT EXISTS warmup(a int)").is_err() {
        assert!(Instant::now() < deadline, "{:?}: no commit in 60 s", setup);
        std::thread::sleep(Duration::from_millis(200));
    }
    (pg, replicas)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Per-transaction latencies (ms) from pgbench's `-l` logs with this prefix.
fn latencies(dir: &Path, prefix: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read log dir") {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read pgbench log");
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
            {
                out.push(us / 1000.0);
            }
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn run_pgbench(pg: &PgCluster, setup: Setup, clients: u32, secs: u64) -> Row {
    let prefix = format!("pgb_{clients}");
    let log_prefix: PathBuf = pg.base_dir().join(&prefix);
    let c = clients.to_string();
    let j = clients.min(4).to_string();
    let t = secs.to_string();
    let out = pg
        .pgbench(&[
            "-c",
            &c,
            "-j",
            &j,
            "-T",
            &t,
            "-l",
            "--log-prefix",
            log_prefix.to_str().unwrap(),
        ])
        .expect("pgbench");
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{out}"));
    let lat = latencies(pg.base_dir(), &prefix);
    Row {
        setup,
        clients,
        tps,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        txns: lat.len(),
    }
}

/// Writes back the page cache (the previous setup's files) and waits a moment, so that
/// writeback does not compete with the next measurement.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(3));
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let secs = env_u64("STRATA_BENCH_SECS", 10);
    let scale = env_u64("STRATA_BENCH_SCALE", 10).to_string();
    if std::env::var_os("STRATA_SAFEKEEPER_BIN").is_none() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let release = target.join("release/safekeeper");
        if !release.is_file() {
            eprintln!(
                "{} is not built: run `cargo build --release --bins` first (or set \
                 STRATA_SAFEKEEPER_BIN)",
                release.display()
            );
            std::process::exit(1);
        }
        // Before any thread exists.
        std::env::set_var("STRATA_SAFEKEEPER_BIN", release);
    }
    let mut rows = Vec::new();
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    let mut setups = vec![Setup::NoReplication, Setup::NativeQuorum, Setup::Strata];
    let reverse = std::env::var("STRATA_BENCH_ORDER").is_ok_and(|o| o == "reverse");
    if reverse {
        setups.reverse();
    }
    for setup in setups {
        if !only.is_empty() && !setup.name().to_lowercase().contains(&only.to_lowercase()) {
            continue;
        }
        settle();
        let (pg, replicas) = start(setup);
        pg.pgbench(&["-i", "-q", "-s", &scale]).expect("pgbench -i");
        for clients in [1, 16] {
            let row = run_pgbench(&pg, setup, clients, secs);
            eprintln!(
                "{:<34} {:>3} clients: {:>8.1} tps, p50 {:.2} ms, p99 {:.2} ms",
                setup.name(),
                clients,
                row.tps,
                row.p50_ms,
                row.p99_ms
            );
            rows.push(row);
        }
        if let Replicas::Strata(sks, wp, _) = &replicas {
            for line in wp.log_text().lines().filter(|l| l.contains(" stats ")) {
                eprintln!("walproposer: {}", line.trim());
            }
            for sk in sks {
                let log =
                    std::fs::read_to_string(sk.datadir.join("safekeeper.log")).unwrap_or_default();
                for line in log.lines().filter(|l| l.contains("wal writer stats")) {
                    eprintln!("safekeeper {}: {}", sk.id, line.trim());
                }
            }
        }
        drop(replicas);
        drop(pg);
    }
    println!();
    println!(
        "pgbench TPC-B-like, scale {scale}, {secs} s per run, one run each, order {} (safekeeper binary: {})",
        if reverse { "reverse" } else { "none, native, Strata" },
        common::safekeeper_bin().display()
    );
    println!("| setup | clients | TPS | p50 ms | p99 ms | transactions | TPS vs native quorum |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let native = rows
            .iter()
            .find(|n| n.setup == Setup::NativeQuorum && n.clients == r.clients)
            .map(|n| n.tps)
            .unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2}x |",
            r.setup.name(),
            r.clients,
            r.tps,
            r.p50_ms,
            r.p99_ms,
            r.txns,
            r.tps / native
        );
    }
}
