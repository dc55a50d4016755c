//! `strata verify-redo`: imports a base data directory, ingests WAL through the pageserver's
//! normal ingest path, and checks every natively redone page against Postgres's
//! `wal_consistency_checking` images with GetPage@LSN (see `pageserver::verify_redo`); with
//! `--json`, the report as one object.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pageserver::verify_redo::{verify_redo, VerifyRedoOptions, VerifyRedoReport};
use serde_json::json;
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

/// The report as one JSON object: the counts, a row per page type and resource manager, the
/// problems, and the final directory's comparison.
fn report_json(rep: &VerifyRedoReport) -> serde_json::Value {
    let per_type: Vec<_> = rep
        .per_type
        .iter()
        .map(|(t, c)| json!({"type": t, "verified": c.verified, "mismatched": c.mismatched}))
        .collect();
    let per_rmgr: Vec<_> = rep
        .per_rmgr
        .iter()
        .map(|(r, n)| json!({"rmgr": r, "records": n}))
        .collect();
    let final_dir = match (rep.final_lsn, &rep.final_report) {
        (Some(l), Some(f)) => json!({
            "lsn": l.to_string(), "equal": f.equal, "differing": f.differing,
            "summary": f.summary(), "one_sided": f.one_sided.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            "problems": f.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "seconds": rep.final_elapsed.as_secs_f64(),
        }),
        _ => serde_json::Value::Null,
    };
    json!({
        "ok": rep.ok(), "verified": rep.verified, "mismatched": rep.mismatched,
        "unsupported": rep.ingest.unsupported, "vm_strict_verified": rep.vm_strict_verified,
        "read_errors": rep.read_errors, "records": rep.ingest.records,
        "wal_bytes": rep.ingest.wal_bytes, "values": rep.ingest.values,
        "skipped": rep.ingest.skipped, "last_lsn": rep.last_lsn.to_string(),
        "resumed_from": rep.resumed_from.map(|l| l.to_string()),
        "layers": rep.layers, "l0_flushes": rep.writes.l0_flushes,
        "layer_bytes": rep.writes.layer_bytes, "seconds": rep.elapsed.as_secs_f64(),
        "per_type": per_type, "per_rmgr": per_rmgr, "problems": rep.problems,
        "final": final_dir,
    })
}

pub fn run(args: VerifyRedoArgs, json: bool) -> Result<ExitCode> {
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
    if json {
        println!("{}", report_json(&rep));
    } else {
        print!("{}", rep.describe());
        println!("{}", rep.headline());
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
