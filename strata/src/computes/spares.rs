//! Spare data directories: a removed full-copy compute's files, reused by the next one.

use std::fs;
use std::path::{Path, PathBuf};

use super::record::computes_dir;

/// Where removed computes' data directories wait to be reused (no compute.toml: not listed).
fn spare_dir(dir: &Path) -> PathBuf {
    computes_dir(dir).join(".spare")
}

/// Spare data directories kept at most.
const MAX_SPARES: usize = 2;

/// Moves a removed compute's data directory to the spares, its WAL and the server's own
/// leftovers removed (they would only take space). Creating files is the dearest part of
/// unpacking a basebackup on some file systems, and the next compute of the tenant has mostly
/// the same relation files: `ComputeNode::unpack_basebackup` overwrites them in place. Any
/// failure leaves the directory to be deleted with the compute.
pub(super) fn keep_spare_data_dir(dir: &Path, data: &Path) {
    let spares = spare_dir(dir);
    if !data.is_dir() || fs::create_dir_all(&spares).is_err() {
        return;
    }
    let count = fs::read_dir(&spares)
        .map(|r| r.count())
        .unwrap_or(usize::MAX);
    if count >= MAX_SPARES {
        return;
    }
    if let Ok(segs) = fs::read_dir(data.join("pg_wal")) {
        for e in segs.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_file(data.join("postmaster.pid"));
    let target = spares.join(format!("{}-{}", std::process::id(), unix_now_nanos()));
    let _ = fs::rename(data, target);
}

/// Makes a spare data directory (if any) the new compute's `data`, to be overwritten by the
/// basebackup. Without one (or if the move fails), the data directory starts empty.
pub(super) fn take_spare_data_dir(dir: &Path, data: &Path) {
    if data.exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(spare_dir(dir)) else {
        return;
    };
    for e in entries.flatten() {
        if fs::rename(e.path(), data).is_ok() {
            return;
        }
    }
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
