//! A minimal frontend/backend protocol client (trust or SCRAM, simple queries) that tells a
//! committed statement from one whose outcome is unknown: psql's exit code cannot, and the
//! ledger must never count a commit it did not see acknowledged.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};

/// Authentication request codes (the first word of an 'R' message).
const AUTH_OK: u32 = 0;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

/// How often a blocked read looks at the abandon flag.
const READ_TICK: Duration = Duration::from_millis(250);
/// Largest backend message accepted (the soak's answers are tiny).
const MAX_MESSAGE: usize = 1 << 20;

/// What became of one autocommit statement.
#[derive(Debug)]
pub enum Outcome {
    /// CommandComplete then ReadyForQuery: committed and acknowledged.
    Committed,
    /// An ERROR answer with no warning before it: the statement rolled back.
    Refused(String),
    /// The connection broke, was abandoned, or the server warned or ended the session while
    /// the commit waited: the row may or may not exist.
    Uncertain(String),
}

/// One backend message: its type byte and body.
struct Message {
    kind: u8,
    body: Vec<u8>,
}

pub struct PgConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl PgConn {
    /// Connects as `postgres` to database `postgres` on 127.0.0.1:`port` (trust, or SCRAM
    /// with the password of the compute's cluster) and waits for ReadyForQuery, at most
    /// `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> Result<PgConn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to Postgres on {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut conn = PgConn {
            stream,
            buf: Vec::new(),
        };
        conn.send_startup()?;
        let mut scram = None;
        loop {
            let m = conn.read_message(None)?;
            match m.kind {
                b'R' => conn.authenticate(port, &m.body, &mut scram)?,
                b'E' => bail!(
                    "Postgres on {addr} refused the session: {}",
                    error_text(&m.body)
                ),
                b'Z' => break,
                _ => {}
            }
        }
        conn.stream.set_read_timeout(Some(READ_TICK))?;
        Ok(conn)
    }

    /// Answers one Authentication message: OK, or a step of SCRAM-SHA-256.
    fn authenticate(
        &mut self,
        port: u16,
        body: &[u8],
        scram: &mut Option<ScramSha256>,
    ) -> Result<()> {
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .context("a short Authentication message")?;
        let data = &body[4..];
        match code {
            AUTH_OK => Ok(()),
            AUTH_SASL => {
                let password = crate::cluster::compute_password(port).with_context(|| {
                    format!("Postgres on port {port} asks for a password, and no cluster has one")
                })?;
                let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                let mut msg = SCRAM_SHA_256.as_bytes().to_vec();
                msg.push(0);
                let len = i32::try_from(s.message().len()).context("SASL message length")?;
                msg.extend_from_slice(&len.to_be_bytes());
                msg.extend_from_slice(s.message());
                *scram = Some(s);
                self.send(b'p', &msg)
            }
            AUTH_SASL_CONTINUE => {
                let s = scram.as_mut().context("SASLContinue before SASL")?;
                s.update(data)
                    .context("SCRAM: the server's first message")?;
                let msg = s.message().to_vec();
                self.send(b'p', &msg)
            }
            AUTH_SASL_FINAL => {
                let s = scram.as_mut().context("SASLFinal before SASL")?;
                s.finish(data).context("SCRAM: the server's signature")
            }
            other => {
                bail!("Postgres asks for authentication method {other} (trust or SCRAM expected)")
            }
        }
    }

    /// Sends one frontend message.
    fn send(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        let len = u32::try_from(body.len() + 4).context("message length")?;
        let mut msg = vec![kind];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(body);
        self.stream.write_all(&msg).context("sending a message")
    }

    fn send_startup(&mut self) -> Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
        for (k, v) in [("user", "postgres"), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let len = u32::try_from(body.len() + 4).context("startup message length")?;
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        self.stream
            .write_all(&msg)
            .context("sending the startup message")
    }

    /// Runs one simple-protocol statement. Blocks until Postgres answers, the connection
    /// breaks, or `abandon` is set (checked every [`READ_TICK`]).
    pub fn execute(&mut self, sql: &str, abandon: &AtomicBool) -> Outcome {
        let mut msg = vec![b'Q'];
        let len = match u32::try_from(sql.len() + 5) {
            Ok(l) => l,
            Err(_) => return Outcome::Refused(format!("statement too long: {} bytes", sql.len())),
        };
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        if let Err(e) = self.stream.write_all(&msg) {
            return Outcome::Uncertain(format!("sending the statement: {e}"));
        }
        let mut completed = false;
        let mut warned: Option<String> = None;
        let mut error: Option<String> = None;
        loop {
            let m = match self.read_message(Some(abandon)) {
                Ok(m) => m,
                Err(e) => return Outcome::Uncertain(format!("{e:#}")),
            };
            match m.kind {
                b'C' => completed = true,
                b'N' => warned = Some(error_text(&m.body)),
                b'E' => error = Some(error_text(&m.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match (completed, warned, error) {
            (true, None, None) => Outcome::Committed,
            (_, None, Some(e)) if !e.starts_with("FATAL") && !e.starts_with("PANIC") => {
                Outcome::Refused(e)
            }
            (_, w, e) => Outcome::Uncertain(format!(
                "warning {w:?}, error {e:?}, command complete {completed}"
            )),
        }
    }

    /// The next whole message; `abandon` set while waiting is an error.
    fn read_message(&mut self, abandon: Option<&AtomicBool>) -> Result<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = usize::try_from(len).context("message length")?;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    bail!("bad backend message length {len}");
                }
                let total = len + 1;
                if self.buf.len() >= total {
                    let body = self.buf[5..total].to_vec();
                    let kind = self.buf[0];
                    self.buf.drain(..total);
                    return Ok(Message { kind, body });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("Postgres closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    match abandon {
                        Some(flag) if flag.load(Ordering::Relaxed) => {
                            bail!("abandoned while waiting for Postgres's answer")
                        }
                        Some(_) => {}
                        None => bail!("Postgres did not answer in time"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => bail!("reading from Postgres: {e}"),
            }
        }
    }
}

/// "SEVERITY: message" from an ErrorResponse/NoticeResponse body.
fn error_text(body: &[u8]) -> String {
    let mut severity = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let text = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'V' => severity = text,
            b'M' => message = text,
            _ => {}
        }
    }
    format!("{severity}: {message}")
}
