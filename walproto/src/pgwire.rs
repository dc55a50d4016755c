//! The server side of Postgres's frontend/backend protocol, as far as a replication server
//! needs it: reading startup packets and frontend messages, writing backend messages. (The
//! client side is the `postgres-protocol` crate's.) Integers are big-endian; a message is a
//! tag byte, a length that counts itself, and a body; the startup packet has no tag.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0, and the codes that ask for encryption instead of starting.
const PROTOCOL_V3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest startup packet or message we accept (Postgres's own startup limit is 10,000).
const MAX_STARTUP_LEN: usize = 10_000;
const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("startup packet length {0} is invalid")]
    BadStartupLength(usize),
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("startup packet parameters are malformed")]
    BadStartupParameters,
    #[error("message {tag:?} length {len} is invalid")]
    BadLength { tag: char, len: usize },
    #[error("unknown frontend message tag {0:?}")]
    UnknownTag(char),
    #[error("message {0:?} is malformed: {1}")]
    Malformed(char, &'static str),
}

/// What a client opens a connection with.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    /// Protocol 3.0 with its parameters (`user`, `database`, `replication`, …).
    Start(Vec<(String, String)>),
    /// The client asks for TLS (answer `N` to continue in plain text).
    SslRequest,
    /// The client asks for GSSAPI encryption (answer `N` too).
    GssEncRequest,
    Cancel,
}

/// Parses a startup packet from `buf` if it is complete (consuming it).
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<Startup>, WireError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::BadStartupLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST => return Ok(Some(Startup::SslRequest)),
        GSSENC_REQUEST => return Ok(Some(Startup::GssEncRequest)),
        CANCEL_REQUEST => return Ok(Some(Startup::Cancel)),
        PROTOCOL_V3 => {}
        other => {
            return Err(WireError::UnsupportedVersion {
                major: (other >> 16) as u16,
                minor: other as u16,
            })
        }
    }
    let mut params = Vec::new();
    let mut fields = packet.split(|&b| b == 0);
    loop {
        let name = fields.next().ok_or(WireError::BadStartupParameters)?;
        if name.is_empty() {
            break;
        }
        let value = fields.next().ok_or(WireError::BadStartupParameters)?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Some(Startup::Start(params)))
}

/// A message from the client after startup.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    Terminate,
    /// Password, SASL response: answered by the authentication step.
    Password(Bytes),
}

/// Parses one frontend message from `buf` if it is complete (consuming it).
pub fn parse_frontend(buf: &mut BytesMut) -> Result<Option<FrontendMessage>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(WireError::BadLength {
            tag: tag as char,
            len,
        });
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    let mut msg = buf.split_to(len + 1).freeze();
    msg.advance(5);
    let cstr = |body: &Bytes| -> Result<String, WireError> {
        match body.split_last() {
            Some((0, s)) => Ok(String::from_utf8_lossy(s).into_owned()),
            _ => Err(WireError::Malformed(
                tag as char,
                "string not NUL-terminated",
            )),
        }
    };
    Ok(Some(match tag {
        b'Q' => FrontendMessage::Query(cstr(&msg)?),
        b'd' => FrontendMessage::CopyData(msg),
        b'c' => FrontendMessage::CopyDone,
        b'f' => FrontendMessage::CopyFail(cstr(&msg)?),
        b'X' => FrontendMessage::Terminate,
        b'p' => FrontendMessage::Password(msg),
        other => return Err(WireError::UnknownTag(other as char)),
    }))
}

/// Writes backend messages into a buffer.
#[derive(Default)]
pub struct BackendWriter {
    pub buf: BytesMut,
}

impl BackendWriter {
    fn message(&mut self, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        self.buf.put_u8(tag);
        let at = self.buf.len();
        self.buf.put_u32(0);
        body(&mut self.buf);
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The one-byte answer to SSLRequest / GSSENCRequest: not supported, go on unencrypted.
    pub fn encryption_refused(&mut self) {
        self.buf.put_u8(b'N');
    }

    pub fn authentication_ok(&mut self) {
        self.message(b'R', |b| b.put_u32(0));
    }

    pub fn parameter_status(&mut self, name: &str, value: &str) {
        self.message(b'S', |b| {
            put_cstr(b, name);
            put_cstr(b, value);
        });
    }

    pub fn backend_key_data(&mut self, pid: i32, key: i32) {
        self.message(b'K', |b| {
            b.put_i32(pid);
            b.put_i32(key);
        });
    }

    /// ReadyForQuery, idle.
    pub fn ready_for_query(&mut self) {
        self.message(b'Z', |b| b.put_u8(b'I'));
    }

    /// RowDescription of text columns; `types` are the columns' type OIDs (25 text,
    /// 23 int4, 20 int8).
    pub fn row_description(&mut self, columns: &[(&str, u32)]) {
        self.message(b'T', |b| {
            b.put_i16(columns.len() as i16);
            for (name, type_oid) in columns {
                put_cstr(b, name);
                b.put_u32(0); // table OID
                b.put_i16(0); // column number
                b.put_u32(*type_oid);
                b.put_i16(-1); // type size: variable
                b.put_i32(-1); // type modifier
                b.put_i16(0); // text format
            }
        });
    }

    pub fn data_row(&mut self, values: &[Option<&[u8]>]) {
        self.message(b'D', |b| {
            b.put_i16(values.len() as i16);
            for v in values {
                match v {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }

    pub fn command_complete(&mut self, tag: &str) {
        self.message(b'C', |b| put_cstr(b, tag));
    }

    /// ErrorResponse with severity ERROR, a SQLSTATE and a message.
    pub fn error(&mut self, code: &str, message: &str) {
        self.message(b'E', |b| {
            for (field, value) in [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', code),
                (b'M', message),
            ] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    /// CopyBothResponse: binary, no columns (what START_REPLICATION answers).
    pub fn copy_both_response(&mut self) {
        self.message(b'W', |b| {
            b.put_u8(1);
            b.put_i16(0);
        });
    }

    pub fn copy_data(&mut self, payload: &[u8]) {
        self.message(b'd', |b| b.put_slice(payload));
    }

    pub fn copy_done(&mut self) {
        self.message(b'c', |_| {});
    }

    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;

    #[test]
    fn startup_packets_from_the_client_library_parse() {
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "postgres"), ("replication", "true")], &mut buf)
            .unwrap();
        let got = parse_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            got,
            Startup::Start(vec![
                ("user".into(), "postgres".into()),
                ("replication".into(), "true".into())
            ])
        );
        assert!(buf.is_empty());
        let mut ssl = BytesMut::new();
        frontend::ssl_request(&mut ssl);
        assert_eq!(parse_startup(&mut ssl).unwrap(), Some(Startup::SslRequest));
        let mut short = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0, 0][..]);
        assert_eq!(
            parse_startup(&mut short),
            Err(WireError::BadStartupLength(3))
        );
    }

    #[test]
    fn frontend_messages_parse() {
        let mut buf = BytesMut::new();
        frontend::query("IDENTIFY_SYSTEM", &mut buf).unwrap();
        frontend::CopyData::new(&b"r123"[..])
            .unwrap()
            .write(&mut buf);
        frontend::copy_done(&mut buf);
        frontend::terminate(&mut buf);
        assert_eq!(
            parse_frontend(&mut buf).unwrap(),
            Some(FrontendMessage::Query("IDENTIFY_SYSTEM".into()))
        );
        assert_eq!(
            parse_frontend(&mut buf).unwrap(),
            Some(FrontendMessage::CopyData(Bytes::from_static(b"r123")))
        );
        assert_eq!(
            parse_frontend(&mut buf).unwrap(),
            Some(FrontendMessage::CopyDone)
        );
        assert_eq!(
            parse_frontend(&mut buf).unwrap(),
            Some(FrontendMessage::Terminate)
        );
        assert_eq!(parse_frontend(&mut buf).unwrap(), None);
        let mut bad = BytesMut::from(&b"Z\x00\x00\x00\x04"[..]);
        assert_eq!(parse_frontend(&mut bad), Err(WireError::UnknownTag('Z')));
    }

    #[test]
    fn backend_messages_parse_with_the_client_library() {
        let mut w = BackendWriter::default();
        w.authentication_ok();
        w.row_description(&[("systemid", 25), ("timeline", 23)]);
        w.data_row(&[Some(b"7"), None]);
        w.command_complete("IDENTIFY_SYSTEM");
        w.error("58P01", "requested WAL segment has already been removed");
        w.ready_for_query();
        let mut buf = BytesMut::from(&w.take()[..]);
        let mut tags = Vec::new();
        while let Some(m) = Message::parse(&mut buf).unwrap() {
            tags.push(match m {
                Message::AuthenticationOk => "auth",
                Message::RowDescription(_) => "rowdesc",
                Message::DataRow(_) => "row",
                Message::CommandComplete(_) => "complete",
                Message::ErrorResponse(_) => "error",
                Message::ReadyForQuery(_) => "ready",
                _ => "other",
            });
        }
        assert_eq!(
            tags,
            ["auth", "rowdesc", "row", "complete", "error", "ready"]
        );
    }
}
