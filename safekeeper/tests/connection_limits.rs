//! A real safekeeper under 2,000 idle HTTP/2 connections: its threads stay bounded and a
//! normal client and a proposer session are still served within a deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Idle connections opened against the safekeeper.
const IDLE_CONNECTIONS: usize = 2000;
/// The safekeeper's dedicated connection threads (its default).
const CONNECTION_THREADS: usize = 64;
/// Threads beyond the connection threads: main, runtime workers, blocking pool, signals.
const OTHER_THREADS: usize = 40;
/// How long a normal client may take to be served.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// An empty HTTP/2 client preface and SETTINGS frame: a real, idle HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_cost_a_thread_each() {
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sk = Safekeeper::started(data.path(), 1).unwrap();
    let pid = sk.pid().unwrap();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        // The safekeeper may close some of them (at its cap): that is fine, they are idle.
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(sk.addr())).await
        {
            let _ = c.write_all(H2_PREFACE).await;
            idle.push(c);
        }
    }
    // Let the safekeeper take in what it accepted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let threads = threads_of(pid);
    eprintln!(
        "{} idle connections opened in {:.1} s; safekeeper threads: {threads}",
        idle.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        threads <= CONNECTION_THREADS + OTHER_THREADS,
        "the safekeeper runs {threads} threads with {} idle connections open",
        idle.len()
    );

    // A normal client is served.
    let t = Instant::now();
    let status = tokio::time::timeout(SERVED_WITHIN, async {
        let mut c = sk.client().await.unwrap();
        c.timeline_status(walproto::proto::safekeeper::TimelineStatusRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
        })
        .await
    })
    .await
    .unwrap_or_else(|_| panic!("a status call was not answered within {SERVED_WITHIN:?}"));
    assert_eq!(status.unwrap_err().code(), tonic::Code::NotFound);
    eprintln!("status answered in {:.3} s", t.elapsed().as_secs_f64());

    // So is a proposer: greeting, vote and election.
    let t = Instant::now();
    tokio::time::timeout(SERVED_WITHIN, async {
        let (mut p, g) = Session::open(&sk, "proposer").await;
        assert_eq!(g.term, 0);
        assert!(p.vote(1).await.vote_granted);
        let start = walproto::Lsn(0x0100_0000);
        p.elect(1, &[(1, start)], start).await.unwrap();
    })
    .await
    .unwrap_or_else(|_| panic!("a proposer session was not served within {SERVED_WITHIN:?}"));
    eprintln!("proposer elected in {:.3} s", t.elapsed().as_secs_f64());
    assert!(threads_of(pid) <= CONNECTION_THREADS + OTHER_THREADS);
    drop(idle);
}
