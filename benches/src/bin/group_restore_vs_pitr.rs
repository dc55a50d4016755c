//! `group_restore_vs_pitr`: the time to bring a 3-member group back to one consistent cut and
//! answer a first query on every member, in Strata and with Postgres's own PITR of each
//! member, with the WAL since the base backups at `--multiple` (5) times the data.
//!
//! 1. A Strata cluster (`strata init --no-auth`), one tenant and compute per member, each
//!    keeping all its WAL (`wal_keep_size`); `pgbench -i -s N -F 50` on each, then a
//!    `pg_basebackup` of each.
//! 2. The steady workload of `branch_vs_pitr` (HOT updates of 1,000 accounts, a VACUUM after
//!    each run) on every member at once until each one's WAL since its backup is
//!    `--multiple` times its database.
//! 3. The workload stops, each member's answer is noted, and a cut of the group is taken
//!    (`strata group restore-point create`): LSN C_i per member.
//! 4. Rounds, alternating: Strata — `strata group branch --at CUT` (a branch and a compute
//!    per member, then the settlement) and the first query on every member; Postgres — on
//!    every member at once, copy its base backup, replay its WAL to C_i
//!    (`recovery_target_lsn`, not inclusive), promote, the same query. Every answer must be
//!    the member's at the cut.
//! 5. Medians and spread of both, the ratio, and the load average.
//!
//! `cargo build --release --bins -p strata -p safekeeper -p pageserver -p compute -p
//! strata-benches && target/release/group_restore_vs_pitr --scale 2 --rounds 3`

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use strata_benches::branch_bench::pgprog::{backup_start_lsn, PgProgs, Server};
use strata_benches::branch_bench::report::mib;
use strata_benches::branch_bench::tool_args::ToolArgs;
use strata_benches::branch_bench::{machine, pitr, step, strata_cli::StrataCli};
use walproto::Lsn;

#[derive(Parser, Debug)]
#[command(about = "Restore a 3-member group to a cut: Strata vs Postgres PITR of each member")]
struct Args {
    /// pgbench scale factor of every member (about 16 MB of data per unit at fillfactor 100).
    #[arg(long, default_value_t = 1)]
    scale: u32,
    /// WAL since the base backups, in multiples of each member's database.
    #[arg(long, default_value_t = 5.0)]
    multiple: f64,
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Measurements of each side, alternating Strata and Postgres.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// pgbench clients per member.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    #[command(flatten)]
    tool: ToolArgs,
    /// Longest a Postgres recovery may take.
    #[arg(long, default_value_t = 1800)]
    recovery_timeout_secs: u64,
}

const QUERY: &str = "SELECT count(*), sum(abalance) FROM pgbench_accounts";
const GROUP: &str = "shards";
const CUT: &str = "bench-cut";

/// One member: its compute, WAL and base backup, and where the cut put it.
struct Member {
    tenant: String,
    server: Server,
    wal_dir: PathBuf,
    backup: PathBuf,
    backup_lsn: Lsn,
    cut_lsn: Lsn,
    answer: String,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("group_restore_vs_pitr FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    ensure!(
        a.scale > 0 && a.members > 0 && a.rounds > 0,
        "--scale, --members and --rounds must be at least 1"
    );
    let progs = PgProgs::new(&a.tool.pg_bin)?;
    let (work, _tmp) = machine::scratch_dir(a.tool.work_dir.as_deref(), "group-vs-pitr-")?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    progs.give(&work)?;
    let strata = StrataCli::new(a.tool.strata_bin.clone(), &work.join("strata"))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = bench(&a, &progs, &strata, &work);
    if let Err(e) = strata.run(&["stop"]) {
        eprintln!("warning: strata stop: {e:#}");
    }
    let (members, strata_secs, pg_secs) = result?;
    println!();
    println!("group_restore_vs_pitr: {command}");
    println!(
        "machine: {}; load average (1 min) at the end {:.1}",
        machine::describe(),
        machine::load_1min()?
    );
    for m in &members {
        println!(
            "  member {}: WAL since its base backup {:.0} MiB, cut at {}",
            m.tenant,
            mib(m.cut_lsn.0.saturating_sub(m.backup_lsn.0)),
            m.cut_lsn
        );
    }
    let (s, p) = (summary(&strata_secs), summary(&pg_secs));
    println!(
        "{:<34} {:>8} {:>8} {:>8}  runs",
        "restore + first query on all", "median", "min", "max"
    );
    println!(
        "{:<34} {:>7.2}s {:>7.2}s {:>7.2}s  {:?}",
        "strata group branch --at CUT",
        s.0,
        s.1,
        s.2,
        rounded(&strata_secs)
    );
    println!(
        "{:<34} {:>7.2}s {:>7.2}s {:>7.2}s  {:?}",
        "Postgres PITR of each (parallel)",
        p.0,
        p.1,
        p.2,
        rounded(&pg_secs)
    );
    println!("Postgres / Strata (medians): {:.1}×", p.0 / s.0);
    Ok(())
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}

/// (median, min, max).
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

type Measured = (Vec<Member>, Vec<f64>, Vec<f64>);

fn bench(a: &Args, progs: &PgProgs, strata: &StrataCli, work: &Path) -> Result<Measured> {
    step("strata init and start", || {
        let pg_bin = a.tool.pg_bin.display().to_string();
        strata.run(&["init", "--no-auth", "--pg-bin", &pg_bin])?;
        strata.run(&["start"])
    })?;
    let mut members = Vec::new();
    for i in 0..a.members {
        let tenant = format!("shard{i}");
        members.push(step(
            &format!("member {tenant}: tenant, compute, pgbench -i, base backup"),
            || setup_member(a, progs, strata, work, &tenant),
        )?);
    }
    let tenants: Vec<&str> = members.iter().map(|m| m.tenant.as_str()).collect();
    strata.run(&[
        "group",
        "create",
        GROUP,
        "--tenants",
        &tenants.join(","),
        "--every",
        "0",
    ])?;

    step(
        &format!(
            "workload until every member's WAL is {}× its data",
            a.multiple
        ),
        || workload(a, &members, work),
    )?;
    for m in &mut members {
        m.answer = m.server.sql(QUERY)?;
    }
    let cut = strata.run_json(&["group", "restore-point", "create", GROUP, CUT])?;
    for m in &mut members {
        let lsn = cut["lsns"][&m.tenant]
            .as_str()
            .with_context(|| format!("the cut has no LSN for {}: {cut}", m.tenant))?;
        m.cut_lsn = lsn
            .parse()
            .map_err(|e| anyhow::anyhow!("cut LSN {lsn}: {e}"))?;
        // Postgres's recovery stops at the first record at or past the target: one must come.
        m.server
            .sql("CREATE TABLE after_the_cut AS SELECT 1 AS x")?;
    }
    for m in &members {
        step(
            &format!("wait until the pageserver has all of {}'s WAL", m.tenant),
            || strata.wait_caught_up(&m.tenant, "main", "caught-up"),
        )?;
    }

    let (mut strata_secs, mut pg_secs) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        strata_secs.push(step(
            &format!("round {round}: strata group branch → first queries"),
            || strata_restore(progs, strata, &members, round),
        )?);
        pg_secs.push(step(
            &format!("round {round}: Postgres PITR of every member → first queries"),
            || pg_restore(a, &members),
        )?);
        eprintln!(
            "  round {round}: Strata {:.2} s, Postgres {:.2} s",
            strata_secs[round], pg_secs[round]
        );
    }
    Ok((members, strata_secs, pg_secs))
}

fn setup_member(
    a: &Args,
    progs: &PgProgs,
    strata: &StrataCli,
    work: &Path,
    tenant: &str,
) -> Result<Member> {
    strata.run(&["tenant", "create", tenant])?;
    let started =
        strata.compute_start_with(&strata_benches::branch_bench::strata_cli::ComputeStart {
            tenant,
            branch: "main",
            name: Some(tenant),
            ..Default::default()
        })?;
    let server = Server {
        progs: progs.clone(),
        port: started.port,
    };
    let wal_dir = strata.dir.join("computes").join(tenant).join("data/pg_wal");
    ensure!(
        wal_dir.is_dir(),
        "the compute's WAL is not at {}",
        wal_dir.display()
    );
    server.sql("ALTER SYSTEM SET wal_keep_size = '200GB'")?;
    server.sql("SELECT pg_reload_conf()")?;
    server.pgbench(&["-i", "-q", "-s", &a.scale.to_string(), "-F", "50"])?;
    let backup = work.join(format!("basebackup-{tenant}"));
    server.pg_basebackup(&backup)?;
    let backup_lsn = backup_start_lsn(&backup)?;
    Ok(Member {
        tenant: tenant.to_string(),
        server,
        wal_dir,
        backup,
        backup_lsn,
        cut_lsn: Lsn(0),
        answer: String::new(),
    })
}

/// HOT updates of 1,000 accounts at a time on every member at once, in runs of a few
/// seconds, until each member's WAL since its backup reaches the multiple of its database.
fn workload(a: &Args, members: &[Member], work: &Path) -> Result<()> {
    let script = strata_benches::branch_bench::bulk_update_script(work, a.scale)?;
    let script = script.display().to_string();
    let t0 = Instant::now();
    loop {
        let mut behind = Vec::new();
        for m in members {
            let now = m.server.lsn("SELECT pg_current_wal_lsn()")?;
            let db: u64 = m
                .server
                .sql("SELECT pg_database_size('postgres')")?
                .parse()?;
            let since = now.0.saturating_sub(m.backup_lsn.0);
            eprintln!(
                "  {}: WAL {:.0} MiB = {:.2}× of {:.1} MiB after {:.0} s",
                m.tenant,
                mib(since),
                since as f64 / db as f64,
                mib(db),
                t0.elapsed().as_secs_f64()
            );
            if (since as f64) < a.multiple * db as f64 {
                behind.push(m);
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!("the WAL did not reach {}× in an hour", a.multiple);
        }
        let clients = a.clients.to_string();
        std::thread::scope(|s| -> Result<()> {
            let runs: Vec<_> = behind
                .iter()
                .map(|m| {
                    let (script, clients) = (&script, &clients);
                    s.spawn(move || -> Result<()> {
                        m.server
                            .pgbench(&["-n", "-c", clients, "-T", "5", "-f", script])?;
                        m.server.sql("VACUUM pgbench_accounts").map(drop)
                    })
                })
                .collect();
            for r in runs {
                r.join().expect("pgbench thread")?;
            }
            Ok(())
        })?;
    }
}

/// `strata group branch` and the first query on every member; seconds.
fn strata_restore(
    progs: &PgProgs,
    strata: &StrataCli,
    members: &[Member],
    round: usize,
) -> Result<f64> {
    let branch = format!("restored{round}");
    let t0 = Instant::now();
    let r = strata.run_json(&["group", "branch", GROUP, "--at", CUT, "--as", &branch])?;
    let restored = r["members"].as_array().context("members")?;
    for (m, rm) in members.iter().zip(restored) {
        let port = rm["port"].as_u64().context("port")? as u16;
        let answer = Server {
            progs: progs.clone(),
            port,
        }
        .sql(QUERY)?;
        ensure!(
            answer == m.answer,
            "{} restored answers {answer}, at the cut it was {}",
            m.tenant,
            m.answer
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    for rm in restored {
        strata.compute_stop(rm["compute"].as_str().context("compute")?)?;
    }
    Ok(secs)
}

/// Every member's PITR to its cut LSN at once, and the first query on each; seconds until
/// the last answered.
fn pg_restore(a: &Args, members: &[Member]) -> Result<f64> {
    let timeout = Duration::from_secs(a.recovery_timeout_secs);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let runs: Vec<_> = members
            .iter()
            .map(|m| {
                s.spawn(move || -> Result<()> {
                    let r = pitr::recover_to(&m.backup, &m.wal_dir, m.cut_lsn, timeout)?;
                    let answer = r.cluster.psql(QUERY)?.trim_end().to_string();
                    ensure!(
                        answer == m.answer,
                        "{}: PITR answers {answer}, at the cut it was {}",
                        m.tenant,
                        m.answer
                    );
                    Ok(())
                })
            })
            .collect();
        for r in runs {
            r.join().expect("PITR thread")?;
        }
        Ok(())
    })?;
    Ok(t0.elapsed().as_secs_f64())
}
