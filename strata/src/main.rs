//! The `strata` command: the local cluster, tenants, branches, computes, point-in-time and
//! time-travel reads, and the WAL tools.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use strata::{auth_setup, cluster, computes, lifecycle, names, output};

use commands::{
    basebackup, branch, check, cluster_json, compute, demo, gc, group, query, role, status, tenant,
    token, verify_redo, waldump,
};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: disaggregated storage for PostgreSQL 15"
)]
struct Cli {
    #[command(flatten)]
    dir: commands::cluster_args::DirArg,
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
    Init(commands::cluster_args::InitArgs),
    /// Start the cluster's safekeepers and pageserver in the background.
    Start,
    /// Stop the cluster's computes, pageserver and safekeepers.
    Stop,
    /// Show the cluster's services, computes and branches (commit, received, ingested,
    /// durable and remote LSNs with lags) and what is wrong; exits 3 on any problem.
    Status(status::StatusArgs),
    /// Tenants: a tenant is one Postgres database cluster and all its branches.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Branches: copy-free forks of a branch's history at any point.
    #[command(subcommand)]
    Branch(branch::BranchCommand),
    /// Computes: vanilla Postgres 15 on a branch, lazy (pages fetched on first read) unless
    /// --full-copy.
    #[command(subcommand)]
    Compute(compute::ComputeCommand),
    /// The LSN of a branch's state as of a time (after the last commit at or before it).
    LsnAt(branch::LsnAtArgs),
    /// The restore points (pg_create_restore_point) of a branch.
    ///
    /// Postgres writes a restore point without flushing its WAL, so one shows here once the
    /// compute flushes it (at its next commit, or within wal_writer_delay) and the safekeepers
    /// know it committed (the walproposer's next message, within 20 ms).
    RestorePoints(branch::BranchArgs),
    /// Time travel: run SQL on a branch as of a past moment, without creating a branch.
    Query(query::QueryArgs),
    /// Roles of the proxy: who may connect to a tenant's branches through `strata start`'s
    /// proxy (SCRAM-SHA-256 passwords).
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// The whole story in one command: a cluster, pgbench, a dropped table, found again by
    /// time and by restore point, branched, and back; prints each step's time.
    Demo(demo::DemoArgs),
    /// Garbage collection: remove history older than the tenant's PITR window (kept: branch
    /// points, leases); prints what was removed.
    Gc(gc::GcArgs),
    /// Keep a point of a branch readable (GC keeps its history) until the lease expires.
    Lease(gc::LeaseArgs),
    /// Check the object store: every timeline's manifest against the objects present
    /// (missing, orphaned, size mismatch), every layer's checksums, and what each branch keeps
    /// readable (GC cutoff, PITR window, leases, branch points). Reads the store directly:
    /// works with the cluster stopped (while it runs, an upload in progress can show as an
    /// orphaned layer: check again). Exits 3 when anything is wrong.
    Check(check::CheckArgs),
    /// Groups of tenants (the servers of one sharded cluster): consistent cuts every few
    /// seconds and restores of the whole group to one of them.
    #[command(subcommand)]
    Group(group::GroupCommand),
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
    /// Tokens for the cluster's services, signed with its key (`<dir>/auth/`).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Print a completion script for a shell, e.g. `strata completions bash >
    /// ~/.local/share/bash-completion/completions/strata`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The cluster's supervisor (started by `strata start`): restarts services that die.
    #[command(hide = true)]
    Supervise,
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
    auth_setup::use_cluster(&dir);
    let ok = |r: anyhow::Result<()>| r.map(|_| ExitCode::SUCCESS);
    let cluster_cmd = !matches!(
        cli.command,
        Command::Init(_)
            | Command::Demo(_)
            | Command::Check(_)
            | Command::Waldump(_)
            | Command::VerifyRedo(_)
            | Command::Import(_)
            | Command::Basebackup(_)
            | Command::Completions { .. }
            | Command::Supervise
    );
    // Services meant to run need their supervisor: restart it if it died (not while the
    // cluster is being stopped).
    if cluster_cmd && !matches!(cli.command, Command::Stop) {
        let meant_to_run = cluster::spec::supervised_names(&dir).is_ok_and(|n| !n.is_empty());
        if meant_to_run {
            if let Err(e) = cluster::daemon::ensure_supervisor(&dir) {
                eprintln!("strata: warning: the supervisor is not running: {e:#}");
            }
        }
    }
    if cluster_cmd {
        if let Ok(cfg) = cluster::ClusterConfig::load(&dir) {
            if let Err(e) = computes::reap_expired(&dir, &cfg) {
                eprintln!("strata: warning: removing expired time-travel computes: {e:#}");
            }
        }
    }
    let result = match cli.command {
        Command::Init(args) => {
            ok(
                cluster_json::quietly(&out, || lifecycle::init(&dir, &args.options()))
                    .and_then(|()| cluster_json::cluster_result(&dir, &out)),
            )
        }
        Command::Start => ok(cluster_json::quietly(&out, || lifecycle::start(&dir))
            .and_then(|()| cluster_json::cluster_result(&dir, &out))),
        Command::Stop => ok(cluster_json::quietly(&out, || lifecycle::stop(&dir))
            .and_then(|()| cluster_json::cluster_result(&dir, &out))),
        Command::Status(a) => status::run(&dir, &a, &out),
        Command::Tenant(c) => ok(tenant::run(&dir, c, &out)),
        Command::Branch(c) => ok(branch::run(&dir, c, &out)),
        Command::Compute(c) => ok(compute::run(&dir, c, &out)),
        Command::LsnAt(a) => ok(branch::lsn_at(&dir, &a, &out)),
        Command::RestorePoints(a) => ok(branch::restore_points(&dir, &a, &out)),
        Command::Query(a) => ok(query::run(&dir, a, &out)),
        Command::Role(c) => ok(role::run(&dir, c, &out)),
        Command::Demo(a) => ok(demo::run(demo_dir, a, &out)),
        Command::Gc(a) => ok(gc::run(&dir, a, &out)),
        Command::Lease(a) => ok(gc::lease(&dir, a, &out)),
        Command::Check(a) => check::run(&dir, a, &out),
        Command::Group(c) => ok(group::run(&dir, c, &out)),
        Command::Waldump(args) => waldump::run(args, cli.json),
        Command::VerifyRedo(args) => verify_redo::run(args, cli.json),
        Command::Import(args) => basebackup::run_import(args, &out),
        Command::Basebackup(args) => basebackup::run_basebackup(args, &out),
        Command::Token(c) => ok(token::run(&dir, c, &out)),
        Command::Completions { shell } => ok(completions(shell, &out)),
        Command::Supervise => ok(cluster::supervisor::run(&dir, computes::lazy::recreate)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = output::error_text(&e);
            // Services name tenants and timelines by id; the user gave names.
            let text = names::Names::load(&dir).map_or(text.clone(), |n| n.humanize(&text));
            eprintln!("strata: error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// The completion script of `shell` (with `--json`: the script as a JSON string).
fn completions(shell: clap_complete::Shell, out: &output::Output) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "strata", &mut script);
    let script = String::from_utf8(script)?;
    out.result(
        script.trim_end(),
        serde_json::json!({"shell": shell.to_string(), "script": script}),
    );
    Ok(())
}
