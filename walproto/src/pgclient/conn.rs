//! A small client of Postgres's frontend/backend protocol: startup and authentication (trust,
//! password, md5, SCRAM-SHA-256), simple queries, and COPY BOTH for replication. Message
//! encoding and parsing come from `postgres-protocol`; this module drives the conversation.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::config::ConnConfig;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("I/O error on the connection: {0}")]
    Io(#[from] io::Error),
    #[error("server {severity} {code}: {message}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
    },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
    #[error("the server closed the connection")]
    Closed,
}

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What the server sent: a message `postgres-protocol` parses, or CopyBothResponse, which it
/// does not know.
enum Backend {
    Msg(Message),
    CopyBothResponse,
}

/// A text row of a simple query's result; `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

/// One connection to Postgres.
pub struct PgConnection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
}

impl PgConnection {
    /// Connects, authenticates and waits until the server is ready for queries.
    pub async fn connect(cfg: &ConnConfig) -> Result<PgConnection, PgError> {
        let stream: Box<dyn Stream> =
            match cfg.socket_path() {
                Some(path) => Box::new(UnixStream::connect(&path).await.map_err(|source| {
                    PgError::Connect {
                        target: path.display().to_string(),
                        source,
                    }
                })?),
                None => {
                    let target = format!("{}:{}", cfg.host, cfg.port);
                    let tcp = TcpStream::connect(&target)
                        .await
                        .map_err(|source| PgError::Connect { target, source })?;
                    tcp.set_nodelay(true)?;
                    Box::new(tcp)
                }
            };
        let mut conn = PgConnection {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            params: HashMap::new(),
        };
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
        ];
        if let Some(app) = &cfg.application_name {
            params.push(("application_name", app));
        }
        if let Some(options) = &cfg.options {
            params.push(("options", options));
        }
        if cfg.replication {
            params.push(("replication", "true"));
        }
        frontend::startup_message(params, &mut conn.wbuf)?;
        conn.flush().await?;
        conn.authenticate(cfg).await?;
        loop {
            match conn.read().await? {
                Backend::Msg(Message::ReadyForQuery(_)) => return Ok(conn),
                Backend::Msg(Message::BackendKeyData(_)) => {}
                Backend::Msg(Message::ErrorResponse(e)) => return Err(server_error(&e)),
                _ => return Err(PgError::Protocol("during startup".into())),
            }
        }
    }

    async fn authenticate(&mut self, cfg: &ConnConfig) -> Result<(), PgError> {
        let password = || {
            cfg.password.as_deref().ok_or_else(|| {
                PgError::Auth(format!(
                    "Postgres asks user {} for a password and none was given",
                    cfg.user
                ))
            })
        };
        match self.read().await? {
            Backend::Msg(Message::AuthenticationOk) => return Ok(()),
            Backend::Msg(Message::AuthenticationCleartextPassword) => {
                frontend::password_message(password()?.as_bytes(), &mut self.wbuf)?;
            }
            Backend::Msg(Message::AuthenticationMd5Password(body)) => {
                let hash = md5_hash(cfg.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
            }
            Backend::Msg(Message::AuthenticationSasl(body)) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(m) = mechanisms.next()? {
                    scram_offered |= m == sasl::SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err(PgError::Auth(
                        "server offers no SASL mechanism we know (SCRAM-SHA-256)".into(),
                    ));
                }
                let mut scram = sasl::ScramSha256::new(
                    password()?.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(
                    sasl::SCRAM_SHA_256,
                    scram.message(),
                    &mut self.wbuf,
                )?;
                self.flush().await?;
                match self.read().await? {
                    Backend::Msg(Message::AuthenticationSaslContinue(b)) => {
                        scram.update(b.data())?
                    }
                    Backend::Msg(Message::ErrorResponse(e)) => return Err(server_error(&e)),
                    _ => return Err(PgError::Protocol("expected SASL continue".into())),
                }
                frontend::sasl_response(scram.message(), &mut self.wbuf)?;
                self.flush().await?;
                match self.read().await? {
                    Backend::Msg(Message::AuthenticationSaslFinal(b)) => scram.finish(b.data())?,
                    Backend::Msg(Message::ErrorResponse(e)) => return Err(server_error(&e)),
                    _ => return Err(PgError::Protocol("expected SASL final".into())),
                }
            }
            Backend::Msg(Message::ErrorResponse(e)) => return Err(server_error(&e)),
            _ => return Err(PgError::Auth("unsupported authentication method".into())),
        }
        self.flush().await?;
        match self.read().await? {
            Backend::Msg(Message::AuthenticationOk) => Ok(()),
            Backend::Msg(Message::ErrorResponse(e)) => Err(server_error(&e)),
            _ => Err(PgError::Protocol("expected AuthenticationOk".into())),
        }
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads the next message, absorbing notices and parameter reports. Cancel-safe: bytes
    /// read so far stay in the buffer.
    async fn read(&mut self) -> Result<Backend, PgError> {
        loop {
            if self.rbuf.len() >= 5 && self.rbuf[0] == b'W' {
                let len = u32::from_be_bytes(self.rbuf[1..5].try_into().unwrap()) as usize;
                if self.rbuf.len() > len {
                    let _ = self.rbuf.split_to(len + 1);
                    return Ok(Backend::CopyBothResponse);
                }
            } else if let Some(msg) = Message::parse(&mut self.rbuf)? {
                match msg {
                    Message::NoticeResponse(_) => continue,
                    Message::ParameterStatus(p) => {
                        self.params
                            .insert(p.name()?.to_string(), p.value()?.to_string());
                        continue;
                    }
                    other => return Ok(Backend::Msg(other)),
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(PgError::Closed);
            }
        }
    }

    /// Runs one simple query (one or more statements) and returns the rows of its results as
    /// text. A server error is returned once the server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read().await? {
                Backend::Msg(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next()? {
                        values.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Backend::Msg(Message::ErrorResponse(e)) => error = Some(server_error(&e)),
                Backend::Msg(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                Backend::Msg(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::CopyBothResponse | Backend::Msg(_) => {
                    return Err(PgError::Protocol("a simple query switched to COPY".into()))
                }
            }
        }
    }

    /// Sends a command that answers with COPY BOTH (`START_REPLICATION`) and waits for it.
    pub async fn start_copy_both(&mut self, command: &str) -> Result<(), PgError> {
        frontend::query(command, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.read().await? {
                Backend::CopyBothResponse => return Ok(()),
                Backend::Msg(Message::ErrorResponse(e)) => {
                    let err = server_error(&e);
                    // The server is ready for queries again after the error; drain to there.
                    while !matches!(self.read().await?, Backend::Msg(Message::ReadyForQuery(_))) {}
                    return Err(err);
                }
                Backend::Msg(
                    Message::RowDescription(_) | Message::DataRow(_) | Message::CommandComplete(_),
                ) => {}
                _ => return Err(PgError::Protocol(format!("while starting {command:?}"))),
            }
        }
    }

    /// The next CopyData payload, or `None` when the server ended the COPY.
    pub async fn read_copy_data(&mut self) -> Result<Option<Bytes>, PgError> {
        match self.read().await? {
            Backend::Msg(Message::CopyData(body)) => Ok(Some(body.into_bytes())),
            Backend::Msg(Message::CopyDone) => Ok(None),
            Backend::Msg(Message::ErrorResponse(e)) => Err(server_error(&e)),
            _ => Err(PgError::Protocol("expected CopyData".into())),
        }
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        frontend::CopyData::new(payload)?.write(&mut self.wbuf);
        self.flush().await
    }
}

fn server_error(body: &ErrorResponseBody) -> PgError {
    let (mut severity, mut code, mut message, mut detail) =
        (String::new(), String::new(), String::new(), None);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = v,
            b'C' => code = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            _ => {}
        }
    }
    PgError::Server {
        severity,
        code,
        message,
        detail,
    }
}
