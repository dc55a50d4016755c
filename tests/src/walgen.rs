//! Small, realistic WAL samples: pgbench initialisation plus a short run, as complete
//! 16 MiB segment files. Benchmarks and fuzzers use them as input, so they must be real
//! Postgres output rather than synthetic records.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use walproto::lsn::parse_segment_file_name;

use crate::pg::{InitOptions, PgCluster, StopMode};

/// What to generate.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// `pgbench -i -s`.
    pub scale: u32,
    /// Length of the `pgbench -c 4` run.
    pub duration: Duration,
    /// `wal_compression` (off, pglz, lz4, zstd).
    pub wal_compression: String,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            scale: 2,
            duration: Duration::from_secs(10),
            wal_compression: "off".into(),
        }
    }
}

/// Generates a pgbench WAL sample and copies its complete segments into `out_dir`
/// (created if needed). Returns the copied files in LSN order.
pub fn generate_pgbench_sample(out_dir: &Path, opts: &SampleOptions) -> Result<Vec<PathBuf>> {
    let pg = PgCluster::init(
        &InitOptions::default()
            .set("wal_level", "replica")
            .set("wal_keep_size", "100GB")
            .set("max_wal_size", "8GB")
            .set("fsync", "off")
            .set("synchronous_commit", "off")
            .set("wal_compression", &opts.wal_compression),
    )?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", &opts.scale.to_string(), "-q"])?;
    let secs = opts.duration.as_secs().max(1).to_string();
    pg.pgbench(&["-c", "4", "-j", "2", "-T", &secs, "-n"])?;
    // Finish the current segment so that every segment before the insert position is
    // complete; the one that holds the insert position afterwards is not copied.
    pg.psql("SELECT pg_switch_wal()")?;
    let current_seg = pg.current_wal_insert_lsn()?.segment_number();
    pg.stop(StopMode::Fast)?;

    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(pg.wal_dir())?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            // Skips .partial files, history files and archive_status.
            let (tli, segno) = parse_segment_file_name(&name).filter(|_| name.len() == 24)?;
            (tli == 1 && segno < current_seg).then(|| (segno, e.path()))
        })
        .collect();
    segs.sort();
    ensure!(!segs.is_empty(), "no complete WAL segment was produced");

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut copied = Vec::new();
    for (_, src) in segs {
        let dst = out_dir.join(src.file_name().expect("segment file name"));
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        // Postgres creates segments 0600; samples are meant to be shared.
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))?;
        copied.push(dst);
    }
    Ok(copied)
}
