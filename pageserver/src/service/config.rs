//! GetTenantConfig and SetTenantConfig: a tenant's `tenant.toml`, read and changed while the
//! tenant runs ([`crate::tenant::Tenant::set_conf`]). A change is copied to the object store
//! (where a restore from it reads the tenant's configuration) before the call returns.

use object_store::ObjectStoreExt;
use tonic::Status;
use tracing::info;
use walproto::proto::pageserver as pb;

use super::{blocking, PageserverService};
use crate::tenant::conf::KEYS;
use crate::tenant::{Tenant, TenantConf};

fn config_response(t: &Tenant, conf: &TenantConf) -> pb::TenantConfigResponse {
    let defaults = TenantConf::default();
    pb::TenantConfigResponse {
        tenant_id: t.id().to_string(),
        entries: KEYS
            .iter()
            .map(|k| pb::TenantConfigEntry {
                key: k.key.to_string(),
                value: conf.get(k.key).unwrap_or_default(),
                default_value: defaults.get(k.key).unwrap_or_default(),
                form: k.form.to_string(),
                meaning: k.meaning.to_string(),
            })
            .collect(),
        config_toml: conf.to_toml(),
    }
}

impl PageserverService {
    pub(super) async fn get_tenant_config_now(
        &self,
        r: pb::GetTenantConfigRequest,
    ) -> Result<pb::TenantConfigResponse, Status> {
        let t = super::convert::tenant_of(&self.manager, &r.tenant_id)
            .map_err(super::convert::to_status)?;
        Ok(config_response(&t, &t.conf()))
    }

    pub(super) async fn set_tenant_config_now(
        &self,
        r: pb::SetTenantConfigRequest,
    ) -> Result<pb::TenantConfigResponse, Status> {
        if r.settings.is_empty() {
            return Err(Status::invalid_argument(
                "no settings to change: give at least one key and value",
            ));
        }
        let t = super::convert::tenant_of(&self.manager, &r.tenant_id)
            .map_err(super::convert::to_status)?;
        let changes: Vec<(String, String)> =
            r.settings.into_iter().map(|s| (s.key, s.value)).collect();
        let t2 = t.clone();
        let conf = blocking(move || t2.set_conf(&changes)).await?;
        if let Some(remote) = self.background.remote() {
            let obj = remote.tenant_config_path(t.id());
            remote
                .store()
                .put(&obj, object_store::PutPayload::from(conf.to_toml()))
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "tenant {}: the new configuration is in effect and in tenant.toml, but \
                         copying it to the object store ({obj}) failed: {e}; set it again to \
                         retry",
                        t.id()
                    ))
                })?;
            info!(tenant = %t.id(), object = %obj, "tenant config uploaded");
        }
        Ok(config_response(&t, &conf))
    }
}
