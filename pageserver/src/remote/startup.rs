//! A pageserver starting with remote storage and an empty (or partly missing) data directory:
//! [`restore_missing`] lists the tenants and timelines in the object store and restores what
//! the data directory lacks, before the tenants are loaded.
//!
//! - a tenant directory that is missing is created (in `<tenant>.tmp`, renamed into place)
//!   with the tenant config from the store (the default config if none was stored, with a
//!   warning); a tenant directory without `tenant.toml` gets it back;
//! - each timeline with a manifest and no local metadata is restored on demand
//!   ([`restore_timeline_on_demand`]: metadata and the remote layer list, no layer
//!   downloaded; reads fetch them), ancestors before their branches: into `<timeline>.tmp`
//!   (renamed into place once complete) when its directory is missing, in place when the
//!   directory exists without metadata (a partly wiped timeline; layers already there with
//!   the right size and crc32c are kept, others removed). Its `timeline.toml` (the
//!   safekeepers) comes from the store first, so a restored timeline resumes ingest from its
//!   safekeepers at the manifest's `remote_consistent_lsn`;
//! - a timeline that has local metadata is left alone, whatever the store holds.
//!
//! A crash midway leaves `.tmp` directories, which [`restore_missing`] reuses (their verified
//! layers) and `TenantManager::load` removes; the next start restores again. The restored
//! timelines download from `remote` once the pageserver hands its tenants a
//! [`super::ondemand::RemoteLayerSource`] of it.
//!
//! A timeline deleted locally but still in the store comes back: timeline deletion deletes
//! the remote copy first (the manifest, then the layers).

use std::path::{Path, PathBuf};

use tracing::{error, info, warn};
use walproto::ids::{TenantId, TimelineId};

use super::error::{RemoteError, Result};
use super::restore::{list_remote_tenants, list_remote_timelines, restore_timeline_on_demand};
use super::storage::RemoteStorage;
use crate::tenant::layout::{
    tenant_dir, tenant_tmp_dir, timeline_dir, timeline_tmp_dir, timelines_dir, TENANT_CONF,
    TIMELINE_CONF,
};
use crate::tenant::TenantConf;
use crate::timeline::TimelineMetadata;

/// What [`restore_missing`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupRestoreReport {
    /// Tenants found in the object store.
    pub remote_tenants: usize,
    /// Tenant directories created.
    pub tenants_created: usize,
    /// `tenant/timeline` of every timeline restored, in restore order.
    pub timelines_restored: Vec<String>,
    /// Timelines left alone because they are complete locally.
    pub timelines_present: usize,
    /// Layers downloaded at start: none (restores are on demand); kept for callers.
    pub layers_downloaded: usize,
    pub bytes_downloaded: u64,
    /// Layers of the restored timelines left in the object store until a read needs them.
    pub layers_on_demand: usize,
    /// Their bytes.
    pub bytes_on_demand: u64,
    /// `tenant` or `tenant/timeline` that could not be restored, and why.
    pub failed: Vec<(String, String)>,
}

/// Restores into `data_dir` every tenant and timeline of `remote` it lacks (module docs).
/// The object store unreachable is an error (nothing is known); a tenant or timeline that
/// fails to restore is logged and listed in [`StartupRestoreReport::failed`], and the others
/// are restored: the pageserver starts without it (the next start tries again).
pub async fn restore_missing(
    remote: &RemoteStorage,
    data_dir: &Path,
) -> Result<StartupRestoreReport> {
    let mut rep = StartupRestoreReport::default();
    let tenants = list_remote_tenants(remote).await?;
    rep.remote_tenants = tenants.len();
    for &tenant in &tenants {
        if let Err(e) = restore_tenant(remote, data_dir, tenant, &mut rep).await {
            error!(%tenant, error = %e, "tenant not restored from remote storage");
            rep.failed.push((tenant.to_string(), e.to_string()));
        }
    }
    if !rep.timelines_restored.is_empty() || rep.tenants_created > 0 {
        info!(tenants = rep.tenants_created, timelines = ?rep.timelines_restored,
              layers_downloaded = rep.layers_downloaded, bytes_downloaded = rep.bytes_downloaded,
              layers_on_demand = rep.layers_on_demand, bytes_on_demand = rep.bytes_on_demand,
              "restored from remote storage at start");
    }
    Ok(rep)
}

async fn restore_tenant(
    remote: &RemoteStorage,
    data_dir: &Path,
    tenant: TenantId,
    rep: &mut StartupRestoreReport,
) -> Result<()> {
    let tdir = tenant_dir(data_dir, tenant);
    if !tdir.join(TENANT_CONF).exists() {
        restore_tenant_dir(remote, data_dir, tenant, &tdir).await?;
        rep.tenants_created += 1;
    }
    let tl_root = timelines_dir(&tdir);
    for m in list_remote_timelines(remote, tenant).await? {
        let id = m.timeline;
        if let Err(e) = restore_one(remote, tenant, id, &tl_root, rep).await {
            error!(%tenant, timeline = %id, error = %e,
                   "timeline not restored from remote storage");
            rep.failed.push((format!("{tenant}/{id}"), e.to_string()));
        }
    }
    Ok(())
}

/// Restores one timeline unless it is complete locally.
async fn restore_one(
    remote: &RemoteStorage,
    tenant: TenantId,
    id: TimelineId,
    tl_root: &Path,
    rep: &mut StartupRestoreReport,
) -> Result<()> {
    let dir = timeline_dir(tl_root, id);
    match TimelineMetadata::load(&dir) {
        Ok(Some(_)) => {
            rep.timelines_present += 1;
            return Ok(());
        }
        Ok(None) => {}
        Err(e) => {
            // Damaged local metadata: not overwritten without an operator.
            warn!(%tenant, timeline = %id, error = %e,
                  "local timeline metadata unreadable; not restoring over it");
            return Ok(());
        }
    }
    let in_place = dir.is_dir();
    let target = if in_place {
        dir.clone()
    } else {
        let tmp = timeline_tmp_dir(tl_root, id);
        // A `.tmp` holding a timeline is a deletion interrupted midway: not ours.
        if TimelineMetadata::load(&tmp).ok().flatten().is_some() {
            remove_dir(&tmp).await?;
        }
        tmp
    };
    create_dir(&target).await?;
    if let Some(conf) = remote.get_timeline_config(tenant, id).await? {
        write_durable(&target.join(TIMELINE_CONF), &conf).await?;
    } else {
        warn!(%tenant, timeline = %id,
              "no timeline config in remote storage: restored without safekeepers");
    }
    let r = restore_timeline_on_demand(remote, tenant, id, &target).await?;
    if !in_place {
        rename_durable(&target, &dir).await?;
    }
    rep.layers_downloaded += r.layers_downloaded;
    rep.bytes_downloaded += r.bytes_downloaded;
    rep.layers_on_demand += r.layers_on_demand;
    rep.bytes_on_demand += r.bytes_on_demand;
    rep.timelines_restored.push(format!("{tenant}/{id}"));
    Ok(())
}

/// Creates the tenant's directory with its config from the store.
async fn restore_tenant_dir(
    remote: &RemoteStorage,
    data_dir: &Path,
    tenant: TenantId,
    tdir: &Path,
) -> Result<()> {
    let what = format!("tenant {tenant}'s config in {remote}");
    let conf = match remote.get_tenant_config(tenant).await? {
        Some(bytes) => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|e| RemoteError::Invalid(format!("{what}: not UTF-8 ({e})")))?;
            TenantConf::parse(text, &what)
                .map_err(|e| RemoteError::Invalid(e.to_string()))?
                .to_toml()
        }
        None => {
            warn!(%tenant, "no tenant config in remote storage: using the default");
            TenantConf::default().to_toml()
        }
    };
    if tdir.is_dir() {
        // The directory is there without its config: put the config back.
        create_dir(&timelines_dir(tdir)).await?;
        return write_durable(&tdir.join(TENANT_CONF), conf.as_bytes()).await;
    }
    let tmp = tenant_tmp_dir(data_dir, tenant);
    if tmp.exists() {
        remove_dir(&tmp).await?;
    }
    create_dir(&timelines_dir(&tmp)).await?;
    write_durable(&tmp.join(TENANT_CONF), conf.as_bytes()).await?;
    rename_durable(&tmp, tdir).await?;
    info!(%tenant, "tenant directory restored from remote storage");
    Ok(())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::Invalid(format!("file task failed: {e}")))?
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(RemoteError::io("fsync directory", dir))
}

fn parent(p: &Path) -> PathBuf {
    p.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// Creates `dir` (and its parents) and makes its entry durable.
async fn create_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || {
        std::fs::create_dir_all(&dir).map_err(RemoteError::io("create directory", &dir))?;
        fsync_dir(&parent(&dir))
    })
    .await
}

async fn remove_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || std::fs::remove_dir_all(&dir).map_err(RemoteError::io("remove", &dir))).await
}

/// Writes `path` atomically and durably.
async fn write_durable(path: &Path, data: &[u8]) -> Result<()> {
    let (path, data) = (path.to_path_buf(), data.to_vec());
    blocking(move || {
        use std::io::Write;
        let tmp = path.with_extension("restore.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(RemoteError::io("create", &tmp))?;
        f.write_all(&data).map_err(RemoteError::io("write", &tmp))?;
        f.sync_all().map_err(RemoteError::io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(RemoteError::io("rename", &path))?;
        fsync_dir(&parent(&path))
    })
    .await
}

async fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    blocking(move || {
        std::fs::rename(&from, &to).map_err(RemoteError::io("rename", &from))?;
        fsync_dir(&parent(&to))
    })
    .await
}
