//! One client connection: opening, routing, SCRAM, the compute, then a relay of bytes both
//! ways until either side closes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::backend::{self, BackendError};
use crate::cancel::CancelMap;
use crate::computes::{Computes, Key, Lease};
use crate::error::{sqlstate, ClientError};
use crate::names::Names;
use crate::roles::{Roles, CLUSTER_ROLE};
use crate::route::Route;
use crate::scram::{ScramError, ServerExchange, Verifier, MECHANISM};
use crate::strata_cli::StrataCli;
use crate::wire::{self, Opening, SslRequests};

/// How long a client may take over its startup and password exchange.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);
/// How long a running compute may take to accept a login.
const BACKEND_LOGIN_LIMIT: Duration = Duration::from_secs(30);

/// What every session shares.
pub struct Ctx {
    pub dir: PathBuf,
    pub cli: StrataCli,
    pub computes: Computes,
    pub cancels: CancelMap,
    /// The proxy's certificate, if it has one: SSLRequests are then answered 'S'.
    pub tls: Option<TlsAcceptor>,
}

/// Serves one client to its end; errors go to the client as ErrorResponses.
pub async fn serve(mut client: TcpStream, ctx: Arc<Ctx>) {
    let _ = client.set_nodelay(true);
    let from_this_host = from_this_host(&client);
    let ssl = match ctx.tls {
        Some(_) => SslRequests::Hand,
        None => SslRequests::Refuse,
    };
    let Some(opening) = read_opening(&mut client, ssl).await else {
        return;
    };
    let (Opening::SslRequest, Some(acceptor)) = (&opening, &ctx.tls) else {
        let clear_from_afar = ctx.tls.is_some() && !from_this_host;
        return serve_opening(client, opening, &ctx, clear_from_afar).await;
    };
    if client.write_all(b"S").await.is_err() {
        return;
    }
    let mut client =
        match tokio::time::timeout(strata_auth::HANDSHAKE_TIMEOUT, acceptor.accept(client)).await {
            Ok(Ok(tls)) => tls,
            // A client that does not trust the certificate ends the handshake itself.
            Ok(Err(e)) => return eprintln!("strata-proxy: a client's TLS handshake failed: {e}"),
            Err(_) => return,
        };
    if let Some(opening) = read_opening(&mut client, SslRequests::Established).await {
        serve_opening(client, opening, &ctx, false).await;
    }
}

/// The client's opening within [`HANDSHAKE_LIMIT`]; a bad one is answered with the error.
async fn read_opening<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    ssl: SslRequests,
) -> Option<Opening> {
    match tokio::time::timeout(HANDSHAKE_LIMIT, wire::read_opening(client, ssl)).await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            send_error(client, &e).await;
            None
        }
        Err(_) => None,
    }
}

/// Whether the client connects from this machine (loopback, or to the proxy's own
/// address): its bytes never cross a network, so it may go without TLS.
fn from_this_host(client: &TcpStream) -> bool {
    match (client.peer_addr(), client.local_addr()) {
        (Ok(peer), Ok(local)) => same_host(peer.ip(), local.ip()),
        _ => false,
    }
}

fn same_host(peer: IpAddr, local: IpAddr) -> bool {
    peer.is_loopback() || peer == local
}

/// A startup or cancel request, in clear or inside TLS. `clear_from_afar`: in clear from
/// another host to a proxy that has TLS, which takes no startup then (see
/// `docs/architecture.md`, "TLS on the proxy"); cancel requests are served anyway, as
/// Postgres does (the key is the secret, and libpq sends them in clear).
async fn serve_opening<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    opening: Opening,
    ctx: &Ctx,
    clear_from_afar: bool,
) {
    match opening {
        Opening::Cancel { pid, key } => {
            if let Err(e) = ctx.cancels.forward(pid, key).await {
                eprintln!("strata-proxy: forwarding a cancel request: {e}");
            }
        }
        Opening::Startup(_) if clear_from_afar => {
            let e = ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                "the proxy takes connections from other hosts over TLS only",
            )
            .with_hint(format!(
                "connect with sslmode=verify-full and sslrootcert={} (the cluster's CA)",
                ctx.dir
                    .join("tls")
                    .join(strata_auth::CA_CERT_FILE)
                    .display()
            ));
            send_error(&mut client, &e).await;
        }
        Opening::Startup(params) => {
            if let Err(e) = run(&mut client, &params, ctx).await {
                send_error(&mut client, &e).await;
            }
        }
        Opening::SslRequest => {
            let e = ClientError::protocol("an SSLRequest where a startup message was expected");
            send_error(&mut client, &e).await;
        }
    }
}

async fn send_error<S: AsyncWrite + Unpin>(client: &mut S, e: &ClientError) {
    // The client may be gone already: nothing else to tell.
    let _ = client.write_all(&e.to_message()).await;
    let _ = client.flush().await;
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    params: &[(String, String)],
    ctx: &Ctx,
) -> Result<(), ClientError> {
    let route = Route::from_params(params)?;
    let names = Names::load(&ctx.dir)?;
    let roles = Roles::load(&ctx.dir).map_err(|e| ClientError::internal(e.to_string()))?;
    let (tenant, verifier) = if route.user == CLUSTER_ROLE {
        cluster_login(&route, &names, &ctx.dir)?
    } else {
        let tenant = tenant_of(&route, &roles, &names)?;
        let verifier = match tenant.as_deref().and_then(|t| roles.find(&route.user, t)) {
            Some(role) => Verifier::parse(&role.verifier)
                .map_err(|e| ClientError::internal(format!("role \"{}\": {e}", route.user)))?,
            None => Verifier::impossible().map_err(|e| ClientError::internal(e.to_string()))?,
        };
        (tenant, verifier)
    };
    tokio::time::timeout(HANDSHAKE_LIMIT, authenticate(client, verifier, &route.user))
        .await
        .map_err(|_| ClientError::protocol("the password exchange took too long"))??;
    client
        .write_all(&wire::auth_request(wire::AUTH_OK, &[]))
        .await
        .map_err(|e| ClientError::protocol(e.to_string()))?;
    // Authenticated, so the tenant is known.
    let tenant = tenant.unwrap_or_default();
    let branch = names.branch(&tenant, &route.branch)?;
    let at_lsn = match &route.at {
        Some(at) => Some(crate::at::resolve(&ctx.cli, &branch, at).await?),
        None => None,
    };
    let key = Key { branch, at_lsn };
    let (_lease, mut backend) = open_backend(ctx, &key, &route).await?;
    client
        .write_all(&backend.greeting)
        .await
        .map_err(|e| ClientError::protocol(e.to_string()))?;
    let _registration = backend
        .cancel_key
        .map(|(pid, k)| ctx.cancels.register(pid, k, backend.addr));
    // From here on the bytes are the client's and the compute's: either side closing ends
    // the session (errors are just how a side went away).
    let _ = tokio::io::copy_bidirectional(client, &mut backend.stream).await;
    Ok(())
}

/// The cluster's own login ([`CLUSTER_ROLE`]): the tenant named by `strata.tenant`, else the
/// cluster's default one; the password is the compute password (none: no one gets in).
fn cluster_login(
    route: &Route,
    names: &Names,
    dir: &std::path::Path,
) -> Result<(Option<String>, Verifier), ClientError> {
    let tenant = match route.tenant.as_ref().or(names.default_tenant.as_ref()) {
        Some(t) => {
            names.tenant_id(t)?;
            Some(t.clone())
        }
        None => None,
    };
    let internal = |e: crate::scram::ScramError| ClientError::internal(e.to_string());
    let verifier = match backend::compute_password(dir)? {
        Some(pw) => Verifier::new(&pw).map_err(internal)?,
        None => Verifier::impossible().map_err(internal)?,
    };
    Ok((tenant, verifier))
}

/// The tenant of the connection: `strata.tenant` if given (it must exist), else the one
/// tenant with a role of that name (none: the password exchange fails as for a wrong
/// password).
fn tenant_of(route: &Route, roles: &Roles, names: &Names) -> Result<Option<String>, ClientError> {
    if let Some(t) = &route.tenant {
        names.tenant_id(t)?;
        return Ok(Some(t.clone()));
    }
    match roles.tenants_of(&route.user).as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        several => Err(ClientError::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "role \"{}\" exists in tenants {}: say which",
                route.user,
                several.join(", ")
            ),
        )
        .with_hint("add options=-c strata.tenant=NAME to the connection string")),
    }
}

/// SCRAM-SHA-256 with the client (AuthenticationSASL … SASLFinal).
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    verifier: Verifier,
    user: &str,
) -> Result<(), ClientError> {
    let io = |e: std::io::Error| ClientError::protocol(format!("during authentication: {e}"));
    let mut mechanisms = MECHANISM.as_bytes().to_vec();
    mechanisms.extend_from_slice(b"\0\0");
    client
        .write_all(&wire::auth_request(wire::AUTH_SASL, &mechanisms))
        .await
        .map_err(io)?;
    let first = password_message(client).await?;
    let (mechanism, data) = wire::parse_sasl_initial(&first)?;
    if mechanism != MECHANISM {
        return Err(ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "SASL mechanism \"{mechanism}\" is not supported: the proxy offers {MECHANISM}"
            ),
        ));
    }
    let scram_error = |e: ScramError| match e {
        ScramError::WrongProof => ClientError::password_failed(user),
        ScramError::ChannelBinding => {
            ClientError::new(sqlstate::FEATURE_NOT_SUPPORTED, e.to_string())
        }
        other => ClientError::protocol(other.to_string()),
    };
    let (exchange, server_first) = ServerExchange::start(verifier, &data).map_err(scram_error)?;
    client
        .write_all(&wire::auth_request(
            wire::AUTH_SASL_CONTINUE,
            server_first.as_bytes(),
        ))
        .await
        .map_err(io)?;
    let fin = password_message(client).await?;
    let server_final = exchange.finish(&fin).map_err(scram_error)?;
    client
        .write_all(&wire::auth_request(
            wire::AUTH_SASL_FINAL,
            server_final.as_bytes(),
        ))
        .await
        .map_err(io)
}

/// The client's next message, which must be a password message ('p').
async fn password_message<S: AsyncRead + Unpin>(client: &mut S) -> Result<Vec<u8>, ClientError> {
    let m = wire::read_message(client, wire::MAX_MESSAGE_LEN)
        .await
        .map_err(|e| ClientError::protocol(format!("during authentication: {e}")))?;
    if m.tag != b'p' {
        return Err(ClientError::protocol(format!(
            "expected a SASL response, got message type {:?}",
            m.tag as char
        )));
    }
    Ok(m.body)
}

/// The compute for `key`, logged in. A compute that does not answer at all (stopped by
/// hand, died) is looked for once more: then the proxy starts a new one.
async fn open_backend(
    ctx: &Ctx,
    key: &Key,
    route: &Route,
) -> Result<(Lease, backend::Backend), ClientError> {
    let mut params = vec![
        ("user".to_string(), backend::COMPUTE_USER.to_string()),
        ("database".to_string(), route.database.clone()),
    ];
    params.extend(route.forward.iter().cloned());
    let password = backend::compute_password(&ctx.dir)?;
    let mut last = None;
    for _ in 0..2 {
        let lease = ctx.computes.acquire(key).await?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, lease.port));
        match backend::connect(addr, &params, password.as_deref(), BACKEND_LOGIN_LIMIT).await {
            Ok(b) => return Ok((lease, b)),
            Err(e @ BackendError::Connect { .. }) => {
                eprintln!(
                    "strata-proxy: compute {} does not answer ({e}); looking for it again",
                    lease.name
                );
                ctx.computes.invalidate(key, lease.port).await;
                last = Some(e);
            }
            Err(e) => return Err(e.into_client_error()),
        }
    }
    Err(last
        .map(BackendError::into_client_error)
        .unwrap_or_else(|| ClientError::cannot_connect("no compute answered")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::AsyncReadExt;

    async fn read_auth(s: &mut tokio::io::DuplexStream) -> (u32, Vec<u8>) {
        let m = wire::read_message(s, 1 << 16).await.unwrap();
        assert_eq!(m.tag, b'R');
        let code = u32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
        (code, m.body[4..].to_vec())
    }

    /// The whole SASL exchange over the wire, with postgres-protocol's client.
    async fn login(password: &str) -> Result<(), ClientError> {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let v = Verifier::new("right").unwrap();
        let srv = tokio::spawn(async move { authenticate(&mut server, v, "alice").await });
        let (code, mechs) = read_auth(&mut client).await;
        assert_eq!(code, wire::AUTH_SASL);
        assert_eq!(mechs, b"SCRAM-SHA-256\0\0");
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        b.extend_from_slice(scram.message());
        client.write_all(&wire::message(b'p', &b)).await.unwrap();
        let (code, first) = read_auth(&mut client).await;
        assert_eq!(code, wire::AUTH_SASL_CONTINUE);
        scram.update(&first).unwrap();
        client
            .write_all(&wire::message(b'p', scram.message()))
            .await
            .unwrap();
        let result = srv.await.unwrap();
        if result.is_ok() {
            let (code, fin) = read_auth(&mut client).await;
            assert_eq!(code, wire::AUTH_SASL_FINAL);
            scram.finish(&fin).unwrap();
        } else {
            let mut rest = Vec::new();
            drop(result.clone());
            let _ = tokio::time::timeout(Duration::from_millis(50), client.read_to_end(&mut rest))
                .await;
        }
        result
    }

    #[tokio::test]
    async fn scram_over_the_wire() {
        login("right").await.unwrap();
        let e = login("wrong").await.unwrap_err();
        assert_eq!(e.code, "28P01");
        assert_eq!(
            e.message,
            "password authentication failed for user \"alice\""
        );
    }

    #[test]
    fn only_clients_on_this_host_count_as_local() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("192.0.2.2"), ip("192.0.2.2")));
        assert!(!same_host(ip("192.0.2.7"), ip("192.0.2.2")));
        assert!(!same_host(ip("fd00::7"), ip("fd00::2")));
    }

    #[test]
    fn the_tenant_comes_from_the_role_or_the_options() {
        let mut roles = Roles::default();
        roles.add("alice", "shop", "pw").unwrap();
        roles.add("bob", "shop", "pw").unwrap();
        roles.add("bob", "blog", "pw").unwrap();
        let names: Names = toml::from_str("[tenants]\nshop = \"aa\"\nblog = \"bb\"\n").unwrap();
        let route = |user: &str, tenant: Option<&str>| Route {
            user: user.into(),
            tenant: tenant.map(str::to_string),
            branch: "main".into(),
            at: None,
            database: "postgres".into(),
            forward: vec![],
        };
        assert_eq!(
            tenant_of(&route("alice", None), &roles, &names)
                .unwrap()
                .as_deref(),
            Some("shop")
        );
        assert_eq!(
            tenant_of(&route("carol", None), &roles, &names).unwrap(),
            None
        );
        assert_eq!(
            tenant_of(&route("bob", None), &roles, &names)
                .unwrap_err()
                .code,
            "28000"
        );
        assert_eq!(
            tenant_of(&route("bob", Some("blog")), &roles, &names)
                .unwrap()
                .as_deref(),
            Some("blog")
        );
        assert_eq!(
            tenant_of(&route("bob", Some("wiki")), &roles, &names)
                .unwrap_err()
                .code,
            "3D000"
        );
    }
}
