//! A small simple-query client for `strata query`: one Query message (several statements
//! allowed, as psql's `-c`), and each statement's columns (name and type OID), rows (text,
//! NULL kept apart from '') and command tag. The session is one [`crate::backend`] login.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::wire;

/// The longest message a result may hold (one row): Postgres's own limit for a field is 1 GB.
const MAX_RESULT_MESSAGE: usize = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's OID (`pg_type.oid`), as RowDescription gives it.
    pub type_oid: u32,
}

/// What one statement gave: no columns for a command without rows (`SET`, `INSERT …`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag (`SELECT 3`, `SET`).
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server's ErrorResponse (the statements after it did not run).
    #[error("{}", .0.message)]
    Server(ClientError),
    #[error("talking to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent {0}")]
    Protocol(String),
}

/// Runs `sql` on a logged-in session; the results of its statements in order.
pub async fn simple_query<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<Vec<ResultSet>, QueryError> {
    if sql.contains('\0') {
        return Err(QueryError::Protocol(
            "nothing: the SQL contains a NUL byte, which the protocol cannot carry".into(),
        ));
    }
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&wire::message(b'Q', &body)).await?;
    s.flush().await?;
    let mut results = Vec::new();
    let mut current: Option<ResultSet> = None;
    let mut error = None;
    loop {
        let m = wire::read_message(s, MAX_RESULT_MESSAGE).await?;
        let mut r = Reader(&m.body);
        match m.tag {
            b'T' => current = Some(row_description(&mut r)?),
            b'D' => {
                let set = current
                    .as_mut()
                    .ok_or_else(|| QueryError::Protocol("a DataRow before its columns".into()))?;
                set.rows.push(data_row(&mut r)?);
            }
            b'C' => {
                let mut set = current.take().unwrap_or_default();
                set.command = r.cstring()?;
                results.push(set);
            }
            // COPY needs data psql would send: refused, and the server reports the failure.
            b'G' => {
                let why = b"strata query does not run COPY FROM STDIN\0";
                s.write_all(&wire::message(b'f', why)).await?;
            }
            // The first error is the one to report.
            b'H' if error.is_none() => {
                error = Some(QueryError::Protocol(
                    "COPY TO STDOUT, which strata query does not print".into(),
                ));
            }
            b'E' if error.is_none() => {
                error = Some(QueryError::Server(server_error(&m.body, "XX000")));
            }
            b'Z' => return error.map_or(Ok(results), Err),
            // Notices, parameter changes, notifications, an empty query, COPY data.
            _ => {}
        }
    }
}

/// An ErrorResponse's fields as an error (`code` if it has none).
pub fn server_error(body: &[u8], code: &str) -> ClientError {
    let fields = wire::error_fields(body);
    let get = |t: u8| fields.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
    let mut e = ClientError::new(
        get(b'C').as_deref().unwrap_or(code),
        get(b'M').unwrap_or_else(|| "the server sent an error without a message".into()),
    );
    e.detail = get(b'D');
    e.hint = get(b'H');
    e
}

fn row_description(r: &mut Reader) -> Result<ResultSet, QueryError> {
    let n = r.u16()?;
    let mut columns = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let name = r.cstring()?;
        // Table OID (4), column number (2), type OID (4), size (2), modifier (4), format (2).
        r.take(6)?;
        let type_oid = r.u32()?;
        r.take(8)?;
        columns.push(Column { name, type_oid });
    }
    Ok(ResultSet {
        columns,
        ..ResultSet::default()
    })
}

fn data_row(r: &mut Reader) -> Result<Vec<Option<String>>, QueryError> {
    let n = r.u16()?;
    let mut row = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = r.u32()? as i32;
        if len < 0 {
            row.push(None);
        } else {
            let bytes = r.take(len as usize)?;
            row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    Ok(row)
}

/// Reads a message body front to back; running short is a protocol error, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QueryError> {
        if self.0.len() < n {
            return Err(QueryError::Protocol(
                "a message shorter than it says".into(),
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, QueryError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, QueryError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstring(&mut self) -> Result<String, QueryError> {
        let end = self
            .0
            .iter()
            .position(|c| *c == 0)
            .ok_or_else(|| QueryError::Protocol("a string without its NUL".into()))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(s: &str) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    }

    /// A server's answer to a two-statement query: SET, then one column of two rows (one
    /// NULL), then an error that must win.
    #[tokio::test]
    async fn results_nulls_and_errors_from_the_wire() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let q = wire::read_message(&mut server, 1 << 16).await.unwrap();
            assert_eq!(q.tag, b'Q');
            assert_eq!(q.body, cstr("SET x = 1; SELECT n FROM t"));
            let mut out = wire::message(b'C', &cstr("SET"));
            let mut t = 1u16.to_be_bytes().to_vec();
            t.extend(cstr("n"));
            t.extend([0u8; 6]);
            t.extend(23u32.to_be_bytes());
            t.extend([0u8; 8]);
            out.extend(wire::message(b'T', &t));
            let mut d = 1u16.to_be_bytes().to_vec();
            d.extend(2i32.to_be_bytes());
            d.extend(b"42");
            out.extend(wire::message(b'D', &d));
            let mut d = 1u16.to_be_bytes().to_vec();
            d.extend((-1i32).to_be_bytes());
            out.extend(wire::message(b'D', &d));
            out.extend(wire::message(b'C', &cstr("SELECT 2")));
            out.extend(wire::message(b'Z', b"I"));
            let e = b"SERROR\0C42P01\0Mrelation \"u\" does not exist\0\0";
            let second = [wire::message(b'E', e), wire::message(b'Z', b"I")].concat();
            server.write_all(&out).await.unwrap();
            let _ = wire::read_message(&mut server, 1 << 16).await.unwrap();
            server.write_all(&second).await.unwrap();
        });
        let r = simple_query(&mut client, "SET x = 1; SELECT n FROM t")
            .await
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].command, "SET");
        assert!(r[0].columns.is_empty());
        assert_eq!(
            r[1].columns,
            vec![Column {
                name: "n".into(),
                type_oid: 23
            }]
        );
        assert_eq!(r[1].rows, vec![vec![Some("42".into())], vec![None]]);
        let e = simple_query(&mut client, "SELECT * FROM u")
            .await
            .unwrap_err();
        match e {
            QueryError::Server(e) => {
                assert_eq!(e.code, "42P01");
                assert_eq!(e.message, "relation \"u\" does not exist");
            }
            other => panic!("{other}"),
        }
        srv.await.unwrap();
        assert!(matches!(
            data_row(&mut Reader(&[0, 1, 0, 0, 0, 9, b'x'])),
            Err(QueryError::Protocol(_))
        ));
    }
}
