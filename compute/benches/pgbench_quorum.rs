//! pgbench TPS and commit latency (p50/p99) at 1 and 16 clients, one run each, side by side:
//! no replication; Postgres's native quorum synchronous replication to three
//! `pg_receivewal --synchronous` (`synchronous_standby_names = 'ANY 2 (rw1, rw2, rw3)'`, the
//! same 2-of-3 fsync durability); and Strata (three safekeepers + the walproposer).
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p compute --bench pgbench_quorum
//! ```
//! `STRATA_BENCH_SECS` (default 20; the whole bench then takes about 2.5 minutes) sets each
//! pgbench run's duration, `STRATA_BENCH_SCALE` (default 50) the pgbench scale (pgbench's
//! documentation asks for a scale at least as large as the number of clients: below that, the
//! clients queue on the few `pgbench_branches` rows, whose locks are held through the
//! synchronous-commit wait, and the run measures lock convoys more than replication),
//! `STRATA_BENCH_WP_ARGS` adds flags to the walproposer (e.g. `--max-appends-in-flight 2`),
//! `STRATA_BENCH_ROUNDS=N` (default 1) runs every setup N times, the order reversed in every
//! other round so that a machine whose speed drifts during the bench (this shared one does, by
//! tens of percent within minutes) favours no setup, and adds the medians over the rounds;
//! each run's ratio is against the native run of its own round.
//! `STRATA_BENCH_CLIENTS=16` runs only that client count (a comma-separated list; default
//! `1,16`), `STRATA_BENCH_ONLY=<word>` runs only the setups whose name contains it (`strata`, `native`, `no replication`). `STRATA_BENCH_ORDER=reverse` runs the
//! setups in the opposite order (Strata first): the setup order shifts the numbers on a shared
//! disk, so compare both orders. Between setups the page cache is written back (`sync`) and the
//! machine gets a few seconds to settle, so one setup's writeback does not land in the next
//! one's measurement.
//!
//! The replicas are reached over TCP in both replicated setups: Strata's walproposer talks to
//! its safekeepers over loopback TCP, and the three `pg_receivewal` connect to Postgres at
//! `127.0.0.1`, as replicas on other machines would. `STRATA_BENCH_NATIVE_VIA=socket`
//! connects them through Postgres's Unix socket instead (cheaper per message than any
//! network link; the walproposer, which runs beside Postgres, always uses the socket).
//!
//! `STRATA_BENCH_METRICS_AB=1` adds a fourth setup, Strata with `STRATA_METRICS=off` in the
//! safekeepers' and walproposer's environment (no metrics recorded), to measure what the
//! metrics cost on the commit path; with `STRATA_BENCH_ONLY=strata` only the two Strata setups
//! run, alternating.
//!
//! Besides TPS and latency, each run reports CPU time per transaction (from
//! `/proc/<pid>/stat`, user + system, all threads): of the replicas (the three safekeepers and
//! the walproposer, or the three `pg_receivewal`), of the Postgres server processes (backends,
//! walsenders, background processes), and of the whole machine (`/proc/stat`, busy time,
//! pgbench included). CPU per transaction varies less between runs than TPS on a loaded
//! machine, and both setups are CPU-bound on two cores.

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
    StrataNoMetrics,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::NoReplication => "no replication",
            Setup::NativeQuorum => "native ANY 2 of 3 pg_receivewal",
            Setup::Strata => "Strata 3 safekeepers",
            Setup::StrataNoMetrics => "Strata 3 safekeepers, metrics off",
        }
    }
}

struct Row {
    setup: Setup,
    /// Which round of `STRATA_BENCH_ROUNDS` (from 1).
    round: u64,
    clients: u32,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    txns: usize,
    cpu: CpuPerTxn,
}

/// CPU microseconds per transaction during one pgbench run.
#[derive(Clone, Copy, Debug)]
struct CpuPerTxn {
    replicas_us: f64,
    /// Each replica process separately (for Strata: the safekeepers, then the walproposer).
    each_us: [f64; 4],
    postgres_us: f64,
    /// The part of `postgres_us` spent in walsenders (one per replica connection).
    walsenders_us: f64,
    machine_us: f64,
}

/// Clock ticks per second of `/proc` CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A process's CPU ticks (user + system, all threads), the ticks of its children that it
/// waited for, and its parent pid, from `/proc/<pid>/stat`; `None` if it is gone.
fn proc_stat(pid: u32) -> Option<(u64, u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ppid = f.get(1)?.parse().ok()?;
    Some((num(11)? + num(12)?, num(13)? + num(14)?, ppid))
}

/// CPU ticks used so far by these processes.
fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| proc_stat(p)).map(|s| s.0).sum()
}

/// CPU ticks used so far by the Postgres server: the postmaster, its live children (backends,
/// walsenders, background processes) and the children that already exited (pgbench's
/// backends of a finished run, counted in the postmaster's children time).
fn postgres_ticks(pg: &PgCluster) -> PgTicks {
    let Some(master) = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return PgTicks::default();
    };
    let Some((own, waited, _)) = proc_stat(master) else {
        return PgTicks::default();
    };
    let mut ticks = PgTicks {
        total: own + waited,
        ..PgTicks::default()
    };
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((t, _, ppid)) = proc_stat(pid) {
                    if ppid == master {
                        ticks.total += t;
                        ticks.children += 1;
                        // Postgres sets its children's titles: `postgres: walsender …`.
                        let title =
                            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        if title.starts_with(b"postgres: walsender") {
                            ticks.walsenders += t;
                        }
                    }
                }
            }
        }
    }
    ticks
}

/// What [`postgres_ticks`] reads.
#[derive(Default)]
struct PgTicks {
    /// CPU ticks of the whole server.
    total: u64,
    /// The part of `total` used by the live walsenders.
    walsenders: u64,
    /// Live children of the postmaster.
    children: usize,
}

/// Waits (at most 5 s) until the Postgres server has at most `n` children again: the
/// backends of a finished pgbench run exit and are reaped after pgbench returns, and one
/// reaped between the two reads of [`postgres_ticks`] would be counted in neither.
fn wait_for_backends_gone(pg: &PgCluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while postgres_ticks(pg).children > n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Busy CPU ticks of the whole machine (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// CPU counters at the start of a run.
struct CpuMark {
    replicas: u64,
    each: [u64; 4],
    postgres: u64,
    walsenders: u64,
    /// The postmaster's live children when the mark was taken.
    pg_children: usize,
    machine: u64,
}

impl CpuMark {
    fn take(replica_pids: &[u32], pg: &PgCluster) -> CpuMark {
        let pg_ticks = postgres_ticks(pg);
        CpuMark {
            replicas: ticks_of(replica_pids),
            each: std::array::from_fn(|i| replica_pids.get(i).map_or(0, |&p| ticks_of(&[p]))),
            postgres: pg_ticks.total,
            walsenders: pg_ticks.walsenders,
            pg_children: pg_ticks.children,
            machine: machine_busy_ticks(),
        }
    }

    /// CPU per transaction since `self` (processes that ended meanwhile are not counted).
    fn per_txn(&self, replica_pids: &[u32], pg: &PgCluster, txns: usize) -> CpuPerTxn {
        let now = CpuMark::take(replica_pids, pg);
        let us = |a: u64, b: u64| {
            a.saturating_sub(b) as f64 / clock_ticks() * 1e6 / (txns.max(1) as f64)
        };
        CpuPerTxn {
            replicas_us: us(now.replicas, self.replicas),
            each_us: std::array::from_fn(|i| us(now.each[i], self.each[i])),
            postgres_us: us(now.postgres, self.postgres),
            walsenders_us: us(now.walsenders, self.walsenders),
            machine_us: us(now.machine, self.machine),
        }
    }
}

/// Processes kept alive for one setup (held only to be dropped at its end).
#[allow(dead_code)]
enum Replicas {
    None,
    Receivers(Vec<Child>),
    Strata(
        Vec<common::Safekeeper>,
        common::Walproposer,
        tempfile::TempDir,
    ),
}

impl Replicas {
    /// The replica processes: the safekeepers and the walproposer, or the receivers.
    fn pids(&self) -> Vec<u32> {
        match self {
            Replicas::None => Vec::new(),
            Replicas::Receivers(children) => children.iter().map(|c| c.id()).collect(),
            Replicas::Strata(sks, wp, _) => sks
                .iter()
                .filter_map(|s| s.child.as_ref().map(|c| c.id()))
                .chain(std::iter::once(wp.child.id()))
                .collect(),
        }
    }
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
        Setup::Strata | Setup::StrataNoMetrics => opts.set("synchronous_standby_names", "strata"),
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
                        native_host(&pg),
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
        Setup::Strata | Setup::StrataNoMetrics => {
            // Children inherit it; only this thread runs while they start.
            if setup == Setup::StrataNoMetrics {
                std::env::set_var("STRATA_METRICS", "off");
            }
            let tmp = tempfile::tempdir().expect("tempdir");
            let sks = common::three(tmp.path());
            let extra = std::env::var("STRATA_BENCH_WP_ARGS").unwrap_or_default();
            let extra: Vec<&str> = extra.split_whitespace().collect();
            let wp = common::Walproposer::start(&pg, &sks, &tmp.path().join("wp.log"), &extra)
                .expect("start the walproposer");
            std::env::remove_var("STRATA_METRICS");
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

/// Where the native replicas reach Postgres: `127.0.0.1` (TCP, the default) or the Unix
/// socket directory with `STRATA_BENCH_NATIVE_VIA=socket`.
fn native_host(pg: &PgCluster) -> String {
    match std::env::var("STRATA_BENCH_NATIVE_VIA").as_deref() {
        Ok("socket") => pg.socket_dir().display().to_string(),
        _ => "127.0.0.1".to_string(),
    }
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

fn run_pgbench(pg: &PgCluster, replicas: &Replicas, setup: Setup, clients: u32, secs: u64) -> Row {
    let prefix = format!("pgb_{clients}");
    let log_prefix: PathBuf = pg.base_dir().join(&prefix);
    let c = clients.to_string();
    let j = clients.min(4).to_string();
    let t = secs.to_string();
    let replica_pids = replicas.pids();
    let mark = CpuMark::take(&replica_pids, pg);
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
    wait_for_backends_gone(pg, mark.pg_children);
    let cpu = mark.per_txn(&replica_pids, pg, lat.len());
    Row {
        setup,
        round: 0,
        clients,
        tps,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        txns: lat.len(),
        cpu,
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
    let secs = env_u64("STRATA_BENCH_SECS", 20);
    let scale = env_u64("STRATA_BENCH_SCALE", 50).to_string();
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
    // `STRATA_BENCH_CLIENTS=16` runs one client count only (for profiling).
    let client_counts: Vec<u32> = match std::env::var("STRATA_BENCH_CLIENTS") {
        Ok(v) => v
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("STRATA_BENCH_CLIENTS: client counts, e.g. 1,16")
            })
            .collect(),
        Err(_) => vec![1, 16],
    };
    let mut setups = vec![Setup::NoReplication, Setup::NativeQuorum, Setup::Strata];
    if std::env::var_os("STRATA_BENCH_METRICS_AB").is_some() {
        setups.push(Setup::StrataNoMetrics);
    }
    let reverse = std::env::var("STRATA_BENCH_ORDER").is_ok_and(|o| o == "reverse");
    if reverse {
        setups.reverse();
    }
    setups.retain(|s| only.is_empty() || s.name().to_lowercase().contains(&only.to_lowercase()));
    // Rounds alternate the order (A B C, C B A, A B C, ...), so that a machine whose speed
    // drifts during the bench favours no setup.
    let rounds = env_u64("STRATA_BENCH_ROUNDS", 1).max(1);
    let schedule: Vec<(u64, Setup)> = (1..=rounds)
        .flat_map(|round| {
            let mut order = setups.clone();
            if round % 2 == 0 {
                order.reverse();
            }
            order.into_iter().map(move |s| (round, s))
        })
        .collect();
    for (round, setup) in schedule {
        settle();
        let (pg, replicas) = start(setup);
        pg.pgbench(&["-i", "-q", "-s", &scale]).expect("pgbench -i");
        for &clients in &client_counts {
            let mut row = run_pgbench(&pg, &replicas, setup, clients, secs);
            row.round = round;
            eprintln!(
                "round {round}: {:<34} {:>3} clients: {:>8.1} tps, p50 {:.2} ms, p99 {:.2} ms, CPU/txn: \
                 replicas {:.0} µs (each {:.0?}), Postgres {:.0} µs (walsenders {:.0}), machine {:.0} µs",
                setup.name(),
                clients,
                row.tps,
                row.p50_ms,
                row.p99_ms,
                row.cpu.replicas_us,
                row.cpu.each_us,
                row.cpu.postgres_us,
                row.cpu.walsenders_us,
                row.cpu.machine_us
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
        "pgbench TPC-B-like, scale {scale}, {secs} s per run, {rounds} round(s), first order {}, \
         native replicas connect to Postgres at {} (safekeeper binary: {})",
        if reverse {
            "reverse"
        } else {
            "none, native, Strata"
        },
        match std::env::var("STRATA_BENCH_NATIVE_VIA").as_deref() {
            Ok("socket") => "its Unix socket",
            _ => "127.0.0.1 (TCP)",
        },
        strata_tests::procs::built_bin("safekeeper")
            .expect("the safekeeper binary")
            .display()
    );
    println!(
        "| round | setup | clients | TPS | p50 ms | p99 ms | transactions | TPS vs native quorum | \
         replicas CPU µs/txn | Postgres CPU µs/txn | of which walsenders | machine CPU µs/txn | \
         other CPU µs/txn |"
    );
    println!(
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        // Against the native run of the same round.
        let native = rows
            .iter()
            .find(|n| {
                n.setup == Setup::NativeQuorum && n.clients == r.clients && n.round == r.round
            })
            .map(|n| n.tps)
            .unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.round,
            r.setup.name(),
            r.clients,
            r.tps,
            r.p50_ms,
            r.p99_ms,
            r.txns,
            r.tps / native,
            r.cpu.replicas_us,
            r.cpu.postgres_us,
            r.cpu.walsenders_us,
            r.cpu.machine_us,
            r.cpu.machine_us - r.cpu.replicas_us - r.cpu.postgres_us
        );
    }
    if rounds > 1 {
        print_medians(&rows, &setups, &client_counts);
    }
    println!(
        "CPU µs per transaction: user + system time of the replicas (safekeepers and walproposer, \
         or the pg_receivewal processes), of the Postgres server processes (and of its walsenders \
         among them: one per replica connection), and busy time of the whole machine; `other` is \
         the rest (pgbench, kernel threads, anything else running: a large value means the run \
         shared the machine)."
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per setup and client count, the median over the rounds; the ratio is of the medians.
fn print_medians(rows: &[Row], setups: &[Setup], client_counts: &[u32]) {
    println!();
    println!("Medians over the rounds:");
    println!(
        "| setup | clients | runs | TPS | TPS vs native quorum | p50 ms | p99 ms | replicas CPU µs/txn | machine CPU µs/txn |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let med = |setup: Setup, clients: u32, f: &dyn Fn(&Row) -> f64| {
        median(
            rows.iter()
                .filter(|r| r.setup == setup && r.clients == clients)
                .map(f)
                .collect(),
        )
    };
    for &clients in client_counts {
        let native = med(Setup::NativeQuorum, clients, &|r| r.tps);
        for &setup in setups {
            let runs = rows
                .iter()
                .filter(|r| r.setup == setup && r.clients == clients)
                .count();
            let tps = med(setup, clients, &|r| r.tps);
            println!(
                "| {} | {} | {} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.0} | {:.0} |",
                setup.name(),
                clients,
                runs,
                tps,
                tps / native,
                med(setup, clients, &|r| r.p50_ms),
                med(setup, clients, &|r| r.p99_ms),
                med(setup, clients, &|r| r.cpu.replicas_us),
                med(setup, clients, &|r| r.cpu.machine_us),
            );
        }
    }
}
