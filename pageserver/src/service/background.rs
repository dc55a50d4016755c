//! Per-timeline background work the service runs: the remote uploader (when the pageserver
//! has remote storage) and the walreceiver (when the timeline has safekeepers).
//!
//! The walreceiver ([`crate::walreceiver::run`]) feeds the timeline's handle, which is its
//! [`crate::walreceiver::WalSink`]. If it ends with an error (the timeline refused WAL), it
//! is started again after a growing delay: WAL is never skipped, and a transient problem
//! (a full disk) heals. A periodic flush makes what was ingested durable within
//! [`FLUSH_INTERVAL`] even when the open layer stays small, so `durable_local` (which lets
//! the safekeepers remove WAL) keeps moving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::remote::{spawn_uploader, RemoteStorage, UploaderConf, UploaderHandle};
use crate::tenant::TimelineHandle;
use crate::walreceiver::{self, WalReceiverConf, WalSink};

type TimelineKey = (String, String);

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
    walreceiver: Option<WalReceiverTask>,
}

pub struct Background {
    remote: Option<RemoteStorage>,
    tasks: Mutex<HashMap<TimelineKey, TimelineTasks>>,
}

fn key(h: &TimelineHandle) -> TimelineKey {
    (h.tenant_id().to_string(), h.timeline_id().to_string())
}

/// Ingested WAL becomes durable at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Streams `h`'s WAL from `safekeepers` until `stop` turns true.
fn spawn_walreceiver(
    h: Arc<TimelineHandle>,
    safekeepers: Vec<String>,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let conf = WalReceiverConf::new(safekeepers, h.tenant_id(), h.timeline_id());
    Some(tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let sink: Arc<dyn WalSink> = h.clone();
            match walreceiver::run(conf.clone(), sink, stop.clone()).await {
                Ok(()) => return,
                Err(e) => warn!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                                error = %format!("{e:#}"), retry_in = ?delay,
                                "walreceiver stopped"),
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

impl Background {
    pub fn new(remote: Option<RemoteStorage>) -> Background {
        Background {
            remote,
            tasks: Mutex::new(HashMap::new()),
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
        if let (Some(remote), None) = (&self.remote, &t.uploader) {
            match spawn_uploader(
                remote.clone(),
                h.tenant_id(),
                h.timeline_id(),
                h.dir().to_path_buf(),
                UploaderConf::default(),
            ) {
                Ok(u) => {
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
                Err(e) => warn!(tenant = %h.tenant_id(), timeline = %h.timeline_id(),
                                error = %e, "cannot start the remote uploader"),
            }
        }
        let sks = h.safekeepers();
        let same = t.walreceiver.as_ref().is_some_and(|w| w.safekeepers == sks);
        if !same {
            if let Some(old) = t.walreceiver.take() {
                let _ = old.stop.send(true);
            }
            if !sks.is_empty() {
                let (stop, rx) = watch::channel(false);
                let task = spawn_walreceiver(h.clone(), sks.clone(), rx);
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

    /// Stops everything of a timeline (being deleted): no final upload.
    pub async fn stop_timeline(&self, tenant: &str, timeline: &str) {
        let t = self
            .lock()
            .remove(&(tenant.to_string(), timeline.to_string()));
        if let Some(t) = t {
            Self::stop_walreceiver(t.walreceiver).await;
            for task in [t.forwarder, t.flusher].into_iter().flatten() {
                task.abort();
            }
            drop(t.uploader);
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
            .filter_map(|(k, t)| t.uploader.take().map(|u| (k.clone(), u)))
            .collect();
        for ((tenant, timeline), u) in ups {
            match u.shutdown().await {
                Ok(r) => info!(%tenant, %timeline, report = ?r, "final upload done"),
                Err(e) => warn!(%tenant, %timeline, error = %e, "final upload failed"),
            }
        }
    }
}
