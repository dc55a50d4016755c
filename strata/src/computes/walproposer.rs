//! A read-write compute's walproposer: the process that streams its WAL to the safekeepers.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use compute::node::ComputeNode;
use walproto::Lsn;

use super::record::{compute_dir, walproposer_daemon, ComputeRecord};
use crate::cluster::ClusterConfig;

/// The application name Postgres waits for before a commit returns.
pub(super) const STANDBY_NAME: &str = "strata";

pub(crate) fn start_walproposer(
    dir: &Path,
    cfg: &ClusterConfig,
    rec: &ComputeRecord,
    node: &ComputeNode,
    lsn: Lsn,
) -> Result<()> {
    let bin = crate::cluster::sibling_binary("compute")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("walproposer")
        .args(["--pg", &node.connstr(rec.port, "postgres")])
        .args(["--safekeepers", &cfg.safekeeper_grpc_addrs().join(",")])
        .args(["--tenant", &rec.tenant_id])
        .args(["--timeline", &rec.timeline_id])
        .args(["--application-name", STANDBY_NAME])
        // Used only when no safekeeper has WAL of this timeline yet: the new history begins
        // with the basebackup's checkpoint record.
        .args(["--start-lsn", &lsn.to_string()])
        // Where a group coordinator fences it (`strata group`).
        .args(crate::group::cut::walproposer_fence_args(
            dir, cfg, &rec.name,
        )?)
        .envs(cfg.service_env())
        .args(crate::auth_setup::walproposer_args(
            dir,
            cfg,
            &compute_dir(dir, &rec.name),
            &rec.tenant_id,
        )?)
        .args(crate::tls_setup::client_args(dir, cfg));
    walproposer_daemon(dir, &rec.name).start(
        cmd,
        "streaming from Postgres",
        Duration::from_secs(60),
    )?;
    Ok(())
}
