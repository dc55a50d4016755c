//! One message must never lock a timeline: a `VoteRequest` (or `Elected`) for a term no later
//! election could exceed, sent over real gRPC to two of three real safekeepers, is refused,
//! the live walproposer keeps committing, and a restarted one still wins an election.
//!
//! Needs the binaries built first: `cargo build --bins && cargo test -p compute`.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::term_history::MAX_TERM;

/// How long one commit may take with a walproposer running.
const COMMIT: Duration = Duration::from_secs(30);
/// How long the hostile client waits for an answer.
const ANSWER: Duration = Duration::from_secs(10);

/// Greets safekeeper `sk` for the test timeline as any local client can, and sends `msg`;
/// the answer, or the status the safekeeper ended the session with.
async fn hostile(sk: &Safekeeper, msg: In) -> Result<Out, tonic::Status> {
    // The identity is no secret: any client can ask for it.
    let st = sk
        .status()
        .await
        .unwrap_or_else(|e| panic!("no status from safekeeper {}: {e:#}", sk.id));
    let fut = async {
        let mut client = sk.client().await.expect("connect to the safekeeper");
        let (tx, rx) = mpsc::channel(4);
        let greeting = In::Greeting(pb::Greeting {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            proposer_id: "hostile".into(),
            system_id: st.system_id,
            pg_timeline: st.pg_timeline,
            wal_seg_size: 16 << 20,
            acceptor_id: 0,
            create_timeline: false,
        });
        for m in [greeting, msg] {
            tx.send(pb::ProposerMessage { msg: Some(m) })
                .await
                .expect("queue a message");
        }
        let mut stream = client.propose(ReceiverStream::new(rx)).await?.into_inner();
        let first = stream.message().await?.and_then(|m| m.msg);
        assert!(
            matches!(first, Some(Out::GreetingResponse(_))),
            "expected a GreetingResponse, got {first:?}"
        );
        match stream.message().await?.and_then(|m| m.msg) {
            Some(m) => Ok(m),
            None => Err(tonic::Status::aborted(
                "the session ended without an answer",
            )),
        }
    };
    tokio::time::timeout(ANSWER, fut)
        .await
        .unwrap_or_else(|_| panic!("safekeeper {} did not answer within {ANSWER:?}", sk.id))
}

fn vote(term: u64) -> In {
    In::VoteRequest(pb::VoteRequest { term })
}

fn elected(term: u64) -> In {
    In::Elected(pb::Elected {
        term,
        term_history: Some(pb::TermHistory {
            entries: vec![pb::TermSwitch {
                term,
                start_lsn: 0x0100_0000,
            }],
        }),
        start_streaming_at: 0x0100_0000,
        truncate_to_lsn: 0x0100_0000,
    })
}

/// Commits `sql` within [`COMMIT`], or fails with the walproposer's log.
async fn commit(pg: &strata_tests::PgCluster, wp: &Walproposer, sql: &str) {
    let mut c = client(pg).await;
    assert!(
        commit_within(&mut c, sql, COMMIT).await,
        "{sql:?} was not acknowledged within {COMMIT:?}\n{}",
        wp.log_text()
    );
}

async fn term_of(sk: &Safekeeper) -> u64 {
    sk.status()
        .await
        .unwrap_or_else(|e| panic!("no status from safekeeper {}: {e:#}", sk.id))
        .term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_term_that_cannot_be_exceeded_is_refused_and_commits_go_on() {
    let pg = walproposer_postgres().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sks = three(tmp.path());
    let log = tmp.path().join("wp.log");
    let mut wp = Walproposer::start(&pg, &sks, &log, &[]).unwrap();
    commit(&pg, &wp, "CREATE TABLE t(id int)").await;
    let term = term_of(&sks[0]).await;

    // The hostile terms, at two of three safekeepers: refused, nothing persisted.
    for sk in &sks[..2] {
        for msg in [
            vote(u64::MAX),
            vote(MAX_TERM),
            elected(u64::MAX),
            elected(MAX_TERM),
        ] {
            let what = format!("{msg:?}");
            match hostile(sk, msg).await {
                Err(s) => assert_eq!(
                    s.code(),
                    tonic::Code::InvalidArgument,
                    "safekeeper {}: {what}: {s:?}",
                    sk.id
                ),
                Ok(answer) => panic!(
                    "safekeeper {} accepted {what}: {answer:?}\n{}",
                    sk.id,
                    wp.log_text()
                ),
            }
        }
        assert_eq!(
            term_of(sk).await,
            term,
            "safekeeper {} changed its term",
            sk.id
        );
    }

    // The live walproposer was not disturbed.
    commit(&pg, &wp, "INSERT INTO t VALUES (1)").await;
    // A restarted walproposer wins the next term and commits.
    wp.kill();
    let mut wp = Walproposer::start(&pg, &sks, &log, &[]).unwrap();
    commit(&pg, &wp, "INSERT INTO t VALUES (2)").await;
    let mut above = 0;
    for sk in &sks {
        if term_of(sk).await > term {
            above += 1;
        }
    }
    assert!(
        above >= 2,
        "the new walproposer's term is on {above} safekeepers"
    );
    wp.kill();
}
