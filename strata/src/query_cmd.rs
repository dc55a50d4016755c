//! `strata query --at TIME "SQL"`: time travel. An ephemeral read-only compute (lazy unless
//! `--full-copy`) starts at that moment, answers the query, and is removed (or kept for --ttl
//! seconds for more queries); no durable branch is created.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::cluster::ClusterConfig;
use crate::compute_cmd::{self, StartRequest};
use crate::output::Output;
use crate::target::Target;

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The SQL to run (psql syntax; several statements allowed).
    pub sql: String,
    /// The moment: an LSN, a time, or a restore point name.
    #[arg(long)]
    pub at: String,
    #[arg(long, default_value = "main")]
    pub branch: String,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Keep the time-travel compute this many seconds for further queries (default: remove
    /// it at once). Expired ones are removed by the next strata command.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Copy every page before the query instead of fetching pages on first read.
    #[arg(long)]
    pub full_copy: bool,
}

pub fn run(dir: &Path, a: QueryArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let target = Target::parse(&a.at)?;
    let name = time_travel_name(&a.branch);
    let rec = compute_cmd::start(
        dir,
        StartRequest {
            branch: &a.branch,
            tenant: a.tenant.as_deref(),
            at: Some(target),
            read_only: true,
            name: Some(name.clone()),
            ttl_secs: a.ttl,
            full_copy: a.full_copy,
            settings: &[],
        },
        out,
    )?;
    let node = compute_cmd::node(dir, &cfg, &name)?;
    let result = node.psql(rec.port, &a.database, &a.sql);
    if a.ttl.is_none() {
        compute_cmd::remove(dir, &cfg, &name)?;
    }
    let rows = result?;
    out.result(&rows, json!({"lsn": rec.lsn, "output": rows}));
    Ok(())
}

/// The ephemeral compute's name: with the branch's name when that makes a valid name (a
/// branch named before the name rule, or a long one, does not).
fn time_travel_name(branch: &str) -> String {
    let pid = std::process::id();
    let with_branch = format!("timetravel-{branch}-{pid}");
    if crate::names::validate(crate::names::Kind::Compute, &with_branch).is_ok() {
        with_branch
    } else {
        format!("timetravel-{pid}")
    }
}
