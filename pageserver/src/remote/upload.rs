//! Uploading a timeline: [`sync_timeline`] makes the object store hold what the local
//! metadata says is durable.
//!
//! Order, so that a crash at any point leaves the old manifest valid and complete:
//! 1. upload each layer the metadata lists and the remote manifest lacks (layer files are
//!    immutable; a file is read through one open handle, so a compaction deleting it midway
//!    does not change what is read; a listed file already gone means the metadata changed:
//!    re-read it and start over);
//! 2. write the new manifest (one atomic PUT);
//! 3. delete every layer object (under `l/`) the new manifest does not list (layers replaced
//!    by compaction, and uploads orphaned by a crash before step 2).
//!
//! A new layer's object key ([`super::manifest::layer_key`]) is never one the old manifest
//! lists, so step 1 never overwrites an object the old manifest needs.
//!
//! One uploader per timeline: two pageservers syncing the same timeline would delete each
//! other's layers in step 3.

use std::collections::HashSet;
use std::path::Path as FsPath;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;
use tracing::{debug, info};

use super::error::{RemoteError, Result};
use super::manifest::{layer_key, Manifest, RemoteLayer};
use super::restore::download_manifest;
use super::storage::RemoteStorage;
use crate::timeline::TimelineMetadata;
use layer_format::Lsn;
use walproto::ids::{TenantId, TimelineId};

/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// How often the metadata may change under one sync before it gives up for now.
const MAX_ATTEMPTS: usize = 8;

/// Where a test stops a sync, leaving the object store as a crash there would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncFailPoint {
    #[default]
    None,
    /// Layers uploaded, manifest not written.
    AfterLayers,
    /// Manifest written, replaced layers not deleted.
    AfterManifest,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The manifest's LSN after the sync: everything below is durable remotely.
    pub remote_consistent_lsn: Lsn,
    pub manifest_written: bool,
    pub layers_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Of `layers_uploaded`: those above the part size, uploaded in parts.
    pub multipart_uploads: usize,
    pub layers_deleted: usize,
    /// Times the local metadata changed under the sync and it started over.
    pub restarts: usize,
}

/// Uploads the durable state of the timeline in `local_dir` (see the module docs).
pub async fn sync_timeline(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: &FsPath,
) -> Result<SyncReport> {
    sync_timeline_with(remote, tenant, timeline, local_dir, SyncFailPoint::None).await
}

/// [`sync_timeline`] with a failpoint (tests).
#[doc(hidden)]
pub async fn sync_timeline_with(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: &FsPath,
    fp: SyncFailPoint,
) -> Result<SyncReport> {
    let old = download_manifest(remote, tenant, timeline).await?;
    let (_, rep) = sync_from(remote, tenant, timeline, local_dir, old.as_ref(), fp).await?;
    Ok(rep)
}

/// A sync against a known remote manifest (`old`; the background uploader caches the one it
/// wrote). Returns the manifest now in the store.
pub(crate) async fn sync_from(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    dir: &FsPath,
    old: Option<&Manifest>,
    fp: SyncFailPoint,
) -> Result<(Manifest, SyncReport)> {
    let mut rep = SyncReport::default();
    for _ in 0..MAX_ATTEMPTS {
        let meta = TimelineMetadata::load(dir)?.ok_or_else(|| {
            RemoteError::Invalid(format!("{}: no timeline metadata to upload", dir.display()))
        })?;
        if let Some(old) = old {
            check_successor(old, &meta, tenant, timeline)?;
        }
        let manifest = match old {
            Some(old) if old.matches(&meta) => old.clone(),
            _ => {
                let Some(layers) =
                    upload_layers(remote, tenant, timeline, dir, &meta, old, &mut rep).await?
                else {
                    debug!(dir = %dir.display(), "a listed layer vanished; re-reading the metadata");
                    rep.restarts += 1;
                    continue;
                };
                if fp == SyncFailPoint::AfterLayers {
                    return Err(RemoteError::FailPoint("after layers"));
                }
                let m = Manifest::new(tenant, timeline, &meta, layers);
                let path = remote.manifest_path(tenant, timeline);
                remote
                    .store()
                    .put(&path, PutPayload::from(m.encode()))
                    .await
                    .map_err(RemoteError::store("put", &path))?;
                rep.manifest_written = true;
                info!(
                    %tenant, %timeline, lsn = %m.remote_consistent_lsn,
                    layers = m.layers.len(), uploaded = rep.layers_uploaded,
                    "remote manifest written"
                );
                if fp == SyncFailPoint::AfterManifest {
                    return Err(RemoteError::FailPoint("after manifest"));
                }
                m
            }
        };
        rep.layers_deleted = delete_unlisted(remote, tenant, timeline, &manifest).await?;
        rep.remote_consistent_lsn = manifest.remote_consistent_lsn;
        return Ok((manifest, rep));
    }
    Err(RemoteError::Busy(format!(
        "{}: the timeline's layers changed {MAX_ATTEMPTS} times during one upload; try again",
        dir.display()
    )))
}

/// Refuses to replace a manifest with the state of another timeline or an older state (that
/// would lose data whose WAL may already be gone from the safekeepers).
fn check_successor(
    old: &Manifest,
    meta: &TimelineMetadata,
    tenant: TenantId,
    timeline: TimelineId,
) -> Result<()> {
    if old.tenant != tenant || old.timeline != timeline {
        return Err(RemoteError::Invalid(format!(
            "the remote manifest at tenant {tenant} timeline {timeline} names tenant {} timeline {}",
            old.tenant, old.timeline
        )));
    }
    if old.start_lsn != meta.start_lsn || old.ancestor != meta.ancestor {
        return Err(RemoteError::Invalid(format!(
            "timeline {timeline}: the local timeline (start {}, ancestor {:?}) is not the one in \
             remote storage (start {}, ancestor {:?})",
            meta.start_lsn, meta.ancestor, old.start_lsn, old.ancestor
        )));
    }
    if meta.disk_consistent_lsn < old.remote_consistent_lsn {
        return Err(RemoteError::Invalid(format!(
            "timeline {timeline}: the local timeline is durable to {}, behind remote storage at \
             {}; refusing to move remote storage backwards (restore it instead)",
            meta.disk_consistent_lsn, old.remote_consistent_lsn
        )));
    }
    Ok(())
}

/// Uploads the layers of `meta` that `old` lacks; `None` if a listed file is gone.
async fn upload_layers(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    dir: &FsPath,
    meta: &TimelineMetadata,
    old: Option<&Manifest>,
    rep: &mut SyncReport,
) -> Result<Option<Vec<RemoteLayer>>> {
    let layers_path = remote.layers_path(tenant, timeline);
    let mut out = Vec::with_capacity(meta.layers.len());
    // Keys of the old manifest stay taken until a manifest without them is written.
    let mut taken: HashSet<String> = old
        .map(|o| o.layers.iter().map(|l| l.key.clone()).collect())
        .unwrap_or_default();
    for desc in &meta.layers {
        let name = desc.file_name();
        let path = dir.join(&name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not downloaded yet (restored on demand, `super::ondemand`): the uploaded
                // object is the layer. Otherwise compaction replaced it meanwhile.
                match old.and_then(|o| o.layer(desc)) {
                    Some(r) if is_on_demand(dir) => {
                        out.push(r.clone());
                        continue;
                    }
                    _ => return Ok(None),
                }
            }
            Err(e) => return Err(RemoteError::io("open", &path)(e)),
        };
        let size = file
            .metadata()
            .map_err(RemoteError::io("stat", &path))?
            .len();
        // Same name and size as uploaded: the same immutable file.
        if let Some(r) = old.and_then(|o| o.layer(desc)).filter(|r| r.size == size) {
            out.push(r.clone());
            continue;
        }
        let key = layer_key(&name, &taken);
        taken.insert(key.clone());
        let obj = layers_path.clone().join(key.as_str());
        let crc = upload_open_file(remote, &obj, file, size, &path).await?;
        rep.layers_uploaded += 1;
        rep.multipart_uploads += usize::from(size > remote.part_bytes() as u64);
        rep.bytes_uploaded += size;
        debug!(layer = %name, %obj, size, "layer uploaded");
        out.push(RemoteLayer {
            desc: desc.clone(),
            key,
            size,
            crc32c: crc,
        });
    }
    Ok(Some(out))
}

/// Whether the timeline in `dir` was restored on demand (its layers may be remote).
fn is_on_demand(dir: &FsPath) -> bool {
    dir.join(super::ondemand::REMOTE_LAYERS_FILE).exists()
}

/// Uploads the file at `path` to `obj` (in parts if it is larger than the storage's part
/// size); returns its size and crc32c.
pub async fn upload_file(remote: &RemoteStorage, obj: &Path, path: &FsPath) -> Result<(u64, u32)> {
    let file = std::fs::File::open(path).map_err(RemoteError::io("open", path))?;
    let size = file
        .metadata()
        .map_err(RemoteError::io("stat", path))?
        .len();
    let crc = upload_open_file(remote, obj, file, size, path).await?;
    Ok((size, crc))
}

/// Uploads an open file of `size` bytes to `obj`; returns its crc32c.
async fn upload_open_file(
    remote: &RemoteStorage,
    obj: &Path,
    file: std::fs::File,
    size: u64,
    path: &FsPath,
) -> Result<u32> {
    let mut f = tokio::fs::File::from_std(file);
    let store = remote.store();
    let part_bytes = remote.part_bytes();
    if size <= part_bytes as u64 {
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf)
            .await
            .map_err(RemoteError::io("read", path))?;
        check_size(path, size, buf.len() as u64)?;
        let crc = crc32c::crc32c(&buf);
        store
            .put(obj, PutPayload::from(buf))
            .await
            .map_err(RemoteError::store("put", obj))?;
        return Ok(crc);
    }
    let upload = store
        .put_multipart(obj)
        .await
        .map_err(RemoteError::store("start multipart upload", obj))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, part_bytes);
    let mut crc = 0u32;
    let streamed: Result<()> = async {
        let mut buf = vec![0u8; part_bytes.min(1024 * 1024)];
        let mut done = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(RemoteError::io("read", path))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            w.wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(RemoteError::store("upload part", obj))?;
            w.write(&buf[..n]);
            done += n as u64;
        }
        check_size(path, size, done)
    }
    .await;
    match streamed {
        Ok(()) => {
            w.finish()
                .await
                .map_err(RemoteError::store("complete multipart upload", obj))?;
            Ok(crc)
        }
        Err(e) => {
            let _ = w.abort().await;
            Err(e)
        }
    }
}

fn check_size(path: &FsPath, expected: u64, read: u64) -> Result<()> {
    if expected == read {
        return Ok(());
    }
    Err(RemoteError::Invalid(format!(
        "{}: read {read} bytes of a layer file of {expected} (layer files must not change)",
        path.display()
    )))
}

/// Deletes the layer objects (under `l/`) that `manifest` does not list; returns how many.
async fn delete_unlisted(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    manifest: &Manifest,
) -> Result<usize> {
    let layers_path = remote.layers_path(tenant, timeline);
    let live: HashSet<&str> = manifest.layers.iter().map(|l| l.key.as_str()).collect();
    let mut stale = Vec::new();
    let mut listing = remote.store().list(Some(&layers_path));
    while let Some(obj) = listing.next().await {
        let obj = obj.map_err(RemoteError::store("list", &layers_path))?;
        let name = obj.location.filename().unwrap_or_default();
        if !live.contains(name) {
            stale.push(obj.location);
        }
    }
    for obj in &stale {
        match remote.store().delete(obj).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(RemoteError::store("delete", obj)(e)),
        }
        debug!(object = %obj, "unlisted remote layer deleted");
    }
    Ok(stale.len())
}

/// Deletes a timeline from the object store: the manifest first (from then on the timeline
/// does not exist remotely, whatever a crash leaves), then every layer. The caller stops the
/// timeline's uploader before.
pub async fn delete_remote_timeline(
    remote: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
) -> Result<usize> {
    let path = remote.manifest_path(tenant, timeline);
    match remote.store().delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(RemoteError::store("delete", &path)(e)),
    }
    // The timeline's config (its safekeepers) too: a wiped pageserver must not find it.
    let conf = remote.timeline_config_path(tenant, timeline);
    match remote.store().delete(&conf).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(RemoteError::store("delete", &conf)(e)),
    }
    let empty = Manifest {
        tenant,
        timeline,
        start_lsn: Lsn::INVALID,
        ancestor: None,
        remote_consistent_lsn: Lsn::INVALID,
        last_record_lsn: Lsn::INVALID,
        gc_cutoff_lsn: Lsn::INVALID,
        layers: Vec::new(),
    };
    delete_unlisted(remote, tenant, timeline, &empty).await
}

#[cfg(test)]
mod tests {
    //! The uploader treats layer files as opaque bytes, so these tests use small made-up
    //! files; pageserver/tests/remote_storage.rs uses real timelines.
    use super::*;
    use layer_format::{Key, LayerDesc};

    fn delta(lo: u64, hi: u64) -> LayerDesc {
        LayerDesc::delta(Key::MIN..Key::MAX, Lsn(lo)..Lsn(hi))
    }

    fn write_state(dir: &FsPath, layers: &[LayerDesc], lsn: u64) {
        for (i, d) in layers.iter().enumerate() {
            let p = dir.join(d.file_name());
            if !p.exists() {
                std::fs::write(p, vec![i as u8; 1000 + i]).unwrap();
            }
        }
        TimelineMetadata {
            start_lsn: Lsn(0x100),
            ancestor: None,
            disk_consistent_lsn: Lsn(lsn),
            last_record_lsn: Lsn(lsn - 0x10),
            gc_cutoff_lsn: Lsn::INVALID,
            layers: layers.to_vec(),
        }
        .store(dir)
        .unwrap();
    }

    #[tokio::test]
    async fn replaced_vanished_and_backwards() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tl");
        std::fs::create_dir_all(&dir).unwrap();
        let remote = RemoteStorage::local(&tmp.path().join("store")).unwrap();
        let (a, b, c) = (
            delta(0x100, 0x200),
            delta(0x200, 0x300),
            delta(0x100, 0x300),
        );
        let id = |n: u8| format!("{n:032x}");
        let t: TenantId = id(1).parse().unwrap();
        let (tl, other, tl2): (TimelineId, TimelineId, TimelineId) = (
            id(2).parse().unwrap(),
            id(3).parse().unwrap(),
            id(4).parse().unwrap(),
        );
        let none = super::super::list_remote_tenants(&remote).await.unwrap();
        assert!(none.is_empty(), "{none:?}");

        write_state(&dir, &[a.clone(), b.clone()], 0x300);
        let rep = sync_timeline(&remote, t, tl, &dir).await.unwrap();
        assert_eq!(
            (rep.layers_uploaded, rep.remote_consistent_lsn),
            (2, Lsn(0x300))
        );

        // "Compaction": c replaces a and b, which are deleted locally, then remotely.
        write_state(&dir, std::slice::from_ref(&c), 0x300);
        std::fs::remove_file(dir.join(a.file_name())).unwrap();
        std::fs::remove_file(dir.join(b.file_name())).unwrap();
        let rep = sync_timeline(&remote, t, tl, &dir).await.unwrap();
        assert_eq!((rep.layers_uploaded, rep.layers_deleted), (1, 2), "{rep:?}");

        // A listed file that is gone: the sync re-reads the metadata, then gives up.
        let d = delta(0x300, 0x400);
        write_state(&dir, &[c.clone(), d.clone()], 0x400);
        std::fs::remove_file(dir.join(d.file_name())).unwrap();
        let e = sync_timeline(&remote, t, tl, &dir).await.unwrap_err();
        assert!(matches!(e, RemoteError::Busy(_)), "{e}");

        // A local state behind the remote one is refused, the manifest unchanged.
        write_state(&dir, std::slice::from_ref(&c), 0x280);
        let e = sync_timeline(&remote, t, tl, &dir).await.unwrap_err();
        assert!(e.to_string().contains("backwards"), "{e}");
        let m = download_manifest(&remote, t, tl).await.unwrap().unwrap();
        assert_eq!(m.remote_consistent_lsn, Lsn(0x300));

        // Another timeline's manifest at this location is refused too.
        write_state(&dir, &[c], 0x300);
        let e = sync_timeline(&remote, t, other, &dir).await;
        assert!(e.is_ok(), "a fresh location takes any timeline");
        let e = sync_from(&remote, t, tl2, &dir, Some(&m), SyncFailPoint::None)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("names tenant {t} timeline {tl}")),
            "{e}"
        );

        // Deleted: no manifest, no layers, not listed.
        assert_eq!(delete_remote_timeline(&remote, t, tl).await.unwrap(), 1);
        assert!(download_manifest(&remote, t, tl).await.unwrap().is_none());
        // A name under the tenant that is no timeline id is skipped.
        let stray = remote.tenant_path(t).join("not-an-id").join("manifest");
        remote.store().put(&stray, "x".into()).await.unwrap();
        let left = super::super::list_remote_timelines(&remote, t)
            .await
            .unwrap();
        assert_eq!(left.iter().map(|m| m.timeline).collect::<Vec<_>>(), [other]);
        let stray = remote.tenants_path().join("not-a-tenant").join("config");
        remote.store().put(&stray, "x".into()).await.unwrap();
        assert_eq!(
            super::super::list_remote_tenants(&remote).await.unwrap(),
            [t]
        );
    }
}
