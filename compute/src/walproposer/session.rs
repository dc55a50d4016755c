//! One proposer session with one safekeeper: a `Propose` gRPC stream.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

use super::history::TermHistory;
use super::SafekeeperToken;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Another proposer holds a higher term: this one must stop.
    #[error("safekeeper {addr}: superseded by another walproposer: {message}")]
    Superseded { addr: String, message: String },
    /// The safekeeper rejected our identity or input: a configuration problem.
    #[error("safekeeper {addr} rejected the request: {message}")]
    Rejected { addr: String, message: String },
    /// Connection trouble, timeouts, restarts: worth retrying.
    #[error("safekeeper {addr}: {message}")]
    Transient { addr: String, message: String },
}

impl SessionError {
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SessionError::Transient { .. })
    }
}

pub const MAX_MESSAGE: usize = 64 << 20;
/// HTTP/2 flow-control window of the session stream (each direction, as the receiver).
pub const H2_STREAM_WINDOW: u32 = 64 << 20;
/// HTTP/2 flow-control window of the whole connection.
pub const H2_CONNECTION_WINDOW: u32 = 128 << 20;

/// An open session (greeted).
pub struct Session {
    pub addr: String,
    tx: mpsc::Sender<pb::ProposerMessage>,
    rx: tonic::Streaming<pb::AcceptorMessage>,
}

fn transient(addr: &str, message: impl ToString) -> SessionError {
    SessionError::Transient {
        addr: addr.to_string(),
        message: message.to_string(),
    }
}

fn from_status(addr: &str, s: tonic::Status) -> SessionError {
    let addr = addr.to_string();
    let message = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::FailedPrecondition => SessionError::Superseded { addr, message },
        // A missing or wrongly scoped token is a configuration problem, as is bad input.
        tonic::Code::InvalidArgument
        | tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied => SessionError::Rejected { addr, message },
        _ => SessionError::Transient { addr, message },
    }
}

impl Session {
    /// Connects (over TLS checked against `tls`'s CA, if given), sends the greeting, and
    /// returns the session with the acceptor's answer.
    pub async fn open(
        addr: &str,
        greeting: pb::Greeting,
        timeout: Duration,
        token: Option<&SafekeeperToken>,
        tls: Option<&strata_auth::ClientTls>,
    ) -> Result<(Session, pb::GreetingResponse), SessionError> {
        let fut = async {
            let endpoint = strata_auth::endpoint(addr, tls)
                .map_err(|e| SessionError::Rejected {
                    addr: addr.to_string(),
                    message: e.to_string(),
                })?
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                // Flow-control windows far above what is ever in flight (16 MiB by default),
                // fixed: no WINDOW_UPDATE round trip or BDP ping is ever waited for.
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .http2_adaptive_window(false)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            let channel = endpoint.connect().await.map_err(|e| {
                let why = strata_auth::connect_error(&e, tls);
                transient(addr, format!("connecting: {why}"))
            })?;
            let auth = strata_auth::client_interceptor(token.map(|t| t.0.clone()));
            let mut client =
                pb::safekeeper_client::SafekeeperClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
            let (tx, rx) = mpsc::channel(256);
            tx.send(pb::ProposerMessage {
                msg: Some(In::Greeting(greeting)),
            })
            .await
            .map_err(|_| transient(addr, "session closed"))?;
            let rx = client
                .propose(ReceiverStream::new(rx))
                .await
                .map_err(|s| from_status(addr, s))?
                .into_inner();
            let mut s = Session {
                addr: addr.to_string(),
                tx,
                rx,
            };
            match s.recv().await? {
                Out::GreetingResponse(g) => Ok((s, g)),
                other => Err(s.unexpected("GreetingResponse", &other)),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| transient(addr, format!("no greeting answer within {timeout:?}")))?
    }

    fn unexpected(&self, wanted: &str, got: &Out) -> SessionError {
        SessionError::Rejected {
            addr: self.addr.clone(),
            message: format!("expected {wanted}, got {got:?}"),
        }
    }

    pub async fn send(&self, msg: In) -> Result<(), SessionError> {
        self.tx
            .send(pb::ProposerMessage { msg: Some(msg) })
            .await
            .map_err(|_| transient(&self.addr, "the session's stream closed"))
    }

    /// The next message; cancel-safe.
    pub async fn recv(&mut self) -> Result<Out, SessionError> {
        match self.rx.message().await {
            Ok(Some(pb::AcceptorMessage { msg: Some(m) })) => Ok(m),
            Ok(Some(_)) => Err(transient(&self.addr, "empty message")),
            Ok(None) => Err(transient(&self.addr, "the safekeeper ended the session")),
            Err(s) => Err(from_status(&self.addr, s)),
        }
    }

    pub async fn vote(
        &mut self,
        term: u64,
        timeout: Duration,
    ) -> Result<pb::VoteResponse, SessionError> {
        self.send(In::VoteRequest(pb::VoteRequest { term })).await?;
        match tokio::time::timeout(timeout, self.recv()).await {
            Err(_) => Err(transient(&self.addr, "no vote answer in time")),
            Ok(Ok(Out::VoteResponse(v))) => Ok(v),
            Ok(Ok(other)) => Err(self.unexpected("VoteResponse", &other)),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Sends `Elected`; the answer's flush LSN is where appends continue.
    pub async fn elect(
        &mut self,
        term: u64,
        history: &TermHistory,
        start: Lsn,
        timeout: Duration,
    ) -> Result<pb::ElectedResponse, SessionError> {
        self.send(In::Elected(pb::Elected {
            term,
            term_history: Some(history.to_pb()),
            start_streaming_at: start.0,
            truncate_to_lsn: start.0,
        }))
        .await?;
        match tokio::time::timeout(timeout, self.recv()).await {
            Err(_) => Err(transient(&self.addr, "no answer to Elected in time")),
            Ok(Ok(Out::ElectedResponse(e))) => {
                if e.term != term || e.flush_lsn != start.0 {
                    return Err(SessionError::Rejected {
                        addr: self.addr.clone(),
                        message: format!(
                            "Elected(term {term}, start {start}) answered with term {} flush {}",
                            e.term,
                            Lsn(e.flush_lsn)
                        ),
                    });
                }
                Ok(e)
            }
            Ok(Ok(other)) => Err(self.unexpected("ElectedResponse", &other)),
            Ok(Err(e)) => Err(e),
        }
    }
}
