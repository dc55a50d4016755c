//! A read-write compute's walproposer: the process that streams its WAL to the safekeepers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use compute::node::ComputeNode;
use walproto::Lsn;

use super::record::{compute_dir, control_file, walproposer_daemon, ComputeRecord};
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
        .args(fence_args(dir, cfg, &rec.name)?)
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

/// The walproposer flags that serve a compute's fence: a free loopback port for the HTTP
/// endpoint, the file its address is written to at every start (created here), and with auth
/// on the public key the fence routes check the coordinator's token with.
pub fn fence_args(dir: &Path, cfg: &ClusterConfig, compute_name: &str) -> Result<Vec<String>> {
    let compute_dir = compute_dir(dir, compute_name);
    std::fs::create_dir_all(&compute_dir)
        .with_context(|| format!("creating {}", compute_dir.display()))?;
    let mut args = vec![
        // A free port each start; the address is in the log ("walproposer metrics on").
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--control-file".to_string(),
        control_file(dir, compute_name)
            .to_string_lossy()
            .into_owned(),
    ];
    if cfg.auth {
        args.push("--auth-public-key".to_string());
        args.push(
            crate::auth_setup::public_key(dir)
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(args)
}
