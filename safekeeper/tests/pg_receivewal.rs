//! The replication server against the real `pg_receivewal`: WAL that real Postgres wrote,
//! replicated into a safekeeper through the proposer protocol, streams back out byte-identical;
//! and bad requests get Postgres-style errors.

mod common;

use std::process::Command;

use common::{append, history, Safekeeper, Session, TENANT, TIMELINE};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

/// Real WAL: one segment's worth of pgbench and DDL after a switch, ending in a clean
/// shutdown. Returns (cluster, system id, segment start, end of WAL, WAL bytes).
fn real_wal() -> (PgCluster, u64, Lsn, Lsn, Vec<u8>) {
    let pg = PgCluster::init(&InitOptions::default().set("wal_keep_size", "1GB")).unwrap();
    pg.start().unwrap();
    let switched: Lsn = pg
        .psql("select pg_switch_wal()")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = if switched.is_segment_start() {
        switched
    } else {
        Lsn((switched.segment_number() + 1) * WAL_SEGMENT_SIZE)
    };
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.pgbench(&["-c", "2", "-t", "300"]).unwrap();
    pg.stop(StopMode::Fast).unwrap();
    let end = wal_end_after_clean_stop(&pg).unwrap();
    assert_eq!(
        end.segment_number(),
        start.segment_number(),
        "the workload must fit one segment"
    );
    let sysid: u64 = pg.controldata().unwrap()["Database system identifier"]
        .parse()
        .unwrap();
    let seg = std::fs::read(pg.wal_dir().join(start.segment_file_name(1))).unwrap();
    let wal = seg[..(end.0 - start.0) as usize].to_vec();
    (pg, sysid, start, end, wal)
}

/// Elects a proposer and appends `wal` from `start`, committing all of it.
async fn replicate(sk: &Safekeeper, sysid: u64, start: Lsn, wal: &[u8]) {
    let greeting = In::Greeting(pb::Greeting {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        proposer_id: "test".into(),
        system_id: sysid,
        pg_timeline: 1,
        wal_seg_size: WAL_SEGMENT_SIZE as u32,
        acceptor_id: 0,
        create_timeline: true,
    });
    let (mut p, _) = Session::open_with(sk, greeting).await;
    assert!(p.vote(1).await.vote_granted);
    p.elect(1, &[(1, start)], start).await.unwrap();
    let end = Lsn(start.0 + wal.len() as u64);
    let mut at = start;
    for chunk in wal.chunks(256 * 1024) {
        p.send(append(1, at, chunk.to_vec(), end)).await;
        at = Lsn(at.0 + chunk.len() as u64);
    }
    // An empty append carries the final commit LSN once everything is durable.
    loop {
        match p.next().await.unwrap() {
            Out::AppendResponse(r) if r.commit_lsn >= end.0 => break,
            Out::AppendResponse(r) if r.flush_lsn >= end.0 => {
                p.send(append(1, end, vec![], end)).await
            }
            _ => {}
        }
    }
    let _ = history(&[]);
}

fn connstr(addr: &str, options: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    format!("host={host} port={port} user=postgres replication=true options='{options}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_receivewal_gets_byte_identical_wal() {
    let (pg, sysid, start, end, wal) = real_wal();
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::started_with_replication(dir.path(), 1).unwrap();
    let pg_addr = sk.pg_addr();
    replicate(&sk, sysid, start, &wal).await;

    // pg_receivewal starts at the segment holding IDENTIFY_SYSTEM's position, and stops once it
    // has received WAL beyond --endpos: ask for one byte less than all there is.
    let endpos = Lsn(end.0 - 1).to_string();
    let out_dir = pg.make_postgres_dir("received").unwrap();
    let options = format!("-c tenant_id={TENANT} -c timeline_id={TIMELINE}");
    let status = pg
        .command("pg_receivewal")
        .arg("-D")
        .arg(&out_dir)
        .args(["-d", &connstr(&pg_addr, &options)])
        .args(["--no-loop", "-E", &endpos, "--no-sync"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "pg_receivewal failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let name = start.segment_file_name(1);
    let received = std::fs::read(out_dir.join(format!("{name}.partial")))
        .or_else(|_| std::fs::read(out_dir.join(&name)))
        .unwrap();
    assert!(received.len() >= wal.len());
    assert_eq!(
        &received[..wal.len()],
        &wal[..],
        "received WAL differs from Postgres's pg_wal"
    );

    // The same with the timeline left out: the safekeeper holds only one.
    let status = pg
        .command("pg_receivewal")
        .arg("-D")
        .arg(pg.make_postgres_dir("received2").unwrap())
        .args(["-d", &connstr(&pg_addr, "")])
        .args(["--no-loop", "-E", &endpos, "--no-sync"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Errors a client sees, in Postgres's words.
    let psql = |sql: &str, options: &str| {
        let out = pg
            .command("psql")
            .args(["-X", "-At", "-d", &connstr(&pg_addr, options), "-c", sql])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, _) = psql("IDENTIFY_SYSTEM", &options);
    assert!(ok);
    assert!(stdout.starts_with(&format!("{sysid}|1|{end}|")), "{stdout}");
    let ahead = Lsn(end.0 + WAL_SEGMENT_SIZE);
    let (ok, _, stderr) = psql(&format!("START_REPLICATION {ahead}"), &options);
    assert!(
        !ok && stderr.contains("ahead of the WAL flush position"),
        "{stderr}"
    );
    let (ok, _, stderr) = psql("START_REPLICATION 0/1000000", &options);
    assert!(!ok && stderr.contains("has been removed"), "{stderr}");
    let (ok, _, stderr) = psql("DROP TABLE x", &options);
    assert!(!ok && stderr.contains("does not support"), "{stderr}");
    let (ok, _, stderr) = psql("IDENTIFY_SYSTEM", "-c tenant_id=00000000000000000000000000000000 -c timeline_id=00000000000000000000000000000000");
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");
    let non_replication = {
        let (host, port) = pg_addr.rsplit_once(':').unwrap();
        Command::new(strata_tests::pg::pg_bin_dir().join("psql"))
            .args([
                "-X",
                "-d",
                &format!("host={host} port={port} user=postgres"),
                "-c",
                "select 1",
            ])
            .output()
            .unwrap()
    };
    assert!(String::from_utf8_lossy(&non_replication.stderr).contains("only physical replication"));

    // Damage one byte of committed WAL on the safekeeper's disk: it refuses to serve it.
    let seg_dir = sk.timeline_dir();
    let seg = std::fs::read_dir(&seg_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&start.segment_file_name(1))
        })
        .expect("the segment file");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Inside a record (its xl_xid, covered by the CRC): alignment padding between records and
    // the tail of a page header are covered by nothing, in Postgres either.
    bytes[(record_near_middle(start, &wal).0 - start.0) as usize + 4] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let out = pg
        .command("pg_receivewal")
        .arg("-D")
        .arg(pg.make_postgres_dir("received3").unwrap())
        .args(["-d", &connstr(&pg_addr, &options)])
        .args(["--no-loop", "-E", &endpos, "--no-sync"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "corrupt WAL was served");
    assert!(stderr.contains("refusing to serve WAL"), "{stderr}");
    drop(sk);
}

/// The start of the first record at or after the middle of `wal` (which begins at `start`).
fn record_near_middle(start: Lsn, wal: &[u8]) -> Lsn {
    let middle = Lsn(start.0 + wal.len() as u64 / 2);
    let mut d = walproto::WalStreamDecoder::new(start);
    d.feed(wal);
    loop {
        match d.next().expect("the test's WAL decodes") {
            walproto::Decoded::Record(r) if r.lsn >= middle => return r.lsn,
            walproto::Decoded::Record(_) => {}
            other => panic!("no record after the middle of the WAL: {other:?}"),
        }
    }
}
