//! The other safekeepers of the cluster (`--peers id=host:port,...`, their gRPC addresses) and
//! what they report about a timeline. Used to pick the offloader, to share the offloaded and
//! consumer-durable LSNs, and to recover a timeline this safekeeper lost.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tonic::Code;
use walproto::proto::safekeeper as pb;

use crate::config::ServiceAuth;
use crate::ids::TenantTimeline;

/// How long a peer may take to answer a status request before it counts as unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// One peer: its node id and gRPC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
}

/// Why a `--peers` value is not `id=host:port,...`.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer {0:?}: expected id=host:port with a positive id")]
pub struct ParsePeerError(String);

impl FromStr for Peer {
    type Err = ParsePeerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParsePeerError(s.to_string());
        let (id, addr) = s.trim().split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if id == 0 || !addr.contains(':') {
            return Err(bad());
        }
        Ok(Peer {
            id,
            addr: addr.to_string(),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.addr)
    }
}

/// What one peer said about a timeline.
#[derive(Clone, Debug)]
pub enum PeerAnswer {
    /// The peer holds the timeline.
    Status(pb::TimelineStatusResponse),
    /// The peer answered: it does not hold the timeline.
    NotFound,
    /// No answer (down, slow, or an error); the message says which.
    Unreachable(String),
}

/// Asks every peer for its status of `id`, concurrently, with `auth`'s token (this
/// safekeeper's `--auth-token-file`) when the peers check tokens, over TLS when `auth` has a
/// CA (`--tls-ca`).
pub async fn statuses(
    peers: &[Peer],
    id: TenantTimeline,
    auth: &ServiceAuth,
) -> Vec<(Peer, PeerAnswer)> {
    let asks = peers.iter().cloned().map(|p| {
        let auth = auth.clone();
        async move {
            let answer = match tokio::time::timeout(STATUS_TIMEOUT, status(&p.addr, id, auth)).await
            {
                Ok(a) => a,
                Err(_) => PeerAnswer::Unreachable(format!("no answer within {STATUS_TIMEOUT:?}")),
            };
            (p, answer)
        }
    });
    let handles: Vec<_> = asks.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for (h, p) in handles.into_iter().zip(peers) {
        out.push(
            h.await
                .unwrap_or_else(|e| (p.clone(), PeerAnswer::Unreachable(e.to_string()))),
        );
    }
    out
}

async fn status(addr: &str, id: TenantTimeline, auth: ServiceAuth) -> PeerAnswer {
    let tls = auth.peer_tls.as_ref();
    let endpoint = match strata_auth::endpoint(addr, tls) {
        Ok(e) => e,
        Err(e) => return PeerAnswer::Unreachable(format!("peer {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            let why = strata_auth::connect_error(&e, tls);
            return PeerAnswer::Unreachable(format!("connecting to {addr}: {why}"));
        }
    };
    let mut client = pb::safekeeper_client::SafekeeperClient::with_interceptor(
        channel,
        strata_auth::client_interceptor(auth.peer_token),
    );
    match client
        .timeline_status(pb::TimelineStatusRequest {
            tenant_id: id.tenant.to_string(),
            timeline_id: id.timeline.to_string(),
        })
        .await
    {
        Ok(r) => PeerAnswer::Status(r.into_inner()),
        Err(s) if s.code() == Code::NotFound => PeerAnswer::NotFound,
        Err(s) => PeerAnswer::Unreachable(format!("{addr}: {}", s.message())),
    }
}

/// The offloader of `id` among `candidates` (node ids): rendezvous hashing, the candidate
/// with the highest crc32c of (tenant, timeline, node id). Every safekeeper that sees the same
/// candidates picks the same one without talking to the others, different timelines spread
/// over the nodes, and a node joining or leaving moves only the timelines it wins or held.
pub fn choose_offloader(id: &TenantTimeline, candidates: &[u64]) -> Option<u64> {
    candidates.iter().copied().max_by_key(|node| {
        let mut key = Vec::with_capacity(40);
        key.extend_from_slice(&id.tenant.0);
        key.extend_from_slice(&id.timeline.0);
        key.extend_from_slice(&node.to_le_bytes());
        (crc32c::crc32c(&key), *node)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_peers() {
        let p: Peer = "2=127.0.0.1:7677".parse().unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.addr, "127.0.0.1:7677");
        for bad in ["", "2", "0=h:1", "x=h:1", "2=host"] {
            assert!(bad.parse::<Peer>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offloader_is_deterministic_and_spread() {
        let mut chosen = std::collections::HashSet::new();
        for t in 0..32u8 {
            let id = TenantTimeline {
                tenant: crate::ids::TenantId([t; 16]),
                timeline: crate::ids::TimelineId([1; 16]),
            };
            let a = choose_offloader(&id, &[1, 2, 3]).unwrap();
            assert_eq!(choose_offloader(&id, &[3, 1, 2]), Some(a));
            // Removing a node that did not win leaves the choice alone.
            let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != a).collect();
            let without_loser: Vec<u64> =
                [1, 2, 3].into_iter().filter(|&n| n != others[0]).collect();
            assert_eq!(choose_offloader(&id, &without_loser), Some(a));
            chosen.insert(a);
        }
        assert_eq!(chosen.len(), 3, "timelines spread over all nodes");
        assert_eq!(
            choose_offloader(
                &TenantTimeline {
                    tenant: Default::default(),
                    timeline: Default::default()
                },
                &[]
            ),
            None
        );
    }
}
