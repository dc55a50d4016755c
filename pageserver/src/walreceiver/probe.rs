//! Connecting to one safekeeper's replication server and asking where it stands.

use std::time::Duration;

use tokio::task::JoinSet;
use walproto::pgclient::replication::identify_system;
use walproto::pgclient::{ConnConfig, PgConnection, PgError};
use walproto::Lsn;

use super::WalReceiverConf;

/// What `IDENTIFY_SYSTEM` says on a safekeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub system_id: u64,
    pub pg_timeline: u32,
    /// The safekeeper's commit LSN: it serves WAL up to here.
    pub commit_lsn: Lsn,
}

/// An open replication connection and the answer it gave.
pub(super) struct Probe {
    pub conn: PgConnection,
    pub identity: Identity,
}

/// The connection settings for safekeeper `addr` (`host:port`, `[v6]:port`).
pub(super) fn conn_config(conf: &WalReceiverConf, addr: &str) -> Result<ConnConfig, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("safekeeper address {addr:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("safekeeper address {addr:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ConnConfig {
        host: host.to_string(),
        port,
        user: "pageserver".into(),
        application_name: Some("pageserver".into()),
        options: Some(format!(
            "-c tenant_id={} -c timeline_id={}",
            conf.tenant_id, conf.timeline_id
        )),
        replication: true,
        password: conf.password.clone(),
        ..ConnConfig::default()
    })
}

/// Ends the description of a safekeeper that does not have the timeline: nothing was written
/// to it yet (a branch without a compute), which is waiting, not a failure.
pub(super) const NO_TIMELINE_HINT: &str =
    " (is the compute's walproposer running for this timeline?)";

/// Says what went wrong on safekeeper `addr`, with Postgres's words for server errors.
pub(super) fn describe(e: &PgError) -> String {
    match e {
        // 3D000: the safekeeper does not have the timeline (yet).
        PgError::Server { code, message, .. } if code == "3D000" => {
            format!("{message}{NO_TIMELINE_HINT}")
        }
        other => other.to_string(),
    }
}

async fn with_timeout<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.map_err(|e| describe(&e)),
        Err(_) => Err(format!("{what} took longer than {d:?}")),
    }
}

/// Connects to safekeeper `idx` and runs `IDENTIFY_SYSTEM`.
pub(super) async fn probe(conf: &WalReceiverConf, idx: usize) -> Result<Probe, String> {
    let addr = &conf.safekeepers[idx];
    let cfg = conn_config(conf, addr)?;
    let mut conn = with_timeout(
        conf.connect_timeout,
        "connecting",
        PgConnection::connect(&cfg),
    )
    .await?;
    let identity = identify(conf, &mut conn).await?;
    Ok(Probe { conn, identity })
}

/// `IDENTIFY_SYSTEM` on an open connection.
pub(super) async fn identify(
    conf: &WalReceiverConf,
    conn: &mut PgConnection,
) -> Result<Identity, String> {
    let id = with_timeout(
        conf.connect_timeout,
        "IDENTIFY_SYSTEM",
        identify_system(conn),
    )
    .await?;
    Ok(Identity {
        system_id: id.system_id,
        pg_timeline: id.timeline,
        commit_lsn: id.xlogpos,
    })
}

/// Probes every safekeeper at once; one result per safekeeper, in order.
pub(super) async fn probe_all(
    conf: &std::sync::Arc<WalReceiverConf>,
) -> Vec<Result<Probe, String>> {
    let mut set = JoinSet::new();
    for idx in 0..conf.safekeepers.len() {
        let conf = conf.clone();
        set.spawn(async move { (idx, probe(&conf, idx).await) });
    }
    let mut out: Vec<Result<Probe, String>> = (0..conf.safekeepers.len())
        .map(|_| Err("not probed".to_string()))
        .collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((idx, r)) => out[idx] = r,
            Err(e) => tracing::warn!("a safekeeper probe task failed: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use walproto::ids::{TenantId, TimelineId};

    #[test]
    fn safekeeper_addresses() {
        let conf = WalReceiverConf::new(vec![], TenantId([0xaa; 16]), TimelineId([0xbb; 16]));
        let c = conn_config(&conf, "127.0.0.1:7654").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 7654));
        assert_eq!(
            c.options.as_deref(),
            Some(
                format!(
                    "-c tenant_id={} -c timeline_id={}",
                    "aa".repeat(16),
                    "bb".repeat(16)
                )
                .as_str()
            )
        );
        assert_eq!(c.application_name.as_deref(), Some("pageserver"));
        assert!(c.replication);
        assert_eq!(conn_config(&conf, "[::1]:5").unwrap().host, "::1");
        assert!(conn_config(&conf, "nowhere")
            .unwrap_err()
            .contains("not host:port"));
        assert!(conn_config(&conf, "h:x").unwrap_err().contains("port"));
    }
}
