//! `group_cut_pause`: the commit latency a group's consistent cuts add. Two (or more) member
//! tenants run pgbench at once in alternating rounds, with a cut of the group every
//! `--every-ms` (`strata group restore-point create`) and without; per-transaction latencies
//! come from pgbench's logs. Prints p50/p99/max with and without cuts, their difference, and
//! the cuts' own pause (first fence request to last fence lifted), and the goal's unit: one
//! safekeeper round trip (the walproposers' mean append time, from their `/metrics`).
//!
//! `cargo build --bins -p strata -p safekeeper -p pageserver -p compute -p strata-benches &&
//! target/debug/group_cut_pause --rounds 6 --round-secs 10` (release: `--release`,
//! `target/release/group_cut_pause`)

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use strata_tests::cluster::{on_new_cluster, pgbench, StrataCli};

#[derive(Parser, Debug)]
#[command(about = "Commit latency with and without a group's consistent cuts")]
struct Args {
    /// Member tenants.
    #[arg(long, default_value_t = 2)]
    members: usize,
    /// Rounds in all, alternating without and with cuts.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    #[arg(long, default_value_t = 10)]
    round_secs: u32,
    /// pgbench clients per member.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Period of the cuts in the rounds with cuts.
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    on_new_cluster("strata-group-bench-", |s| run(s, &a))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Per-transaction latencies in ms from pgbench's `--log` files under `dir`, then removes them.
fn latencies(dir: &Path, prefix: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(prefix)) {
            for line in std::fs::read_to_string(&p)?.lines() {
                // client_id transaction_no time script_no time_epoch time_us
                if let Some(us) = line.split(' ').nth(2).and_then(|v| v.parse::<f64>().ok()) {
                    out.push(us / 1000.0);
                }
            }
            std::fs::remove_file(&p)?;
        }
    }
    Ok(out)
}

fn run(s: &StrataCli, a: &Args) -> Result<()> {
    s.run(&["start"])?;
    let mut ports = Vec::new();
    let mut tenants = Vec::new();
    for i in 0..a.members {
        let t = format!("m{i}");
        s.run(&["tenant", "create", &t])?;
        let c = s.json(&["compute", "start", "main", "--tenant", &t, "--name", &t])?;
        let port = c["port"].as_u64().context("port")? as u16;
        pgbench(port, &["-i", "-q", "-s", "1"])?;
        ports.push(port);
        tenants.push(t);
    }
    s.run(&[
        "group",
        "create",
        "bench",
        "--tenants",
        &tenants.join(","),
        "--every",
        "0",
    ])?;
    let logs = s.dir.join("pgbench-logs");
    std::fs::create_dir_all(&logs)?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut cut_pauses = Vec::new();
    let mut cuts_failed = 0;
    for round in 0..a.rounds {
        let cutting = round % 2 == 1;
        let prefix = format!("r{round}-");
        let stop = Arc::new(AtomicBool::new(false));
        let cutter = cutting.then(|| {
            let (stop, bin, dir, every) = (stop.clone(), s.bin.clone(), s.dir.clone(), a.every_ms);
            std::thread::spawn(move || -> (Vec<f64>, usize) {
                let cli = StrataCli { bin, dir };
                let (mut pauses, mut failed) = (Vec::new(), 0);
                let mut n = 0;
                let mut next = Instant::now() + Duration::from_millis(every);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += Duration::from_millis(every);
                    n += 1;
                    let point = format!("r{round}-{n}");
                    match cli.json(&["group", "restore-point", "create", "bench", &point]) {
                        Ok(v) => pauses.extend(v["pause_ms"].as_f64()),
                        Err(e) => {
                            eprintln!("cut {point} failed: {e:#}");
                            failed += 1;
                        }
                    }
                }
                (pauses, failed)
            })
        });
        let t0 = Instant::now();
        let benches: Vec<_> = ports
            .iter()
            .map(|&port| {
                let (logs, prefix, secs, clients) = (
                    logs.clone(),
                    format!("{prefix}{port}"),
                    a.round_secs,
                    a.clients,
                );
                std::thread::spawn(move || {
                    pgbench(
                        port,
                        &[
                            "-n",
                            "-c",
                            &clients.to_string(),
                            "-T",
                            &secs.to_string(),
                            "--log",
                            &format!("--log-prefix={}", logs.join(prefix).display()),
                        ],
                    )
                })
            })
            .collect();
        for b in benches {
            b.join().expect("pgbench thread")?;
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(c) = cutter {
            let (p, f) = c.join().expect("cutter thread");
            cut_pauses.extend(p);
            cuts_failed += f;
        }
        let lat = latencies(&logs, &prefix)?;
        eprintln!(
            "round {round} ({}): {} transactions in {:.1} s",
            if cutting { "cuts" } else { "no cuts" },
            lat.len(),
            t0.elapsed().as_secs_f64()
        );
        if cutting { &mut with } else { &mut without }.extend(lat);
    }
    ensure!(
        !with.is_empty() && !without.is_empty(),
        "no transactions logged"
    );
    let round_trip_ms = append_round_trip_ms(s, &tenants)?;
    for v in [&mut with, &mut without, &mut cut_pauses] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "group_cut_pause: {} members × {} pgbench clients (TPC-B-like, scale 1), {} rounds of {} s alternating, cut every {} ms",
        a.members, a.clients, a.rounds, a.round_secs, a.every_ms
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "", "txns", "p50 ms", "p99 ms", "max ms"
    );
    for (label, v) in [("without cuts", &without), ("with cuts", &with)] {
        println!(
            "{label:<14} {:>9} {:>9.2} {:>9.2} {:>9.2}",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    println!(
        "{:<14} {:>9} {:>9.2} {:>9.2}",
        "added",
        "",
        pct(&with, 0.5) - pct(&without, 0.5),
        pct(&with, 0.99) - pct(&without, 0.99)
    );
    println!(
        "cut pause (fence → unfence): {} cuts, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed",
        cut_pauses.len(),
        pct(&cut_pauses, 0.5),
        pct(&cut_pauses, 0.99),
        pct(&cut_pauses, 1.0),
        cuts_failed
    );
    println!(
        "one safekeeper round trip (walproposer append, sent → fsynced, mean over the run): \
         {round_trip_ms:.2} ms; p99 added / round trip: {:.1}",
        (pct(&with, 0.99) - pct(&without, 0.99)) / round_trip_ms
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    Ok(())
}

/// The mean append round trip to one safekeeper over the members' walproposers
/// (`strata_walproposer_append_seconds` from each one's `/metrics`), in ms: the goal's unit.
fn append_round_trip_ms(s: &StrataCli, computes: &[String]) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0.0);
    for c in computes {
        let addr_file = s.dir.join("computes").join(c).join("walproposer.addr");
        let addr = std::fs::read_to_string(&addr_file)
            .with_context(|| format!("reading {}", addr_file.display()))?;
        let mut conn = std::net::TcpStream::connect(addr.trim())?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        let value = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .with_context(|| format!("{c}'s /metrics has no {name}"))
        };
        sum += value("strata_walproposer_append_seconds_sum ")?;
        count += value("strata_walproposer_append_seconds_count ")?;
    }
    ensure!(count > 0.0, "no appends counted");
    Ok(sum / count * 1000.0)
}
