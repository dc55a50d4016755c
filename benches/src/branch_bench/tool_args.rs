//! The command-line options every benchmark program of this crate has.

use std::path::PathBuf;

/// Where the programs are and where the scratch goes.
#[derive(clap::Args, Clone, Debug)]
pub struct ToolArgs {
    /// The strata binary (default: the one next to this program); its pageserver,
    /// safekeeper and compute binaries are found next to it.
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    /// PostgreSQL 15's programs.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// Scratch directory (default: a new one in /tmp, removed at the end).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}
