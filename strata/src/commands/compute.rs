//! `strata compute start|stop|list`.

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use strata::cluster::daemon::State;
use strata::cluster::ClusterConfig;
use strata::computes::settings;
use strata::computes::{self, ComputeRecord};
use strata::output::Output;
use strata::{auth_setup, target};

use super::cluster_json::quietly;

#[derive(Subcommand)]
pub enum ComputeCommand {
    /// Start a compute on a branch and print its connection string.
    Start(ComputeStartArgs),
    /// Stop a compute and remove its scratch data directory.
    Stop {
        /// The compute's name (see `strata status`).
        name: String,
    },
    /// List the computes: branch, mode, port, and whether they run.
    List,
}

#[derive(Args)]
pub struct ComputeStartArgs {
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
    /// A Postgres setting of this compute, e.g. `--set work_mem=64MB` (repeatable; the last
    /// of a key wins). Kept across restarts and recreations; Postgres refuses a bad value at
    /// the start, with its message.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = settings::parse_setting)]
    settings: Vec<(String, String)>,
}

pub fn run(dir: &Path, cmd: ComputeCommand, out: &Output) -> Result<()> {
    match cmd {
        ComputeCommand::Start(a) => start(dir, a, out),
        ComputeCommand::Stop { name } => stop(dir, &name, out),
        ComputeCommand::List => list(dir, out),
    }
}

/// `strata compute start`: the compute's connection string (and how to log in).
fn start(dir: &Path, a: ComputeStartArgs, out: &Output) -> Result<()> {
    let at = a.at.as_deref().map(target::Target::parse).transpose()?;
    let read_only = a.read_only || at.is_some();
    let rec = computes::start(
        dir,
        computes::StartRequest {
            branch: &a.branch,
            tenant: a.tenant.as_deref(),
            at,
            read_only,
            name: a.name,
            ttl_secs: None,
            full_copy: a.full_copy,
            settings: &a.settings,
        },
        out,
    )?;
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", rec.port);
    let mode = if rec.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let cfg = ClusterConfig::load(dir)?;
    let password = auth_setup::compute_password(dir, &cfg)?;
    let pgpass = password.as_ref().map(|_| auth_setup::pgpass_file(dir));
    let login = match &pgpass {
        Some(p) => format!("\n  PGPASSFILE={} psql {url}", p.display()),
        None => String::new(),
    };
    out.result(
        &format!(
            "compute {} ({mode}, {}) on branch {} at {}: {url}{login}",
            rec.name,
            rec.kind(),
            rec.branch,
            rec.lsn
        ),
        serde_json::json!({
            "name": rec.name, "branch": rec.branch, "lsn": rec.lsn,
            "read_only": rec.read_only, "port": rec.port, "connstr": url,
            "lazy": rec.lazy,
            "settings": a.settings.iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "log": computes::log_file(dir, &rec.name),
            "password": password, "pgpass_file": pgpass,
        }),
    );
    Ok(())
}

/// `strata compute stop NAME`.
fn stop(dir: &Path, name: &str, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let rec = ComputeRecord::load(dir, name)?;
    quietly(out, || computes::remove(dir, &cfg, name))?;
    out.result(
        &format!("stopped compute {name}"),
        json!({"name": name, "branch": rec.branch, "stopped": true}),
    );
    Ok(())
}

/// `strata compute list`: every compute's record and whether its Postgres and walproposer
/// run.
fn list(dir: &Path, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for c in ComputeRecord::list(dir)? {
        let running = computes::node(dir, &cfg, &c.name)
            .map(|n| n.is_running())
            .unwrap_or(false);
        let wp_running = !c.read_only
            && matches!(
                computes::walproposer_daemon(dir, &c.name).state()?,
                State::Running(_)
            );
        let mode = if c.read_only {
            "read-only"
        } else {
            "read-write"
        };
        let state = match (running, c.read_only, wp_running) {
            (false, _, _) => "stopped",
            (true, false, false) => "running, walproposer down",
            (true, _, _) => "running",
        };
        lines.push(format!(
            "{:<16} {:<12} {mode:<10} port {:<5} from {:<12} {state}",
            c.name, c.branch, c.port, c.lsn
        ));
        let mut v = serde_json::to_value(&c)?;
        v["running"] = json!(running);
        v["walproposer_running"] = json!(wp_running);
        v["connstr"] = json!(format!(
            "postgresql://postgres@127.0.0.1:{}/postgres",
            c.port
        ));
        rows.push(v);
    }
    if lines.is_empty() {
        lines.push("no computes: strata compute start BRANCH".into());
    }
    out.result(&lines.join("\n"), json!(rows));
    Ok(())
}
