//! A greeting creates a timeline only when it asks to (`create_timeline`, as a walproposer
//! does): greetings for unknown timelines leave nothing on a real safekeeper's disk.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;

/// Each call of a greeting gets this long to be answered.
const ANSWER: Duration = Duration::from_secs(10);

fn greeting_for(tenant: &str, timeline: &str, create: bool) -> In {
    In::Greeting(pb::Greeting {
        tenant_id: tenant.into(),
        timeline_id: timeline.into(),
        proposer_id: "greeting-test".into(),
        system_id: SYSID,
        pg_timeline: 1,
        wal_seg_size: 16 << 20,
        acceptor_id: 0,
        create_timeline: create,
    })
}

/// Sends one greeting; the answer, or the status the session ended with.
async fn greet(sk: &Safekeeper, greeting: In) -> Result<pb::GreetingResponse, tonic::Status> {
    let fut = async {
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::ProposerMessage {
            msg: Some(greeting),
        })
        .await
        .expect("queue the greeting");
        let mut stream = sk
            .client()
            .await
            .expect("connect to the safekeeper")
            .propose(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match stream.message().await?.and_then(|m| m.msg) {
            Some(Out::GreetingResponse(g)) => Ok(g),
            other => panic!("expected a GreetingResponse, got {other:?}"),
        }
    };
    tokio::time::timeout(ANSWER, fut)
        .await
        .unwrap_or_else(|_| panic!("no answer to a greeting within {ANSWER:?}"))
}

/// A random-looking 32-hex-digit id (distinct per `n`).
fn id(n: u64, salt: u64) -> String {
    let x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    format!("{x:016x}{:016x}", x.rotate_left(17) ^ n)
}

/// The entries of the data directory other than the node id file.
fn data_entries(sk: &Safekeeper) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&sk.datadir)
        .expect("read the data directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "safekeeper.id")
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greetings_for_unknown_timelines_create_nothing() {
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sk = Safekeeper::started(data.path(), 1).unwrap();
    for n in 0..50 {
        let err = greet(&sk, greeting_for(&id(n, 1), &id(n, 2), false))
            .await
            .expect_err("a greeting for an unknown timeline without create_timeline is refused");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(err.message().contains("did not ask to create"), "{err:?}");
    }
    assert_eq!(
        data_entries(&sk),
        Vec::<String>::new(),
        "50 greetings for unknown timelines left files behind"
    );

    // The walproposer's greeting creates its timeline; after that any greeting is answered.
    let g = greet(&sk, greeting_for(TENANT, TIMELINE, true))
        .await
        .unwrap();
    assert_eq!((g.term, g.flush_lsn), (0, 0));
    assert!(sk.timeline_dir().join("safekeeper.control").exists());
    let g = greet(&sk, greeting_for(TENANT, TIMELINE, false))
        .await
        .unwrap();
    assert_eq!(g.acceptor_id, 1);
    assert_eq!(data_entries(&sk), vec![TENANT.to_string()]);
}
