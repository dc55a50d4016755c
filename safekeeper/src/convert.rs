//! Conversions between the gRPC messages and the acceptor's types.

use tonic::Status;
use walproto::proto::safekeeper as pb;
use walproto::Lsn;

use crate::acceptor::AcceptorError;
use crate::ids::{TenantTimeline, TimelineId};
use crate::term_history::{TermHistory, TermSwitch};

pub fn history_to_pb(h: &TermHistory) -> pb::TermHistory {
    pb::TermHistory {
        entries: h
            .0
            .iter()
            .map(|e| pb::TermSwitch {
                term: e.term,
                start_lsn: e.start.0,
            })
            .collect(),
    }
}

pub fn history_from_pb(h: Option<pb::TermHistory>) -> TermHistory {
    TermHistory(
        h.unwrap_or_default()
            .entries
            .into_iter()
            .map(|e| TermSwitch {
                term: e.term,
                start: Lsn(e.start_lsn),
            })
            .collect(),
    )
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
