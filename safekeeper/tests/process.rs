//! The real `safekeeper` binary over real sockets: elections, appends, SIGKILL mid-stream,
//! restart, stale proposers, and group commit seen through the fsync counter.

mod common;

use std::time::Duration;

use common::*;
use safekeeper::testing::WalGen;
use safekeeper::wal_storage::read_wal;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::Lsn;

/// One MiB (a page start) before the end of segment 2, so the streamed WAL crosses into segment 3.
const START: Lsn = Lsn(0x0300_0000 - 0x10_0000);

fn read_back(dir: &std::path::Path, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = vec![0u8; (to.0 - from.0) as usize];
    let mut pos = 0;
    while pos < out.len() {
        let n = read_wal(dir, 1, Lsn(from.0 + pos as u64), &mut out[pos..]).unwrap();
        assert!(n > 0, "WAL file missing at {}", Lsn(from.0 + pos as u64));
        pos += n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sk = Safekeeper::started(data.path(), 1).unwrap();
    let (mut p, g) = Session::open(&sk, "proposer-a").await;
    assert_eq!((g.term, g.flush_lsn), (0, 0));
    let v = p.vote(5).await;
    assert!(v.vote_granted);
    let e = p.elect(5, &[(5, START)], START).await.unwrap();
    assert_eq!(e.flush_lsn, START.0);

    // Stream record-aligned chunks of real WAL (~40 KiB each) until 3 MiB are acknowledged,
    // while a producer keeps sending; then SIGKILL with appends in flight.
    let mut gen = WalGen::new(SYSID, 1, START);
    let mut wal = Vec::new();
    let mut sent_to = START;
    let mut acked = START;
    let mut commit;
    let mut sk = sk;
    loop {
        while sent_to.0 < acked.0 + (1 << 20) {
            let (chunk, _) = gen.records(10, 4000);
            wal.extend_from_slice(&chunk);
            p.send(append(5, sent_to, chunk.clone(), acked)).await;
            sent_to = Lsn(sent_to.0 + chunk.len() as u64);
        }
        match p.next().await.unwrap() {
            Out::AppendResponse(r) => {
                assert_eq!(r.term, 5);
                assert!(r.flush_lsn >= acked.0, "flush LSN went backwards");
                assert!(r.flush_lsn <= sent_to.0);
                assert!(r.commit_lsn <= r.flush_lsn);
                acked = Lsn(r.flush_lsn);
                commit = Lsn(r.commit_lsn);
            }
            other => panic!("unexpected {other:?}"),
        }
        if acked.0 - START.0 > 3 << 20 {
            break;
        }
    }
    sk.kill(); // SIGKILL
    drop(p);
    assert!(commit > START);

    let sk = Safekeeper::started(data.path(), 1).unwrap();
    let st = sk.status().await.unwrap();
    assert_eq!(st.term, 5, "term persisted");
    assert!(
        st.flush_lsn >= acked.0,
        "flush {} below acknowledged {}",
        Lsn(st.flush_lsn),
        acked
    );
    assert!(st.commit_lsn <= st.flush_lsn);
    assert_eq!(st.local_start_lsn, START.0);
    assert!(Lsn(st.flush_lsn).segment_number() > START.segment_number());
    let mut names: Vec<String> = std::fs::read_dir(sk.timeline_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("00000001"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "000000010000000000000002",
            "000000010000000000000003.partial"
        ]
    );
    let have = read_back(&sk.timeline_dir(), START, Lsn(st.flush_lsn));
    assert_eq!(
        have[..],
        wal[..have.len()],
        "WAL differs from what was sent"
    );

    // A proposer with a lower term is turned away.
    let (mut old, g) = Session::open(&sk, "proposer-old").await;
    assert_eq!(g.term, 5);
    let v = old.vote(3).await;
    assert!(!v.vote_granted);
    assert_eq!(v.term, 5);
    assert_eq!(v.last_log_term, 5);
    let err = old.elect(3, &[(3, START)], START).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // Appending without an election in the session is refused too.
    let (old2, _) = Session::open(&sk, "proposer-old2").await;
    let mut old2 = old2;
    old2.send(append(5, Lsn(st.flush_lsn), vec![0; 8], Lsn(0)))
        .await;
    assert!(old2.next().await.is_err());

    // A newer proposer is elected at our flush LSN and continues the log.
    let (mut p, _) = Session::open(&sk, "proposer-b").await;
    let v = p.vote(6).await;
    assert!(v.vote_granted);
    let flush = Lsn(v.flush_lsn);
    let e = p.elect(6, &[(5, START), (6, flush)], flush).await.unwrap();
    assert_eq!(e.flush_lsn, flush.0);
    let mut gen = WalGen::new(SYSID, 1, flush);
    let (chunk, _) = gen.records(5, 100);
    p.send(append(6, flush, chunk.clone(), flush)).await;
    let end = Lsn(flush.0 + chunk.len() as u64);
    loop {
        if let Out::AppendResponse(r) = p.next().await.unwrap() {
            if r.flush_lsn == end.0 {
                assert_eq!(r.term, 6);
                break;
            }
        }
    }
    assert_eq!(read_back(&sk.timeline_dir(), flush, end), chunk);
    let st = sk.status().await.unwrap();
    assert_eq!(st.term, 6);
    assert_eq!(st.term_history.unwrap().entries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_needs_far_fewer_fsyncs_than_appends() {
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sk = Safekeeper::started(data.path(), 2).unwrap();
    let (mut p, _) = Session::open(&sk, "proposer-gc").await;
    assert!(p.vote(1).await.vote_granted);
    p.elect(1, &[(1, START)], START).await.unwrap();
    // 2000 pipelined appends of one small record each, sent without waiting for acks.
    const N: usize = 2000;
    let mut gen = WalGen::new(SYSID, 1, START);
    let mut at = START;
    for _ in 0..N {
        let (chunk, _) = gen.records(1, 200);
        p.send(append(1, at, chunk.clone(), Lsn(0))).await;
        at = Lsn(at.0 + chunk.len() as u64);
    }
    let wait = async {
        loop {
            if let Out::AppendResponse(r) = p.next().await.unwrap() {
                if r.flush_lsn == at.0 {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("all appends acknowledged");
    let st = sk.status().await.unwrap();
    assert_eq!(st.wal_appends, N as u64);
    assert!(st.wal_fsyncs >= 1);
    assert!(
        st.wal_fsyncs * 10 <= N as u64,
        "{} fsyncs for {N} appends: group commit is not batching",
        st.wal_fsyncs
    );
    eprintln!("{N} appends, {} fsyncs", st.wal_fsyncs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    use walproto::proto::safekeeper as pb;
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sk = Safekeeper::started(data.path(), 3).unwrap();
    let mut c = sk.client().await.unwrap();
    let err = c
        .timeline_status(pb::TimelineStatusRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = c
        .timeline_status(pb::TimelineStatusRequest {
            tenant_id: "../../etc".into(),
            timeline_id: TIMELINE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("tenant id"), "{err}");
    // A greeting with another segment size is refused, naming it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut g = greeting("p");
    if let walproto::proto::safekeeper::proposer_message::Msg::Greeting(g) = &mut g {
        g.wal_seg_size = 1 << 20;
    }
    tx.send(pb::ProposerMessage { msg: Some(g) }).await.unwrap();
    let mut s = c
        .propose(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("segment size"), "{err}");
}
