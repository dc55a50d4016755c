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

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{Result, TenantError};

pub const TENANTS_DIR: &str = "tenants";
pub const TENANT_CONF: &str = "tenant.toml";
pub const TIMELINES_DIR: &str = "timelines";
pub const TIMELINE_CONF: &str = "timeline.toml";
pub const TMP_SUFFIX: &str = ".tmp";

pub fn tenants_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TENANTS_DIR)
}

pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    tenants_dir(data_dir).join(tenant)
}

pub fn timelines_dir(tenant_dir: &Path) -> PathBuf {
    tenant_dir.join(TIMELINES_DIR)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TenantError::io("fsync directory", dir))
}

/// Replaces `path` with `data` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("toml.tmp");
    let mut f = File::create(&tmp).map_err(TenantError::io("create", &tmp))?;
    f.write_all(data).map_err(TenantError::io("write", &tmp))?;
    f.sync_all().map_err(TenantError::io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(TenantError::io("rename", path))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Renames `from` to `to` durably (both in the same directory).
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(TenantError::io("rename", from))?;
    fsync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Creates `dir` and makes its entry in the parent durable.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(TenantError::io("create directory", dir))?;
    fsync_dir(dir.parent().unwrap_or(Path::new(".")))
}
