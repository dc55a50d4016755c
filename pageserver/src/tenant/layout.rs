//! Where things live on disk, and durable small-file writes.
//!
//! ```text
//! <data dir>/tenants/<tenant id>/tenant.toml                      see `conf`
//! <data dir>/tenants/<tenant id>/timelines/<timeline id>/          a Timeline directory
//! <data dir>/tenants/<tenant id>/timelines/<timeline id>/timeline.toml   safekeepers
//! <data dir>/tenants/<tenant id>/timelines/<timeline id>.tmp/      being created or deleted
//! ```
//!
//! A timeline is created in its `.tmp` directory and renamed into place once complete (an
//! import writes many layer files before it is a timeline), and deleted by renaming it back
//! to `.tmp` first: a `.tmp` directory found at start is always garbage and is removed.

use std::fs;
use std::path::{Path, PathBuf};

use walproto::ids::{TenantId, TimelineId};

use super::error::{Result, TenantError};

pub const TENANTS_DIR: &str = "tenants";
pub const TENANT_CONF: &str = "tenant.toml";
pub const TIMELINES_DIR: &str = "timelines";
pub const TIMELINE_CONF: &str = "timeline.toml";
pub const TMP_SUFFIX: &str = ".tmp";

pub fn tenants_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TENANTS_DIR)
}

pub fn tenant_dir(data_dir: &Path, tenant: TenantId) -> PathBuf {
    tenants_dir(data_dir).join(tenant.to_string())
}

/// Where tenant `tenant` is created, or moved to be deleted.
pub fn tenant_tmp_dir(data_dir: &Path, tenant: TenantId) -> PathBuf {
    tenants_dir(data_dir).join(format!("{tenant}{TMP_SUFFIX}"))
}

pub fn timelines_dir(tenant_dir: &Path) -> PathBuf {
    tenant_dir.join(TIMELINES_DIR)
}

pub fn timeline_dir(timelines_dir: &Path, timeline: TimelineId) -> PathBuf {
    timelines_dir.join(timeline.to_string())
}

/// Where timeline `timeline` is created, or moved to be deleted.
pub fn timeline_tmp_dir(timelines_dir: &Path, timeline: TimelineId) -> PathBuf {
    timelines_dir.join(format!("{timeline}{TMP_SUFFIX}"))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    crate::durable::fsync_dir(dir).map_err(io_failure)
}

/// Replaces `path` with `data` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::durable::write_atomic(path, data).map_err(io_failure)
}

fn io_failure(f: crate::durable::IoFailure) -> TenantError {
    TenantError::io(f.op, f.path)(f.source)
}

/// Renames `from` to `to` durably (both in the same directory).
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(TenantError::io("rename", from))?;
    fsync_dir(crate::durable::parent(to))
}

/// Creates `dir` and makes its entry in the parent durable.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(TenantError::io("create directory", dir))?;
    fsync_dir(dir.parent().unwrap_or(Path::new(".")))
}
