//! Downloading one layer file: streamed into `<name>.download.tmp` next to its place, checked
//! against the manifest (size and crc32c), fsynced and renamed into place; a layer that does
//! not check out is removed and reported as [`RemoteError::LayerCorrupt`], naming the layer
//! and its object. Used by the eager [`super::restore_timeline`] and by the on-demand
//! downloads of [`super::ondemand`].

use std::path::Path as FsPath;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{RemoteError, Result};
use super::manifest::RemoteLayer;
use super::storage::RemoteStorage;

/// Downloads `layer` (object `obj`) into `dir/<its file name>`; returns its size. The
/// directory entry is not fsynced (the caller does, once for many layers).
pub(crate) async fn download_layer(
    remote: &RemoteStorage,
    obj: &Path,
    dir: &FsPath,
    layer: &RemoteLayer,
) -> Result<u64> {
    let name = layer.file_name();
    let dst = dir.join(&name);
    let corrupt = |reason: String| RemoteError::LayerCorrupt {
        layer: format!("{name} (object {obj})"),
        reason,
    };
    let got = match remote.store().get(obj).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(corrupt(
                "missing from the object store, yet the manifest lists it".into(),
            ))
        }
        Err(e) => return Err(RemoteError::store("get", obj)(e)),
    };
    let tmp = dir.join(format!("{name}.download.tmp"));
    // Whatever goes wrong (the store, the local disk, the check), no temporary file stays.
    match write_checked(got, obj, &tmp, layer, corrupt).await {
        Ok(size) => {
            tokio::fs::rename(&tmp, &dst)
                .await
                .map_err(RemoteError::io("rename", &dst))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })?;
            Ok(size)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// Streams the object into `tmp`, checks it against the manifest and fsyncs it; returns its
/// size.
async fn write_checked(
    got: object_store::GetResult,
    obj: &Path,
    tmp: &FsPath,
    layer: &RemoteLayer,
    corrupt: impl Fn(String) -> RemoteError,
) -> Result<u64> {
    let mut f = tokio::fs::File::create(tmp)
        .await
        .map_err(RemoteError::io("create", tmp))?;
    let mut stream = got.into_stream();
    let (mut size, mut crc) = (0u64, 0u32);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(RemoteError::store("read", obj))?;
        size += chunk.len() as u64;
        if size > layer.size {
            return Err(corrupt(format!(
                "longer than the {} bytes of the manifest",
                layer.size
            )));
        }
        crc = crc32c::crc32c_append(crc, &chunk);
        f.write_all(&chunk)
            .await
            .map_err(RemoteError::io("write", tmp))?;
    }
    if let Some(reason) = verdict(layer, size, crc) {
        return Err(corrupt(reason));
    }
    f.sync_all().await.map_err(RemoteError::io("fsync", tmp))?;
    Ok(size)
}

/// Why a file of `size` bytes and checksum `crc` is not `layer`; `None` if it is.
pub(crate) fn verdict(layer: &RemoteLayer, size: u64, crc: u32) -> Option<String> {
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

/// Whether `path` already holds exactly `layer` (reads the whole file).
pub(crate) async fn local_copy_matches(path: &FsPath, layer: &RemoteLayer) -> Result<bool> {
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

/// Makes the entries of `dir` durable.
pub(crate) async fn fsync_dir(dir: &FsPath) -> Result<()> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::durable::fsync_dir(&d))
        .await
        .map_err(|e| RemoteError::Invalid(format!("fsync task failed: {e}")))?
        .map_err(|f| RemoteError::io(f.op, f.path)(f.source))
}
