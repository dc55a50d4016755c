//! Conversions between the gRPC messages and the acceptor's types.

use tonic::Status;
use walproto::proto::safekeeper as pb;

use crate::acceptor::AcceptorError;
use crate::ids::{TenantTimeline, TimelineId};
use crate::term_history::TermHistory;

pub fn history_to_pb(h: &TermHistory) -> pb::TermHistory {
    h.to_pb()
}

pub fn history_from_pb(h: Option<pb::TermHistory>) -> TermHistory {
    TermHistory::from_pb(h.as_ref())
}

/// Parses the ids of a request; bad ids are the client's error.
pub fn parse_ids(tenant: &str, timeline: &str) -> Result<TenantTimeline, Status> {
    let tenant = tenant
        .parse()
        .map_err(|e: crate::ids::ParseIdError| Status::invalid_argument(e.to_string()))?;
    let timeline: TimelineId = timeline
        .parse()
        .map_err(|e: crate::ids::ParseIdError| Status::invalid_argument(e.to_string()))?;
    Ok(TenantTimeline { tenant, timeline })
}

/// A stale term is a precondition failure (the proposer must step down), bad input an invalid
/// argument, anything on disk an internal error.
pub fn to_status(e: AcceptorError) -> Status {
    match e {
        AcceptorError::StaleTerm { .. } => Status::failed_precondition(e.to_string()),
        AcceptorError::Invalid(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}
