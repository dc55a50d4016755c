//! A real cluster for the offload and corruption tests, from `strata_tests::procs`:
//! safekeeper processes on reserved ports (so a restart comes back at the same address and
//! peers can name each other), `s3s-fs` as a local S3 server, Postgres 15 with the built
//! `compute walproposer`. Here: the SQL and WAL helpers those tests share.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use strata_tests::procs::{
    read_wal, three_safekeepers, wait_until, walproposer_postgres, S3Server, Safekeeper,
    Walproposer,
};
use strata_tests::PgCluster;
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::Lsn;

use super::{TENANT, TIMELINE};

/// Runs `sql` through psql; panics with the walproposer's log if it fails.
pub fn psql(pg: &PgCluster, wp: &Walproposer, sql: &str) -> String {
    pg.psql(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}\nwalproposer log:\n{}", wp.log_text()))
}

/// `<root>/wal/<tenant>/<timeline>`: where a directory store keeps the WAL.
pub fn wal_objects(root: &Path) -> PathBuf {
    root.join("wal").join(TENANT).join(TIMELINE)
}

/// Writes enough WAL through Postgres for `segments` complete segments after the current one,
/// each holding real records (a table, rows, a segment switch). Returns the insert LSN after.
pub fn make_segments(pg: &PgCluster, wp: &Walproposer, segments: usize) -> Lsn {
    psql(pg, wp, "CREATE TABLE IF NOT EXISTS t(id int, pad text)");
    for i in 0..segments {
        psql(
            pg,
            wp,
            &format!("INSERT INTO t SELECT g, repeat('{i}', 100) FROM generate_series(1, 2000) g"),
        );
        psql(pg, wp, "SELECT pg_switch_wal()");
    }
    psql(pg, wp, "INSERT INTO t VALUES (0, 'after the switches')");
    pg.current_wal_insert_lsn().unwrap()
}

/// Postgres's pg_wal bytes for segment `segno`.
pub fn pg_segment(pg: &PgCluster, segno: u64) -> Vec<u8> {
    std::fs::read(
        pg.wal_dir()
            .join(Lsn(segno * WAL_SEGMENT_SIZE).segment_file_name(1)),
    )
    .unwrap()
}

/// Runs `sql` over a client connection; false if it was not acknowledged within `timeout`
/// (a commit waits for the safekeeper quorum).
pub async fn commit_within(pg: &PgCluster, sql: &str, timeout: Duration) -> bool {
    let cfg = walproto::pgclient::ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        application_name: Some("offload-test".into()),
        ..walproto::pgclient::ConnConfig::default()
    };
    let mut conn = walproto::pgclient::PgConnection::connect(&cfg)
        .await
        .unwrap();
    match tokio::time::timeout(timeout, conn.simple_query(sql)).await {
        Ok(r) => {
            r.unwrap();
            true
        }
        Err(_) => false,
    }
}
