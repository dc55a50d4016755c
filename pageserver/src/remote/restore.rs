//! Restoring a timeline from the object store into an empty (wiped) local directory, and
//! listing what the store holds, for a pageserver that starts with nothing.
//!
//! Two ways:
//!
//! - [`restore_timeline_on_demand`] (what a pageserver does at start): downloads nothing. It
//!   writes the remote layer list ([`super::ondemand`]: the manifest and the store it came
//!   from), fsynced, then the local metadata from the manifest. The timeline opens at once
//!   with its layers *remote*; a read fetches each layer it visits the first time. Layer
//!   files already in the directory (a partly wiped timeline) are kept only if their size and
//!   crc32c are the manifest's, and removed otherwise.
//! - [`restore_timeline`] (eager): every layer the manifest lists is downloaded and checked
//!   (size and crc32c against the manifest) into a temporary file, fsynced and renamed into
//!   place; the directory is fsynced; only then is the local metadata written. A second
//!   restore reuses the layers already in place whose size and crc32c match.
//!
//! Either way the metadata comes last: a crash midway leaves no metadata, so the directory is
//! not a timeline yet and nothing in it is believed.

use std::collections::HashSet;
use std::path::Path as FsPath;
use std::str::FromStr;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use tracing::{info, warn};
use walproto::ids::{ParseIdError, TenantId, TimelineId};

use super::download::{download_layer, fsync_dir, local_copy_matches};
use super::error::{RemoteError, Result};
use super::manifest::{Manifest, RemoteLayer};
use super::ondemand;
use super::storage::RemoteStorage;
use crate::timeline::TimelineMetadata;

/// Layer downloads in flight at once.
const DOWNLOADS_IN_FLIGHT: usize = 4;

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub layers_downloaded: usize,
    pub bytes_downloaded: u64,
    /// Layers already in the directory with the right size and crc32c (an earlier, interrupted
    /// restore, or a partly wiped timeline).
    pub layers_reused: usize,
    /// Layers left in the object store, fetched at their first read (an on-demand restore).
    pub layers_on_demand: usize,
    /// Their bytes.
    pub bytes_on_demand: u64,
}

/// The timeline's manifest, checked; `None` if it has none (it does not exist remotely).
pub async fn download_manifest(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
) -> Result<Option<Manifest>> {
    let path = remote.manifest_path(tenant, timeline);
    let Some(bytes) = remote.get_optional(&path).await? else {
        return Ok(None);
    };
    let m = Manifest::decode(&bytes, path.as_ref())?;
    if m.tenant != tenant || m.timeline != timeline {
        return Err(RemoteError::Manifest {
            path: path.to_string(),
            reason: format!(
                "names tenant {} timeline {}, not its own location",
                m.tenant, m.timeline
            ),
        });
    }
    Ok(Some(m))
}

/// The manifest of a timeline to restore into `local_dir`, which must not hold a timeline;
/// creates the directory.
async fn prepare(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: &FsPath,
) -> Result<Manifest> {
    let manifest = download_manifest(remote, tenant, timeline)
        .await?
        .ok_or(RemoteError::NoManifest { tenant, timeline })?;
    if TimelineMetadata::load(local_dir)?.is_some() {
        return Err(RemoteError::Invalid(format!(
            "{} already holds a timeline; restore only into an empty directory",
            local_dir.display()
        )));
    }
    tokio::fs::create_dir_all(local_dir)
        .await
        .map_err(RemoteError::io("create directory", local_dir))?;
    Ok(manifest)
}

/// Restores `tenant`/`timeline` into `local_dir`, which must not hold a timeline, downloading
/// every layer first (see the module docs). Afterwards `Timeline::open(local_dir)` works (no
/// fetcher needed) and ingest resumes at the manifest's `remote_consistent_lsn`. A branch
/// needs its ancestor restored too (the caller restores in the order
/// [`list_remote_timelines`] returns).
pub async fn restore_timeline(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: &FsPath,
) -> Result<RestoreReport> {
    let manifest = prepare(remote, tenant, timeline, local_dir).await?;
    let layers_path = remote.layers_path(tenant, timeline);
    let results: Vec<Option<u64>> = futures_util::stream::iter(&manifest.layers)
        .map(|l| restore_layer(remote, &layers_path, local_dir, l))
        .buffer_unordered(DOWNLOADS_IN_FLIGHT)
        .try_collect()
        .await?;
    // Everything is local: a remote layer list of an earlier restore does not apply.
    ondemand::remove_remote_layers(local_dir)?;
    fsync_dir(local_dir).await?;
    manifest.to_metadata().store(local_dir)?;
    let rep = RestoreReport {
        layers_downloaded: results.iter().flatten().count(),
        bytes_downloaded: results.iter().flatten().sum(),
        layers_reused: results.iter().filter(|r| r.is_none()).count(),
        layers_on_demand: 0,
        bytes_on_demand: 0,
        manifest,
    };
    info!(
        %tenant, %timeline, lsn = %rep.manifest.remote_consistent_lsn,
        downloaded = rep.layers_downloaded, bytes = rep.bytes_downloaded,
        reused = rep.layers_reused, "timeline restored from remote storage"
    );
    Ok(rep)
}

/// Restores `tenant`/`timeline` into `local_dir` (which must not hold a timeline) without
/// downloading: its layers are fetched from `remote` at their first read (see the module
/// docs). Afterwards `Timeline::open(local_dir)` works given the fetcher of a
/// [`ondemand::RemoteLayerSource`] (of `remote`, or of none: it is then built from its URL),
/// and ingest resumes at the manifest's `remote_consistent_lsn`.
pub async fn restore_timeline_on_demand(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: &FsPath,
) -> Result<RestoreReport> {
    let manifest = prepare(remote, tenant, timeline, local_dir).await?;
    let (mut reused, mut remote_bytes) = (0, 0);
    for l in &manifest.layers {
        let path = local_dir.join(l.file_name());
        if local_copy_matches(&path, l).await? {
            reused += 1;
            continue;
        }
        remote_bytes += l.size;
        if path.exists() {
            // Not the layer the manifest lists (torn, or another version): not believed.
            tokio::fs::remove_file(&path)
                .await
                .map_err(RemoteError::io("remove", &path))?;
        }
    }
    ondemand::write_remote_layers(local_dir, remote, &manifest)?;
    fsync_dir(local_dir).await?;
    manifest.to_metadata().store(local_dir)?;
    let rep = RestoreReport {
        layers_downloaded: 0,
        bytes_downloaded: 0,
        layers_reused: reused,
        layers_on_demand: manifest.layers.len() - reused,
        bytes_on_demand: remote_bytes,
        manifest,
    };
    info!(
        %tenant, %timeline, lsn = %rep.manifest.remote_consistent_lsn,
        on_demand = rep.layers_on_demand, on_demand_bytes = rep.bytes_on_demand,
        reused = rep.layers_reused,
        "timeline restored from remote storage; layers are downloaded at first read"
    );
    Ok(rep)
}

/// Downloads one layer unless a verified copy is in place; returns the bytes downloaded.
async fn restore_layer(
    remote: &RemoteStorage,
    layers_path: &Path,
    dir: &FsPath,
    layer: &RemoteLayer,
) -> Result<Option<u64>> {
    if local_copy_matches(&dir.join(layer.file_name()), layer).await? {
        return Ok(None);
    }
    let obj = layers_path.clone().join(layer.key.as_str());
    download_layer(remote, &obj, dir, layer).await.map(Some)
}

/// The tenants with anything stored (a name under `t/` that is no tenant id is not a tenant:
/// it is skipped with a warning).
pub async fn list_remote_tenants(remote: &RemoteStorage) -> Result<Vec<TenantId>> {
    list_ids(remote, &remote.tenants_path()).await
}

/// The tenant's timelines that have a manifest (one without a manifest was never completely
/// uploaded and does not exist), ancestors before their branches.
pub async fn list_remote_timelines(
    remote: &RemoteStorage,
    tenant: TenantId,
) -> Result<Vec<Manifest>> {
    let mut found = Vec::new();
    for id in list_ids(remote, &remote.timelines_path(tenant)).await? {
        if let Some(m) = download_manifest(remote, tenant, id).await? {
            found.push(m);
        }
    }
    Ok(ancestors_first(found))
}

/// Orders timelines so that each comes after its ancestor (an ancestor missing from the list
/// does not hold its branches back).
fn ancestors_first(mut rest: Vec<Manifest>) -> Vec<Manifest> {
    let ids: HashSet<String> = rest.iter().map(|m| m.timeline.to_string()).collect();
    let mut placed = HashSet::new();
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let before = rest.len();
        rest.retain(|m| {
            let ready = match &m.ancestor {
                Some((a, _)) => !ids.contains(a) || placed.contains(a),
                None => true,
            };
            if ready {
                placed.insert(m.timeline.to_string());
                out.push(m.clone());
            }
            !ready
        });
        if rest.len() == before {
            // A cycle cannot come from real branches; keep the rest rather than loop.
            out.append(&mut rest);
        }
    }
    out
}

/// The ids named one level below `prefix`, sorted; other names are skipped with a warning.
async fn list_ids<Id: FromStr<Err = ParseIdError> + Ord>(
    remote: &RemoteStorage,
    prefix: &Path,
) -> Result<Vec<Id>> {
    let listing = match remote.store().list_with_delimiter(Some(prefix)).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(RemoteError::store("list", prefix)(e)),
    };
    let mut ids: Vec<Id> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|name| match name.parse() {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(%prefix, error = %e, "not an id: skipped in remote storage listing");
                None
            }
        })
        .collect();
    ids.sort();
    Ok(ids)
}
