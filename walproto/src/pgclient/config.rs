//! Connection settings, parsed from libpq's `key=value` connection strings.

use std::fmt;
use std::path::PathBuf;

/// Where and how to connect to Postgres.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// A host name or address, or (starting with `/`) a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<String>,
    pub application_name: Option<String>,
    /// Command-line options for the server session (`-c name=value ...`); a safekeeper
    /// reads the tenant and timeline from them.
    pub options: Option<String>,
    /// Open a physical replication connection (`replication=true`).
    pub replication: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnConfigError {
    #[error("connection string: {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("connection string: unknown key {0:?} (known: host, port, user, dbname, password, application_name, options, replication)")]
    UnknownKey(String),
    #[error("connection string: port {0:?} is not a port number")]
    BadPort(String),
    #[error("connection string: unterminated quote")]
    UnterminatedQuote,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            host: "localhost".to_string(),
            port: 5432,
            user: "postgres".to_string(),
            dbname: "postgres".to_string(),
            password: None,
            application_name: None,
            options: None,
            replication: false,
        }
    }
}

impl ConnConfig {
    /// Parses `host=/tmp port=5432 user=postgres ...`; values may be single-quoted.
    pub fn parse(s: &str) -> Result<ConnConfig, ConnConfigError> {
        let mut cfg = ConnConfig::default();
        for (key, value) in split_pairs(s)? {
            match key.as_str() {
                "host" => cfg.host = value,
                "port" => cfg.port = value.parse().map_err(|_| ConnConfigError::BadPort(value))?,
                "user" => cfg.user = value,
                "dbname" => cfg.dbname = value,
                "password" => cfg.password = Some(value),
                "application_name" => cfg.application_name = Some(value),
                "options" => cfg.options = Some(value),
                "replication" => {
                    cfg.replication = matches!(value.as_str(), "true" | "on" | "1" | "yes")
                }
                _ => return Err(ConnConfigError::UnknownKey(key)),
            }
        }
        Ok(cfg)
    }

    /// The Unix socket path, when `host` is a directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }
}

fn split_pairs(s: &str) -> Result<Vec<(String, String)>, ConnConfigError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|&c| c != '=' && !c.is_whitespace())).collect();
        if chars.next() != Some('=') {
            return Err(ConnConfigError::NotKeyValue(key));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(ConnConfigError::UnterminatedQuote),
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

impl fmt::Display for ConnConfig {
    /// The connection string, without the password; `parse` reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host={} port={} user={} dbname={}",
            quoted(&self.host),
            self.port,
            quoted(&self.user),
            quoted(&self.dbname)
        )?;
        if let Some(app) = &self.application_name {
            write!(f, " application_name={}", quoted(app))?;
        }
        if let Some(options) = &self.options {
            write!(f, " options={}", quoted(options))?;
        }
        if self.replication {
            write!(f, " replication=true")?;
        }
        Ok(())
    }
}

/// A value as libpq's connection strings write it: single-quoted with `\` escapes when it is
/// empty or holds spaces, quotes or backslashes.
fn quoted(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_strings() {
        let c = ConnConfig::parse("host=/tmp/x port=5433 user=alice dbname='my db' application_name=strata options='-c a=1 -c b=\\'x' replication=true").unwrap();
        assert_eq!(c.options.as_deref(), Some("-c a=1 -c b='x"));
        assert_eq!(ConnConfig::parse(&c.to_string()).unwrap(), c);
        assert_eq!(c.host, "/tmp/x");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.application_name.as_deref(), Some("strata"));
        assert!(c.replication);
        assert_eq!(c.socket_path(), Some(PathBuf::from("/tmp/x/.s.PGSQL.5433")));
        assert_eq!(
            ConnConfig::parse("port=x"),
            Err(ConnConfigError::BadPort("x".into()))
        );
        assert_eq!(
            ConnConfig::parse("colour=red"),
            Err(ConnConfigError::UnknownKey("colour".into()))
        );
        assert_eq!(
            ConnConfig::parse("host"),
            Err(ConnConfigError::NotKeyValue("host".into()))
        );
        assert_eq!(
            ConnConfig::parse("dbname='x"),
            Err(ConnConfigError::UnterminatedQuote)
        );
    }
}
