//! The `strata` command: the local cluster, tenants, branches, computes, point-in-time and
//! time-travel reads, and the WAL tools.

mod basebackup;
mod branch_cmd;
mod cluster;
mod compute_cmd;
mod demo_cmd;
mod gc_cmd;
mod lazy_compute;
mod mgmt;
mod names;
mod output;
mod query_cmd;
mod status_cmd;
mod target;
mod tenant_cmd;
mod tenant_import;
mod verify_redo;
mod waldump;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: disaggregated storage for PostgreSQL 15"
)]
struct Cli {
    #[command(flatten)]
    dir: cluster::DirArg,
    /// Print results as JSON (one value per command) for scripts; progress stays on stderr.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a local cluster (three safekeepers, a pageserver, an object store directory) in
    /// --dir; ports are chosen now and kept.
    Init(cluster::InitArgs),
    /// Start the cluster's safekeepers and pageserver in the background.
    Start,
    /// Stop the cluster's computes, pageserver and safekeepers.
    Stop,
    /// Show the cluster's services, computes and timelines.
    Status,
    /// Tenants: a tenant is one Postgres database cluster and all its branches.
    #[command(subcommand)]
    Tenant(tenant_cmd::TenantCommand),
    /// Branches: copy-free forks of a branch's history at any point.
    #[command(subcommand)]
    Branch(branch_cmd::BranchCommand),
    /// Computes: vanilla Postgres 15 on a branch, lazy (pages fetched on first read) unless
    /// --full-copy.
    #[command(subcommand)]
    Compute(ComputeCommand),
    /// The LSN of a branch's state as of a time (after the last commit at or before it).
    LsnAt(LsnAtArgs),
    /// The restore points (pg_create_restore_point) of a branch.
    RestorePoints(BranchArgs),
    /// Time travel: run SQL on a branch as of a past moment, without creating a branch.
    Query(query_cmd::QueryArgs),
    /// The whole story in one command: a cluster, pgbench, a dropped table, found again by
    /// time and by restore point, branched, and back; prints each step's time.
    Demo(demo_cmd::DemoArgs),
    /// Garbage collection: remove history older than the tenant's PITR window (kept: branch
    /// points, leases); prints what was removed.
    Gc(gc_cmd::GcArgs),
    /// Keep a point of a branch readable (GC keeps its history) until the lease expires.
    Lease(gc_cmd::LeaseArgs),
    /// Decode PostgreSQL 15 WAL files and print their records the way pg_waldump does.
    Waldump(waldump::WaldumpArgs),
    /// Import a base data directory, ingest WAL into a timeline and check every natively
    /// redone page against Postgres's consistency-check images with GetPage@LSN.
    VerifyRedo(verify_redo::VerifyRedoArgs),
    /// Import a PostgreSQL 15 data directory (cleanly shut down, or a pg_basebackup output
    /// with its WAL) into a new timeline directory.
    Import(basebackup::ImportArgs),
    /// Write a data directory (tar or directory) of a timeline directory at an LSN that
    /// vanilla Postgres starts from (read-write, or read-only as a hot standby).
    Basebackup(basebackup::BasebackupArgs),
    /// The cluster's supervisor (started by `strata start`): restarts services that die.
    #[command(hide = true)]
    Supervise,
}

#[derive(Subcommand)]
enum ComputeCommand {
    /// Start a compute on a branch and print its connection string.
    Start(ComputeStartArgs),
    /// Stop a compute and remove its scratch data directory.
    Stop {
        /// The compute's name (see `strata status`).
        name: String,
    },
}

#[derive(Args)]
struct ComputeStartArgs {
    #[arg(default_value = "main")]
    branch: String,
    /// A past moment (LSN, time or restore point): the compute is read-only there.
    #[arg(long)]
    at: Option<String>,
    /// A hot standby that never writes: at --at, or at the branch's latest state.
    #[arg(long)]
    read_only: bool,
    /// The compute's name (default: the branch's name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// Copy every page into a local data directory before Postgres starts (the default is
    /// a lazy compute: a page filesystem fetches each page from the pageserver on first
    /// read, so the start does not depend on the database's size).
    #[arg(long)]
    full_copy: bool,
}

#[derive(Args)]
struct BranchArgs {
    #[arg(long, default_value = "main")]
    branch: String,
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Args)]
struct LsnAtArgs {
    /// A time like "2026-11-21 22:10:05+00" (UTC when no offset) or @<unix seconds>.
    time: String,
    #[command(flatten)]
    branch: BranchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (dir, demo_dir) = match (cli.dir.path(), cli.dir.explicit()) {
        (Ok(d), Ok(explicit)) => (d, explicit),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("strata: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let out = output::Output::new(cli.json);
    let ok = |r: anyhow::Result<()>| r.map(|_| ExitCode::SUCCESS);
    let cluster_cmd = !matches!(
        cli.command,
        Command::Init(_)
            | Command::Demo(_)
            | Command::Waldump(_)
            | Command::VerifyRedo(_)
            | Command::Import(_)
            | Command::Basebackup(_)
            | Command::Supervise
    );
    // Services meant to run need their supervisor: restart it if it died (not while the
    // cluster is being stopped).
    if cluster_cmd && !matches!(cli.command, Command::Stop) {
        let meant_to_run = cluster::spec::supervised_names(&dir).is_ok_and(|n| !n.is_empty());
        if meant_to_run {
            if let Err(e) = cluster::supervisor::ensure_running(&dir) {
                eprintln!("strata: warning: the supervisor is not running: {e:#}");
            }
        }
    }
    if cluster_cmd {
        if let Ok(cfg) = cluster::ClusterConfig::load(&dir) {
            if let Err(e) = compute_cmd::reap_expired(&dir, &cfg) {
                eprintln!("strata: warning: removing expired time-travel computes: {e:#}");
            }
        }
    }
    let result = match cli.command {
        Command::Init(args) => ok(cluster::init(&dir, &args)),
        Command::Start => ok(cluster::start(&dir)),
        Command::Stop => ok(cluster::stop(&dir)),
        Command::Status => status_cmd::run(&dir, &out),
        Command::Tenant(c) => ok(tenant_cmd::run(&dir, c, &out)),
        Command::Branch(c) => ok(branch_cmd::run(&dir, c, &out)),
        Command::Compute(ComputeCommand::Start(a)) => ok(compute_start(&dir, a, &out)),
        Command::Compute(ComputeCommand::Stop { name }) => ok(compute_stop(&dir, &name)),
        Command::LsnAt(a) => ok(branch_cmd::lsn_at(
            &dir,
            &a.time,
            &a.branch.branch,
            a.branch.tenant.as_deref(),
            &out,
        )),
        Command::RestorePoints(a) => ok(branch_cmd::restore_points(
            &dir,
            &a.branch,
            a.tenant.as_deref(),
            &out,
        )),
        Command::Query(a) => ok(query_cmd::run(&dir, a, &out)),
        Command::Demo(a) => ok(demo_cmd::run(demo_dir, a, &out)),
        Command::Gc(a) => ok(gc_cmd::run(&dir, a, &out)),
        Command::Lease(a) => ok(gc_cmd::lease(&dir, a, &out)),
        Command::Waldump(args) => waldump::run(args),
        Command::VerifyRedo(args) => verify_redo::run(args),
        Command::Import(args) => basebackup::run_import(args),
        Command::Basebackup(args) => basebackup::run_basebackup(args),
        Command::Supervise => ok(cluster::supervisor::run(&dir)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn compute_start(
    dir: &std::path::Path,
    a: ComputeStartArgs,
    out: &output::Output,
) -> anyhow::Result<()> {
    let at = a.at.as_deref().map(target::Target::parse).transpose()?;
    let read_only = a.read_only || at.is_some();
    let rec = compute_cmd::start(
        dir,
        compute_cmd::StartRequest {
            branch: &a.branch,
            tenant: a.tenant.as_deref(),
            at,
            read_only,
            name: a.name,
            ttl_secs: None,
            full_copy: a.full_copy,
        },
        out,
    )?;
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", rec.port);
    let mode = if rec.read_only {
        "read-only"
    } else {
        "read-write"
    };
    out.result(
        &format!(
            "compute {} ({mode}, {}) on branch {} at {}: {url}",
            rec.name,
            rec.kind(),
            rec.branch,
            rec.lsn
        ),
        serde_json::json!({
            "name": rec.name, "branch": rec.branch, "lsn": rec.lsn,
            "read_only": rec.read_only, "port": rec.port, "connstr": url,
            "lazy": rec.lazy,
        }),
    );
    Ok(())
}

fn compute_stop(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let cfg = cluster::ClusterConfig::load(dir)?;
    compute_cmd::ComputeRecord::load(dir, name)?;
    compute_cmd::remove(dir, &cfg, name)?;
    println!("stopped compute {name}");
    Ok(())
}
