//! Strata's tokens: JWTs signed with Ed25519 whose scope says what the bearer may do.
//!
//! - `admin`: everything (tenant creation and deletion, GC, `SetSafekeepers`, ...);
//! - `tenant:<id>`: reads, branches, status and leases of that tenant only;
//! - `safekeeper`: proposer and replication traffic (of the tenant `tenant_id` names, if set).
//!
//! The cluster holds the private key ([`generate_key_pair`], [`TokenIssuer`]); the services
//! get the public key and check every call ([`TokenVerifier`], [`check`]). Clients send the
//! token as `authorization: Bearer <token>` ([`client_interceptor`]; on plain HTTP,
//! [`check_http`]) or, on a Postgres replication connection, as the password.
//!
//! TLS on the gRPC ports ([`server_tls`], [`ClientTls`], [`endpoint`]) uses certificates
//! the cluster makes ([`ClusterCa`]).

mod certs;
mod claims;
mod error;
mod grpc;
mod http;
mod keys;
mod listener;
mod tls;
mod token;

pub use certs::{ClusterCa, CA_CERT_FILE};
pub use claims::{Claims, Scope};
pub use error::AuthError;
pub use grpc::{
    authenticate, authorize, check, check_for, client_interceptor, rpc_names, BearerInterceptor,
};
pub use http::check_http;
pub use keys::{generate_key_pair, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
pub use listener::check_listener;
pub use tls::{
    check_tls_listener, connect_error, endpoint, error_chain, grpc_server_tls,
    rustls_server_config, server_tls, ClientTls, TlsError, HANDSHAKE_TIMEOUT,
};
pub use token::{read_token_file, TokenIssuer, TokenVerifier};
