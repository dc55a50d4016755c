//! `strata branch delete` and `strata tenant delete`: their flags, and what they print.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use strata::delete::{self, Forgotten};
use strata::output::Output;

#[derive(Args, Debug)]
pub struct BranchDeleteArgs {
    /// The branch to delete (it must have no branches of its own).
    pub name: String,
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Delete even if leases keep points of it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct TenantDeleteArgs {
    /// The tenant to delete, with every branch and compute.
    pub name: String,
    /// Delete even if leases keep points of its branches.
    #[arg(long)]
    pub force: bool,
}

pub fn branch_delete(dir: &Path, a: &BranchDeleteArgs, out: &Output) -> Result<()> {
    let d = delete::branch_delete(dir, &a.name, a.tenant.as_deref(), a.force, out)?;
    out.result(
        &format!(
            "deleted branch {} of tenant {} ({}); computes removed: {}; leases dropped: {}; {}",
            a.name,
            d.tenant,
            d.timeline_id,
            list(&d.computes_removed),
            list(&d.leases_dropped),
            forgotten_text(&d.safekeepers)
        ),
        json!({"tenant": d.tenant, "branch": a.name, "timeline_id": d.timeline_id,
               "computes_removed": d.computes_removed, "leases_dropped": d.leases_dropped,
               "safekeepers": forgotten_json(&d.safekeepers)}),
    );
    Ok(())
}

pub fn tenant_delete(dir: &Path, a: &TenantDeleteArgs, out: &Output) -> Result<()> {
    let d = delete::tenant_delete(dir, &a.name, a.force, out)?;
    out.result(
        &format!(
            "deleted tenant {} ({}): {} branch(es), {} object(s) in the object store; computes \
             removed: {}; leases dropped: {}; {}",
            d.tenant,
            d.tenant_id,
            d.timeline_ids.len(),
            d.remote_objects_deleted,
            list(&d.computes_removed),
            list(&d.leases_dropped),
            forgotten_text(&d.safekeepers)
        ),
        json!({"tenant": d.tenant, "tenant_id": d.tenant_id, "timeline_ids": d.timeline_ids,
               "remote_objects_deleted": d.remote_objects_deleted,
               "computes_removed": d.computes_removed, "leases_dropped": d.leases_dropped,
               "safekeepers": forgotten_json(&d.safekeepers)}),
    );
    Ok(())
}

fn forgotten_json(f: &Forgotten) -> serde_json::Value {
    json!({
        "removed": f.removed.iter()
            .map(|(a, n)| json!({"safekeeper": a, "timelines_removed": n}))
            .collect::<Vec<_>>(),
        "failures": f.failures,
    })
}

fn forgotten_text(f: &Forgotten) -> String {
    let held: u64 = f.removed.iter().map(|(_, n)| n).sum();
    let mut t = format!(
        "{} of {} safekeeper(s) forgot it ({held} timeline cop{} removed)",
        f.removed.len(),
        f.removed.len() + f.failures.len(),
        if held == 1 { "y" } else { "ies" }
    );
    for failure in &f.failures {
        t.push_str(&format!("\n  warning: {failure}"));
    }
    t
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
