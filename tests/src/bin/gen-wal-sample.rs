//! `gen-wal-sample OUTDIR [--scale N] [--seconds S] [--compression off|pglz|lz4|zstd]`:
//! writes complete WAL segments of a pgbench run into OUTDIR (see `strata_tests::walgen`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strata_tests::walgen::{generate_pgbench_sample, SampleOptions};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut opts = SampleOptions::default();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--scale" => opts.scale = value("--scale")?.parse()?,
            "--seconds" => opts.duration = Duration::from_secs(value("--seconds")?.parse()?),
            "--compression" => opts.wal_compression = value("--compression")?,
            "-h" | "--help" => {
                println!(
                    "usage: gen-wal-sample OUTDIR [--scale N] [--seconds S] \
                     [--compression off|pglz|lz4|zstd]"
                );
                return Ok(());
            }
            _ if a.starts_with('-') => bail!("unknown option {a}"),
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => bail!("unexpected argument {a}"),
        }
    }
    let out = out.context("usage: gen-wal-sample OUTDIR [options]")?;
    let t0 = Instant::now();
    let files = generate_pgbench_sample(&out, &opts)?;
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "wrote {} WAL segments ({} MiB) to {} in {:.1}s",
        files.len(),
        bytes >> 20,
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
