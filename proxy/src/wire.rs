//! The few Postgres protocol messages the proxy reads and writes before it relays bytes:
//! the startup packet (and SSLRequest, GSSENCRequest, CancelRequest), typed messages with a
//! length, and the authentication requests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;

/// Protocol 3.0.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Postgres's limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The longest message the proxy reads itself (authentication messages are small).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// What a client opens with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A StartupMessage of protocol 3.0: its parameters in order.
    Startup(Vec<(String, String)>),
    /// A CancelRequest: the backend's pid and secret key.
    Cancel { pid: i32, key: i32 },
    /// An SSLRequest the caller answers (with [`SslRequests::Hand`] only): 'S' and a TLS
    /// handshake, after which the client opens again inside TLS.
    SslRequest,
}

/// What [`read_opening`] does with an SSLRequest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslRequests {
    /// Answer 'N' (no TLS here): the client goes on in clear, or gives up if it requires TLS.
    Refuse,
    /// Return [`Opening::SslRequest`]: the proxy has a certificate.
    Hand,
    /// The connection is inside TLS already: another request is a protocol violation.
    Established,
}

/// One typed message: its type byte and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// The message as it travels: tag, length, body.
    pub fn encode(&self) -> Vec<u8> {
        message(self.tag, &self.body)
    }
}

/// `tag`, then the length of `body` plus the length field, then `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    // Bodies the proxy builds are small; a length past i32 cannot be sent at all.
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// An untyped packet (startup, cancel): the length, then `body`.
pub fn packet(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 4);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads the client's opening packet; GSSENCRequest is answered with 'N' (no GSSAPI
/// encryption), SSLRequest as `ssl` says.
pub async fn read_opening<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    ssl: SslRequests,
) -> Result<Opening, ClientError> {
    // A client may ask for SSL and then GSS (or the other way round); more is not sensible.
    for _ in 0..3 {
        let len = s.read_u32().await.map_err(read_failed)? as usize;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Err(ClientError::protocol(format!(
                "invalid startup packet length {len}"
            )));
        }
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.map_err(read_failed)?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            SSL_REQUEST if ssl == SslRequests::Hand => return Ok(Opening::SslRequest),
            SSL_REQUEST if ssl == SslRequests::Established => {
                return Err(ClientError::protocol(
                    "an SSLRequest inside an established TLS session",
                ))
            }
            SSL_REQUEST | GSSENC_REQUEST => {
                s.write_all(b"N").await.map_err(read_failed)?;
                s.flush().await.map_err(read_failed)?;
            }
            CANCEL_REQUEST if body.len() == 12 => {
                let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                let key = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                return Ok(Opening::Cancel { pid, key });
            }
            PROTOCOL_3 => return parse_startup_params(&body[4..]).map(Opening::Startup),
            other => {
                return Err(ClientError::new(
                    crate::error::sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {}.{}: the proxy speaks 3.0",
                        other >> 16,
                        other & 0xffff
                    ),
                ))
            }
        }
    }
    Err(ClientError::protocol(
        "too many SSL/GSS encryption requests before the startup message",
    ))
}

fn read_failed(e: std::io::Error) -> ClientError {
    ClientError::protocol(format!("reading the startup packet: {e}"))
}

/// `name\0value\0…\0`.
fn parse_startup_params(b: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
    let mut strings = Vec::new();
    let mut rest = b;
    loop {
        let Some(end) = rest.iter().position(|c| *c == 0) else {
            return Err(ClientError::protocol(
                "the startup packet's parameters do not end with a NUL",
            ));
        };
        if end == 0 {
            break;
        }
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| ClientError::protocol("a startup parameter is not valid UTF-8"))?;
        strings.push(s.to_string());
        rest = &rest[end + 1..];
    }
    if strings.len() % 2 != 0 {
        return Err(ClientError::protocol(format!(
            "the startup parameter {:?} has no value",
            strings.last().map(String::as_str).unwrap_or_default()
        )));
    }
    let mut pairs = Vec::new();
    let mut it = strings.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// A StartupMessage with `params`.
pub fn startup_message(params: &[(String, String)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet(&body)
}

/// A CancelRequest for backend `pid` with `key`.
pub fn cancel_request(pid: i32, key: i32) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&key.to_be_bytes());
    packet(&body)
}

/// Reads one typed message of at most `max_len` bytes.
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    max_len: usize,
) -> std::io::Result<Message> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    if len < 4 || len - 4 > max_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a {:?} message of length {len} (at most {max_len} accepted here)",
                tag as char
            ),
        ));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok(Message { tag, body })
}

/// An authentication request ('R') with code `code` and `data` after it.
pub fn auth_request(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    message(b'R', &body)
}

pub const AUTH_OK: u32 = 0;
pub const AUTH_CLEARTEXT: u32 = 3;
pub const AUTH_MD5: u32 = 5;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;
pub const AUTH_SASL_FINAL: u32 = 12;

/// The client's SASLInitialResponse: (mechanism, initial data).
pub fn parse_sasl_initial(body: &[u8]) -> Result<(String, Vec<u8>), ClientError> {
    let bad = || ClientError::protocol("malformed SASLInitialResponse message");
    let end = body.iter().position(|c| *c == 0).ok_or_else(bad)?;
    let mech = std::str::from_utf8(&body[..end]).map_err(|_| bad())?;
    let rest = &body[end + 1..];
    if rest.len() < 4 {
        return Err(bad());
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok((mech.to_string(), data.to_vec()))
}

/// The fields of an ErrorResponse or NoticeResponse body: (field tag, text).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&tag, tail)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let end = tail.iter().position(|c| *c == 0).unwrap_or(tail.len());
        out.push((tag, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ssl_is_refused_then_the_startup_is_read() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut ssl = packet(&SSL_REQUEST.to_be_bytes());
        ssl.extend(startup_message(&[
            ("user".into(), "alice".into()),
            ("database".into(), "db@dev".into()),
        ]));
        client.write_all(&ssl).await.unwrap();
        let opening = read_opening(&mut server, SslRequests::Refuse)
            .await
            .unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        assert_eq!(
            opening,
            Opening::Startup(vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db@dev".into())
            ])
        );
    }

    #[tokio::test]
    async fn ssl_is_handed_to_the_caller_once() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&packet(&SSL_REQUEST.to_be_bytes()))
            .await
            .unwrap();
        let opening = read_opening(&mut server, SslRequests::Hand).await.unwrap();
        assert_eq!(opening, Opening::SslRequest);
        client
            .write_all(&packet(&SSL_REQUEST.to_be_bytes()))
            .await
            .unwrap();
        let e = read_opening(&mut server, SslRequests::Established)
            .await
            .unwrap_err();
        assert_eq!(e.code, "08P01");
    }

    #[tokio::test]
    async fn cancel_requests_and_bad_packets() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&cancel_request(42, -7)).await.unwrap();
        assert_eq!(
            read_opening(&mut server, SslRequests::Refuse)
                .await
                .unwrap(),
            Opening::Cancel { pid: 42, key: -7 }
        );
        client.write_all(&[0, 0, 0, 3]).await.unwrap();
        let e = read_opening(&mut server, SslRequests::Refuse)
            .await
            .unwrap_err();
        assert_eq!(e.code, "08P01");
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0");
        body.push(0);
        client.write_all(&packet(&body)).await.unwrap();
        let e = read_opening(&mut server, SslRequests::Refuse)
            .await
            .unwrap_err();
        assert!(e.message.contains("has no value"), "{e}");
    }

    #[test]
    fn sasl_initial_and_error_fields_parse() {
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&5i32.to_be_bytes());
        b.extend_from_slice(b"n,,xy");
        assert_eq!(
            parse_sasl_initial(&b).unwrap(),
            ("SCRAM-SHA-256".to_string(), b"n,,xy".to_vec())
        );
        b.truncate(b.len() - 1);
        assert!(parse_sasl_initial(&b).is_err());
        assert_eq!(
            error_fields(b"SFATAL\0C3D000\0Mno\0\0"),
            vec![
                (b'S', "FATAL".to_string()),
                (b'C', "3D000".to_string()),
                (b'M', "no".to_string())
            ]
        );
    }
}
