use std::path::PathBuf;

/// What went wrong with a key, a token file or a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists: remove the key pair first to make a new one (tokens signed with the old key stop working)", path.display())]
    KeyExists { path: PathBuf },
    #[error("generating an Ed25519 key failed: {0}")]
    KeyGeneration(String),
    #[error("{} is not an Ed25519 {what} key in PEM: {reason}", path.display())]
    BadKey {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the token file {} is empty", path.display())]
    EmptyTokenFile { path: PathBuf },
    #[error("signing the token failed: {0}")]
    Signing(String),
    #[error("the token expired at {exp} (Unix seconds)")]
    Expired { exp: u64 },
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    #[error("the scope {0:?} is unknown: give admin, tenant:<id> or safekeeper")]
    BadScope(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} {addr} is not a loopback address and auth is off: anyone who reaches it could call everything; give --auth-public-key, or --no-auth to serve it without tokens anyway")]
    OpenListener {
        what: &'static str,
        addr: std::net::SocketAddr,
    },
}
