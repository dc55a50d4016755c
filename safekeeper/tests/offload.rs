//! WAL offload, removal and recovery with real processes: three `safekeeper` processes that
//! know each other, a real Postgres 15 streaming through the built `compute walproposer`, a
//! real S3 server (`s3s-fs` on loopback) or a local directory as the object store, and a
//! replication client playing the pageserver.
//!
//! Needs the binaries built first: `cargo build --bins && cargo test -p safekeeper --test offload`.
//! The S3 test needs `s3s-fs` (`STRATA_SETUP_S3=1 scripts/setup.sh`) and fails without it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::*;
use common::{TENANT, TIMELINE};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::pgclient::replication::WalStream;
use walproto::pgclient::{ConnConfig, PgConnection};
use walproto::proto::safekeeper as pb;
use walproto::replication::ReplicationMessage;
use walproto::Lsn;

async fn statuses(sks: &[Safekeeper]) -> Vec<Option<pb::TimelineStatusResponse>> {
    let mut out = Vec::new();
    for sk in sks {
        out.push(sk.status().await.ok());
    }
    out
}

async fn all_status(
    sks: &[Safekeeper],
    what: &str,
    f: impl Fn(&pb::TimelineStatusResponse) -> bool,
) {
    let waited = wait_until(what, Duration::from_secs(40), || async {
        statuses(sks)
            .await
            .iter()
            .all(|s| s.as_ref().is_some_and(&f))
    })
    .await;
    if let Err(e) = waited {
        let logs: Vec<String> = sks.iter().map(|s| s.log_tail()).collect();
        panic!(
            "not every safekeeper reached it: {e:#}\n{:#?}\n{}",
            statuses(sks).await,
            logs.join("\n----\n")
        );
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("00000001"))
        .collect();
    v.sort();
    v
}

/// A replication connection to a safekeeper as `application_name`.
async fn connect(sk: &Safekeeper, application_name: &str) -> PgConnection {
    PgConnection::connect(&ConnConfig {
        host: "127.0.0.1".into(),
        port: sk.pg_port,
        application_name: Some(application_name.into()),
        options: Some(format!("-c tenant_id={TENANT} -c timeline_id={TIMELINE}")),
        replication: true,
        ..ConnConfig::default()
    })
    .await
    .unwrap()
}

/// Streams `[from, to)` from a safekeeper's replication server.
async fn stream_range(sk: &Safekeeper, from: Lsn, to: Lsn) -> Result<Vec<u8>, String> {
    let conn = connect(sk, "offload-test-reader").await;
    let mut s = WalStream::start(conn, None, from, 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while (out.len() as u64) < to.0 - from.0 {
        match s.next(Duration::from_secs(10)).await {
            Ok(Some(ReplicationMessage::XLogData { start, data, .. })) => {
                assert_eq!(start.0, from.0 + out.len() as u64, "contiguous stream");
                out.extend_from_slice(&data);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("no WAL within 10 s".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    out.truncate((to.0 - from.0) as usize);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_to_s3_removal_after_consumer_report_and_serving_removed_wal() {
    let base = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&base.path().join("s3"), "strata-wal").unwrap();
    let remote = format!("s3://{}/cluster-a", s3.bucket);
    let extra: Vec<String> = [
        "--remote-storage",
        &remote,
        "--partial-offload-interval-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sks = three_safekeepers(base.path(), &extra, &s3.env()).unwrap();
    let pg = walproposer_postgres().unwrap();
    let wp = Walproposer::start(&pg, &sks, &base.path().join("walproposer.log"), &[]).unwrap();
    let end = make_segments(&pg, &wp, 3);
    let start = Lsn(sks[0].status().await.unwrap().local_start_lsn);
    assert!(end.segment_number() >= start.segment_number() + 3);
    let first = start.segment_number();
    let current = end.segment_number();

    // Every complete segment below the commit LSN is offloaded, and every node knows it and
    // agrees on who the offloader is.
    all_status(&sks, "offloaded up to the current segment", |s| {
        s.offloaded_lsn >= end.segment_start().0
    })
    .await;
    let st = statuses(&sks).await;
    let offloader = st[0].as_ref().unwrap().offloader_id;
    assert!(offloader != 0);
    assert!(st
        .iter()
        .all(|s| s.as_ref().unwrap().offloader_id == offloader));

    // How long the uploads took (shown with --nocapture).
    let o = sks.iter().position(|s| s.id == offloader).unwrap();
    let log = std::fs::read_to_string(sks[o].datadir.with_extension("log")).unwrap();
    for line in log
        .lines()
        .filter(|l| l.contains("offloaded") && l.contains("ms="))
    {
        eprintln!("{line}");
    }

    // The objects in the S3 server's files are byte-identical to Postgres's pg_wal.
    let objects = wal_objects(&s3.root.join(&s3.bucket).join("cluster-a"));
    for segno in first..current {
        let name = Lsn(segno * WAL_SEGMENT_SIZE).segment_file_name(1);
        let obj = std::fs::read(objects.join(&name))
            .unwrap_or_else(|e| panic!("object {name} in {}: {e}", objects.display()));
        assert!(
            obj == pg_segment(&pg, segno),
            "object {name} differs from pg_wal"
        );
        assert!(objects.join(format!("{name}.crc32c")).exists());
    }
    // The segment being written is uploaded as .partial, up to the commit LSN.
    let partial_name = format!("{}.partial", end.segment_file_name(1));
    wait_until(
        "the partial segment's offload",
        Duration::from_secs(20),
        || async {
            statuses(&sks)
                .await
                .iter()
                .flatten()
                .any(|s| s.partial_offloaded_lsn >= end.0)
        },
    )
    .await
    .unwrap();
    let partial = std::fs::read(objects.join(&partial_name)).unwrap();
    assert!(partial.len() as u64 >= end.segment_offset());
    assert!(partial[..] == pg_segment(&pg, current)[..partial.len()]);

    // No consumer has reported: nothing is removed.
    // (It streams from the end, so the server has nothing queued while it reads our reports.)
    let reader = connect(&sks[0], "pageserver-test").await;
    let mut stream = WalStream::start(reader, None, end, 1).await.unwrap();
    // apply = 0/0 (invalid) means nothing is durable remotely yet.
    stream
        .send_positions(end, end, Lsn(0), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for sk in &sks {
        let s = sk.status().await.unwrap();
        assert_eq!(s.consumer_durable_lsn, 0);
        assert_eq!(Lsn(s.local_start_lsn), start, "safekeeper {}", sk.id);
        assert_eq!(
            segment_files(&sk.timeline_dir()).len() as u64,
            current - first + 1
        );
    }

    // The pageserver reports WAL durable up to the middle of segment first+2: the two
    // segments below it go, on every safekeeper (the report is shared between peers).
    let durable = Lsn((first + 2) * WAL_SEGMENT_SIZE + 100);
    stream
        .send_positions(end, end, durable, false)
        .await
        .unwrap();
    let horizon = Lsn((first + 2) * WAL_SEGMENT_SIZE);
    all_status(&sks, "WAL removed below the consumer-durable LSN", |s| {
        s.local_start_lsn == horizon.0 && s.consumer_durable_lsn == durable.0
    })
    .await;
    for sk in &sks {
        let files = segment_files(&sk.timeline_dir());
        assert_eq!(
            files.first().map(String::as_str),
            Some(horizon.segment_file_name(1).as_str()),
            "safekeeper {}: {files:?}",
            sk.id
        );
    }
    drop(stream);

    // Removed WAL is still served, from the object store, byte-identical.
    let got = stream_range(&sks[1], start, end).await.unwrap();
    assert!(
        got == read_wal(&pg.wal_dir(), start, end).unwrap(),
        "WAL served from S3 differs"
    );

    // The offload state survives a SIGKILL.
    sks[2].kill();
    sks[2].start().unwrap();
    let s = sks[2].status().await.unwrap();
    assert!(s.offloaded_lsn >= end.segment_start().0);
    assert_eq!(s.consumer_durable_lsn, durable.0);
    assert_eq!(s.local_start_lsn, horizon.0);

    // If the object store lost a removed segment, the reader gets an error naming the LSN.
    let name = start.segment_file_name(1);
    std::fs::remove_file(objects.join(&name)).unwrap();
    let e = stream_range(&sks[1], start, end).await.unwrap_err();
    assert!(
        e.contains(&start.to_string()) && e.contains("not in the object store"),
        "{e}"
    );
    drop(wp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_offload_and_a_wiped_safekeeper_recovers() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("remote");
    // Partial segments only once and at shutdown: the SIGTERM upload is what is checked.
    let extra: Vec<String> = [
        "--remote-storage",
        store.to_str().unwrap(),
        "--partial-offload-interval-secs",
        "3600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sks = three_safekeepers(base.path(), &extra, &[]).unwrap();
    let pg = walproposer_postgres().unwrap();
    let wp = Walproposer::start(&pg, &sks, &base.path().join("walproposer.log"), &[]).unwrap();
    let end = make_segments(&pg, &wp, 2);
    let start = Lsn(sks[0].status().await.unwrap().local_start_lsn);
    all_status(&sks, "offloaded up to the current segment", |s| {
        s.offloaded_lsn >= end.segment_start().0
    })
    .await;
    let objects = wal_objects(&store);
    for segno in start.segment_number()..end.segment_number() {
        let name = Lsn(segno * WAL_SEGMENT_SIZE).segment_file_name(1);
        assert!(
            std::fs::read(objects.join(&name)).unwrap() == pg_segment(&pg, segno),
            "object {name} differs from pg_wal"
        );
    }

    // A clean shutdown of the offloader uploads the partial segment up to its commit LSN.
    psql(&pg, &wp, "INSERT INTO t VALUES (-3, 'before the shutdown')");
    let last = pg.current_wal_insert_lsn().unwrap();
    let offloader = sks[0].status().await.unwrap().offloader_id;
    let o = sks.iter().position(|s| s.id == offloader).unwrap();
    sks[o]
        .wait_commit(last, Duration::from_secs(20))
        .await
        .unwrap();
    sks[o].stop().unwrap();
    let partial =
        std::fs::read(objects.join(format!("{}.partial", last.segment_file_name(1)))).unwrap();
    assert!(
        partial.len() as u64 >= last.segment_offset(),
        "the partial object ends at {} in its segment, the commit was at {}",
        partial.len(),
        last.segment_offset()
    );
    assert!(partial[..] == pg_segment(&pg, last.segment_number())[..partial.len()]);
    sks[o].start().unwrap();

    // Safekeeper 3 loses its disk and comes back empty.
    sks[2].kill();
    std::fs::remove_dir_all(&sks[2].datadir).unwrap();
    sks[2].start().unwrap();
    psql(&pg, &wp, "INSERT INTO t VALUES (-1, 'after the wipe')");
    let term = sks[0].status().await.unwrap().term;
    let target = pg.current_wal_insert_lsn().unwrap();
    if let Err(e) = sks[2].wait_commit(target, Duration::from_secs(30)).await {
        panic!("safekeeper 3 did not recover: {e:#}\n{}", sks[2].log_tail());
    }
    let s3 = sks[2].status().await.unwrap();
    assert_eq!(s3.term, term, "the recovered node took the peers' term");
    assert_eq!(Lsn(s3.local_start_lsn), start);
    let log = std::fs::read_to_string(sks[2].datadir.with_extension("log")).unwrap();
    assert!(
        log.contains(&format!(
            "recovery: {} segments from the object store",
            end.segment_number() - start.segment_number()
        )),
        "{}",
        sks[2].log_tail()
    );
    // Its WAL is Postgres's, byte for byte, from the old start to the commit LSN.
    let ours = read_wal(&sks[2].timeline_dir(), start, Lsn(s3.commit_lsn)).unwrap();
    assert!(
        ours == read_wal(&pg.wal_dir(), start, Lsn(s3.commit_lsn)).unwrap(),
        "recovered WAL differs"
    );

    // It counts in the quorum: with safekeeper 1 gone, commits go through 2 and 3.
    sks[0].kill();
    assert!(
        commit_within(
            &pg,
            "INSERT INTO t VALUES (-2, 'quorum of 2 and 3')",
            Duration::from_secs(30)
        )
        .await,
        "no commit with safekeepers 2 and 3:
{}
{}",
        wp.log_text(),
        sks[2].log_tail()
    );
    assert_eq!(
        psql(&pg, &wp, "SELECT count(*) FROM t WHERE id IN (-1, -2)").trim(),
        "2"
    );
    drop(wp);
}

/// A safekeeper that cannot reach its peers does not create a timeline it does not have:
/// for all it knows, the timeline exists there and its own disk was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_is_not_created_without_a_majority_of_answers() {
    let base = tempfile::tempdir().unwrap();
    let mut sk = Safekeeper::new(base.path(), 1).unwrap();
    sk.replication = true;
    // Ports nobody listens on.
    let (a, b) = (
        strata_tests::pg::free_port().unwrap(),
        strata_tests::pg::free_port().unwrap(),
    );
    sk.args = vec!["--peers".into(), format!("2=127.0.0.1:{a},3=127.0.0.1:{b}")];
    sk.start().unwrap();
    let mut client = sk.client().await.unwrap();
    let greeting = pb::ProposerMessage {
        msg: Some(pb::proposer_message::Msg::Greeting(pb::Greeting {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            proposer_id: "test".into(),
            system_id: 1,
            pg_timeline: 1,
            wal_seg_size: WAL_SEGMENT_SIZE as u32,
            acceptor_id: 0,
            create_timeline: true,
        })),
    };
    let mut rx = client
        .propose(tokio_stream::iter(vec![greeting]))
        .await
        .unwrap()
        .into_inner();
    let status = rx.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("only 1 of 3 safekeepers answered"),
        "{}",
        status.message()
    );
    assert!(!sk.timeline_dir().exists());
}
