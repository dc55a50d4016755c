//! The walproposer end to end: a real Postgres 15, three real safekeeper processes, the real
//! `compute walproposer` binary, and SIGKILLs. Every test keeps a ledger of acknowledged commits.
//!
//! Needs the binaries built first: `cargo build --bins && cargo test -p compute`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use strata_tests::{PgCluster, StopMode};
use walproto::Lsn;

/// Inserts rows one transaction at a time, logging each acknowledged id, until `stop`.
struct Ledger {
    acked: Arc<Mutex<Vec<i64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Ledger {
    async fn start(pg: &PgCluster) -> Ledger {
        let mut conn = client(pg).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut id = 0i64;
            while !s.load(Ordering::Relaxed) {
                id += 1;
                conn.simple_query(&format!(
                    "INSERT INTO ledger VALUES ({id}, repeat('x', 200))"
                ))
                .await
                .expect("insert");
                a.lock().unwrap().push(id);
            }
        });
        Ledger { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the ledger client's last commit was not acknowledged")
            .unwrap();
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

async fn create_ledger(pg: &PgCluster, wps: &[&Walproposer]) {
    let mut c = client(pg).await;
    let ok = commit_within(
        &mut c,
        "CREATE TABLE ledger(id bigint PRIMARY KEY, pad text)",
        Duration::from_secs(30),
    )
    .await;
    if !ok {
        let logs: Vec<String> = wps.iter().map(|w| w.log_text()).collect();
        panic!(
            "the first commit was not acknowledged within 30 s\n{}",
            logs.join("\n----\n")
        );
    }
}

/// Every acknowledged id is in the table.
async fn check_rows(pg: &PgCluster, acked: &[i64]) {
    let mut c = client(pg).await;
    let rows = c
        .simple_query("SELECT count(*), coalesce(max(id), 0) FROM ledger")
        .await
        .unwrap();
    let count: usize = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert!(
        count >= acked.len(),
        "{count} rows, {} acknowledged",
        acked.len()
    );
    let ids: Vec<String> = acked.iter().map(|i| i.to_string()).collect();
    let rows = c
        .simple_query(&format!(
            "SELECT count(*) FROM ledger WHERE id IN ({})",
            if ids.is_empty() {
                "0".into()
            } else {
                ids.join(",")
            }
        ))
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref().unwrap(),
        acked.len().to_string(),
        "acknowledged rows missing"
    );
}

/// What the walproposer last reported to Postgres as flushed (>= every acknowledged commit).
async fn reported_flush(pg: &PgCluster) -> Lsn {
    let mut c = client(pg).await;
    let rows = c
        .simple_query(
            "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'strata' \
             ORDER BY flush_lsn DESC NULLS LAST LIMIT 1",
        )
        .await
        .unwrap();
    rows.first()
        .and_then(|r| r[0].as_deref())
        .map(|s| s.parse().unwrap())
        .unwrap_or(Lsn(0))
}

/// At least `need` safekeepers hold WAL up to `upto`, byte-identical to Postgres's pg_wal from
/// their common start. Returns how many did.
async fn wal_on(pg: &PgCluster, sks: &[Safekeeper], upto: Lsn, need: usize) -> usize {
    let mut ok = 0;
    let mut problems = Vec::new();
    for sk in sks {
        let Some((start, flush, _)) = sk_range(sk).await else {
            problems.push(format!("safekeeper {}: no status", sk.id));
            continue;
        };
        if flush < upto {
            problems.push(format!("safekeeper {}: flush {flush} < {upto}", sk.id));
            continue;
        }
        match same_wal_as_postgres(pg, sk, start, upto) {
            Ok(()) => ok += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    assert!(
        ok >= need,
        "only {ok} safekeepers hold WAL up to {upto} identical to Postgres's (need {need}): {problems:?}"
    );
    ok
}

/// Postgres, three safekeepers and a walproposer (its log in the temporary directory), with
/// the ledger table created through them.
async fn cluster_with_ledger() -> (PgCluster, tempfile::TempDir, Vec<Safekeeper>, Walproposer) {
    let pg = walproposer_postgres().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sks = three(tmp.path());
    let wp = Walproposer::start(&pg, &sks, &tmp.path().join("wp.log"), &[]).unwrap();
    create_ledger(&pg, &[&wp]).await;
    (pg, tmp, sks, wp)
}

/// Commits ledger rows for `run`; the acknowledged ids.
async fn ledger_for(pg: &PgCluster, run: Duration) -> Vec<i64> {
    let ledger = Ledger::start(pg).await;
    tokio::time::sleep(run).await;
    ledger.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_commits_are_on_a_majority_byte_identical() {
    let (pg, _tmp, sks, mut wp) = cluster_with_ledger().await;
    let acked = ledger_for(&pg, Duration::from_secs(4)).await;
    assert!(acked.len() > 50, "only {} commits in 4 s", acked.len());
    // Freeze: what Postgres was told is durable must be on a majority now.
    let reported = reported_flush(&pg).await;
    wp.kill();
    assert!(reported > Lsn(0));
    let ok = wal_on(&pg, &sks, reported, 2).await;
    eprintln!(
        "{} commits acknowledged; WAL up to {reported} on {ok} of 3 safekeepers",
        acked.len()
    );
    check_rows(&pg, &acked).await;
    // The walproposer logs name the tenant and timeline.
    assert!(wp.log_text().contains(TENANT), "{}", wp.log_text());
}

/// Postgres's fast shutdown ends the replication stream once the walproposer reported its
/// shutdown checkpoint flushed. The walproposer then publishes that commit LSN, waits until
/// the safekeepers holding it have acknowledged it, and exits cleanly: every safekeeper's
/// commit LSN covers the shutdown checkpoint, so the branch's next compute can start there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_shutdown_leaves_the_final_commit_on_every_safekeeper() {
    let (pg, _tmp, sks, mut wp) = cluster_with_ledger().await;
    let acked = ledger_for(&pg, Duration::from_secs(1)).await;
    pg.stop(StopMode::Fast).unwrap();
    let ckpt = pg.latest_checkpoint().unwrap();
    let mut exit = None;
    for _ in 0..150 {
        exit = wp.child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = wp.log_text();
    let exit = exit.unwrap_or_else(|| panic!("the walproposer did not exit within 15 s\n{log}"));
    assert!(exit.success(), "the walproposer exited with {exit}\n{log}");
    for sk in &sks {
        let st = sk.status().await.expect("safekeeper status");
        let (flush, commit) = (Lsn(st.flush_lsn), Lsn(st.commit_lsn));
        assert!(
            commit > ckpt && commit == flush,
            "safekeeper {}: flush {flush}, commit {commit}, shutdown checkpoint at {ckpt}\n{log}",
            sk.id
        );
    }
    eprintln!(
        "{} commits, then shutdown: every safekeeper committed past the checkpoint at {ckpt}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_one_safekeeper_repeatedly_under_load() {
    let (pg, _tmp, mut sks, mut wp) = cluster_with_ledger().await;
    let ledger = Ledger::start(&pg).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = round % 3;
        sks[victim].kill();
        let before = ledger.count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = ledger.count();
        assert!(
            after > before + 5,
            "round {round}: commits stalled with one safekeeper down ({before} -> {after})\n{}",
            wp.log_text()
        );
        sks[victim].start().unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = ledger.finish().await;
    let reported = reported_flush(&pg).await;
    wal_on(&pg, &sks, reported, 2).await;
    // Everyone catches up; all three are then byte-identical to Postgres.
    let mut c = client(&pg).await;
    let end = pg_flush_lsn(&mut c).await;
    let what = format!("every safekeeper to reach {end}");
    wait_until(&what, Duration::from_secs(20), || async {
        let mut all = true;
        for sk in &sks {
            all &= sk_range(sk).await.is_some_and(|r| r.1 >= end);
        }
        all
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", wp.log_text()));
    wp.kill();
    wal_on(&pg, &sks, end, 3).await;
    check_rows(&pg, &acked).await;
    eprintln!(
        "{} commits acknowledged across 3 safekeeper kills",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_down_commits_wait_then_continue() {
    let (pg, _tmp, mut sks, wp) = cluster_with_ledger().await;
    sks[1].kill();
    sks[2].kill();
    let mut c = client(&pg).await;
    let insert = tokio::spawn(async move {
        c.simple_query("INSERT INTO ledger VALUES (1, 'waits')")
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !insert.is_finished(),
        "a commit was acknowledged with two of three safekeepers down"
    );
    sks[1].start().unwrap();
    tokio::time::timeout(Duration::from_secs(20), insert)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the commit did not complete after a safekeeper returned\n{}",
                wp.log_text()
            )
        })
        .unwrap();
    let reported = reported_flush(&pg).await;
    wal_on(&pg, &sks[..2], reported, 2).await;
    check_rows(&pg, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walproposer_sigkill_and_restart_reelects_with_a_higher_term() {
    let pg = walproposer_postgres().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut sks = three(tmp.path());
    let log = tmp.path().join("wp.log");
    let mut wp = Walproposer::start(&pg, &sks, &log, &[]).unwrap();
    create_ledger(&pg, &[&wp]).await;
    let ledger = Ledger::start(&pg).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let term1 = sk_range(&sks[0]).await.unwrap().2;
    assert!(term1 >= 1);
    // Safekeeper 3 goes down and misses WAL; then the walproposer is SIGKILLed.
    sks[2].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    wp.kill();
    let frozen = ledger.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ledger.count() <= frozen + 1,
        "commits acknowledged while no walproposer ran"
    );
    let mut wp = Walproposer::start(&pg, &sks, &log, &[]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ledger.count() > frozen + 10,
        "the stream did not continue after the restart\n{}",
        wp.log_text()
    );
    let mut higher = 0;
    for sk in &sks[..2] {
        if sk_range(sk).await.unwrap().2 > term1 {
            higher += 1;
        }
    }
    assert_eq!(higher, 2, "the majority must be in a term above {term1}");
    // Safekeeper 3 returns with WAL older than anything the new walproposer buffered: it is
    // caught up from Postgres, then follows the live stream.
    sks[2].start().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = ledger.finish().await;
    let mut c = client(&pg).await;
    let end = pg_flush_lsn(&mut c).await;
    let s3 = &sks[2];
    let what = format!("safekeeper 3 to catch up to {end}");
    wait_until(&what, Duration::from_secs(20), || async {
        sk_range(s3).await.is_some_and(|r| r.1 >= end)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", wp.log_text()));
    assert!(
        wp.log_text().contains("catching up from Postgres"),
        "{}",
        wp.log_text()
    );
    let reported = reported_flush(&pg).await;
    wp.kill();
    wal_on(&pg, &sks, reported.max(end), 3).await;
    check_rows(&pg, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_walproposers_one_wins_one_history() {
    let pg = walproposer_postgres().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sks = three(tmp.path());
    let mut a = Walproposer::start(
        &pg,
        &sks,
        &tmp.path().join("a.log"),
        &["--slot", "strata_a", "--proposer-id", "a"],
    )
    .unwrap();
    let mut b = Walproposer::start(
        &pg,
        &sks,
        &tmp.path().join("b.log"),
        &["--slot", "strata_b", "--proposer-id", "b"],
    )
    .unwrap();
    create_ledger(&pg, &[&a, &b]).await;
    let ledger = Ledger::start(&pg).await;
    // Commits make WAL flow; the loser learns it lost at its next append (or its election).
    wait_until(
        "one of two walproposers to stop",
        Duration::from_secs(20),
        || {
            let done =
                a.child.try_wait().unwrap().is_some() || b.child.try_wait().unwrap().is_some();
            async move { done }
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alive = [
        a.child.try_wait().unwrap().is_none(),
        b.child.try_wait().unwrap().is_none(),
    ];
    assert!(
        alive.iter().filter(|x| **x).count() <= 1,
        "two walproposers alive"
    );
    for (wp, alive) in [(&a, alive[0]), (&b, alive[1])] {
        if !alive {
            let text = wp.log_text();
            assert!(
                text.contains("superseded") || text.contains("lost the election"),
                "the loser must say why it stopped:\n{text}"
            );
            eprintln!("loser: {}", text.lines().last().unwrap_or(""));
        }
    }
    assert!(alive.iter().any(|x| *x), "both walproposers stopped");
    let before = ledger.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ledger.count() > before,
        "the winner does not get commits acknowledged"
    );
    let term1 = sk_range(&sks[0]).await.unwrap().2;

    // A newer walproposer while the winner streams: it wins a higher term; the old one finds
    // out at its next append and stops; commits go on through the new one.
    let mut c = Walproposer::start(
        &pg,
        &sks,
        &tmp.path().join("c.log"),
        &["--slot", "strata_c", "--proposer-id", "c"],
    )
    .unwrap();
    let old = if alive[0] { &mut a } else { &mut b };
    wait_until(
        "the superseded walproposer to stop",
        Duration::from_secs(20),
        || {
            let done = old.child.try_wait().unwrap().is_some();
            async move { done }
        },
    )
    .await
    .unwrap();
    let text = old.log_text();
    assert!(text.contains("superseded"), "{text}");
    eprintln!("superseded: {}", text.lines().last().unwrap_or(""));
    assert!(c.child.try_wait().unwrap().is_none(), "{}", c.log_text());
    let before = ledger.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ledger.count() > before,
        "the newer walproposer does not get commits acknowledged\n{}",
        c.log_text()
    );
    assert!(sk_range(&sks[0]).await.unwrap().2 > term1);
    let acked = ledger.finish().await;
    let reported = reported_flush(&pg).await;
    a.kill();
    b.kill();
    c.kill();
    // One history: every safekeeper's WAL equals Postgres's over its whole range, and the ones in
    // the highest term have the same term history.
    let mut hist = Vec::new();
    for sk in &sks {
        let st = sk.status().await.unwrap();
        same_wal_as_postgres(&pg, sk, Lsn(st.local_start_lsn), Lsn(st.flush_lsn)).unwrap();
        hist.push((st.term, st.term_history.unwrap().entries));
    }
    let top = hist.iter().map(|h| h.0).max().unwrap();
    let tops: Vec<_> = hist.iter().filter(|h| h.0 == top).collect();
    assert!(tops.len() >= 2);
    assert!(tops.windows(2).all(|w| w[0].1 == w[1].1), "{hist:?}");
    wal_on(&pg, &sks, reported, 2).await;
    check_rows(&pg, &acked).await;
}

#[test]
fn bad_arguments_and_settings_are_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute"))
        .args([
            "walproposer",
            "--pg",
            "host=/nonexistent port=1",
            "--safekeepers",
            "127.0.0.1:1",
            "--tenant",
            "xyz",
            "--timeline",
            TIMELINE,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenant id \"xyz\""), "{err}");

    // A Postgres that does not name the walproposer in synchronous_standby_names.
    let pg = PgCluster::init(&strata_tests::InitOptions::default()).unwrap();
    pg.start().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute"))
        .args(["walproposer", "--pg"])
        .arg(format!(
            "host={} port={} user=postgres",
            pg.socket_dir().display(),
            pg.port()
        ))
        .args([
            "--safekeepers",
            "127.0.0.1:1",
            "--tenant",
            TENANT,
            "--timeline",
            TIMELINE,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synchronous_standby_names"), "{err}");
}
