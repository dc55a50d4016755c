//! The lifecycle RPCs of issue 21: deleting a whole tenant (its timelines stopped, its data
//! removed locally and in the object store), and listing and revoking a timeline's leases.

use tonic::Status;
use tracing::info;
use walproto::ids::TenantId;
use walproto::proto::pageserver as pb;

use super::{blocking, PageserverService};
use crate::remote::RemoteStorage;
use crate::tenant::TimelineHandle;

/// Deletes every object under the tenant's prefix (its configuration and anything a timeline
/// deletion left); the number deleted.
async fn delete_remote_tenant(remote: &RemoteStorage, tenant: TenantId) -> Result<u64, Status> {
    remote
        .delete_prefix(&remote.tenant_path(tenant))
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "deleting tenant {tenant} from the object store: {e}"
            ))
        })
}

fn lease_list(h: &TimelineHandle) -> pb::ListLeasesResponse {
    pb::ListLeasesResponse {
        leases: h
            .list_leases()
            .into_iter()
            .map(|l| pb::LeaseInfo {
                lsn: l.lsn.0,
                expires_unix_ms: l.expires_unix_ms,
                owner: l.owner,
            })
            .collect(),
    }
}

impl PageserverService {
    pub(super) async fn delete_tenant_now(
        &self,
        r: pb::DeleteTenantRequest,
    ) -> Result<pb::DeleteTenantResponse, Status> {
        let tenant = super::convert::tenant_of(&self.manager, &r.tenant_id)
            .map_err(super::convert::to_status)?;
        let id = tenant.id();
        // Walreceivers and uploaders first: nothing writes into what is being deleted. Each
        // timeline's copy in the object store goes with it.
        for h in tenant.timelines() {
            self.background.stop_timeline(id, h.timeline_id()).await;
        }
        drop(tenant);
        let m = self.manager.clone();
        let timelines = blocking(move || m.delete_tenant(id)).await?;
        let timeline_ids: Vec<String> = timelines.iter().map(|t| t.to_string()).collect();
        let remote_objects_deleted = match self.background.remote() {
            Some(remote) => delete_remote_tenant(remote, id).await?,
            None => 0,
        };
        info!(tenant = %id, timelines = timeline_ids.len(), remote_objects_deleted,
              "tenant deleted on request");
        Ok(pb::DeleteTenantResponse {
            timeline_ids,
            remote_objects_deleted,
        })
    }

    pub(super) async fn list_leases_now(
        &self,
        r: pb::TimelineRequest,
    ) -> Result<pb::ListLeasesResponse, Status> {
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        Ok(lease_list(&h))
    }

    pub(super) async fn revoke_lease_now(
        &self,
        r: pb::RevokeLeaseRequest,
    ) -> Result<pb::ListLeasesResponse, Status> {
        let h = self.handle(r.tenant_id, r.timeline_id).await?;
        let h2 = h.clone();
        let lsn = layer_format::Lsn(r.lsn);
        blocking(move || h2.revoke_owned_lease(lsn, &r.owner)).await?;
        Ok(lease_list(&h))
    }
}
