//! What the safekeeper's timelines need beyond the node id and the data directory: peers,
//! object store, offload timing, the replication address and authentication.

use std::sync::Arc;
use std::time::Duration;

use strata_auth::TokenVerifier;

use crate::peers::Peer;
use crate::remote_storage::RemoteStorage;

/// The default is a stand-alone safekeeper without an object store.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The other safekeepers of the cluster.
    pub peers: Vec<Peer>,
    /// Where WAL is offloaded; `None`: nothing is offloaded and no WAL is removed.
    pub remote: Option<RemoteStorage>,
    /// How often the offload task looks at peers, uploads complete segments and removes WAL.
    pub offload_tick: Duration,
    /// How often the segment being written is uploaded (as `.partial`).
    pub partial_offload_interval: Duration,
    /// The replication server's address, told to peers that recover from us.
    pub replication_addr: Option<String>,
    /// Tokens checked on the gRPC and replication ports, and sent to the peers.
    pub auth: ServiceAuth,
}

/// The safekeeper's side of authentication.
#[derive(Clone, Default)]
pub struct ServiceAuth {
    /// Checks every caller's token (gRPC and replication port); none: auth off.
    pub verifier: Option<Arc<TokenVerifier>>,
    /// The token this safekeeper sends its peers (status calls, recovery streams).
    pub peer_token: Option<String>,
    /// The CA the peers' gRPC certificates are checked against; none: peers in clear.
    pub peer_tls: Option<strata_auth::ClientTls>,
}

impl std::fmt::Debug for ServiceAuth {
    // Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAuth")
            .field("verifier", &self.verifier.is_some())
            .field("peer_token", &self.peer_token.is_some())
            .field("peer_tls", &self.peer_tls.as_ref().map(|t| t.ca_file()))
            .finish()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            peers: Vec::new(),
            remote: None,
            offload_tick: Duration::from_secs(1),
            partial_offload_interval: Duration::from_secs(10),
            replication_addr: None,
            auth: ServiceAuth::default(),
        }
    }
}
