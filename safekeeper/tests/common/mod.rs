//! Helpers for tests that run the real `safekeeper` binary and talk to it over gRPC.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

pub const TENANT: &str = "0123456789abcdef0123456789abcdef";
pub const TIMELINE: &str = "fedcba9876543210fedcba9876543210";
pub const SYSID: u64 = 7_300_000_000_000_000_003;

/// A running safekeeper process, killed when dropped.
pub struct Safekeeper {
    pub child: Child,
    pub addr: String,
    pub datadir: PathBuf,
}

/// The process's log, appended to across restarts: `<datadir>/safekeeper.log`.
fn log_file(datadir: &Path) -> Stdio {
    let path = datadir.join("safekeeper.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::inherit())
}

/// The address at the end of a line the safekeeper printed, if the line says `what`.
fn printed_addr(line: &str, what: &str) -> String {
    line.trim()
        .rsplit(' ')
        .next()
        .filter(|_| line.contains(what))
        .unwrap_or_else(|| panic!("expected a line with {what:?}, got {line:?}"))
        .to_string()
}

impl Safekeeper {
    pub fn start(datadir: &Path, id: u64) -> Safekeeper {
        Self::spawn(datadir, id, false).0
    }

    /// Starts it serving the replication protocol too; returns that address as well.
    pub fn start_with_replication(datadir: &Path, id: u64) -> (Safekeeper, String) {
        let (sk, pg) = Self::spawn(datadir, id, true);
        (sk, pg.expect("replication address"))
    }

    fn spawn(datadir: &Path, id: u64, replication: bool) -> (Safekeeper, Option<String>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_safekeeper"));
        cmd.args([
            "--datadir",
            datadir.to_str().unwrap(),
            "--listen-grpc",
            "127.0.0.1:0",
            "--id",
        ])
        .arg(id.to_string());
        if replication {
            cmd.args(["--listen-pg", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file(datadir))
            .spawn()
            .expect("start safekeeper");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = printed_addr(&line, "listening on");
        let pg = replication.then(|| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            printed_addr(&line, "serving replication on")
        });
        let sk = Safekeeper {
            child,
            addr,
            datadir: datadir.to_path_buf(),
        };
        (sk, pg)
    }

    pub async fn client(&self) -> pb::safekeeper_client::SafekeeperClient<Channel> {
        pb::safekeeper_client::SafekeeperClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
    }

    pub fn timeline_dir(&self) -> PathBuf {
        self.datadir.join(TENANT).join(TIMELINE)
    }

    pub async fn status(&self) -> pb::TimelineStatusResponse {
        self.client()
            .await
            .timeline_status(pb::TimelineStatusRequest {
                tenant_id: TENANT.into(),
                timeline_id: TIMELINE.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        let mut client = sk.client().await;
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
