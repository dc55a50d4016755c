//! The walproposer tests' helpers: the processes come from `strata_tests::procs` (safekeepers,
//! the `compute walproposer`, Postgres set up for it); here, the Postgres client and the WAL
//! comparison.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use compute::pg::{ConnConfig, PgConnection};
pub use strata_tests::procs::{
    read_wal, wait_until, walproposer_postgres, Safekeeper, Walproposer, TENANT, TIMELINE,
};
use strata_tests::PgCluster;
use walproto::Lsn;

/// Three safekeepers (ids 1 to 3 under `base`), started, each on its own reserved port.
pub fn three(base: &std::path::Path) -> Vec<Safekeeper> {
    (1..=3)
        .map(|i| Safekeeper::started(base, i).expect("start safekeeper"))
        .collect()
}

pub fn client_config(pg: &PgCluster) -> ConnConfig {
    ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        application_name: Some("ledger".into()),
        ..ConnConfig::default()
    }
}

pub async fn client(pg: &PgCluster) -> PgConnection {
    PgConnection::connect(&client_config(pg)).await.unwrap()
}

/// Runs `sql` and waits at most `timeout` for it to be acknowledged.
pub async fn commit_within(conn: &mut PgConnection, sql: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, conn.simple_query(sql)).await {
        Ok(r) => {
            r.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// `pg_current_wal_flush_lsn()` over a client connection.
pub async fn pg_flush_lsn(conn: &mut PgConnection) -> Lsn {
    let rows = conn
        .simple_query("SELECT pg_current_wal_flush_lsn()")
        .await
        .unwrap();
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// Where each safekeeper's WAL begins and ends (local start, flush), from TimelineStatus.
pub async fn sk_range(sk: &Safekeeper) -> Option<(Lsn, Lsn, u64)> {
    let st = sk.status().await.ok()?;
    Some((Lsn(st.local_start_lsn), Lsn(st.flush_lsn), st.term))
}

/// Compares one safekeeper's WAL over `[from, to)` with Postgres's pg_wal.
pub fn same_wal_as_postgres(
    pg: &PgCluster,
    sk: &Safekeeper,
    from: Lsn,
    to: Lsn,
) -> anyhow::Result<()> {
    let theirs = read_wal(&pg.wal_dir(), from, to)?;
    let ours = read_wal(&sk.timeline_dir(), from, to)?;
    if theirs == ours {
        return Ok(());
    }
    let first = theirs
        .iter()
        .zip(ours.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    anyhow::bail!(
        "safekeeper {}: WAL {from}..{to} differs from Postgres's at {}",
        sk.id,
        Lsn(from.0 + first as u64)
    )
}
