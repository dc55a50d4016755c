//! Deleting a whole tenant from a pageserver's data directory. The directory is first renamed
//! to a temporary name (durably), so a crash in the middle leaves no half tenant that would be
//! loaded again: [`TenantManager::load`] removes temporary entries. The caller stops the
//! tenant's background work first and deletes its copy in the object store.

use tracing::info;
use walproto::ids::{TenantId, TimelineId};

use super::layout::{rename_durable, tenant_tmp_dir};
use super::{lock, Result, TenantError, TenantManager};

impl TenantManager {
    /// Forgets tenant `id` and removes its directory; returns the ids of the timelines it had
    /// (loaded or broken).
    pub fn delete_tenant(&self, id: TenantId) -> Result<Vec<TimelineId>> {
        let t = self.tenant(id)?;
        let _creating = lock(&self.creating);
        // No timeline is created or deleted meanwhile, and no GC of it runs.
        let _changes = lock(&t.changes);
        let mut timelines: Vec<TimelineId> = lock(&t.timelines).keys().copied().collect();
        timelines.extend(lock(&t.broken).keys().copied());
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let tmp = tenant_tmp_dir(&self.data_dir, id);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(TenantError::io("remove", &tmp))?;
        }
        rename_durable(&t.dir, &tmp)?;
        std::fs::remove_dir_all(&tmp).map_err(TenantError::io("remove", &tmp))?;
        info!(tenant = %id, timelines = timelines.len(), "tenant deleted");
        Ok(timelines)
    }
}

#[cfg(test)]
mod tests {
    use super::super::TenantConf;
    use super::*;

    #[test]
    fn a_deleted_tenant_is_gone_and_stays_gone() {
        let dir = tempfile::tempdir().unwrap();
        let m = TenantManager::load(dir.path()).unwrap();
        let keep = m.create_tenant(None, TenantConf::default()).unwrap();
        let gone = m.create_tenant(None, TenantConf::default()).unwrap();
        let gone_id = gone.id();
        let gone_dir = gone.dir.clone();
        drop(gone);
        assert_eq!(m.delete_tenant(gone_id).unwrap(), Vec::new());
        assert!(!gone_dir.exists());
        assert!(matches!(
            m.delete_tenant(gone_id),
            Err(TenantError::NotFound(_))
        ));
        let m = TenantManager::load(dir.path()).unwrap();
        let ids: Vec<TenantId> = m.tenants().iter().map(|t| t.id()).collect();
        assert_eq!(ids, vec![keep.id()]);
    }
}
