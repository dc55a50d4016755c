//! `strata tenant import|reconnect|detach`: the flags and what is printed; the work is
//! `strata::tenant_import`'s.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use strata::output::Output;
use strata::tenant_import::{self, ImportRequest};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The running PostgreSQL 15 to import, as a libpq key=value connection string of a
    /// superuser (e.g. "host=/var/run/postgresql port=5432 user=postgres").
    #[arg(long, value_name = "CONNSTR")]
    pub from: String,
    /// The tenant's name (default: "main" for the first tenant, else required).
    #[arg(long, value_parser = strata::names::new_tenant_name)]
    pub name: Option<String>,
    /// Set the source's synchronous_standby_names to the walproposer (ALTER SYSTEM and
    /// pg_reload_conf) right before the walproposer starts; without it the import requires
    /// the setting to be in place already.
    #[arg(long)]
    pub configure_sync: bool,
    /// With auth on: if the source's `postgres` role has no password, give it the cluster's
    /// compute password (`ALTER ROLE postgres PASSWORD` on the source), so that logins to this
    /// tenant's computes as postgres take the cluster's password like other tenants'. Without
    /// it the source's roles are never changed.
    #[arg(long)]
    pub set_source_password: bool,
}

impl ImportArgs {
    fn request(self) -> ImportRequest {
        ImportRequest {
            from: self.from,
            name: self.name,
            configure_sync: self.configure_sync,
            set_source_password: self.set_source_password,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReconnectArgs {
    /// The imported tenant (default: the default tenant).
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The imported tenant (default: the default tenant).
    pub name: Option<String>,
}

pub fn import(dir: &Path, args: ImportArgs, out: &Output) -> Result<()> {
    let i = tenant_import::run(dir, &args.request(), out)?;
    out.result(
        &format!(
            "imported {} as tenant {} ({}) with branch main ({}): backup from {}, readable \
             from {}; the walproposer streams the source's WAL to the safekeepers (compute \
             {}) in {:.1} s",
            i.host,
            i.tenant,
            i.tenant_id,
            i.timeline_id,
            i.backup_start,
            i.readable_from,
            i.compute,
            i.seconds
        ),
        json!({
            "tenant": i.tenant,
            "tenant_id": i.tenant_id,
            "branch": "main",
            "timeline_id": i.timeline_id,
            "backup_start": i.backup_start,
            "lsn": i.readable_from.to_string(),
            "compute": i.compute,
            "slot": i.slot,
            "seconds": i.seconds,
        }),
    );
    Ok(())
}

pub fn reconnect(dir: &Path, args: ReconnectArgs, out: &Output) -> Result<()> {
    let r = tenant_import::reconnect(dir, args.name.as_deref(), out)?;
    let (tenant, compute) = (&r.tenant, &r.compute);
    out.result(
        &if r.started {
            format!("tenant {tenant}: the walproposer streams the source's WAL again (compute {compute})")
        } else {
            format!("tenant {tenant}: the walproposer runs already (compute {compute})")
        },
        json!({"tenant": tenant, "compute": compute, "slot": r.slot, "started": r.started}),
    );
    Ok(())
}

pub fn detach(dir: &Path, args: DetachArgs, out: &Output) -> Result<()> {
    let d = tenant_import::detach(dir, args.name.as_deref(), out)?;
    let tenant = &d.tenant;
    if !d.was_attached {
        out.result(
            &format!(
                "tenant {tenant} has no attached source (not imported, or detached already): \
                 nothing to do"
            ),
            json!({"tenant": tenant, "detached": true, "was_attached": false}),
        );
        return Ok(());
    }
    let setting = &d.synchronous_standby_names;
    let history = match d.streamed_to {
        Some(lsn) => format!("up to {lsn}, everything the source had acknowledged"),
        None => "up to where it streamed before the cluster stopped".to_string(),
    };
    out.result(
        &format!(
            "detached tenant {tenant}: the source \"{}\" no longer waits for Strata \
             (synchronous_standby_names = '{setting}') and its slot {} is dropped; Strata keeps \
             tenant {tenant} readable with the source's history {history}",
            d.connstr, d.slot
        ),
        json!({
            "tenant": tenant,
            "detached": true,
            "was_attached": true,
            "synchronous_standby_names": setting,
            "streamed_to": d.streamed_to.map(|l| l.to_string()),
        }),
    );
    Ok(())
}
