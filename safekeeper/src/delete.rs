//! DeleteTimeline: a safekeeper forgets a timeline whose tenant or branch was deleted. The
//! timeline leaves the service (its offload task stops), its directory is renamed aside (a
//! name no id parses from, so a crash midway leaves nothing that is opened again), the rename
//! made durable, and the directory removed; its offloaded WAL goes from the object store too.
//! A connected proposer refuses the deletion: its compute still writes there. Before anything
//! is removed the deletion waits (a few seconds at most) for the timeline's offload task to
//! end, so that it uploads nothing after the object store's copy is deleted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use tracing::{info, warn};

use crate::control_file::fsync_dir;
use crate::ids::TenantTimeline;
use crate::remote_storage::RemoteStorage;
use crate::timeline::Timeline;
use crate::timelines::Timelines;

/// Suffix of a directory being deleted (`<timeline>.deleting`): never parsed as a timeline.
const DELETING_SUFFIX: &str = ".deleting";

fn io_status(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

/// Removes what is on disk of timeline `id`; whether there was anything.
fn remove_local(timelines: &Timelines, id: TenantTimeline) -> Result<bool, Status> {
    let dir = timelines.timeline_dir(id);
    let Some(tenant_dir) = dir.parent().map(Path::to_path_buf) else {
        return Err(Status::internal(format!(
            "timeline directory {} has no parent",
            dir.display()
        )));
    };
    let aside = tenant_dir.join(format!("{}{DELETING_SUFFIX}", id.timeline));
    // A deletion interrupted before: finish it.
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| io_status("removing", &aside, e))?;
    }
    let existed = match std::fs::rename(&dir, &aside) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_status("renaming", &dir, e)),
    };
    if existed {
        fsync_dir(&tenant_dir).map_err(|e| io_status("syncing", &tenant_dir, e))?;
        std::fs::remove_dir_all(&aside).map_err(|e| io_status("removing", &aside, e))?;
    }
    // The tenant's directory goes with its last timeline.
    let empty = std::fs::read_dir(&tenant_dir).is_ok_and(|mut d| d.next().is_none());
    if empty {
        std::fs::remove_dir(&tenant_dir).map_err(|e| io_status("removing", &tenant_dir, e))?;
        if let Some(root) = tenant_dir.parent() {
            fsync_dir(root).map_err(|e| io_status("syncing", root, e))?;
        }
    } else if tenant_dir.exists() {
        fsync_dir(&tenant_dir).map_err(|e| io_status("syncing", &tenant_dir, e))?;
    }
    Ok(existed)
}

/// Deletes every offloaded WAL object of `id`; how many.
async fn remove_remote(remote: &RemoteStorage, id: TenantTimeline) -> Result<u64, Status> {
    remote.delete_timeline_wal(&id).await.map_err(|e| {
        Status::unavailable(format!(
            "timeline {id}: deleting its offloaded WAL in {}: {e}",
            remote.url()
        ))
    })
}

/// How long a deletion waits for the timeline's other users (its offload task, which ends at
/// its next tick; a replication reader) to let go, so that none writes after the removal.
const USERS_GONE: Duration = Duration::from_secs(5);

/// Waits until `tl` has no user but this one, at most [`USERS_GONE`]; logs if some remain.
async fn wait_for_users(tl: Arc<Timeline>) {
    let deadline = tokio::time::Instant::now() + USERS_GONE;
    while Arc::strong_count(&tl) > 1 {
        if tokio::time::Instant::now() >= deadline {
            warn!(timeline = %tl.id, users = Arc::strong_count(&tl) - 1,
                  "deleting a timeline still in use after {USERS_GONE:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Timelines {
    /// Forgets timeline `id` (see the module doc): (whether it was here, remote objects
    /// deleted).
    pub(crate) async fn delete_timeline(&self, id: TenantTimeline) -> Result<(bool, u64), Status> {
        let open = {
            let mut map = self.lock_map();
            if let Some(tl) = map.get(&id) {
                if tl.proposers() > 0 {
                    return Err(Status::failed_precondition(format!(
                        "timeline {id} has a proposer connected (a compute still writes to \
                         it): stop its compute first"
                    )));
                }
            }
            let open = map.remove(&id);
            if let Some(tl) = &open {
                tl.take_out_of_service();
            }
            open
        };
        self.quarantined().remove(&id);
        if let Some(tl) = open {
            wait_for_users(tl).await;
        }
        let existed = {
            // Holding the map while the directory goes: no one opens it meanwhile.
            let _map = self.lock_map();
            remove_local(self, id)?
        };
        let remote = match &self.config().remote {
            Some(r) => remove_remote(r, id).await?,
            None => 0,
        };
        info!(timeline = %id, existed, remote_objects_deleted = remote, "timeline deleted on request");
        Ok((existed, remote))
    }
}
