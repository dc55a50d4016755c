//! `auth_metrics_cost`: issue 21's benchmark, the cost of authentication and metrics on the
//! hot paths. Two clusters run side by side: `on`, as `strata init` makes it (tokens checked
//! on every RPC, SCRAM logins, metrics recorded and served), and `off`, made with
//! `strata init --no-auth --no-metrics`. Each gets a tenant, a lazy compute and
//! `pgbench -i -s SCALE`; then, in alternating rounds (on, off, on, off, …):
//!
//! 1. pgbench `-S` (select only) and `-N` (read-write without the branch updates) on each
//!    compute: TPS per round.
//! 2. The computes are stopped; page reads over gRPC straight from each pageserver (with a
//!    `tenant:` token on `on`, without on `off`): the unary `GetPage` and the `GetPages`
//!    stream, each of hot pages (a few blocks read again and again, from the page cache) and
//!    of pages needing redo (blocks spread over pgbench_accounts, page cache off, so every
//!    read collects its versions and runs redo; automatic compaction is off from before the
//!    pgbench runs, so their updates stay deltas; `on`'s metrics say how many reads needed
//!    redo): p50 and p99 per round.
//!
//! The report (stdout) gives each measurement's median per side, the ratio, the spread and
//! whether the difference is within the rounds' own noise; timing is never asserted.
//! `cargo build --release --bins -p strata -p safekeeper -p pageserver -p compute -p strata-benches`
//! then `target/release/auth_metrics_cost --scale 10 --rounds 8`.

use anyhow::{ensure, Result};
use clap::Parser;
use strata_benches::auth_bench::getpage::{self, Rpc};
use strata_benches::auth_bench::report::{self, percentile, Row, RunInfo};
use strata_benches::auth_bench::{RedoCounts, Side};
use strata_benches::branch_bench::machine;
use strata_benches::branch_bench::pgprog::PgProgs;
use strata_benches::branch_bench::step;
use strata_benches::branch_bench::strata_cli::StrataCli;
use strata_benches::branch_bench::tool_args::ToolArgs;

#[derive(Parser, Debug)]
#[command(about = "GetPage latency and pgbench TPS with auth and metrics on against off")]
struct Args {
    /// pgbench scale factor of both clusters' data.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Rounds of every measurement, each side once a round.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Page reads per round and row.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Hot pages: this many blocks of pgbench_accounts, read round-robin.
    #[arg(long, default_value_t = 64)]
    hot_blocks: u32,
    /// Pages needing redo: this many blocks spread over pgbench_accounts.
    #[arg(long, default_value_t = 1000)]
    redo_blocks: u32,
    /// Seconds of each pgbench run.
    #[arg(long, default_value_t = 10)]
    pgbench_secs: u32,
    /// pgbench clients (and threads).
    #[arg(long, default_value_t = 2)]
    clients: u32,
    #[command(flatten)]
    tool: ToolArgs,
    /// Leave both clusters running and the scratch directory in place.
    #[arg(long)]
    keep: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("auth_metrics_cost FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<()> {
    ensure!(a.scale > 0, "--scale must be at least 1");
    ensure!(
        a.rounds > 0 && a.reads > 0,
        "--rounds and --reads must be at least 1"
    );
    ensure!(
        a.hot_blocks > 0 && a.redo_blocks > 0,
        "--hot-blocks and --redo-blocks must be at least 1"
    );
    let progs = PgProgs::new(&a.tool.pg_bin)?;
    let (work, tmp) = machine::scratch_dir(a.tool.work_dir.as_deref(), "auth-metrics-cost-")?;
    eprintln!("scratch directory: {}", work.display());
    let mut sides = Vec::new();
    let made = create_sides(a, &progs, &work, &mut sides);
    let outcome = made.and_then(|()| measure(a, &sides));
    if a.keep {
        eprintln!("kept (both clusters running): {}", work.display());
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else {
        for s in &sides {
            if let Err(e) = s.stop() {
                eprintln!("stopping cluster {}: {e:#}", s.label);
            }
        }
    }
    let (info, rows, notes) = outcome?;
    println!();
    print!("{}", report::render(&info, &rows, &notes));
    Ok(())
}

/// The two clusters, `on` then `off`, into `sides` (those made so far stay there to be
/// stopped when a later one fails).
fn create_sides(
    a: &Args,
    progs: &PgProgs,
    work: &std::path::Path,
    sides: &mut Vec<Side>,
) -> Result<()> {
    for (label, init) in [("on", &[][..]), ("off", &["--no-auth", "--no-metrics"][..])] {
        let dir = work.join(label);
        let made = step(&format!("cluster {label}: init, start, pgbench -i"), || {
            Side::create(label, init, a.tool.strata_bin.clone(), progs, &dir, a.scale)
        });
        match made {
            Ok(side) => sides.push(side),
            Err(e) => {
                // Whatever of it started is stopped (a cluster not made yet refuses, quietly).
                if let Ok(cli) = StrataCli::new(a.tool.strata_bin.clone(), &dir) {
                    let _ = cli.run(&["stop"]);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Rounds of `measure_one` on every side in turn; a row per name it returns.
fn in_rounds(
    a: &Args,
    sides: &[Side],
    loads: &mut Vec<f64>,
    mut measure_one: impl FnMut(&Side) -> Result<Vec<(String, f64)>>,
) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..a.rounds {
        for side in sides {
            loads.push(machine::load_1min()?);
            for (name, value) in measure_one(side)? {
                eprintln!("  round {round} {}: {name} {value:.1}", side.label);
                let i = match rows.iter().position(|r| r.name == name) {
                    Some(i) => i,
                    None => {
                        rows.push(Row {
                            name,
                            on: Vec::new(),
                            off: Vec::new(),
                        });
                        rows.len() - 1
                    }
                };
                if side.label == "on" {
                    &mut rows[i].on
                } else {
                    &mut rows[i].off
                }
                .push(value);
            }
        }
    }
    Ok(rows)
}

fn measure(a: &Args, sides: &[Side]) -> Result<(RunInfo, Vec<Row>, Vec<String>)> {
    let mut loads = Vec::new();
    let mut rows = Vec::new();
    // Every page the select-only runs read comes from the pageserver once: read them all
    // before the first measured round, on both sides alike.
    for s in sides {
        step(&format!("warming cluster {}'s compute", s.label), || {
            s.pgbench_tps(&["-S"], a.pgbench_secs, a.clients)
        })?;
    }
    // From here the updates stay deltas over the images compaction wrote after pgbench -i,
    // so the pages the -N rounds change need redo when read below.
    for s in sides {
        s.set_tenant_config("auto_compaction=false")?;
    }
    for (flag, name) in [("-S", "pgbench -S TPS"), ("-N", "pgbench -N TPS")] {
        rows.extend(step(name, || {
            in_rounds(a, sides, &mut loads, |s| {
                Ok(vec![(
                    name.to_string(),
                    s.pgbench_tps(&[flag], a.pgbench_secs, a.clients)?,
                )])
            })
        })?);
    }
    let nblocks = sides[0].accounts_blocks()?;
    for s in sides {
        step(&format!("stopping cluster {}'s compute", s.label), || {
            s.stop_compute()
        })?;
    }
    let hot: Vec<u32> = (0..a.hot_blocks.min(nblocks)).collect();
    let every = (nblocks / a.redo_blocks).max(1);
    let spread: Vec<u32> = (0..nblocks)
        .step_by(every as usize)
        .take(a.redo_blocks as usize)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut clients = Vec::new();
    for s in sides {
        clients.push(rt.block_on(getpage::connect(&s.grpc_url, s.token.clone()))?);
    }
    let mut redo_seen = RedoCounts::default();
    for (class, blocks, cache_pages) in [("hot", &hot, None), ("redo", &spread, Some(0))] {
        if let Some(pages) = cache_pages {
            for s in sides {
                s.set_tenant_config(&format!("page_cache_pages={pages}"))?;
            }
        }
        let names = [Rpc::GetPage, Rpc::GetPagesStream].map(|rpc| {
            (
                rpc,
                format!("{} {class} p50 µs", rpc.label()),
                format!("{} {class} p99 µs", rpc.label()),
            )
        });
        rows.extend(step(&format!("page reads: {class}"), || {
            in_rounds(a, sides, &mut loads, |s| {
                let i = sides.iter().position(|x| x.label == s.label).unwrap_or(0);
                let count_redo = class == "redo";
                let before = if count_redo { s.redo_counts()? } else { None };
                let mut out = Vec::new();
                for (rpc, p50, p99) in &names {
                    let client = &mut clients[i];
                    if class == "hot" {
                        // Into the page cache first: these rows measure cached reads.
                        rt.block_on(getpage::read_round(
                            client,
                            &s.target,
                            blocks,
                            blocks.len(),
                            *rpc,
                        ))?;
                    }
                    let mut us = rt.block_on(getpage::read_round(
                        client, &s.target, blocks, a.reads, *rpc,
                    ))?;
                    us.sort_by(f64::total_cmp);
                    out.push((p50.clone(), percentile(&us, 0.5)));
                    out.push((p99.clone(), percentile(&us, 0.99)));
                }
                if let Some(b) = before {
                    let after = s.redo_counts()?.unwrap_or(b);
                    let d = after.since(b);
                    redo_seen.needed += d.needed;
                    redo_seen.none += d.none;
                }
                Ok(out)
            })
        })?);
    }
    let total = redo_seen.needed + redo_seen.none;
    let notes = vec![
        format!(
            "pages needing redo: cluster on's pageserver counted {} of its {total} reads in the \
             redo rows as needing redo (strata_pageserver_getpage_seconds_count); hot pages: \
             blocks 0–{} of pgbench_accounts, redo pages: one block in {every} of its \
             {nblocks} ({} in all).",
            redo_seen.needed,
            hot.len().saturating_sub(1),
            spread.len()
        ),
        "goal (issue 21): on within the run-to-run noise of off.".to_string(),
    ];
    let info = RunInfo {
        date: machine::utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine::describe(),
        build: machine::build_note(&sides[0].cli.bin),
        scale: a.scale,
        rounds: a.rounds,
        reads: a.reads,
        pgbench_secs: a.pgbench_secs,
        clients: a.clients,
        loads,
    };
    Ok((info, rows, notes))
}
