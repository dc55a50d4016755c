//! Helpers for tests that run the real `safekeeper` binary (started by
//! `strata_tests::procs`) and talk to it over gRPC as a proposer would.
#![allow(dead_code, unused_imports)]

pub mod cluster;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

pub use strata_tests::procs::{Safekeeper, TENANT, TIMELINE};

pub const SYSID: u64 = 7_300_000_000_000_000_003;

/// One proposer session.
pub struct Session {
    pub tx: mpsc::Sender<pb::ProposerMessage>,
    pub rx: Streaming<pb::AcceptorMessage>,
}

pub fn greeting(proposer: &str) -> In {
    In::Greeting(pb::Greeting {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        proposer_id: proposer.into(),
        system_id: SYSID,
        pg_timeline: 1,
        wal_seg_size: 16 << 20,
        acceptor_id: 0,
        create_timeline: true,
    })
}

pub fn history(v: &[(u64, Lsn)]) -> Option<pb::TermHistory> {
    Some(pb::TermHistory {
        entries: v
            .iter()
            .map(|&(term, l)| pb::TermSwitch {
                term,
                start_lsn: l.0,
            })
            .collect(),
    })
}

pub fn append(term: u64, begin: Lsn, data: Vec<u8>, commit: Lsn) -> In {
    In::AppendRequest(pb::AppendRequest {
        term,
        begin_lsn: begin.0,
        end_lsn: begin.0 + data.len() as u64,
        wal_data: data,
        commit_lsn: commit.0,
        truncate_lsn: 0,
        proposer_flush_lsn: 0,
    })
}

impl Session {
    /// Opens a session and sends its greeting; returns the greeting's answer.
    pub async fn open(sk: &Safekeeper, proposer: &str) -> (Session, pb::GreetingResponse) {
        Self::open_with(sk, greeting(proposer)).await
    }

    /// Opens a session with the given greeting.
    pub async fn open_with(sk: &Safekeeper, greeting: In) -> (Session, pb::GreetingResponse) {
        let (tx, rx) = mpsc::channel(1024);
        let mut client = sk.client().await.expect("connect to the safekeeper");
        tx.send(pb::ProposerMessage {
            msg: Some(greeting),
        })
        .await
        .unwrap();
        let rx = client
            .propose(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut s = Session { tx, rx };
        match s.next().await.unwrap() {
            Out::GreetingResponse(g) => (s, g),
            other => panic!("expected GreetingResponse, got {other:?}"),
        }
    }

    pub async fn send(&self, msg: In) {
        self.tx
            .send(pb::ProposerMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    /// The next message, or the stream's error.
    pub async fn next(&mut self) -> Result<Out, tonic::Status> {
        match self.rx.message().await? {
            Some(m) => Ok(m.msg.expect("empty AcceptorMessage")),
            None => Err(tonic::Status::aborted("stream ended")),
        }
    }

    pub async fn vote(&mut self, term: u64) -> pb::VoteResponse {
        self.send(In::VoteRequest(pb::VoteRequest { term })).await;
        match self.next().await.unwrap() {
            Out::VoteResponse(v) => v,
            other => panic!("expected VoteResponse, got {other:?}"),
        }
    }

    pub async fn elect(
        &mut self,
        term: u64,
        hist: &[(u64, Lsn)],
        start: Lsn,
    ) -> Result<pb::ElectedResponse, tonic::Status> {
        self.send(In::Elected(pb::Elected {
            term,
            term_history: history(hist),
            start_streaming_at: start.0,
            truncate_to_lsn: start.0,
        }))
        .await;
        match self.next().await? {
            Out::ElectedResponse(e) => Ok(e),
            other => panic!("expected ElectedResponse, got {other:?}"),
        }
    }
}
