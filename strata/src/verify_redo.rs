//! `strata verify-redo`: imports a base data directory, ingests WAL through the pageserver's
//! normal ingest path, and checks every natively redone page against Postgres's
//! `wal_consistency_checking` images with GetPage@LSN (see `pageserver::verify_redo`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pageserver::verify_redo::{verify_redo, VerifyRedoOptions};
use walproto::Lsn;

#[derive(clap::Args)]
pub struct VerifyRedoArgs {
    /// A cleanly shut down data directory (initdb's, or a stopped server's copy).
    #[arg(long)]
    base: PathBuf,
    /// The directory of WAL segment files that follow the base.
    #[arg(long)]
    wal: PathBuf,
    /// The LSN the base stands at (default: its pg_control checkpoint).
    #[arg(long)]
    start: Option<Lsn>,
    /// Stop at this LSN.
    #[arg(long)]
    end: Option<Lsn>,
    /// A final, cleanly shut down data directory: every page is compared with GetPage at its
    /// checkpoint LSN.
    #[arg(long = "final")]
    final_dir: Option<PathBuf>,
    /// Keep the timeline here (resumed if it holds one); default: a temporary directory.
    #[arg(long)]
    timeline_dir: Option<PathBuf>,
    /// Freeze the open layer at this many MiB (small, so many L0 layers are written).
    #[arg(long, default_value_t = 16)]
    freeze_mib: u64,
    /// Only ingest; compare nothing.
    #[arg(long)]
    no_verify: bool,
    /// How many mismatches to describe.
    #[arg(long, default_value_t = 10)]
    max_reported: usize,
}

pub fn run(args: VerifyRedoArgs) -> Result<ExitCode> {
    let temp = args.timeline_dir.is_none();
    let timeline_dir = args.timeline_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("strata-verify-redo-{}", std::process::id()))
    });
    let opts = VerifyRedoOptions {
        base: args.base,
        wal_dir: args.wal,
        start: args.start,
        end: args.end,
        final_dir: args.final_dir,
        timeline_dir: timeline_dir.clone(),
        freeze_bytes: args.freeze_mib.max(1) * 1024 * 1024,
        verify: !args.no_verify,
        max_reported: args.max_reported,
    };
    let result = verify_redo(&opts);
    if temp {
        let _ = std::fs::remove_dir_all(&timeline_dir);
    }
    let rep = result.context("verify-redo")?;
    print!("{}", rep.describe());
    println!("{}", rep.headline());
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
