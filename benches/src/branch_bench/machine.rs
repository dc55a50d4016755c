//! Facts about the machine a benchmark runs on, and the few things it does to it: free space,
//! cores and load (a report names them), and dropping the OS page cache between rounds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// The benchmark's scratch directory: `given` (created when missing, kept), or a new one in
/// /tmp named `prefix…`, removed when the returned guard is dropped.
pub fn scratch_dir(
    given: Option<&Path>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .context("creating a scratch directory in /tmp")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// Fails when the file system holding `dir` has less than `min_gb` GB free (`df`).
pub fn check_free_space(dir: &Path, min_gb: u64) -> Result<()> {
    let avail = free_bytes(dir)?;
    if avail < min_gb << 30 {
        bail!(
            "only {:.1} GB free under {} (--min-free-gb {min_gb}): stopping; use a smaller \
             scale or free some space",
            avail as f64 / (1u64 << 30) as f64,
            dir.display()
        );
    }
    Ok(())
}

/// Bytes available to us on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df printed {text:?}"))
}

/// The 1-minute load average.
pub fn load_1min() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    parse_loadavg(&text)
}

fn parse_loadavg(text: &str) -> Result<f64> {
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("/proc/loadavg is {text:?}"))
}

/// Now, as `2026-12-07 14:05 UTC` (for a report's date).
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

/// "release build of this tool; strata: PATH" (or debug), for a report's build line.
pub fn build_note(strata_bin: &Path) -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "{profile} build of this tool; strata: {}",
        strata_bin.display()
    )
}

/// One line naming the machine: cores, CPU model, memory.
pub fn describe() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / (1u64 << 20) as f64);
    format!("{cores} cores ({model}), {mem_gib:.0} GiB memory")
}

/// Whether we may drop the OS page cache (root on a kernel that lets us).
pub fn can_drop_caches() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(DROP_CACHES)
        .is_ok()
}

/// Writes dirty pages out (`sync`), then drops the clean page cache, dentries and inodes, so
/// that the next read comes from the disk (or, for a lazy compute, from the pageserver).
pub fn drop_caches() -> Result<()> {
    let st = Command::new("sync").status().context("running sync")?;
    ensure!(st.success(), "sync failed ({st})");
    std::fs::write(DROP_CACHES, b"3").with_context(|| format!("writing 3 to {DROP_CACHES}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_load_average() {
        assert_eq!(parse_loadavg("1.52 0.98 0.77 3/512 12345\n").unwrap(), 1.52);
        assert!(parse_loadavg("").is_err());
        assert!(load_1min().unwrap() >= 0.0);
    }

    #[test]
    fn names_the_cores() {
        assert!(describe().contains("cores"), "{}", describe());
    }
}
