//! The background uploader of one timeline: syncs whenever the local metadata changed
//! (checked every [`UploaderConf::poll_interval`]; reading the small metadata file is cheap)
//! and on request, and publishes `remote_consistent_lsn` on a watch channel (the
//! walreceiver reports it to the safekeepers, which remove WAL below it).
//!
//! The uploader keeps the manifest it last wrote, so an unchanged timeline costs no request.
//! A failed sync is logged and retried with a growing delay (up to
//! [`UploaderConf::max_backoff`]); the cached manifest is dropped and read again from the
//! store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layer_format::Lsn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};
use walproto::ids::{TenantId, TimelineId};

use super::error::{RemoteError, Result};
use super::manifest::Manifest;
use super::restore::download_manifest;
use super::storage::RemoteStorage;
use super::upload::{sync_from, SyncFailPoint, SyncReport};
use crate::timeline::TimelineMetadata;

#[derive(Clone, Debug)]
pub struct UploaderConf {
    /// How often the local metadata is checked for changes.
    pub poll_interval: Duration,
    /// Longest delay between retries of a failing sync.
    pub max_backoff: Duration,
}

impl Default for UploaderConf {
    fn default() -> Self {
        UploaderConf {
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the uploader did since it started.
#[derive(Clone, Debug, Default)]
pub struct UploaderStats {
    pub syncs: u64,
    pub failed_syncs: u64,
    pub manifests_written: u64,
    pub layers_uploaded: u64,
    pub bytes_uploaded: u64,
    pub layers_deleted: u64,
    /// Syncs started over because compaction replaced a layer being uploaded.
    pub restarts: u64,
    pub last_error: Option<String>,
}

enum Request {
    Sync(oneshot::Sender<Result<SyncReport>>),
    Shutdown(oneshot::Sender<Result<SyncReport>>),
}

/// Handle of a running uploader. Dropping it stops the task after its current sync.
pub struct UploaderHandle {
    name: String,
    lsn: watch::Receiver<Lsn>,
    requests: mpsc::Sender<Request>,
    task: JoinHandle<()>,
    stats: Arc<Mutex<UploaderStats>>,
}

impl UploaderHandle {
    /// Everything below this LSN is durable in the object store (`0/0` before the first sync).
    pub fn remote_consistent_lsn(&self) -> Lsn {
        *self.lsn.borrow()
    }

    /// A receiver that sees every advance of `remote_consistent_lsn`.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.lsn.clone()
    }

    pub fn stats(&self) -> UploaderStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks for a sync soon, without waiting for it.
    pub fn request_sync(&self) {
        let (tx, _) = oneshot::channel();
        let _ = self.requests.try_send(Request::Sync(tx));
    }

    /// Syncs now (after any sync under way) and returns what it did.
    pub async fn sync_now(&self) -> Result<SyncReport> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Sync(tx)).await?;
        rx.await
            .map_err(|_| RemoteError::UploaderGone(self.name.clone()))?
    }

    /// A last sync, then the task ends.
    pub async fn shutdown(self) -> Result<SyncReport> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Shutdown(tx)).await?;
        let res = rx
            .await
            .map_err(|_| RemoteError::UploaderGone(self.name.clone()))?;
        let _ = self.task.await;
        res
    }

    /// Stops the task without a last sync, after the sync under way (if any) ends.
    pub async fn stop(self) {
        drop(self.requests);
        let _ = self.task.await;
    }

    async fn send(&self, r: Request) -> Result<()> {
        self.requests
            .send(r)
            .await
            .map_err(|_| RemoteError::UploaderGone(self.name.clone()))
    }
}

/// Starts the uploader of the timeline in `local_dir` on the current tokio runtime. Its first
/// sync runs at once.
pub fn spawn_uploader(
    remote: RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    local_dir: PathBuf,
    conf: UploaderConf,
) -> UploaderHandle {
    let (lsn_tx, lsn_rx) = watch::channel(Lsn::INVALID);
    let (req_tx, req_rx) = mpsc::channel(16);
    let name = format!("{tenant}/{timeline}");
    let stats = Arc::new(Mutex::new(UploaderStats::default()));
    let task = Uploader {
        stats: stats.clone(),
        remote,
        tenant,
        timeline,
        dir: local_dir,
        conf,
        lsn: lsn_tx,
        known: None,
        synced_meta: None,
    };
    let span = tracing::info_span!("uploader", %tenant, %timeline);
    let task = tokio::spawn(task.run(req_rx).instrument(span));
    UploaderHandle {
        name,
        lsn: lsn_rx,
        requests: req_tx,
        task,
        stats,
    }
}

struct Uploader {
    remote: RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    dir: PathBuf,
    conf: UploaderConf,
    lsn: watch::Sender<Lsn>,
    /// The manifest in the store, as last written or read; `None` = read it first.
    known: Option<Option<Manifest>>,
    /// The local metadata the last successful sync uploaded.
    synced_meta: Option<TimelineMetadata>,
    stats: Arc<Mutex<UploaderStats>>,
}

impl Uploader {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut delay = Duration::ZERO;
        let mut failures = 0u32;
        loop {
            let req = tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => Some(r),
                    None => break,
                },
                _ = tokio::time::sleep(delay) => None,
            };
            let res = match req {
                Some(Request::Sync(reply)) => {
                    let _ = reply.send(self.sync().await);
                    continue;
                }
                Some(Request::Shutdown(reply)) => {
                    let _ = reply.send(self.sync().await);
                    return;
                }
                None if self.changed() => self.sync().await,
                None => Ok(SyncReport::default()),
            };
            match res {
                Ok(_) => {
                    failures = 0;
                    delay = self.conf.poll_interval;
                }
                Err(e) => {
                    failures += 1;
                    delay = (self.conf.poll_interval * 2u32.saturating_pow(failures.min(16)))
                        .min(self.conf.max_backoff);
                    warn!(error = %e, retry_in = ?delay, "remote sync failed");
                }
            }
        }
        info!("uploader stopped");
    }

    /// Whether the local metadata differs from what was last uploaded (a read error counts as
    /// a change, so that the sync reports it).
    fn changed(&self) -> bool {
        match TimelineMetadata::load(&self.dir) {
            Ok(Some(m)) => self.synced_meta.as_ref() != Some(&m),
            Ok(None) | Err(_) => true,
        }
    }

    async fn sync(&mut self) -> Result<SyncReport> {
        let res = self.try_sync().await;
        if res.is_err() {
            self.known = None;
            self.synced_meta = None;
        }
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.syncs += 1;
        match &res {
            Ok(r) => {
                s.manifests_written += u64::from(r.manifest_written);
                s.layers_uploaded += r.layers_uploaded as u64;
                s.bytes_uploaded += r.bytes_uploaded;
                s.layers_deleted += r.layers_deleted as u64;
                s.restarts += r.restarts as u64;
            }
            Err(e) => {
                s.failed_syncs += 1;
                s.last_error = Some(e.to_string());
            }
        }
        drop(s);
        res
    }

    async fn try_sync(&mut self) -> Result<SyncReport> {
        let (tenant, timeline) = (self.tenant, self.timeline);
        if self.known.is_none() {
            self.known = Some(download_manifest(&self.remote, tenant, timeline).await?);
        }
        let old = self.known.as_ref().and_then(Option::as_ref);
        let (m, rep) = sync_from(
            &self.remote,
            tenant,
            timeline,
            &self.dir,
            old,
            SyncFailPoint::None,
        )
        .await?;
        self.synced_meta = Some(m.to_metadata());
        crate::metrics::uploaded(rep.bytes_uploaded);
        let listed: u64 = m.layers.iter().map(|l| l.size).sum();
        crate::metrics::timeline_facts(tenant, timeline)
            .remote_layer_bytes
            .store(listed, std::sync::atomic::Ordering::Relaxed);
        self.known = Some(Some(m));
        self.lsn.send_if_modified(|l| {
            let advanced = rep.remote_consistent_lsn > *l;
            if advanced {
                *l = rep.remote_consistent_lsn;
            }
            advanced
        });
        Ok(rep)
    }
}
