//! Logging into a compute as `postgres`: the startup packet with the client's parameters,
//! the compute's authentication (SCRAM-SHA-256 with the cluster's compute password, MD5 or
//! cleartext with it, or trust when the cluster has none), then the compute's
//! ParameterStatus, BackendKeyData and notices up to ReadyForQuery, which the client gets
//! as its own greeting.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::wire::{self, Message};

/// The role the proxy logs into computes as.
pub const COMPUTE_USER: &str = "postgres";

/// The cluster's compute password (`<cluster dir>/auth/compute_password`), if it has one.
pub fn compute_password(cluster_dir: &Path) -> Result<Option<String>, ClientError> {
    let p = cluster_dir.join("auth").join("compute_password");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::internal(format!(
            "reading {}: {e}",
            p.display()
        ))),
    }
}

/// A compute session ready for queries.
pub struct Backend {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// ParameterStatus, BackendKeyData, notices and ReadyForQuery, as the compute sent them.
    pub greeting: Vec<u8>,
    /// The compute backend's (pid, secret key), for cancel requests.
    pub cancel_key: Option<(i32, i32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Nothing listens there (the compute stopped): worth looking for it again.
    #[error("connecting to the compute at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The compute said no (a missing database, too many connections…): the client gets
    /// the compute's own error.
    #[error("the compute refused: {0}")]
    Refused(ClientError),
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    pub fn into_client_error(self) -> ClientError {
        match self {
            BackendError::Refused(e) => e,
            other => ClientError::cannot_connect(other.to_string()),
        }
    }
}

/// A compute's ErrorResponse as the client's error.
fn refused(body: &[u8]) -> BackendError {
    BackendError::Refused(crate::query::server_error(
        body,
        crate::error::sqlstate::CANNOT_CONNECT_NOW,
    ))
}

/// Connects and logs in within `limit`.
pub async fn connect(
    addr: SocketAddr,
    params: &[(String, String)],
    password: Option<&str>,
    limit: Duration,
) -> Result<Backend, BackendError> {
    match tokio::time::timeout(limit, connect_now(addr, params, password)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Failed(format!(
            "the compute at {addr} did not get ready for queries within {} s",
            limit.as_secs()
        ))),
    }
}

async fn connect_now(
    addr: SocketAddr,
    params: &[(String, String)],
    password: Option<&str>,
) -> Result<Backend, BackendError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| BackendError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let io =
        |e: std::io::Error| BackendError::Failed(format!("talking to the compute at {addr}: {e}"));
    stream
        .write_all(&wire::startup_message(params))
        .await
        .map_err(io)?;
    let mut scram: Option<ScramSha256> = None;
    let mut greeting = Vec::new();
    let mut cancel_key = None;
    loop {
        let Message { tag, body } = wire::read_message(&mut stream, wire::MAX_MESSAGE_LEN)
            .await
            .map_err(io)?;
        match tag {
            b'R' => {
                let reply = authenticate(&body, password, &mut scram)?;
                if let Some(reply) = reply {
                    stream.write_all(&reply).await.map_err(io)?;
                }
            }
            b'E' => return Err(refused(&body)),
            b'K' if body.len() == 8 => {
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                cancel_key = Some((pid, key));
                greeting.extend(wire::message(tag, &body));
            }
            b'Z' => {
                greeting.extend(wire::message(tag, &body));
                return Ok(Backend {
                    stream,
                    addr,
                    greeting,
                    cancel_key,
                });
            }
            _ => greeting.extend(wire::message(tag, &body)),
        }
    }
}

/// The answer to one authentication request of the compute (none for AuthenticationOk and
/// SASLFinal).
fn authenticate(
    body: &[u8],
    password: Option<&str>,
    scram: &mut Option<ScramSha256>,
) -> Result<Option<Vec<u8>>, BackendError> {
    if body.len() < 4 {
        return Err(BackendError::Failed(
            "a malformed authentication request".into(),
        ));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let data = &body[4..];
    let need_password = || {
        password.ok_or_else(|| {
            BackendError::Failed(
                "the compute asks for a password, and the cluster has none \
                 (no auth/compute_password in its directory)"
                    .into(),
            )
        })
    };
    let failed = |e: std::io::Error| BackendError::Failed(format!("SCRAM with the compute: {e}"));
    match code {
        wire::AUTH_OK => Ok(None),
        wire::AUTH_CLEARTEXT => {
            let mut b = need_password()?.as_bytes().to_vec();
            b.push(0);
            Ok(Some(wire::message(b'p', &b)))
        }
        wire::AUTH_MD5 if data.len() == 4 => {
            let salt = [data[0], data[1], data[2], data[3]];
            let hash = postgres_protocol::authentication::md5_hash(
                COMPUTE_USER.as_bytes(),
                need_password()?.as_bytes(),
                salt,
            );
            let mut b = hash.into_bytes();
            b.push(0);
            Ok(Some(wire::message(b'p', &b)))
        }
        wire::AUTH_SASL => {
            let offered = data
                .split(|b| *b == 0)
                .any(|m| m == crate::scram::MECHANISM.as_bytes());
            if !offered {
                return Err(BackendError::Failed(
                    "the compute offers no SASL mechanism the proxy knows".into(),
                ));
            }
            let client =
                ScramSha256::new(need_password()?.as_bytes(), ChannelBinding::unsupported());
            let first = client.message().to_vec();
            *scram = Some(client);
            let mut b = crate::scram::MECHANISM.as_bytes().to_vec();
            b.push(0);
            b.extend_from_slice(&(first.len() as i32).to_be_bytes());
            b.extend_from_slice(&first);
            Ok(Some(wire::message(b'p', &b)))
        }
        wire::AUTH_SASL_CONTINUE => {
            let client = scram
                .as_mut()
                .ok_or_else(|| BackendError::Failed("SASLContinue before SASL".into()))?;
            client.update(data).map_err(failed)?;
            Ok(Some(wire::message(b'p', client.message())))
        }
        wire::AUTH_SASL_FINAL => {
            let client = scram
                .as_mut()
                .ok_or_else(|| BackendError::Failed("SASLFinal before SASL".into()))?;
            client.finish(data).map_err(failed)?;
            Ok(None)
        }
        other => Err(BackendError::Failed(format!(
            "the compute asks for authentication method {other}, which the proxy does not speak"
        ))),
    }
}
