//! One task per open timeline: choose the offloader, upload WAL to the object store, share
//! what is offloaded and consumer-durable with the peers, and remove local WAL below both.
//!
//! Every tick (1 s by default) the task:
//! 1. asks each peer for its `TimelineStatus` and adopts the highest `offloaded_lsn` and
//!    `consumer_durable_lsn` reported (both are facts about the object store and the
//!    pageservers, so one safekeeper's knowledge is good for all);
//! 2. picks the offloader: among the nodes whose flush LSN has reached the highest commit LSN
//!    seen (the caught-up ones, this node included), the winner of rendezvous hashing over
//!    (tenant, timeline, node id) ([`crate::peers::choose_offloader`]). No leader is needed:
//!    nodes seeing the same statuses pick the same node; while their views differ two nodes may
//!    both upload a segment, which is harmless since committed WAL is the same everywhere and
//!    an upload of the same bytes is idempotent;
//! 3. if this node is the offloader: uploads each complete segment lying wholly below the
//!    commit LSN, in order, recording `offloaded_lsn` in the control file after each; and
//!    every `partial_offload_interval` (and at shutdown) the segment being written, up to the
//!    commit LSN, as `<segment>.partial`;
//! 4. removes local segments below min(offloaded, consumer-durable, commit) — see
//!    [`crate::acceptor::Acceptor::removal_horizon`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::lsn::segment_file_name;
use walproto::Lsn;

use crate::config::ServiceConfig;
use crate::peers::{self, PeerAnswer};
use crate::remote_storage::RemoteStorage;
use crate::timeline::Timeline;
use crate::wal_storage::{read_segment, read_wal};

/// What the offload task last decided and did; shown in `TimelineStatus`.
#[derive(Clone, Debug, Default)]
pub struct OffloadStatus {
    /// The node chosen as offloader at the last tick (0 = none yet).
    pub offloader_id: u64,
    /// End of the last `.partial` upload by this node.
    pub partial_offloaded_lsn: Lsn,
    last_partial_upload: Option<Instant>,
}

/// Runs until the timeline is quarantined ([`crate::quarantine`]); otherwise for as long as the
/// process runs.
pub async fn run(tl: Arc<Timeline>, node_id: u64, config: ServiceConfig) {
    let mut tick = tokio::time::interval(config.offload_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tl.is_quarantined() {
            info!("timeline quarantined: offload task ends");
            return;
        }
        if let Err(e) = step(&tl, node_id, &config).await {
            warn!("offload: {e}");
        }
    }
}

async fn step(tl: &Arc<Timeline>, node_id: u64, config: &ServiceConfig) -> Result<(), String> {
    let (flush, commit) = tl.lsns();
    let answers = peers::statuses(&config.peers, tl.id, &config.auth).await;
    let mut cluster_commit = commit;
    let mut caught_up = Vec::new();
    {
        let mut a = tl.lock();
        for (_, answer) in &answers {
            if let PeerAnswer::Status(s) = answer {
                a.advance_offloaded(Lsn(s.offloaded_lsn));
                a.advance_consumer_durable(Lsn(s.consumer_durable_lsn));
                cluster_commit = cluster_commit.max(Lsn(s.commit_lsn));
            }
        }
    }
    if flush >= cluster_commit {
        caught_up.push(node_id);
    }
    for (peer, answer) in &answers {
        if let PeerAnswer::Status(s) = answer {
            if Lsn(s.flush_lsn) >= cluster_commit {
                caught_up.push(peer.id);
            }
        }
    }
    let offloader = if cluster_commit == Lsn(0) {
        None
    } else {
        peers::choose_offloader(&tl.id, &caught_up)
    };
    let changed = {
        let mut st = tl.offload.lock().unwrap_or_else(|p| p.into_inner());
        let changed = st.offloader_id != offloader.unwrap_or(0);
        st.offloader_id = offloader.unwrap_or(0);
        changed
    };
    if changed {
        info!(offloader = ?offloader, candidates = ?caught_up, %cluster_commit, "offloader chosen");
    }
    let uploaded = match (&config.remote, offloader.map(|o| o == node_id)) {
        (Some(remote), Some(true)) => upload(tl, remote, commit, config).await,
        _ => Ok(()),
    };
    // Removal runs even when an upload failed: on a full disk it is what frees space.
    let removed = remove_old_wal(tl).await;
    uploaded.and(removed)
}

/// The offloader's uploads of one tick: complete segments, then the partial one when due.
async fn upload(
    tl: &Arc<Timeline>,
    remote: &RemoteStorage,
    commit: Lsn,
    config: &ServiceConfig,
) -> Result<(), String> {
    upload_complete(tl, remote, commit).await?;
    let due = {
        let st = tl.offload.lock().unwrap_or_else(|p| p.into_inner());
        st.last_partial_upload
            .is_none_or(|t| t.elapsed() >= config.partial_offload_interval)
    };
    if due {
        upload_partial(tl, remote, commit).await?;
    }
    Ok(())
}

/// Removes local WAL below the removal horizon, then writes a due lazy control-file save.
async fn remove_old_wal(tl: &Arc<Timeline>) -> Result<(), String> {
    let tl2 = tl.clone();
    tokio::task::spawn_blocking(move || {
        let (removed, job) = {
            let mut a = tl2.lock();
            (a.remove_old_wal()?, a.lazy_persist())
        };
        // The control file is written outside the acceptor lock, as on the append path.
        if let Some(job) = job {
            let r = job.run();
            tl2.lock().finish_persist(job, &r);
            r?;
        }
        Ok::<_, crate::acceptor::AcceptorError>(removed)
    })
    .await
    .map_err(|e| e.to_string())?
    .map(|removed| {
        if let Some(start) = removed {
            info!(%start, "removed local WAL below the offloaded and consumer-durable LSNs");
        }
    })
    .map_err(|e| format!("removing old WAL: {e}"))
}

/// Uploads every complete segment below `commit` not yet offloaded, in order; after each,
/// `offloaded_lsn` is persisted.
async fn upload_complete(
    tl: &Arc<Timeline>,
    remote: &RemoteStorage,
    commit: Lsn,
) -> Result<(), String> {
    loop {
        let (next, tli, dir) = {
            let a = tl.lock();
            let s = a.state();
            let next = s.offloaded_lsn.max(s.local_start_lsn.segment_start());
            (next, s.pg_timeline, a.dir().to_path_buf())
        };
        if next == Lsn(0) || next.0 + WAL_SEGMENT_SIZE > commit.0 {
            return Ok(());
        }
        let segno = next.segment_number();
        let name = segment_file_name(tli, segno);
        let data = tokio::task::spawn_blocking(move || read_segment(&dir, tli, segno))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match data {
            Some(data) => {
                let began = Instant::now();
                remote
                    .put_wal(&tl.id, &name, Bytes::from(data))
                    .await
                    .map_err(|e| format!("uploading {name}: {e}"))?;
                info!(segment = %name, ms = began.elapsed().as_millis() as u64, "offloaded");
            }
            None => {
                // Removed here already: fine if the object store has it.
                if remote
                    .get_wal(&tl.id, &name)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none()
                {
                    return Err(format!(
                        "segment {name} is neither on this safekeeper's disk nor in the object store: cannot offload it"
                    ));
                }
            }
        }
        if let Err(e) = remote.delete_wal(&tl.id, &format!("{name}.partial")).await {
            debug!(%e, "could not delete the superseded partial object");
        }
        let tl2 = tl.clone();
        let end = Lsn(next.0 + WAL_SEGMENT_SIZE);
        tokio::task::spawn_blocking(move || {
            let mut a = tl2.lock();
            a.advance_offloaded(end);
            a.persist_now()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("recording offloaded LSN {end}: {e}"))?;
    }
}

/// Uploads the committed part of the segment being written as `<segment>.partial`, if it
/// grew since the last upload.
pub async fn upload_partial(
    tl: &Arc<Timeline>,
    remote: &RemoteStorage,
    commit: Lsn,
) -> Result<(), String> {
    let (tli, dir, local_start) = {
        let a = tl.lock();
        (
            a.state().pg_timeline,
            a.dir().to_path_buf(),
            a.state().local_start_lsn,
        )
    };
    let start = commit.segment_start();
    let last = tl
        .offload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .partial_offloaded_lsn;
    if commit == start || commit <= last || start < local_start.segment_start() {
        return Ok(());
    }
    let len = (commit.0 - start.0) as usize;
    let data = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        read_wal(&dir, tli, start, &mut buf).map(|n| (n == len).then_some(buf))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let Some(data) = data else {
        return Ok(());
    };
    let name = format!("{}.partial", segment_file_name(tli, start.segment_number()));
    remote
        .put_wal(&tl.id, &name, Bytes::from(data))
        .await
        .map_err(|e| format!("uploading {name}: {e}"))?;
    debug!(segment = %name, %commit, "offloaded the partial segment");
    let mut st = tl.offload.lock().unwrap_or_else(|p| p.into_inner());
    st.partial_offloaded_lsn = commit;
    st.last_partial_upload = Some(Instant::now());
    Ok(())
}

/// At shutdown: the offloader uploads its partial segment one last time (bounded wait).
pub async fn final_upload(tls: Vec<Arc<Timeline>>, node_id: u64, remote: Option<RemoteStorage>) {
    let Some(remote) = remote else { return };
    for tl in tls {
        let is_offloader = tl
            .offload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offloader_id
            == node_id;
        if !is_offloader {
            continue;
        }
        let (_, commit) = tl.lsns();
        let r = tokio::time::timeout(Duration::from_secs(5), upload_partial(&tl, &remote, commit))
            .await;
        match r {
            Ok(Ok(())) => {
                info!(timeline = %tl.id, %commit, "partial segment offloaded at shutdown")
            }
            Ok(Err(e)) => warn!(timeline = %tl.id, "offload at shutdown: {e}"),
            Err(_) => warn!(timeline = %tl.id, "offload at shutdown timed out"),
        }
    }
}
