//! A safekeeper whose control file or WAL is damaged on disk quarantines the timeline and
//! rebuilds it from its peers, with real processes: three `safekeeper`s that know each other,
//! Postgres 15 streaming through the built `compute walproposer`, and a ledger workload
//! (transfers between accounts, each acknowledged commit recorded) running throughout.
//!
//! Needs the binaries built first: `cargo build --bins && cargo test -p safekeeper --test corruption`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::*;
use common::{TENANT, TIMELINE};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::pgclient::{ConnConfig, PgConnection};
use walproto::Lsn;

const ACCOUNTS: i64 = 10;
const BALANCE: i64 = 1000;

/// Transfers between accounts, one transaction each, until stopped; every acknowledged one
/// is recorded.
struct Ledger {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Ledger {
    fn setup(pg: &strata_tests::PgCluster, wp: &Walproposer) {
        psql(
            pg,
            wp,
            &format!(
                "CREATE TABLE accounts(id bigint PRIMARY KEY, balance bigint NOT NULL); \
                 CREATE TABLE ledger(n bigint PRIMARY KEY, src bigint, dst bigint, amount bigint, \
                 pad text); \
                 INSERT INTO accounts SELECT g, {BALANCE} FROM generate_series(1, {ACCOUNTS}) g"
            ),
        );
    }

    fn start(pg: &strata_tests::PgCluster) -> Ledger {
        let cfg = ConnConfig {
            host: pg.socket_dir().display().to_string(),
            port: pg.port(),
            application_name: Some("ledger".into()),
            ..ConnConfig::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut conn = PgConnection::connect(&cfg)
                .await
                .map_err(|e| format!("ledger connect: {e}"))?;
            let mut n = 0i64;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let (src, dst) = (n % ACCOUNTS + 1, (n * 7 + 3) % ACCOUNTS + 1);
                let sql = format!(
                    "BEGIN; \
                     UPDATE accounts SET balance = balance - {n} % 5 WHERE id = {src}; \
                     UPDATE accounts SET balance = balance + {n} % 5 WHERE id = {dst}; \
                     INSERT INTO ledger VALUES ({n}, {src}, {dst}, {n} % 5, repeat('x', 200)); \
                     COMMIT"
                );
                match tokio::time::timeout(Duration::from_secs(60), conn.simple_query(&sql)).await {
                    Ok(Ok(_)) => acked2.lock().unwrap().push(n),
                    Ok(Err(e)) => return Err(format!("transfer {n}: {e}")),
                    Err(_) => return Err(format!("transfer {n} not acknowledged within 60 s")),
                }
            }
            Ok(())
        });
        Ledger { stop, acked, task }
    }

    /// Stops the workload; the acknowledged transfers.
    async fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .unwrap()
            .expect("the ledger workload failed");
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Waits until the ledger acknowledged `more` transfers beyond what it had.
async fn ledger_advances(ledger: &Ledger, more: usize, what: &str) {
    let from = ledger.count();
    let what = format!("the ledger to advance {what}");
    wait_until(&what, Duration::from_secs(60), || async {
        ledger.count() >= from + more
    })
    .await
    .unwrap();
}

/// `<datadir>/<tenant>/<timeline>.corrupt-*`.
fn quarantined(sk: &Safekeeper) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(sk.datadir.join(TENANT))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{TIMELINE}.corrupt-"))
        })
        .collect();
    v.sort();
    v
}

/// Prints what the safekeeper logged about verification, quarantine and recovery.
fn print_story(sk: &Safekeeper) {
    for line in log(sk).lines().filter(|l| {
        ["quarantin", "verified", "recover", "bad WAL", "damage"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        eprintln!("safekeeper {}: {line}", sk.id);
    }
}

fn log(sk: &Safekeeper) -> String {
    std::fs::read_to_string(sk.datadir.with_extension("log")).unwrap_or_default()
}

/// A record near the middle of segment `segno` of `wal` (Postgres's bytes for it).
fn record_in_segment(segno: u64, wal: &[u8]) -> Lsn {
    let start = Lsn(segno * WAL_SEGMENT_SIZE);
    let middle = Lsn(start.0 + WAL_SEGMENT_SIZE / 2);
    let mut d = walproto::WalStreamDecoder::new(start);
    d.feed(wal);
    let mut last = None;
    loop {
        match d.next() {
            Ok(walproto::Decoded::Record(r)) if r.lsn >= middle => return r.lsn,
            Ok(walproto::Decoded::Record(r)) => last = Some(r.lsn),
            // A switched segment: its records end before the middle.
            _ => return last.expect("a record in the segment"),
        }
    }
}

/// The cluster, the workload and a victim (safekeeper 3): runs `damage` on the victim's
/// stopped timeline directory, restarts it, and checks that it quarantines the timeline
/// (keeping the evidence), recovers from its peers while the ledger keeps committing, ends
/// with WAL byte-identical to Postgres's and its peers' up to its commit LSN, counts in the
/// quorum again, and that no acknowledged transfer is lost.
async fn damaged_safekeeper_recovers(
    damage: impl FnOnce(&Path, &strata_tests::PgCluster, Lsn) -> (PathBuf, Vec<u8>),
    what: &str,
) {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("remote");
    let extra: Vec<String> = ["--remote-storage", store.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut sks = three_safekeepers(base.path(), &extra, &[]).unwrap();
    let pg = walproposer_postgres().unwrap();
    let wp = Walproposer::start(&pg, &sks, &base.path().join("walproposer.log"), &[]).unwrap();
    Ledger::setup(&pg, &wp);
    let end = make_segments(&pg, &wp, 3);
    let ledger = Ledger::start(&pg);
    ledger_advances(&ledger, 50, "at the start").await;
    let before = sks[2].status().await.expect("safekeeper 3 status");
    let start = Lsn(before.local_start_lsn);
    assert!(end.segment_number() >= start.segment_number() + 3);

    // Safekeeper 3 dies; while it is down its disk is damaged, and the ledger goes on.
    sks[2].kill();
    let (file, damaged) = damage(&sks[2].timeline_dir(), &pg, start);
    ledger_advances(&ledger, 50, "with safekeeper 3 down").await;
    sks[2].start().unwrap();

    // It finds the damage, moves the timeline aside as it was, and says what is wrong.
    let quarantine = wait_until("a quarantine", Duration::from_secs(30), || async {
        !quarantined(&sks[2]).is_empty()
    })
    .await;
    if let Err(e) = quarantine {
        panic!("{e:#}:\n{}", sks[2].log_tail());
    }
    let q = quarantined(&sks[2]).remove(0);
    let rel = file.strip_prefix(sks[2].timeline_dir()).unwrap();
    assert!(
        std::fs::read(q.join(rel)).unwrap() == damaged,
        "the evidence was not kept as it was"
    );
    let note = std::fs::read_to_string(q.join("QUARANTINE")).unwrap();
    assert!(note.contains(what), "{note}");
    let text = log(&sks[2]);
    assert!(
        text.contains("timeline quarantined") && text.contains(&*rel.to_string_lossy()),
        "the log does not name the damaged file:\n{}",
        sks[2].log_tail()
    );

    // It recovers from its peers and follows the commits of the running ledger.
    ledger_advances(&ledger, 50, "after the restart").await;
    let target = pg.current_wal_insert_lsn().unwrap();
    if let Err(e) = sks[2].wait_commit(target, Duration::from_secs(60)).await {
        panic!("safekeeper 3 did not recover: {e:#}\n{}", sks[2].log_tail());
    }
    let s3 = sks[2].status().await.unwrap();
    assert!(s3.term >= before.term, "the recovered node forgot its term");
    assert_eq!(Lsn(s3.local_start_lsn), start);
    assert!(
        log(&sks[2]).contains("the quarantined timeline is rebuilt from the peers"),
        "{}",
        sks[2].log_tail()
    );
    assert!(!sks[2].timeline_dir().with_extension("recovering").exists());

    // Its WAL is Postgres's, and its peer's, byte for byte, up to its commit LSN.
    let commit = Lsn(s3.commit_lsn);
    let ours = read_wal(&sks[2].timeline_dir(), start, commit).unwrap();
    assert!(
        ours == read_wal(&pg.wal_dir(), start, commit).unwrap(),
        "recovered WAL differs from pg_wal"
    );
    assert!(
        ours == read_wal(&sks[1].timeline_dir(), start, commit).unwrap(),
        "recovered WAL differs from safekeeper 2's"
    );

    print_story(&sks[2]);

    // It counts in the quorum: with safekeeper 1 gone, commits go through 2 and 3.
    sks[0].kill();
    ledger_advances(&ledger, 20, "with safekeepers 2 and 3").await;
    let acked = ledger.finish().await;

    // No acknowledged transfer is lost, and the money adds up.
    assert_none_lost(&pg, &wp, &acked);
    assert_eq!(
        psql(&pg, &wp, "SELECT sum(balance) FROM accounts").trim(),
        (ACCOUNTS * BALANCE).to_string()
    );
    drop(wp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_control_file_is_quarantined_and_recovered_from_peers() {
    damaged_safekeeper_recovers(
        |dir, _, _| {
            let file = dir.join("safekeeper.control");
            let mut b = std::fs::read(&file).unwrap();
            // Inside the term and LSNs: the magic and version stay valid, the crc32c catches it.
            b[70] ^= 0x04;
            std::fs::write(&file, &b).unwrap();
            (file, b)
        },
        "crc32c mismatch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_complete_segment_is_quarantined_and_recovered_from_peers() {
    damaged_safekeeper_recovers(
        |dir, pg, start| {
            // A complete segment after the first one, well below the persisted flush LSN.
            let segno = start.segment_number() + 1;
            let name = Lsn(segno * WAL_SEGMENT_SIZE).segment_file_name(1);
            let file = dir.join(&name);
            let mut b = std::fs::read(&file).expect("the complete segment");
            assert!(
                b == pg_segment(pg, segno),
                "segment {name} differs before damage"
            );
            let victim = record_in_segment(segno, &b);
            // Inside the record (its xl_xid, covered by the record's CRC).
            b[victim.segment_offset() as usize + 4] ^= 0x20;
            std::fs::write(&file, &b).unwrap();
            (file, b)
        },
        "bad WAL record",
    )
    .await;
}

/// Streams from `from` on a safekeeper's replication server until an error or `to`.
async fn stream_from(sk: &Safekeeper, from: Lsn, to: Lsn) -> Result<(), String> {
    let conn = PgConnection::connect(&ConnConfig {
        host: "127.0.0.1".into(),
        port: sk.pg_port,
        application_name: Some("corruption-test-reader".into()),
        options: Some(format!("-c tenant_id={TENANT} -c timeline_id={TIMELINE}")),
        replication: true,
        ..ConnConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut s = walproto::pgclient::replication::WalStream::start(conn, None, from, 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut at = from;
    while at < to {
        match s.next(Duration::from_secs(10)).await {
            Ok(Some(walproto::replication::ReplicationMessage::XLogData {
                start, data, ..
            })) => at = Lsn(start.0 + data.len() as u64),
            Ok(Some(_)) => {}
            Ok(None) => return Err("no WAL within 10 s".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Damage appearing while the safekeeper runs (after the timeline was verified at open) is
/// met by a reader: the bad record is not sent, the damage is confirmed on disk, the timeline
/// leaves the service at once (status NOT_FOUND naming the quarantine), its proposer session
/// ends, and it is moved aside and recovered from the peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wal_met_by_a_reader_quarantines_the_running_timeline() {
    let base = tempfile::tempdir().unwrap();
    let mut sks = three_safekeepers(base.path(), &[], &[]).unwrap();
    let pg = walproposer_postgres().unwrap();
    let wp_log = base.path().join("walproposer.log");
    let wp = Walproposer::start(&pg, &sks, &wp_log, &[]).unwrap();
    Ledger::setup(&pg, &wp);
    let end = make_segments(&pg, &wp, 3);
    let ledger = Ledger::start(&pg);
    ledger_advances(&ledger, 30, "at the start").await;
    let start = Lsn(sks[2].status().await.unwrap().local_start_lsn);

    // A byte flips in a complete segment of the running safekeeper 3.
    let segno = start.segment_number() + 1;
    let seg_start = Lsn(segno * WAL_SEGMENT_SIZE);
    let file = sks[2].timeline_dir().join(seg_start.segment_file_name(1));
    let mut b = std::fs::read(&file).unwrap();
    let victim = record_in_segment(segno, &b);
    b[victim.segment_offset() as usize + 4] ^= 0x20;
    std::fs::write(&file, &b).unwrap();

    // A reader gets an error, not the bad record.
    let e = stream_from(&sks[2], seg_start, end).await.unwrap_err();
    assert!(e.contains("refusing to serve WAL"), "{e}");
    // The timeline is out of service at once.
    let out_of_service = wait_until(
        "the damaged timeline to leave the service",
        Duration::from_secs(20),
        || async { sks[2].status().await.is_err() },
    )
    .await;
    if let Err(e) = out_of_service {
        panic!("{e:#}:\n{}", sks[2].log_tail());
    }
    let mut c = sks[2].client().await.unwrap();
    let status = c
        .timeline_status(walproto::proto::safekeeper::TimelineStatusRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("quarantined") && status.message().contains("bad WAL record"),
        "{}",
        status.message()
    );
    let e = stream_from(&sks[2], seg_start, end).await.unwrap_err();
    assert!(e.contains("quarantined"), "{e}");

    // Its proposer session ends at its next append (the ledger keeps appending), the
    // walproposer reconnects, and the timeline is moved aside and recovered.
    let quarantine = wait_until("a quarantine", Duration::from_secs(30), || async {
        !quarantined(&sks[2]).is_empty()
    })
    .await;
    if let Err(e) = quarantine {
        panic!("{e:#}:\n{}", sks[2].log_tail());
    }
    let q = quarantined(&sks[2]).remove(0);
    assert!(
        std::fs::read(q.join(seg_start.segment_file_name(1))).unwrap() == b,
        "the evidence was not kept as it was"
    );
    ledger_advances(&ledger, 30, "after the quarantine").await;
    let target = pg.current_wal_insert_lsn().unwrap();
    if let Err(e) = sks[2].wait_commit(target, Duration::from_secs(60)).await {
        panic!("safekeeper 3 did not recover: {e:#}\n{}", sks[2].log_tail());
    }
    let commit = Lsn(sks[2].status().await.unwrap().commit_lsn);
    let ours = read_wal(&sks[2].timeline_dir(), start, commit).unwrap();
    assert!(
        ours == read_wal(&pg.wal_dir(), start, commit).unwrap(),
        "recovered WAL differs"
    );
    stream_from(&sks[2], seg_start, end)
        .await
        .expect("the recovered timeline serves the segment");
    print_story(&sks[2]);

    sks[0].kill();
    ledger_advances(&ledger, 20, "with safekeepers 2 and 3").await;
    let acked = ledger.finish().await;
    assert_none_lost(&pg, &wp, &acked);
    drop(wp);
}

/// Without peers to recover from, a quarantined timeline stays out of service, across
/// restarts too: a greeting is refused (never answered by an empty timeline that forgot the
/// term it promised), and the status names the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_a_quarantined_timeline_is_refused_not_recreated() {
    use common::{Safekeeper, Session};
    let base = tempfile::tempdir().unwrap();
    let sk = Safekeeper::started(base.path(), 1).unwrap();
    let datadir = sk.datadir.clone();
    let (mut s, _) = Session::open(&sk, "p1").await;
    assert!(s.vote(5).await.vote_granted);
    drop(s);
    drop(sk);
    let file = datadir
        .join(TENANT)
        .join(TIMELINE)
        .join("safekeeper.control");
    let mut b = std::fs::read(&file).unwrap();
    b[60] ^= 0x01; // the term
    std::fs::write(&file, &b).unwrap();

    for restart in 0..2 {
        let sk = Safekeeper::started(base.path(), 1).unwrap();
        let status = sk
            .client()
            .await
            .unwrap()
            .timeline_status(walproto::proto::safekeeper::TimelineStatusRequest {
                tenant_id: TENANT.into(),
                timeline_id: TIMELINE.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        if restart == 0 {
            assert!(
                status.message().contains("quarantined") && status.message().contains("crc32c"),
                "{}",
                status.message()
            );
        }
        let mut client = sk.client().await.unwrap();
        let mut rx = client
            .propose(tokio_stream::iter(vec![
                walproto::proto::safekeeper::ProposerMessage {
                    msg: Some(common::greeting("p2")),
                },
            ]))
            .await
            .unwrap()
            .into_inner();
        let e = rx.message().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("quarantined") && e.message().contains("no --peers"),
            "{}",
            e.message()
        );
        assert!(!datadir.join(TENANT).join(TIMELINE).exists());
        let copies: Vec<_> = std::fs::read_dir(datadir.join(TENANT))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(copies.len(), 1, "one quarantined copy");
        assert!(std::fs::read(copies[0].path().join("safekeeper.control")).unwrap() == b);
    }
}

/// Every acknowledged transfer of the ledger is in the table.
fn assert_none_lost(pg: &strata_tests::PgCluster, wp: &Walproposer, acked: &[i64]) {
    let rows = psql(pg, wp, "SELECT n FROM ledger ORDER BY n");
    let present: std::collections::HashSet<i64> =
        rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<&i64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged transfers lost: {lost:?}");
}
