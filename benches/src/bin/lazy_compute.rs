//! `lazy_compute`: the issue 18 benchmark. At each pgbench scale (`--scales 10,100,300`), in
//! a fresh Strata cluster of its own:
//!
//! 1. `pgbench -i`, a `pg_basebackup` (the PITR's base), TPC-B-like load, T (a restore point),
//!    more load; main's answers at T are noted (`lazy_bench::dataset`).
//! 2. Start at T → first answer, in rotating order each round, the page cache dropped before
//!    each start: a lazy compute (`strata compute start main --at T`), a full copy (the same
//!    with `--full-copy`), and Postgres's own PITR (copy the base backup, replay to T,
//!    promote). The first query is a point select timed on its own; every answer must equal
//!    main's at T.
//! 3. Query speed, lazy against full copy, alternating: `pgbench -S` cold and warm, a cold
//!    and a warm scan of pgbench_accounts (checked), TPC-B-like pgbench on a read-write
//!    compute of a new branch at T (its history checked).
//! 4. The cluster is stopped and its directory removed before the next scale.
//!
//! The report (stdout) names the date, the machine, the load and this command.
//! Build and run with release binaries:
//! `cargo build --release --bins -p strata -p safekeeper -p pageserver -p compute -p strata-benches`
//! then `target/release/lazy_compute --scales 10,100,300`.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use strata_benches::branch_bench::machine;
use strata_benches::branch_bench::pgprog::PgProgs;
use strata_benches::branch_bench::strata_cli::StrataCli;
use strata_benches::branch_bench::tool_args::ToolArgs;
use strata_benches::lazy_bench::at_t::Starter;
use strata_benches::lazy_bench::dataset::{self, DatasetOptions};
use strata_benches::lazy_bench::kind::Kind;
use strata_benches::lazy_bench::query_speed::{self, SpeedOptions};
use strata_benches::lazy_bench::report::{self, RunInfo, ScaleResult};
use strata_benches::lazy_bench::{start_time, Bench, Conditions};

#[derive(Parser, Debug)]
#[command(
    about = "Lazy compute vs full copy vs Postgres PITR: start at a past LSN, first \
                   query, query speed"
)]
struct Args {
    /// pgbench scale factors, one dataset each (about 15 MiB per unit), one after another.
    #[arg(long, value_delimiter = ',', default_value = "10,100,300")]
    scales: Vec<u32>,
    /// What to compare: lazy, full (full copy), pitr.
    #[arg(long, value_delimiter = ',', default_value = "lazy,full,pitr")]
    kinds: Vec<String>,
    /// Rounds of start → first answer (each kind once a round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rounds of the query-speed measurements (0: none).
    #[arg(long, default_value_t = 1)]
    query_rounds: usize,
    /// Seconds of each `pgbench -S` run (cold, then warm).
    #[arg(long, default_value_t = 10)]
    select_secs: u32,
    /// Seconds of the read-write pgbench run.
    #[arg(long, default_value_t = 10)]
    rw_secs: u32,
    /// pgbench clients (and threads).
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Seconds of TPC-B-like load before T and again after it.
    #[arg(long, default_value_t = 5)]
    workload_secs: u32,
    #[command(flatten)]
    tool: ToolArgs,
    /// Leave the last scale's cluster running and the scratch directory in place.
    #[arg(long)]
    keep: bool,
    /// Stop (an error) when the scratch file system has less free space than this.
    #[arg(long, default_value_t = 3)]
    min_free_gb: u64,
    /// Do not drop the OS page cache before each measured start.
    #[arg(long)]
    no_drop_caches: bool,
    /// Longest a Postgres recovery may take.
    #[arg(long, default_value_t = 1800)]
    recovery_timeout_secs: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("lazy_compute FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    ensure!(
        !a.scales.is_empty() && a.scales.iter().all(|s| *s > 0),
        "--scales needs positive scale factors, e.g. 10,100,300"
    );
    ensure!(a.rounds > 0, "--rounds must be at least 1");
    let kinds = parse_kinds(&a.kinds)?;
    let progs = PgProgs::new(&a.tool.pg_bin)?;
    let (work, tmp) = machine::scratch_dir(a.tool.work_dir.as_deref(), "lazy-compute-")?;
    // Only to ask it which flags it has; every dataset has a cluster of its own.
    let probe = StrataCli::new(a.tool.strata_bin.clone(), &work.join("probe"))?;
    let has_full_copy_flag = probe.has_flag(&["compute", "start"], "--full-copy")?;
    if kinds.contains(&Kind::Lazy) && !has_full_copy_flag {
        bail!(
            "{} has no lazy computes (`strata compute start --help` lists no --full-copy): \
             run with --kinds full,pitr",
            probe.bin.display()
        );
    }
    let starter = Starter {
        has_full_copy_flag,
        recovery_timeout: Duration::from_secs(a.recovery_timeout_secs),
    };
    let drop_caches = !a.no_drop_caches && machine::can_drop_caches();
    let cond = Conditions {
        drop_caches,
        min_free_gb: a.min_free_gb,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("scratch directory: {}", work.display());

    let mut info = RunInfo {
        date: machine::utc_now(),
        command,
        machine: machine::describe(),
        build: machine::build_note(&probe.bin),
        drop_caches,
        rounds: a.rounds,
        query_rounds: a.query_rounds,
        select_secs: a.select_secs,
        rw_secs: a.rw_secs,
        clients: a.clients,
    };
    let mut results = Vec::new();
    let mut outcome = Ok(());
    for (i, &scale) in a.scales.iter().enumerate() {
        let last = i + 1 == a.scales.len();
        match one_scale(&a, &progs, &starter, &cond, &kinds, scale, &work, last) {
            Ok(r) => {
                results.push(r);
                // The report so far, in case a later scale fails or the run is cut short.
                if !last {
                    info.date = machine::utc_now();
                    eprintln!("\nreport so far:\n{}", report::render(&info, &results));
                }
            }
            Err(e) => {
                outcome = Err(e.context(format!("at scale {scale}")));
                break;
            }
        }
    }
    if a.keep {
        eprintln!("kept: {}", work.display());
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    }
    // What was measured is printed even when a later scale failed.
    info.date = machine::utc_now();
    if !results.is_empty() {
        println!();
        print!("{}", report::render(&info, &results));
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn one_scale(
    a: &Args,
    progs: &PgProgs,
    starter: &Starter,
    cond: &Conditions,
    kinds: &[Kind],
    scale: u32,
    work: &std::path::Path,
    last: bool,
) -> Result<ScaleResult> {
    let dir = work.join(format!("scale-{scale}"));
    let opts = DatasetOptions {
        scale,
        pg_bin: a.tool.pg_bin.clone(),
        strata_bin: a.tool.strata_bin.clone(),
        clients: a.clients,
        workload_secs: a.workload_secs,
        main_full_copy: starter.has_full_copy_flag,
    };
    machine::check_free_space(work, a.min_free_gb)?;
    let made = dataset::make(&opts, progs, &dir);
    let result = made.and_then(|ds| {
        let bench = Bench {
            ds: &ds,
            progs,
            starter,
            cond,
        };
        let starts = start_time::measure(&bench, kinds, a.rounds)?;
        let speed = SpeedOptions {
            select_secs: a.select_secs,
            rw_secs: a.rw_secs,
            clients: a.clients,
        };
        let speeds = query_speed::measure(&bench, kinds, a.query_rounds, &speed)?;
        Ok(ScaleResult {
            scale,
            db_bytes: ds.db_bytes,
            accounts_bytes: ds.accounts_bytes,
            starts,
            speeds,
        })
    });
    // The next scale needs the disk: this one's cluster and files go (unless kept).
    if !(a.keep && last) {
        let strata = StrataCli::new(a.tool.strata_bin.clone(), &dir.join("strata"))?;
        if strata.dir.exists() {
            if let Err(e) = strata.run(&["stop"]) {
                eprintln!("warning: strata stop at scale {scale}: {e:#}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: removing {}: {e}", dir.display());
        }
    }
    result
}

fn parse_kinds(names: &[String]) -> Result<Vec<Kind>> {
    let mut kinds = Vec::new();
    for n in names {
        let k = Kind::parse(n.trim())
            .with_context(|| format!("--kinds: {n:?} is none of lazy, full, pitr"))?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    ensure!(
        !kinds.is_empty(),
        "--kinds needs at least one of lazy, full, pitr"
    );
    Ok(kinds)
}
