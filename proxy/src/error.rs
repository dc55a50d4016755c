//! Errors a client sees: each is sent as a Postgres `ErrorResponse` (severity FATAL) with a
//! SQLSTATE that says what kind of problem it is, so drivers can tell a wrong password from a
//! missing branch or a compute that could not start.

/// SQLSTATE codes the proxy sends (Postgres's names, `errcodes.txt`).
pub mod sqlstate {
    /// A startup packet or message the proxy cannot read.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The tenant or branch does not exist (Postgres says so for a missing database).
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// The password (SCRAM proof) is wrong, or the role is unknown.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// The role cannot be told apart (several tenants have it) or the exchange is refused.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// A compute could not be started or reached.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// A bad `strata.*` value: a moment in the future, before the first commit, below the
    /// GC cutoff, or not a time, LSN or restore point.
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    /// A restore point that the branch does not have.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// Something that should not happen (a file the proxy cannot read).
    pub const INTERNAL_ERROR: &str = "XX000";
    /// Features the proxy does not have (channel binding, replication connections).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// An error to send to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// The SQLSTATE: one of [`sqlstate`], or a compute's own.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn new(code: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            code: code.to_string(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ClientError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    /// The wrong password or an unknown role: the same words either way, as Postgres does,
    /// so a client cannot probe which roles exist.
    pub fn password_failed(user: &str) -> ClientError {
        ClientError::new(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    pub fn protocol(message: impl Into<String>) -> ClientError {
        ClientError::new(sqlstate::PROTOCOL_VIOLATION, message)
    }

    pub fn internal(message: impl Into<String>) -> ClientError {
        ClientError::new(sqlstate::INTERNAL_ERROR, message)
    }

    pub fn cannot_connect(message: impl Into<String>) -> ClientError {
        ClientError::new(sqlstate::CANNOT_CONNECT_NOW, message)
    }

    pub fn bad_value(message: impl Into<String>) -> ClientError {
        ClientError::new(sqlstate::INVALID_PARAMETER_VALUE, message)
    }

    /// The `ErrorResponse` message: severity FATAL (the connection ends), code, message,
    /// detail and hint.
    pub fn to_message(&self) -> Vec<u8> {
        let mut fields: Vec<(u8, &str)> = vec![
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', &self.code),
            (b'M', &self.message),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h));
        }
        let mut body = Vec::new();
        for (tag, text) in fields {
            body.push(tag);
            // A NUL would end the field early: Postgres's texts never hold one.
            body.extend(text.bytes().filter(|b| *b != 0));
            body.push(0);
        }
        body.push(0);
        crate::wire::message(b'E', &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_carries_its_fields() {
        let m = ClientError::new(sqlstate::INVALID_CATALOG_NAME, "no branch \"x\"")
            .with_hint("branches: main")
            .to_message();
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        let body = &m[5..];
        assert!(body.windows(6).any(|w| w == b"C3D000"));
        assert!(body.ends_with(b"Hbranches: main\0\0"));
    }
}
