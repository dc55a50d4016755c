//! TLS on the gRPC ports (rustls with ring): the services' certificate and key, the clients'
//! trust in one CA (the cluster's), and the rule that a gRPC address beyond loopback is
//! served over TLS unless `--no-tls` asks otherwise.
//!
//! A client with a CA dials `https://host:port` and checks the server's certificate against
//! that CA and the host it dialed (an IP address must be among the certificate's names); a
//! client without one dials `http://`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A TLS handshake that has not finished by then is abandoned (a silent peer must not hold a
/// connection, or a client's connect, forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is wrong with a TLS file, setting or address.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM {what}: {reason}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-cert and --tls-key go together: give both (the certificate and its private key, PEM) or neither")]
    HalfIdentity,
    #[error("the certificate {} and key {} cannot serve TLS: {reason}", cert.display(), key.display())]
    BadIdentity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{what} {addr} is not a loopback address and has no TLS: tokens and data would cross the network in clear; give --tls-cert and --tls-key (`strata init --listen` makes them), or --no-tls to serve it in clear anyway")]
    ClearListener {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("generating {what} failed: {reason}")]
    Generation { what: String, reason: String },
    #[error(transparent)]
    File(#[from] crate::AuthError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_path_buf();
    move |source| TlsError::Io { what, path, source }
}

/// rustls is built with both ring (ours) and aws-lc-rs (the S3 client's); with two providers
/// compiled in it picks none by itself, so ring is made the process default before any TLS
/// configuration is built. Installing twice is harmless (the first stays).
fn use_ring() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Refuses to serve `what` on `addr` beyond loopback without TLS, unless `no_tls` says so.
pub fn check_tls_listener(
    what: &'static str,
    addr: SocketAddr,
    tls_on: bool,
    no_tls: bool,
) -> Result<(), TlsError> {
    if crate::listener::may_serve(addr, tls_on, no_tls) {
        return Ok(());
    }
    Err(TlsError::ClearListener { what, addr })
}

/// The server side from `--tls-cert` and `--tls-key` (PEM): `None` when neither is given.
/// The files are read and checked now, so a bad one stops the daemon at start.
pub fn server_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ServerTlsConfig>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsError::HalfIdentity),
    };
    let identity = read_identity(cert, key)?;
    let (cert_pem, key_pem) = (identity.cert_pem, identity.key_pem);
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    // Building the acceptor checks that the key is usable with the certificate.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| TlsError::BadIdentity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: error_chain(&e),
        })?;
    Ok(Some(config))
}

/// A certificate chain and its private key, read from PEM files and checked to parse.
struct PemIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn read_identity(cert: &Path, key: &Path) -> Result<PemIdentity, TlsError> {
    use_ring();
    let cert_pem = std::fs::read(cert).map_err(io("reading the TLS certificate", cert))?;
    let key_pem = std::fs::read(key).map_err(io("reading the TLS key", key))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad_pem("certificate", cert, "no CERTIFICATE block".into()));
    }
    let parsed_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad_pem("private key", key, e.to_string()))?;
    Ok(PemIdentity {
        cert_pem,
        key_pem,
        certs,
        key: parsed_key,
    })
}

/// A plain rustls server configuration from `cert` and `key` (PEM), for a service that
/// speaks TLS itself rather than through tonic (the Postgres-protocol proxy). The files are
/// read and checked now, the key against the certificate too.
pub fn rustls_server_config(
    cert: &Path,
    key: &Path,
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    let identity = read_identity(cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| {
        b.with_no_client_auth()
            .with_single_cert(identity.certs, identity.key)
    })
    .map_err(|e| TlsError::BadIdentity {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(std::sync::Arc::new(config))
}

/// `server` for the gRPC address `listen`: over TLS with `cert` and `key` (PEM) if given
/// ([`server_tls`]), in clear otherwise, which beyond loopback needs `no_tls`
/// ([`check_tls_listener`]).
pub fn grpc_server_tls(
    server: tonic::transport::Server,
    listen: SocketAddr,
    (cert, key): (Option<&Path>, Option<&Path>),
    no_tls: bool,
) -> Result<tonic::transport::Server, TlsError> {
    let tls = server_tls(cert, key)?;
    check_tls_listener("the gRPC address", listen, tls.is_some(), no_tls)?;
    match (tls, cert, key) {
        (Some(tls), Some(cert), Some(key)) => {
            server.tls_config(tls).map_err(|e| TlsError::BadIdentity {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                reason: error_chain(&e),
            })
        }
        _ => Ok(server),
    }
}

fn bad_pem(what: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::BadPem {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

/// A client's trust: the CA certificate(s) of one PEM file.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca_file: PathBuf,
    config: ClientTlsConfig,
}

impl ClientTls {
    /// Trusts the CA certificates in `path` (PEM), and nothing else.
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        use_ring();
        let pem = std::fs::read(path).map_err(io("reading the TLS CA certificate", path))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_pem("CA certificate", path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad_pem(
                "CA certificate",
                path,
                "no CERTIFICATE block".into(),
            ));
        }
        Ok(ClientTls {
            ca_file: path.to_path_buf(),
            config: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .timeout(HANDSHAKE_TIMEOUT),
        })
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

/// The endpoint of the gRPC service at `addr` (`host:port`): `https://` checked against
/// `tls`'s CA, or `http://` without it.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let bad = |e: &dyn std::error::Error| TlsError::BadAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| bad(&e)),
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| bad(&e))?
            .tls_config(t.config.clone())
            .map_err(|e| bad(&e)),
    }
}

/// Why connecting failed, every cause in one line; a server certificate the CA does not
/// vouch for is said so, naming the CA file.
pub fn connect_error(e: &(dyn std::error::Error + 'static), tls: Option<&ClientTls>) -> String {
    let mut text = error_chain(e);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(rustls::Error::InvalidCertificate(why)) = as_rustls(s) {
            let ca = tls.map_or_else(|| "its CA".into(), |t| t.ca_file.display().to_string());
            text.push_str(&format!(
                " (the server's certificate does not verify against {ca}: {why:?}; is it this cluster's CA, and does the certificate name the address dialed?)"
            ));
            break;
        }
        source = s.source();
    }
    text
}

/// The rustls error `e` is, or carries: tokio-rustls wraps it in an `io::Error`, whose
/// `source()` skips it.
fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    })
}

/// `e` and its sources, joined with ": " (a tonic transport error alone says only
/// "transport error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served_in_clear_unless_asked() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for local in ["127.0.0.1:1", "[::1]:1"] {
            assert!(check_tls_listener("gRPC", addr(local), false, false).is_ok());
        }
        for open in ["0.0.0.0:1", "192.0.2.2:1", "[::]:1"] {
            let err = check_tls_listener("gRPC", addr(open), false, false).unwrap_err();
            assert!(err.to_string().contains("--tls-cert"), "{err}");
            assert!(err.to_string().contains("--no-tls"), "{err}");
            assert!(check_tls_listener("gRPC", addr(open), true, false).is_ok());
            assert!(check_tls_listener("gRPC", addr(open), false, true).is_ok());
        }
    }

    #[test]
    fn half_an_identity_or_bad_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        assert!(server_tls(None, None).unwrap().is_none());
        assert!(matches!(
            server_tls(Some(&junk), None),
            Err(TlsError::HalfIdentity)
        ));
        let e = server_tls(Some(&junk), Some(&junk)).unwrap_err();
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let e = ClientTls::from_ca_file(&junk).unwrap_err();
        assert!(e.to_string().contains("no PEM CA certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = ClientTls::from_ca_file(&missing).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
