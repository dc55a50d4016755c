//! Between the tenant manager's types and the gRPC messages.

use std::sync::Arc;

use tonic::Status;
use walproto::proto::pageserver as pb;

use crate::tenant::ids::{check_tenant_id, check_timeline_id};
use crate::tenant::{Tenant, TenantError, TenantManager, TimelineHandle, TimelineStatus};

/// The tenant a request names: its id is parsed here, once, and looked up.
pub fn tenant_of(m: &TenantManager, tenant: &str) -> Result<Arc<Tenant>, TenantError> {
    m.tenant(check_tenant_id(tenant)?)
}

/// The timeline a request names. An unknown tenant is reported before a bad timeline id.
pub fn timeline_of(
    m: &TenantManager,
    tenant: &str,
    timeline: &str,
) -> Result<Arc<TimelineHandle>, TenantError> {
    tenant_of(m, tenant)?.timeline(check_timeline_id(timeline)?)
}

/// Each error kind to the gRPC code a client can act on; the message is the error's own,
/// which says what is wrong and what is possible.
pub fn to_status(e: TenantError) -> Status {
    let msg = e.to_string();
    match e {
        TenantError::NotFound(_) => Status::not_found(msg),
        TenantError::AlreadyExists(_) => Status::already_exists(msg),
        TenantError::InvalidArgument(_) => Status::invalid_argument(msg),
        TenantError::OutOfRange(_) => Status::out_of_range(msg),
        TenantError::FailedPrecondition(_) => Status::failed_precondition(msg),
        // A data directory that cannot be imported is the caller's input.
        TenantError::Import { .. } => Status::invalid_argument(msg),
        TenantError::Io { .. } | TenantError::Timeline { .. } | TenantError::Ingest { .. } => {
            Status::internal(msg)
        }
    }
}

pub fn timeline_info(s: TimelineStatus) -> pb::TimelineInfo {
    let (ancestor_timeline_id, ancestor_lsn) =
        s.ancestor.map(|(id, l)| (id, l.0)).unwrap_or_default();
    pb::TimelineInfo {
        tenant_id: s.tenant_id.to_string(),
        timeline_id: s.timeline_id.to_string(),
        ancestor_timeline_id,
        ancestor_lsn,
        start_lsn: s.start_lsn.0,
        last_record_lsn: s.last_record_lsn.0,
        last_record_end: s.last_record_end.0,
        disk_consistent_lsn: s.disk_consistent_lsn.0,
        remote_consistent_lsn: s.remote_consistent_lsn.0,
        gc_cutoff_lsn: s.gc_cutoff_lsn.0,
        logical_size: s.logical_size,
        layers: s.layers as u32,
        received_lsn: s.received_lsn.0,
        safekeepers: s.safekeepers,
        broken_reason: String::new(),
        ingest_stop: s.ingest_stop.map(|st| pb::IngestStop {
            record_lsn: st.record_lsn.0,
            record: st.record,
            reason: st.reason,
            since_unix_ms: st.since_unix_ms,
            needs_restart: st.needs_restart,
        }),
        walreceiver_problem: s.walreceiver_problem.unwrap_or_default(),
    }
}

pub fn tenant_info(t: &Tenant) -> pb::TenantInfo {
    pb::TenantInfo {
        tenant_id: t.id().to_string(),
        config_toml: t.conf().to_toml(),
        timelines: (t.timelines().len() + t.broken_timelines().len()) as u32,
    }
}

/// Timelines ordered parents before branches (then by id), broken ones last.
pub fn timeline_tree(t: &Tenant) -> Vec<pb::TimelineInfo> {
    let mut all: Vec<pb::TimelineInfo> = t
        .timelines()
        .iter()
        .map(|h| timeline_info(h.status()))
        .collect();
    all.sort_by(|a, b| a.timeline_id.cmp(&b.timeline_id));
    let mut out: Vec<pb::TimelineInfo> = Vec::with_capacity(all.len());
    while !all.is_empty() {
        let before = all.len();
        let mut i = 0;
        while i < all.len() {
            let a = &all[i].ancestor_timeline_id;
            if a.is_empty() || out.iter().any(|o| &o.timeline_id == a) {
                out.push(all.remove(i));
            } else {
                i += 1;
            }
        }
        if all.len() == before {
            out.append(&mut all);
        }
    }
    for (id, why) in t.broken_timelines() {
        out.push(pb::TimelineInfo {
            tenant_id: t.id().to_string(),
            timeline_id: id.to_string(),
            broken_reason: why,
            ..Default::default()
        });
    }
    out
}
