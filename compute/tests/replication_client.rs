//! The replication client against a real Postgres 15: the WAL it streams is byte-identical to
//! Postgres's own `pg_wal`, and a synchronous commit waits until the client reports it flushed
//! (the fact the walproposer's durability rests on).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compute::pg::replication::{create_physical_slot, identify_system, WalStream};
use compute::pg::{ConnConfig, PgConnection};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::replication::ReplicationMessage;
use walproto::Lsn;

/// Runs SQL through psql in the background (it may block on synchronous replication).
fn psql_background(pg: &PgCluster, sql: &str) -> Child {
    pg.command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(pg.socket_dir())
        .args([
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-c",
            sql,
            "postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

/// Receives for `dur`, appending XLogData to `wal` (which starts at `start`), acknowledging
/// writes but reporting `flushed` as given.
async fn receive_for(
    stream: &mut WalStream,
    start: Lsn,
    wal: &mut BytesMut,
    flushed: Lsn,
    dur: Duration,
) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        match stream
            .next(Duration::from_millis(100))
            .await
            .expect("stream")
        {
            Some(ReplicationMessage::XLogData {
                start: at, data, ..
            }) => {
                assert_eq!(
                    at,
                    Lsn(start.0 + wal.len() as u64),
                    "XLogData must be contiguous"
                );
                wal.extend_from_slice(&data);
            }
            Some(ReplicationMessage::Keepalive { .. }) | None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
        let written = Lsn(start.0 + wal.len() as u64);
        stream
            .send_status(written, flushed, false)
            .await
            .expect("status");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_for_the_flush_report_and_wal_is_byte_identical() {
    let pg = PgCluster::init(
        &InitOptions::default()
            .set("synchronous_standby_names", "strata")
            .set("synchronous_commit", "on")
            .set("wal_keep_size", "1GB"),
    )
    .unwrap();
    pg.start().unwrap();
    let cfg = ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        application_name: Some("strata".into()),
        replication: true,
        ..ConnConfig::default()
    };
    let mut conn = PgConnection::connect(&cfg).await.unwrap();
    let id = identify_system(&mut conn).await.unwrap();
    assert_eq!(id.timeline, 1);
    assert!(create_physical_slot(&mut conn, "strata").await.unwrap());
    assert!(
        !create_physical_slot(&mut conn, "strata").await.unwrap(),
        "second create finds it"
    );
    // Stream from the start of the current segment, so the bytes compare with a whole file.
    let start = id.xlogpos.segment_start();
    let mut stream = WalStream::start(conn, Some("strata"), start, id.timeline)
        .await
        .unwrap();
    let mut wal = BytesMut::new();

    // While nothing is reported flushed, a commit must not return.
    let mut psql = psql_background(
        &pg,
        "create table t(a int); insert into t select generate_series(1, 1000)",
    );
    receive_for(
        &mut stream,
        start,
        &mut wal,
        Lsn::INVALID,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        psql.try_wait().unwrap().is_none(),
        "commit returned before any flush report"
    );
    let received = Lsn(start.0 + wal.len() as u64);
    assert!(received > id.xlogpos, "the commit's WAL was streamed");

    // Report everything flushed: the commit returns.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flushed = Lsn(start.0 + wal.len() as u64);
        receive_for(
            &mut stream,
            start,
            &mut wal,
            flushed,
            Duration::from_millis(200),
        )
        .await;
        if let Some(status) = psql.try_wait().unwrap() {
            assert!(status.success(), "psql failed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commit did not return after the flush report"
        );
    }

    // More WAL, then compare with the segment file Postgres wrote.
    assert_eq!(pg.psql("select count(*) from t").unwrap().trim(), "1000");
    let end = Lsn(start.0 + wal.len() as u64);
    drop(stream);
    pg.stop(StopMode::Fast).unwrap();
    let file = pg.wal_dir().join(start.segment_file_name(id.timeline));
    let on_disk = std::fs::read(&file).unwrap();
    assert!(end.0 - start.0 <= WAL_SEGMENT_SIZE);
    assert_eq!(
        &on_disk[..wal.len()],
        &wal[..],
        "streamed WAL {start}..{end} differs from {}",
        file.display()
    );
}

#[tokio::test]
async fn clear_errors_for_bad_connections_and_commands() {
    let cfg = ConnConfig {
        host: "/nonexistent-dir".into(),
        port: 1,
        ..ConnConfig::default()
    };
    let err = PgConnection::connect(&cfg).await.err().expect("must fail");
    assert!(
        err.to_string().contains("/nonexistent-dir/.s.PGSQL.1"),
        "{err}"
    );

    let pg = PgCluster::init(&InitOptions::default()).unwrap();
    pg.start().unwrap();
    let cfg = ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        ..ConnConfig::default()
    };
    let mut conn = PgConnection::connect(&cfg).await.unwrap();
    assert_eq!(
        conn.simple_query("select 1, null").await.unwrap(),
        vec![vec![Some("1".to_string()), None]]
    );
    let err = conn
        .simple_query("select * from missing_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
    // The connection is usable after an error.
    assert_eq!(
        conn.simple_query("select 2").await.unwrap()[0][0].as_deref(),
        Some("2")
    );
    // Replication commands need a replication connection.
    assert!(identify_system(&mut conn).await.is_err());
}
