//! On-demand layer downloads: a timeline restored by
//! [`super::restore_timeline_on_demand`] opens with its layers *remote* and fetches each one
//! the first time a read (or compaction, GC) needs its content.
//!
//! The restore leaves `remote_layers` in the timeline directory, written before the metadata
//! (temporary file, fsync, rename, directory fsync):
//!
//! ```text
//! strata-remote-layers 1
//! storage <crc32c of the URL, 8 hex digits> <remote storage URL>
//! <the manifest the timeline was restored from, with its own crc32c line>
//! ```
//!
//! [`RemoteLayerSource::fetcher_for`] reads it and makes the timeline's fetcher, which its
//! opener passes to `Timeline::open`: every layer of the metadata whose file is not
//! in the directory becomes a remote layer (`timeline::layer_map::Layer::remote`) with its
//! size from the manifest, so the layer map and read planning are the same as for local
//! layers. The first read of a remote layer calls [`LayerFetch::fetch`] (one call per layer;
//! concurrent readers wait for it): the object is streamed into `<name>.download.tmp`, its
//! size and crc32c checked against the manifest, fsynced, renamed into place, the directory
//! fsynced, and the file opened. A failed download fails that read with an error naming the
//! layer and its object key; the next read tries again. The layer list is only consulted for
//! layers the metadata lists and the directory lacks: layers written after the restore are
//! always local, and a layer once downloaded is an ordinary local file.
//!
//! Whoever knows the object store makes the [`RemoteLayerSource`]: the pageserver from its
//! `--remote-storage` (handed to its tenants as their `LayerSource`), a tool or a test from the
//! store it restored from. A fetcher downloads from the source's store of the URL in
//! `remote_layers`, or else from one built from the URL ([`RemoteStorage::from_url`], S3
//! settings from the environment).
//!
//! Reads run on blocking threads (the gRPC service's `spawn_blocking`, the flush thread,
//! tests' plain threads); the async download runs on a small runtime of its own
//! (`layer-download` threads), and the reading thread waits for it on a channel. It never
//! borrows the caller's runtime, so a read cannot deadlock it by blocking its workers.
//!
//! Counters: per timeline (`Timeline::residence`), per source ([`RemoteLayerSource::totals`]),
//! and the pageserver's metrics (`crate::metrics::downloaded_on_demand`); each download is
//! logged (`layer downloaded on demand`, with the layer, object, bytes and the source's
//! totals).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use layer_format::LayerDesc;
use tracing::{info, warn};
use walproto::ids::{TenantId, TimelineId};

use super::download::{download_layer, fsync_dir};
use super::error::{RemoteError, Result};
use super::manifest::{Manifest, RemoteLayer};
use super::storage::RemoteStorage;
use crate::tenant::layer_source::LayerSource;
use crate::timeline::layer_map::{FetchStats, LayerFetch};
use crate::timeline::TimelineError;

/// The remote layer list in a restored timeline's directory.
pub const REMOTE_LAYERS_FILE: &str = "remote_layers";

const HEADER: &str = "strata-remote-layers 1";

/// Download threads of the process (one runtime for every source: it holds no state).
const DOWNLOAD_THREADS: usize = 2;

/// What `remote_layers` says: where the timeline's layers are and what they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteLayers {
    /// The storage URL ([`RemoteStorage`]'s `Display`).
    pub storage: String,
    pub manifest: Manifest,
}

impl RemoteLayers {
    pub fn encode(&self) -> String {
        format!(
            "{HEADER}\nstorage {:08X} {}\n{}",
            crc32c::crc32c(self.storage.as_bytes()),
            self.storage,
            self.manifest.encode()
        )
    }

    /// Parses the file's contents; `path` names it in errors.
    pub fn decode(bytes: &[u8], path: &str) -> Result<RemoteLayers> {
        let bad = |reason: &str| RemoteError::Manifest {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        let (header, rest) = text.split_once('\n').ok_or_else(|| bad("truncated"))?;
        if header != HEADER {
            return Err(bad(&format!("header {header:?}, expected {HEADER:?}")));
        }
        let (line, manifest) = rest.split_once('\n').ok_or_else(|| bad("truncated"))?;
        let (crc, storage) = line
            .strip_prefix("storage ")
            .and_then(|s| s.split_once(' '))
            .filter(|(_, url)| !url.is_empty())
            .ok_or_else(|| bad("no `storage <crc32c> <url>` line"))?;
        if *crc != format!("{:08X}", crc32c::crc32c(storage.as_bytes())) {
            return Err(bad("crc32c mismatch on the storage line"));
        }
        Ok(RemoteLayers {
            storage: storage.to_string(),
            manifest: Manifest::decode(manifest.as_bytes(), path)?,
        })
    }
}

/// Writes `dir/remote_layers` durably (see the module docs).
pub fn write_remote_layers(dir: &Path, remote: &RemoteStorage, manifest: &Manifest) -> Result<()> {
    let rl = RemoteLayers {
        storage: remote.to_string(),
        manifest: manifest.clone(),
    };
    crate::durable::write_atomic(&dir.join(REMOTE_LAYERS_FILE), rl.encode().as_bytes())
        .map_err(|f| RemoteError::io(f.op, f.path)(f.source))
}

/// Removes `dir/remote_layers` if it is there (the directory entry is made durable by the
/// caller's next directory fsync).
pub fn remove_remote_layers(dir: &Path) -> Result<()> {
    let path = dir.join(REMOTE_LAYERS_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RemoteError::io("remove", &path)(e))
        }
        _ => Ok(()),
    }
}

/// The [`LayerSource`] of a pageserver (or a tool) that may open timelines restored on
/// demand: each fetcher downloads from the store its `remote_layers` names, which is the
/// configured store if it has that URL (the pageserver's `--remote-storage`), or else one
/// built from the URL at the first download ([`RemoteStorage::from_url`], S3 settings from
/// the environment). Counts the downloads of all its timelines ([`RemoteLayerSource::totals`]).
#[derive(Clone, Default)]
pub struct RemoteLayerSource {
    shared: Arc<Shared>,
}

/// What the fetchers of one [`RemoteLayerSource`] share.
#[derive(Default)]
struct Shared {
    /// Stores by URL: the configured one, and those built for other URLs.
    stores: Mutex<HashMap<String, RemoteStorage>>,
    totals: Counters,
}

impl RemoteLayerSource {
    /// Downloads from `configured` for its URL, and from stores built from the URL for others.
    pub fn new(configured: Option<&RemoteStorage>) -> RemoteLayerSource {
        let source = RemoteLayerSource::default();
        if let Some(r) = configured {
            lock(&source.shared.stores).insert(r.to_string(), r.clone());
        }
        source
    }

    /// The fetcher of the timeline in `dir` if it was restored on demand (it has
    /// `remote_layers`); `None` otherwise.
    pub fn fetcher_for(&self, dir: &Path) -> crate::timeline::Result<Option<Arc<dyn LayerFetch>>> {
        let path = dir.join(REMOTE_LAYERS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TimelineError::io("read", &path)(e)),
        };
        let rl = RemoteLayers::decode(&bytes, &path.to_string_lossy()).map_err(|e| {
            TimelineError::Metadata {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let layers = rl
            .manifest
            .layers
            .iter()
            .map(|l| (l.desc.clone(), l.clone()))
            .collect();
        Ok(Some(Arc::new(Fetcher {
            storage: rl.storage,
            tenant: rl.manifest.tenant,
            timeline: rl.manifest.timeline,
            layers,
            shared: self.shared.clone(),
            own: Counters::default(),
        })))
    }

    /// Downloads of every timeline this source made a fetcher for, so far.
    pub fn totals(&self) -> FetchStats {
        self.shared.totals.snapshot()
    }
}

impl Shared {
    /// The store of `url`: the configured one, or one built from the URL (kept for the next).
    fn storage_for(&self, url: &str) -> Result<RemoteStorage> {
        let mut stores = lock(&self.stores);
        if let Some(r) = stores.get(url) {
            return Ok(r.clone());
        }
        let r = RemoteStorage::from_url(url)?;
        stores.insert(url.to_string(), r.clone());
        Ok(r)
    }
}

impl LayerSource for RemoteLayerSource {
    fn fetcher_for(&self, dir: &Path) -> crate::timeline::Result<Option<Arc<dyn LayerFetch>>> {
        RemoteLayerSource::fetcher_for(self, dir)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Download counts of one timeline, or of all of a source's.
#[derive(Default)]
struct Counters {
    downloads: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    /// Counts one download of `bytes`; returns the counts with it.
    fn downloaded(&self, bytes: u64) -> FetchStats {
        FetchStats {
            downloads: self
                .downloads
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1),
            bytes: self
                .bytes
                .fetch_add(bytes, Ordering::Relaxed)
                .saturating_add(bytes),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FetchStats {
        FetchStats {
            downloads: self.downloads.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// Fetches one timeline's layers from its object store.
struct Fetcher {
    storage: String,
    tenant: TenantId,
    timeline: TimelineId,
    layers: HashMap<LayerDesc, RemoteLayer>,
    shared: Arc<Shared>,
    /// This timeline's downloads.
    own: Counters,
}

impl LayerFetch for Fetcher {
    fn size(&self, desc: &LayerDesc) -> Option<u64> {
        self.layers.get(desc).map(|l| l.size)
    }

    fn fetch(&self, desc: &LayerDesc, path: &Path) -> crate::timeline::Result<u64> {
        let fail = |msg: String| {
            self.own.failed();
            self.shared.totals.failed();
            warn!(tenant = %self.tenant, timeline = %self.timeline, layer = %desc,
                  error = %msg, "on-demand layer download failed");
            TimelineError::Io {
                op: "on-demand download of layer",
                path: path.to_path_buf(),
                source: std::io::Error::other(msg),
            }
        };
        let Some(layer) = self.layers.get(desc).cloned() else {
            return Err(fail(format!(
                "not in the remote layer list of {}/{} ({})",
                self.tenant, self.timeline, self.storage
            )));
        };
        let remote = self
            .shared
            .storage_for(&self.storage)
            .map_err(|e| fail(e.to_string()))?;
        let obj = remote
            .layers_path(self.tenant, self.timeline)
            .join(layer.key.as_str());
        let dir: PathBuf = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let t0 = Instant::now();
        let timer = strata_metrics::Timer::start();
        let res = run({
            let obj = obj.clone();
            async move {
                let n = download_layer(&remote, &obj, &dir, &layer).await?;
                fsync_dir(&dir).await?;
                Ok(n)
            }
        });
        let n = res.map_err(|e| {
            fail(match e {
                // These name the object already.
                RemoteError::LayerCorrupt { .. } | RemoteError::Store { .. } => e.to_string(),
                e => format!("object {obj}: {e}"),
            })
        })?;
        crate::metrics::downloaded_on_demand(n, timer);
        let own = self.own.downloaded(n);
        let all = self.shared.totals.downloaded(n);
        info!(tenant = %self.tenant, timeline = %self.timeline, layer = %desc, object = %obj,
              bytes = n, ms = t0.elapsed().as_millis() as u64, timeline_downloads = own.downloads,
              all_downloads = all.downloads, all_bytes = all.bytes,
              "layer downloaded on demand");
        Ok(n)
    }

    fn stats(&self) -> FetchStats {
        self.own.snapshot()
    }
}

/// The runtime on-demand downloads run on.
fn runtime() -> std::result::Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(DOWNLOAD_THREADS)
            .thread_name("layer-download")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `fut` on the download runtime and waits for it on this thread.
fn run<T: Send + 'static>(fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let rt = runtime()
        .map_err(|e| RemoteError::Invalid(format!("starting the download runtime: {e}")))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| {
        RemoteError::Invalid("the download task ended without a result (panicked?)".into())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_layers_round_trip() {
        let m = Manifest {
            tenant: TenantId([1; 16]),
            timeline: TimelineId([2; 16]),
            start_lsn: layer_format::Lsn(0x10),
            ancestor: None,
            remote_consistent_lsn: layer_format::Lsn(0x20),
            last_record_lsn: layer_format::Lsn(0x18),
            gc_cutoff_lsn: layer_format::Lsn::INVALID,
            layers: Vec::new(),
        };
        let rl = RemoteLayers {
            storage: "file:///tmp/some store".into(),
            manifest: m,
        };
        let text = rl.encode();
        assert_eq!(RemoteLayers::decode(text.as_bytes(), "f").unwrap(), rl);
        let lsn = "0/00000020";
        assert!(text.contains(lsn), "{text}");
        for damaged in [
            text.replace("some", "same"),
            text.replace(lsn, "0/00000021"),
        ] {
            let e = RemoteLayers::decode(damaged.as_bytes(), "f").unwrap_err();
            assert!(e.to_string().contains("crc32c"), "{e}");
        }
        assert!(RemoteLayers::decode(b"strata-remote-layers 1\n", "f").is_err());
    }
}
