//! Per-timeline background work the service runs: the remote uploader (when the pageserver
//! has remote storage) and the walreceiver (when the timeline has safekeepers).
//!
//! With remote storage, the tenant's config (`tenant.toml`) and the timeline's
//! (`timeline.toml`: its safekeepers) are uploaded too, whenever a timeline starts or its
//! safekeepers change (retried until done), so that a wiped pageserver restores them
//! (`crate::remote::startup`). A deleted timeline is deleted from the object store as well,
//! so that it does not come back at the next start.
//!
//! The walreceiver ([`crate::walreceiver::run`]) feeds the timeline's handle, which is its
//! [`crate::walreceiver::WalSink`]. If it ends because ingest stopped at a record the
//! timeline cannot ingest ([`crate::tenant::IngestStop`]), it is not started again until the
//! stop is lifted (`ResumeIngest`; a restart starts afresh): no retry loop, the WAL waits in
//! the safekeepers. If it ends with another error (WAL that cannot be decoded), it is started
//! again after a growing delay: WAL is never skipped, and a transient problem heals. A
//! periodic flush makes what was ingested durable within
//! [`FLUSH_INTERVAL`] even when the open layer stays small, so `durable_local` (which lets
//! the safekeepers remove WAL) keeps moving.
//!
//! Periodic GC ([`Background::start_gc`], the pageserver's `--gc-interval`) runs GC of every
//! timeline of every tenant once per interval, one tenant at a time on the blocking pool. A
//! tenant whose GC (the Gc RPC) or branch creation is running is skipped until the next
//! round: GC of a tenant holds its `changes` lock, so two GCs of one tenant never overlap.
//! Stopping waits for the GC in progress (one tenant's) to finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::remote::{
    delete_remote_timeline, spawn_uploader, RemoteStorage, UploaderConf, UploaderHandle,
};
use crate::tenant::layout::{TENANT_CONF, TIMELINE_CONF};
use crate::tenant::{TenantManager, TimelineHandle};
use crate::walreceiver::{self, WalReceiverConf, WalSink};
use walproto::ids::{TenantId, TimelineId};

type TimelineKey = (TenantId, TimelineId);

struct WalReceiverTask {
    safekeepers: Vec<String>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct TimelineTasks {
    uploader: Option<UploaderHandle>,
    forwarder: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    config_upload: Option<JoinHandle<()>>,
    walreceiver: Option<WalReceiverTask>,
}

pub struct Background {
    remote: Option<RemoteStorage>,
    /// Given to the safekeepers as the replication password.
    safekeeper_token: Option<String>,
    tasks: Mutex<HashMap<TimelineKey, TimelineTasks>>,
    gc: Mutex<Option<GcTask>>,
}

/// The periodic GC loop.
struct GcTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The default GC interval (the pageserver's `--gc-interval`).
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);

/// One round of periodic GC: every tenant once, unless `stop` turns true in between.
async fn gc_round(manager: &Arc<TenantManager>, stop: &watch::Receiver<bool>) {
    for tenant in manager.tenants() {
        if *stop.borrow() {
            return;
        }
        let t = tenant.clone();
        let res = tokio::task::spawn_blocking(move || t.try_gc()).await;
        let id = tenant.id();
        match res {
            Err(e) => warn!(tenant = %id, error = %e, "periodic GC task failed"),
            Ok(None) => info!(tenant = %id,
                              "periodic GC skipped: the tenant is busy (a GC or a branch \
                               creation is running); next round"),
            Ok(Some(Err(e))) => warn!(tenant = %id, error = %e, "periodic GC failed"),
            Ok(Some(Ok(results))) => {
                for g in results {
                    let r = &g.report;
                    if r.layers_removed > 0 || r.image_layers_written > 0 {
                        info!(tenant = %id, timeline = %g.timeline_id, cutoff = %r.cutoff_lsn,
                              image_lsn = %r.image_lsn, layers_removed = r.layers_removed,
                              bytes_removed = r.bytes_removed,
                              image_layers_written = r.image_layers_written,
                              image_bytes_written = r.image_bytes_written,
                              "periodic GC removed history");
                    } else {
                        tracing::debug!(tenant = %id, timeline = %g.timeline_id,
                                        cutoff = %r.cutoff_lsn, "periodic GC: nothing to remove");
                    }
                }
            }
        }
    }
}

fn key(h: &TimelineHandle) -> TimelineKey {
    (h.tenant_id(), h.timeline_id())
}

/// Ingested WAL becomes durable at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Streams `h`'s WAL from `safekeepers` until `stop` turns true.
fn spawn_walreceiver(
    h: Arc<TimelineHandle>,
    safekeepers: Vec<String>,
    password: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let conf = WalReceiverConf {
        password,
        ..WalReceiverConf::new(safekeepers, h.tenant_id(), h.timeline_id())
    };
    Some(tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let sink: Arc<dyn WalSink> = h.clone();
            let res = walreceiver::run(conf.clone(), sink, stop.clone()).await;
            if let Ok(()) = res {
                return;
            }
            if h.ingest_stop().is_some() {
                // Logged once by the handle when it stopped; nothing to retry until lifted.
                info!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                      "walreceiver paused: ingest is stopped until a restart or ResumeIngest");
                let mut lifted = h.watch_ingest_stop();
                tokio::select! {
                    _ = lifted.wait_for(|s| s.is_none()) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                info!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                      "ingest resumed: streaming again");
                delay = Duration::from_secs(1);
                continue;
            }
            if let Err(e) = res {
                warn!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                      error = %format!("{e:#}"), retry_in = ?delay, "walreceiver stopped");
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }))
}

/// Flushes `h` every [`FLUSH_INTERVAL`] when it holds WAL that is not durable.
fn spawn_flusher(h: Arc<TimelineHandle>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Status and flush take the timeline's locks: off the async threads.
            let h2 = h.clone();
            let res = tokio::task::spawn_blocking(move || {
                let s = h2.status();
                if s.disk_consistent_lsn < s.last_record_end {
                    h2.flush()?;
                }
                Ok::<_, crate::tenant::TenantError>(())
            })
            .await;
            if let Ok(Err(e)) = res {
                warn!(tenant = %h.tenant_id(), timeline = %h.timeline_id(), error = %e,
                      "periodic flush failed");
            }
        }
    })
}

/// Puts `data` at `obj` unless the store holds it already.
async fn put_if_changed(
    remote: &RemoteStorage,
    obj: &object_store::path::Path,
    data: Vec<u8>,
) -> crate::remote::Result<bool> {
    use object_store::ObjectStoreExt;
    if remote.get_optional(obj).await?.is_some_and(|b| b == data) {
        return Ok(false);
    }
    remote
        .store()
        .put(obj, object_store::PutPayload::from(data))
        .await
        .map_err(crate::remote::RemoteError::store("put", obj))?;
    Ok(true)
}

/// Uploads the tenant's and the timeline's config files, retrying until both are stored.
fn spawn_config_upload(remote: RemoteStorage, h: &TimelineHandle) -> JoinHandle<()> {
    let (tenant, timeline) = (h.tenant_id(), h.timeline_id());
    let tl_conf = h.dir().join(TIMELINE_CONF);
    // <data dir>/tenants/<tenant>/timelines/<timeline>
    let tenant_conf = h
        .dir()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join(TENANT_CONF));
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let res: crate::remote::Result<()> = async {
                let files = [
                    (tenant_conf.clone(), remote.tenant_config_path(tenant)),
                    (
                        Some(tl_conf.clone()),
                        remote.timeline_config_path(tenant, timeline),
                    ),
                ];
                for (file, obj) in files {
                    let Some(file) = file else { continue };
                    let data = match tokio::fs::read(&file).await {
                        Ok(d) => d,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(crate::remote::RemoteError::io("read", &file)(e)),
                    };
                    if put_if_changed(&remote, &obj, data).await? {
                        info!(%tenant, %timeline, object = %obj, "config uploaded");
                    }
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => return,
                Err(e) => warn!(%tenant, %timeline, error = %e, retry_in = ?delay,
                                "config upload failed"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    })
}

impl Background {
    pub fn new(remote: Option<RemoteStorage>, safekeeper_token: Option<String>) -> Background {
        Background {
            remote,
            safekeeper_token,
            tasks: Mutex::new(HashMap::new()),
            gc: Mutex::new(None),
        }
    }

    /// Runs GC of every tenant every `interval` (on the current tokio runtime) until
    /// [`Background::stop_gc`]; replaces a loop already running. A zero interval: no loop.
    pub fn start_gc(&self, manager: Arc<TenantManager>, interval: Duration) {
        let mut gc = self.gc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = gc.take() {
            let _ = old.stop.send(true);
            old.task.abort();
        }
        if interval.is_zero() {
            return;
        }
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            info!(interval = ?interval, "periodic GC started");
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|s| *s) => return,
                }
                gc_round(&manager, &rx).await;
            }
        });
        *gc = Some(GcTask { stop, task });
    }

    /// Stops the periodic GC, waiting for the tenant being collected (if any) to finish.
    pub async fn stop_gc(&self) {
        let gc = self.gc.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(g) = gc {
            let _ = g.stop.send(true);
            let _ = g.task.await;
            info!("periodic GC stopped");
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TimelineKey, TimelineTasks>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts what `h` needs (on the current tokio runtime); a no-op for what runs already.
    pub fn start_timeline(&self, h: &Arc<TimelineHandle>) {
        let mut tasks = self.lock();
        let t = tasks.entry(key(h)).or_default();
        if t.flusher.is_none() {
            t.flusher = Some(spawn_flusher(h.clone()));
        }
        if let Some(remote) = &self.remote {
            // Again on every call: the safekeepers may have changed.
            if let Some(old) = t.config_upload.take() {
                old.abort();
            }
            t.config_upload = Some(spawn_config_upload(remote.clone(), h));
        }
        if let (Some(remote), None) = (&self.remote, &t.uploader) {
            let u = spawn_uploader(
                remote.clone(),
                h.tenant_id(),
                h.timeline_id(),
                h.dir().to_path_buf(),
                UploaderConf::default(),
            );
            let mut rx = u.subscribe();
            let handle = h.clone();
            t.forwarder = Some(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let lsn = *rx.borrow_and_update();
                    handle.set_remote_consistent_lsn(lsn);
                }
            }));
            t.uploader = Some(u);
        }
        let sks = h.safekeepers();
        let same = t.walreceiver.as_ref().is_some_and(|w| w.safekeepers == sks);
        if !same {
            if let Some(old) = t.walreceiver.take() {
                let _ = old.stop.send(true);
            }
            if !sks.is_empty() {
                let (stop, rx) = watch::channel(false);
                let task =
                    spawn_walreceiver(h.clone(), sks.clone(), self.safekeeper_token.clone(), rx);
                t.walreceiver = Some(WalReceiverTask {
                    safekeepers: sks,
                    stop,
                    task,
                });
            }
        }
    }

    /// Stops the walreceiver of a timeline and waits for it.
    async fn stop_walreceiver(w: Option<WalReceiverTask>) {
        if let Some(w) = w {
            let _ = w.stop.send(true);
            if let Some(t) = w.task {
                let _ = t.await;
            }
        }
    }

    /// The object store, if the pageserver has one.
    pub fn remote(&self) -> Option<&RemoteStorage> {
        self.remote.as_ref()
    }

    /// Stops everything of a timeline (being deleted): no final upload; its copy in the
    /// object store is deleted (a failure is logged: the copy would come back at the next
    /// start of a wiped pageserver).
    pub async fn stop_timeline(&self, tenant: TenantId, timeline: TimelineId) {
        let t = self.lock().remove(&(tenant, timeline));
        if let Some(t) = t {
            Self::stop_walreceiver(t.walreceiver).await;
            for task in [t.forwarder, t.flusher, t.config_upload]
                .into_iter()
                .flatten()
            {
                task.abort();
            }
            if let Some(u) = t.uploader {
                u.stop().await;
            }
        }
        if let Some(remote) = &self.remote {
            match delete_remote_timeline(remote, tenant, timeline).await {
                Ok(n) => info!(%tenant, %timeline, layers = n, "deleted from remote storage"),
                Err(e) => warn!(%tenant, %timeline, error = %e,
                                "could not delete the timeline from remote storage"),
            }
        }
    }

    /// Stops every walreceiver and periodic flush (before the final flush).
    pub async fn stop_walreceivers(&self) {
        let ws: Vec<WalReceiverTask> = self
            .lock()
            .values_mut()
            .filter_map(|t| {
                if let Some(f) = t.flusher.take() {
                    f.abort();
                }
                t.walreceiver.take()
            })
            .collect();
        for w in ws {
            Self::stop_walreceiver(Some(w)).await;
        }
    }

    /// A last upload of every timeline (after the final flush).
    pub async fn shutdown_uploaders(&self) {
        let ups: Vec<(TimelineKey, UploaderHandle)> = self
            .lock()
            .iter_mut()
            .filter_map(|(k, t)| t.uploader.take().map(|u| (*k, u)))
            .collect();
        for ((tenant, timeline), u) in ups {
            match u.shutdown().await {
                Ok(r) => info!(%tenant, %timeline, report = ?r, "final upload done"),
                Err(e) => warn!(%tenant, %timeline, error = %e, "final upload failed"),
            }
        }
    }
}
