//! `ingest-wal <base> <wal dir> <start LSN> <end LSN> <timeline dir> <freeze bytes>`: imports
//! the base (or resumes the timeline in `<timeline dir>`) and ingests WAL up to `<end LSN>`
//! without verification. A small process for the crash tests to kill -9 midway.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use pageserver::verify_redo::{verify_redo, VerifyRedoOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(
        args.len() == 6,
        "usage: ingest-wal <base> <wal dir> <start LSN> <end LSN> <timeline dir> <freeze bytes>"
    );
    let opts = VerifyRedoOptions {
        base: PathBuf::from(&args[0]),
        wal_dir: PathBuf::from(&args[1]),
        start: Some(args[2].parse().context("start LSN")?),
        end: Some(args[3].parse().context("end LSN")?),
        final_dir: None,
        timeline_dir: PathBuf::from(&args[4]),
        freeze_bytes: args[5].parse().context("freeze bytes")?,
        verify: false,
        max_reported: 10,
    };
    let rep = verify_redo(&opts)?;
    print!("{}", rep.describe());
    Ok(())
}
