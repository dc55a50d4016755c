//! A short SQL workload on a fresh Postgres 15, for checking one resource manager's redo.
//!
//! The base is the data directory right after `initdb` (cleanly shut down); the WAL starts at
//! its checkpoint. The steps run one `psql` call each, then the server stops cleanly, so the
//! data directory holds every page as the server last had it.

use std::path::PathBuf;

use anyhow::Result;
use walproto::Lsn;

use crate::pg::{InitOptions, PgCluster, StopMode};

/// A finished run: the stopped cluster (its `wal_dir()` and `data_dir()`), the base copy and
/// the LSN replay starts from.
pub struct RedoRun {
    pub pg: PgCluster,
    pub base: PathBuf,
    pub start: Lsn,
}

/// Settings every run uses: all WAL kept, no autovacuum (the steps vacuum themselves), and
/// `full_page_writes` as users run it.
fn base_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("wal_keep_size", "100GB"),
        ("max_wal_size", "8GB"),
        ("checkpoint_timeout", "1h"),
        ("autovacuum", "off"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
    ]
}

/// Runs `steps` on a new cluster with `wal_consistency_checking = all` when
/// `consistency_checking`, else off (as production runs). `settings` are added to the config.
pub fn redo_run(
    consistency_checking: bool,
    settings: &[(&str, &str)],
    steps: &[&str],
) -> Result<RedoRun> {
    let mut opts = InitOptions::default();
    for (k, v) in base_settings().into_iter().chain(settings.iter().copied()) {
        opts = opts.set(k, v);
    }
    if consistency_checking {
        opts = opts.set("wal_consistency_checking", "all");
    }
    let pg = PgCluster::init(&opts)?;
    let start = pg.latest_checkpoint()?;
    let base = pg.copy_data_dir("redo-run-base")?;
    pg.start()?;
    for step in steps {
        pg.psql(step)?;
    }
    pg.stop(StopMode::Fast)?;
    Ok(RedoRun { pg, base, start })
}
