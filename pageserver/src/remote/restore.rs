//! Restoring a timeline from the object store into an empty (wiped) local directory, and
//! listing what the store holds, for a pageserver that starts with nothing.
//!
//! Restore is eager: every layer the manifest lists is downloaded and checked (size and
//! crc32c against the manifest) into a temporary file, fsynced and renamed into place; the
//! directory is fsynced; only then is the local metadata written. A crash midway leaves no
//! metadata (so the directory is not a timeline yet) and a second restore reuses the layers
//! already in place whose size and crc32c match.

use std::collections::HashSet;
use std::path::Path as FsPath;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::error::{RemoteError, Result};
use super::manifest::{Manifest, RemoteLayer};
use super::storage::{check_id, RemoteStorage};
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
    /// restore).
    pub layers_reused: usize,
}

/// The timeline's manifest, checked; `None` if it has none (it does not exist remotely).
pub async fn download_manifest(
    remote: &RemoteStorage,
    tenant: &str,
    timeline: &str,
) -> Result<Option<Manifest>> {
    let path = remote.manifest_path(tenant, timeline)?;
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

/// Restores `tenant`/`timeline` into `local_dir`, which must not hold a timeline (see the
/// module docs). Afterwards `Timeline::open(local_dir)` works and ingest resumes at the
/// manifest's `remote_consistent_lsn`. A branch needs its ancestor restored too (the caller
/// restores in the order [`list_remote_timelines`] returns).
pub async fn restore_timeline(
    remote: &RemoteStorage,
    tenant: &str,
    timeline: &str,
    local_dir: &FsPath,
) -> Result<RestoreReport> {
    let manifest = download_manifest(remote, tenant, timeline)
        .await?
        .ok_or_else(|| RemoteError::NoManifest {
            tenant: tenant.into(),
            timeline: timeline.into(),
        })?;
    if TimelineMetadata::load(local_dir)?.is_some() {
        return Err(RemoteError::Invalid(format!(
            "{} already holds a timeline; restore only into an empty directory",
            local_dir.display()
        )));
    }
    tokio::fs::create_dir_all(local_dir)
        .await
        .map_err(RemoteError::io("create directory", local_dir))?;
    let layers_path = remote.layers_path(tenant, timeline)?;
    let results: Vec<Option<u64>> = futures_util::stream::iter(&manifest.layers)
        .map(|l| restore_layer(remote, &layers_path, local_dir, l))
        .buffer_unordered(DOWNLOADS_IN_FLIGHT)
        .try_collect()
        .await?;
    fsync_dir(local_dir).await?;
    manifest.to_metadata().store(local_dir)?;
    let rep = RestoreReport {
        layers_downloaded: results.iter().flatten().count(),
        bytes_downloaded: results.iter().flatten().sum(),
        layers_reused: results.iter().filter(|r| r.is_none()).count(),
        manifest,
    };
    info!(
        tenant, timeline, lsn = %rep.manifest.remote_consistent_lsn,
        downloaded = rep.layers_downloaded, bytes = rep.bytes_downloaded,
        reused = rep.layers_reused, "timeline restored from remote storage"
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
    let name = layer.file_name();
    let dst = dir.join(&name);
    if local_copy_matches(&dst, layer).await? {
        return Ok(None);
    }
    let obj = layers_path.clone().join(layer.key.as_str());
    let corrupt = |reason: String| RemoteError::LayerCorrupt {
        layer: format!("{name} ({obj})"),
        reason,
    };
    let got = match remote.store().get(&obj).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(corrupt(
                "missing from the object store, yet the manifest lists it".into(),
            ))
        }
        Err(e) => return Err(RemoteError::store("get", &obj)(e)),
    };
    let tmp = dir.join(format!("{name}.download.tmp"));
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(RemoteError::io("create", &tmp))?;
    let mut stream = got.into_stream();
    let (mut size, mut crc) = (0u64, 0u32);
    let mut problem = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(RemoteError::store("read", &obj))?;
        size += chunk.len() as u64;
        if size > layer.size {
            problem = Some(format!(
                "longer than the {} bytes of the manifest",
                layer.size
            ));
            break;
        }
        crc = crc32c::crc32c_append(crc, &chunk);
        f.write_all(&chunk)
            .await
            .map_err(RemoteError::io("write", &tmp))?;
    }
    if problem.is_none() {
        problem = verdict(layer, size, crc);
    }
    if let Some(reason) = problem {
        drop(f);
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(corrupt(reason));
    }
    f.sync_all().await.map_err(RemoteError::io("fsync", &tmp))?;
    drop(f);
    tokio::fs::rename(&tmp, &dst)
        .await
        .map_err(RemoteError::io("rename", &dst))?;
    Ok(Some(size))
}

fn verdict(layer: &RemoteLayer, size: u64, crc: u32) -> Option<String> {
    if size != layer.size {
        Some(format!("{size} bytes, the manifest says {}", layer.size))
    } else if crc != layer.crc32c {
        Some(format!(
            "crc32c {crc:08X}, the manifest says {:08X}",
            layer.crc32c
        ))
    } else {
        None
    }
}

/// Whether `path` already holds exactly `layer`.
async fn local_copy_matches(path: &FsPath, layer: &RemoteLayer) -> Result<bool> {
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RemoteError::io("open", path)(e)),
    };
    let len = f
        .metadata()
        .await
        .map_err(RemoteError::io("stat", path))?
        .len();
    if len != layer.size {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1024 * 1024];
    let mut crc = 0u32;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(RemoteError::io("read", path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
    Ok(crc == layer.crc32c)
}

async fn fsync_dir(dir: &FsPath) -> Result<()> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| RemoteError::Invalid(format!("fsync task failed: {e}")))?
        .map_err(RemoteError::io("fsync directory", dir))
}

/// The tenants with anything stored.
pub async fn list_remote_tenants(remote: &RemoteStorage) -> Result<Vec<String>> {
    let mut ids = list_children(remote, &remote.tenants_path()).await?;
    ids.retain(|id| check_id("tenant", id).is_ok());
    Ok(ids)
}

/// The tenant's timelines that have a manifest (one without a manifest was never completely
/// uploaded and does not exist), ancestors before their branches.
pub async fn list_remote_timelines(remote: &RemoteStorage, tenant: &str) -> Result<Vec<Manifest>> {
    let mut found = Vec::new();
    for id in list_children(remote, &remote.timelines_path(tenant)?).await? {
        if check_id("timeline", &id).is_err() {
            continue;
        }
        if let Some(m) = download_manifest(remote, tenant, &id).await? {
            found.push(m);
        }
    }
    Ok(ancestors_first(found))
}

/// Orders timelines so that each comes after its ancestor (an ancestor missing from the list
/// does not hold its branches back).
fn ancestors_first(mut rest: Vec<Manifest>) -> Vec<Manifest> {
    let ids: HashSet<String> = rest.iter().map(|m| m.timeline.clone()).collect();
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
                placed.insert(m.timeline.clone());
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

/// The names one level below `prefix`.
async fn list_children(remote: &RemoteStorage, prefix: &Path) -> Result<Vec<String>> {
    let listing = match remote.store().list_with_delimiter(Some(prefix)).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(RemoteError::store("list", prefix)(e)),
    };
    let mut ids: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}
