//! `branch_vs_pitr`: the time from "branch at T" to the first query answered on that branch,
//! in Strata and with Postgres's own PITR, side by side in one run, with the WAL since the
//! base backup at several multiples of the database size.
//!
//! 1. A Strata cluster through the CLI (`strata init/start/tenant create/compute start main`).
//! 2. `pgbench -i -s N -F 50` on the compute, which keeps all its WAL (`wal_keep_size`), then
//!    a `pg_basebackup` of it.
//! 3. pgbench until the WAL since the backup is 1×, 5×, 20× (`--multiples`) the database's
//!    size at that moment (measured at every check and printed); at each, the workload
//!    pauses, main's answer is noted, and a restore point's end LSN is T. The default
//!    `steady` workload keeps the database's size about constant (HOT updates on half-full
//!    pages, a VACUUM after every pgbench run); `bulk` is the same updates bloating the
//!    database (fillfactor 100, no VACUUM), `tpcb` pgbench's own transactions.
//! 4. For each T: Strata — `strata branch create --at T` + `strata compute start` + the first
//!    query; Postgres — copy the base backup, `recovery_target_lsn = T` with a
//!    `restore_command` reading the compute's pg_wal, start, wait for the promotion, the same
//!    query. Both answers must equal main's at T.
//! 5. A table: WAL multiple, WAL bytes, database size at T, Strata seconds, Postgres
//!    seconds, ratio; then `strata compute start`'s own breakdown of its time at each T.
//!
//! Build and run with release binaries:
//! `cargo build --release --bins && target/release/branch_vs_pitr --scale 5`

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use strata_benches::branch_bench::pgprog::{backup_start_lsn, PgProgs, Server};
use strata_benches::branch_bench::report::{self, mib, Row};
use strata_benches::branch_bench::tool_args::ToolArgs;
use strata_benches::branch_bench::{machine, pitr, step, strata_cli::StrataCli};
use walproto::Lsn;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    /// The bulk updates on `pgbench -i -F <fillfactor>` tables with a VACUUM of the accounts
    /// after each pgbench run: the updates are HOT and pruning and VACUUM reuse the space,
    /// so the database stays about its size while the WAL grows (the honest default).
    Steady,
    /// A pgbench script updating 1,000 consecutive accounts per transaction (much more WAL
    /// per second: reaches 20× in minutes on a small machine); fillfactor 100 and no VACUUM,
    /// so the database bloats as the WAL grows.
    Bulk,
    /// pgbench's built-in TPC-B-like transactions.
    Tpcb,
}

#[derive(Parser, Debug)]
#[command(about = "Strata branch-at-T → first query vs Postgres PITR to the same LSN")]
struct Args {
    /// pgbench scale factor (about 16 MB of data per unit). At 20× the WAL is about 20 times
    /// the database and Strata stores it several times: scale 5 needs about 12 GB free.
    #[arg(long, default_value_t = 5)]
    scale: u32,
    /// WAL since the base backup, in multiples of the database size, at which T is taken.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20")]
    multiples: Vec<f64>,
    #[arg(long, value_enum, default_value_t = Workload::Steady)]
    workload: Workload,
    /// `pgbench -i -F`: the tables' fillfactor for the `steady` workload (room on each page
    /// for the HOT updates' new row versions).
    #[arg(long, default_value_t = 50)]
    fillfactor: u32,
    /// pgbench clients.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// The workload runs in pgbench runs of at most this many seconds between WAL checks.
    #[arg(long, default_value_t = 5)]
    chunk_secs: u32,
    #[command(flatten)]
    tool: ToolArgs,
    /// Leave the Strata cluster running and the scratch directory in place.
    #[arg(long)]
    keep: bool,
    /// Stop the workload (an error) when the scratch file system has less free space than
    /// this: Strata keeps the WAL several times (safekeepers, object store, layers) and the
    /// compute keeps it all for the PITR; 1 GB of WAL needs about 6 GB.
    #[arg(long, default_value_t = 4)]
    min_free_gb: u64,
    /// Longest a Postgres recovery may take.
    #[arg(long, default_value_t = 1800)]
    recovery_timeout_secs: u64,
}

const TENANT: &str = "bench";
const QUERY: &str = "SELECT count(*), sum(abalance) FROM pgbench_accounts";

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("branch_vs_pitr FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    ensure!(a.scale > 0, "--scale must be at least 1");
    ensure!(
        (10..=100).contains(&a.fillfactor),
        "--fillfactor must be between 10 and 100"
    );
    ensure!(
        !a.multiples.is_empty() && a.multiples.iter().all(|m| *m > 0.0),
        "--multiples needs positive numbers, e.g. 1,5,20"
    );
    let mut multiples = a.multiples.clone();
    multiples.sort_by(f64::total_cmp);
    let progs = PgProgs::new(&a.tool.pg_bin)?;
    let (work, tmp) = machine::scratch_dir(a.tool.work_dir.as_deref(), "branch-vs-pitr-")?;
    // Postgres (the postgres user when we are root) must reach into it.
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    progs.give(&work)?;
    let strata = StrataCli::new(a.tool.strata_bin.clone(), &work.join("strata"))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("scratch directory: {}", work.display());

    let result = bench(&a, &multiples, &progs, &strata, &work);
    if a.keep {
        eprintln!(
            "kept: {} (stop with `{} --dir {} stop`)",
            work.display(),
            strata.bin.display(),
            strata.dir.display()
        );
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else if let Err(e) = strata.run(&["stop"]) {
        eprintln!("warning: strata stop: {e:#}");
    }
    let (db_bytes, rows) = result?;
    println!();
    print!("{}", report::table(&command, db_bytes, &rows));
    Ok(())
}

/// A point in time on main.
struct Mark {
    multiple: f64,
    lsn: Lsn,
    answer: String,
    /// pg_database_size on main at T: what a basebackup at T carries.
    db_bytes: u64,
}

fn bench(
    a: &Args,
    multiples: &[f64],
    progs: &PgProgs,
    strata: &StrataCli,
    work: &Path,
) -> Result<(u64, Vec<Row>)> {
    let dir = strata.dir.display().to_string();
    step("strata init", || {
        // Its psql runs as the Postgres OS user over TCP, without the cluster's password.
        let pg_bin = a.tool.pg_bin.display().to_string();
        strata.run(&["init", "--no-auth", "--pg-bin", &pg_bin])
    })?;
    step("strata start", || strata.run(&["start"]))?;
    step("strata tenant create", || {
        strata.run(&["tenant", "create", TENANT])
    })?;
    let port = step("strata compute start main", || {
        strata.compute_start(TENANT, "main")
    })?;
    let main = Server {
        progs: progs.clone(),
        port,
    };
    let main_wal = strata.dir.join("computes/main/data/pg_wal");
    ensure!(
        main_wal.is_dir(),
        "the compute's WAL is not at {} (strata --dir {dir} status)",
        main_wal.display()
    );
    // Keep every WAL segment from the base backup on: Postgres's PITR reads them.
    main.sql("ALTER SYSTEM SET wal_keep_size = '200GB'")?;
    main.sql("SELECT pg_reload_conf()")?;
    main.sql("CREATE TABLE bench_marks(name text PRIMARY KEY, lsn pg_lsn)")?;

    let scale = a.scale.to_string();
    let fillfactor = match a.workload {
        Workload::Steady => a.fillfactor,
        Workload::Bulk | Workload::Tpcb => 100,
    }
    .to_string();
    step(&format!("pgbench -i -s {scale} -F {fillfactor}"), || {
        main.pgbench(&["-i", "-q", "-s", &scale, "-F", &fillfactor])
    })?;
    let db_bytes = db_size(&main)?;
    eprintln!("  database size: {:.1} MiB", mib(db_bytes));
    let backup_dir = work.join("basebackup");
    step("pg_basebackup of the compute", || {
        main.pg_basebackup(&backup_dir)
    })?;
    let backup_lsn = backup_start_lsn(&backup_dir)?;
    eprintln!("  base backup starts at {backup_lsn}");

    let script = strata_benches::branch_bench::bulk_update_script(work, a.scale)?;

    // The workload, with a mark at each multiple.
    let mut marks = Vec::new();
    let t_load = Instant::now();
    // WAL bytes per second of the last pgbench run: the next run is just long enough.
    let mut rate: Option<f64> = None;
    for &m in multiples {
        loop {
            let now = main.lsn("SELECT pg_current_wal_lsn()")?;
            let since = now.0.saturating_sub(backup_lsn.0);
            // The multiple is of the database's size now (at T), not at the base backup.
            let db_now = db_size(&main)?;
            let goal = (m * db_now as f64) as u64;
            eprintln!(
                "  WAL since the base backup: {:.0} MiB ({:.2}× of the database's {:.1} MiB, \
                 goal {m}×) after {:.0} s",
                mib(since),
                since as f64 / db_now as f64,
                mib(db_now),
                t_load.elapsed().as_secs_f64()
            );
            if since >= goal {
                break;
            }
            machine::check_free_space(work, a.min_free_gb)?;
            let secs = match rate {
                Some(r) if r > 0.0 => ((goal - since) as f64 / r).ceil() as u32,
                _ => 1,
            }
            .clamp(1, a.chunk_secs.max(1));
            let t0 = Instant::now();
            run_workload(a, &main, &script, secs)?;
            let after = main.lsn("SELECT pg_current_wal_lsn()")?;
            rate = Some(after.0.saturating_sub(now.0) as f64 / t0.elapsed().as_secs_f64());
        }
        marks.push(mark(&main, m)?);
    }
    // T of the last mark needs a commit after it (Postgres's recovery stops at the first
    // record at or past T, and the pageserver receives only flushed WAL).
    main.sql("INSERT INTO bench_marks VALUES ('end', pg_current_wal_lsn())")?;

    // Strata has ingested WAL all along; let it finish before the clock starts.
    step("wait until the pageserver has all of main's WAL", || {
        strata.wait_caught_up(TENANT, "main", "caught-up")
    })?;

    let mut rows = Vec::new();
    for mk in &marks {
        let row = measure(a, progs, strata, &main_wal, &backup_dir, backup_lsn, mk)?;
        eprintln!(
            "  {}×: Strata {:.2} s, Postgres {:.2} s",
            mk.multiple, row.strata_secs, row.pg_secs
        );
        rows.push(row);
    }
    Ok((db_bytes, rows))
}

fn run_workload(a: &Args, main: &Server, script: &Path, secs: u32) -> Result<()> {
    let c = a.clients.to_string();
    let t = secs.to_string();
    let s = script.display().to_string();
    let mut args = vec!["-n", "-c", &c, "-j", "2", "-T", &t];
    match a.workload {
        Workload::Tpcb => args.extend(["-b", "tpcb-like"]),
        Workload::Bulk | Workload::Steady => args.extend(["-f", &s]),
    }
    main.pgbench(&args)?;
    if matches!(a.workload, Workload::Steady) {
        // Dead row versions the HOT pruning left behind become free space again.
        main.sql("VACUUM pgbench_accounts")?;
    }
    Ok(())
}

/// `pg_database_size` of the benchmark's database.
fn db_size(main: &Server) -> Result<u64> {
    main.sql("SELECT pg_database_size('postgres')")?
        .parse()
        .context("pg_database_size")
}

/// Notes main's answer and makes T: the end LSN of a restore point written right after (a
/// true record end; nothing between changes pgbench_accounts).
fn mark(main: &Server, m: f64) -> Result<Mark> {
    let answer = main.sql(QUERY)?;
    let db_bytes = db_size(main)?;
    let name = format!("bench-{m}x");
    let lsn = main.lsn(&format!("SELECT pg_create_restore_point('{name}')"))?;
    main.sql(&format!(
        "INSERT INTO bench_marks VALUES ('{name}', '{lsn}')"
    ))?;
    eprintln!(
        "  T at {m}×: {lsn}, main answers {answer}, database {:.1} MiB",
        mib(db_bytes)
    );
    Ok(Mark {
        multiple: m,
        lsn,
        answer,
        db_bytes,
    })
}

fn measure(
    a: &Args,
    progs: &PgProgs,
    strata: &StrataCli,
    main_wal: &Path,
    backup_dir: &Path,
    backup_lsn: Lsn,
    mk: &Mark,
) -> Result<Row> {
    let lsn = mk.lsn.to_string();
    let branch = format!("at-{}x", mk.multiple).replace('.', "_");

    // Strata: branch at T, a compute on it, the first query.
    let (strata_secs, branch_secs, compute_secs, query_secs, breakdown, s_answer) = step(
        &format!("Strata: branch at {lsn} ({}×) → first query", mk.multiple),
        || {
            let t0 = Instant::now();
            let got = strata.branch_create(TENANT, &branch, "main", Some(&lsn))?;
            ensure!(got == lsn, "the branch is at {got}, not at {lsn}");
            let branch_secs = t0.elapsed().as_secs_f64();
            let (port, breakdown) = strata.compute_start_timed(TENANT, &branch)?;
            let compute_secs = t0.elapsed().as_secs_f64() - branch_secs;
            eprintln!("  compute start breakdown: {breakdown}");
            let t_query = Instant::now();
            let answer = Server {
                progs: progs.clone(),
                port,
            }
            .sql(QUERY)?;
            Ok((
                t0.elapsed().as_secs_f64(),
                branch_secs,
                compute_secs,
                t_query.elapsed().as_secs_f64(),
                breakdown,
                answer,
            ))
        },
    )?;
    strata.run(&["compute", "stop", &branch])?;

    // Postgres: restore the base backup, replay to T, promote, the same query.
    let (pg_secs, copy_secs, p_answer) = step(
        &format!("Postgres: PITR to {lsn} ({}×) → first query", mk.multiple),
        || {
            let t0 = Instant::now();
            let r = pitr::recover_to(
                backup_dir,
                main_wal,
                mk.lsn,
                Duration::from_secs(a.recovery_timeout_secs),
            )?;
            let answer = r.cluster.psql(QUERY)?.trim_end().to_string();
            eprintln!(
                "  copy {:.2} s, replay and promotion {:.2} s",
                r.copy_secs, r.replay_secs
            );
            Ok((t0.elapsed().as_secs_f64(), r.copy_secs, answer))
        },
    )?;
    if s_answer != mk.answer || p_answer != mk.answer {
        bail!(
            "answers differ at {lsn}: main {}, Strata branch {s_answer}, Postgres PITR {p_answer}",
            mk.answer
        );
    }
    Ok(Row {
        multiple: mk.multiple,
        lsn,
        wal_bytes: mk.lsn.0.saturating_sub(backup_lsn.0),
        db_bytes_at_t: mk.db_bytes,
        strata_secs,
        strata_branch_secs: branch_secs,
        strata_compute_secs: compute_secs,
        pg_secs,
        pg_copy_secs: copy_secs,
        answer: mk.answer.clone(),
        strata_breakdown: breakdown,
        strata_query_secs: query_secs,
    })
}
