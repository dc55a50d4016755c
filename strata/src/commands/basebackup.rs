//! `strata import` and `strata basebackup`: offline tools over a timeline directory.
//!
//! - `import`: a PostgreSQL 15 data directory (cleanly shut down, or a `pg_basebackup -Fp -X
//!   stream|fetch` output with its WAL) becomes a new timeline.
//! - `basebackup`: a data directory (tar or directory) of a timeline at an LSN that vanilla
//!   Postgres starts from, read-write or read-only (hot standby).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pageserver::basebackup::{
    basebackup_tar, basebackup_to_dir, record_ending_at, BasebackupOptions, Mode,
};
use pageserver::import::import;
use pageserver::remote::RemoteLayerSource;
use pageserver::timeline::{Timeline, TimelineConf};
use serde_json::json;
use walproto::Lsn;

use strata::output::{pg_lsn, Output};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The data directory: cleanly shut down, or a pg_basebackup output (with backup_label).
    #[arg(long)]
    datadir: PathBuf,
    /// The new timeline's directory (must not hold a timeline).
    #[arg(long)]
    timeline_dir: PathBuf,
}

pub fn run_import(args: ImportArgs, out: &Output) -> Result<ExitCode> {
    let (tl, rep) = import(&args.datadir, &args.timeline_dir, TimelineConf::default())
        .with_context(|| format!("importing {}", args.datadir.display()))?;
    let mut lines = vec![format!(
        "imported {}: {} forks, {} blocks, {} SLRU pages, {} prepared, {} relmaps at {}",
        args.datadir.display(),
        rep.forks,
        rep.blocks,
        rep.slru_pages,
        rep.prepared_xacts,
        rep.relmaps,
        rep.lsn
    )];
    if rep.from_backup {
        lines.push(format!(
            "ingested {} WAL records to {}; consistent from {}",
            rep.wal_records, rep.wal_end, rep.consistent_lsn
        ));
    }
    lines.push(format!(
        "timeline {}: {}..={}",
        args.timeline_dir.display(),
        tl.start_lsn(),
        tl.last_record_end()
    ));
    out.result(
        &lines.join("\n"),
        json!({
            "datadir": args.datadir.display().to_string(),
            "timeline_dir": args.timeline_dir.display().to_string(),
            "forks": rep.forks, "blocks": rep.blocks, "slru_pages": rep.slru_pages,
            "prepared_xacts": rep.prepared_xacts, "relmaps": rep.relmaps,
            "lsn": pg_lsn(rep.lsn.0),
            "from_backup": rep.from_backup,
            "wal_records": rep.from_backup.then_some(rep.wal_records),
            "wal_end": rep.from_backup.then(|| pg_lsn(rep.wal_end.0)),
            "consistent_lsn": rep.from_backup.then(|| pg_lsn(rep.consistent_lsn.0)),
            "start_lsn": pg_lsn(tl.start_lsn().0),
            "last_record_end": pg_lsn(tl.last_record_end().0),
        }),
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct BasebackupArgs {
    #[arg(long)]
    timeline_dir: PathBuf,
    /// The LSN (a record boundary); default: the timeline's last record end.
    #[arg(long)]
    lsn: Option<Lsn>,
    /// WAL segment files to find the record that ends at --lsn (needed for an LSN other than
    /// the timeline's start or last record end).
    #[arg(long)]
    wal: Option<PathBuf>,
    /// Start a read-only hot standby at the LSN instead of a read-write primary.
    #[arg(long)]
    read_only: bool,
    /// Write a tar file here.
    #[arg(long, conflicts_with = "out_dir")]
    tar: Option<PathBuf>,
    /// Write into this (empty or missing) directory. (Not `--dir`: that is the cluster
    /// directory of every `strata` command.)
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn run_basebackup(args: BasebackupArgs, out: &Output) -> Result<ExitCode> {
    // A timeline restored on demand downloads the layers it reads from the store it names.
    let open = || {
        let fetch = RemoteLayerSource::default().fetcher_for(&args.timeline_dir)?;
        Timeline::open(&args.timeline_dir, TimelineConf::default(), fetch)
    };
    let tl = open().with_context(|| format!("opening {}", args.timeline_dir.display()))?;
    let lsn = args.lsn.unwrap_or(tl.last_record_end());
    let mode = if args.read_only {
        Mode::ReadOnly
    } else {
        Mode::ReadWrite
    };
    let mut opts = BasebackupOptions::new(lsn, mode);
    if let Some(wal) = &args.wal {
        opts.prev_lsn = Some(record_ending_at(wal, lsn)?);
    }
    let rep = match (&args.tar, &args.out_dir) {
        (Some(t), None) => {
            let f =
                std::fs::File::create(t).with_context(|| format!("creating {}", t.display()))?;
            let rep = basebackup_tar(&tl, &opts, std::io::BufWriter::new(&f))?;
            f.sync_all()?;
            rep
        }
        (None, Some(d)) => basebackup_to_dir(&tl, &opts, d)?,
        _ => bail!("give --tar FILE or --out-dir DIR"),
    };
    out.result(
        &format!(
            "basebackup at {}: {} files, {} bytes ({} relation pages, {} SLRU pages, {} \
             prepared); checkpoint at {}, the server continues at {}",
            rep.lsn,
            rep.files,
            rep.bytes,
            rep.rel_pages,
            rep.slru_pages,
            rep.prepared_xacts,
            rep.checkpoint_lsn,
            rep.checkpoint_end
        ),
        json!({
            "lsn": pg_lsn(rep.lsn.0), "files": rep.files, "bytes": rep.bytes,
            "rel_pages": rep.rel_pages, "slru_pages": rep.slru_pages,
            "prepared_xacts": rep.prepared_xacts,
            "checkpoint_lsn": pg_lsn(rep.checkpoint_lsn.0),
            "checkpoint_end": pg_lsn(rep.checkpoint_end.0),
        }),
    );
    Ok(ExitCode::SUCCESS)
}
