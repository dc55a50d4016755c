//! Tenant and timeline ids ([`walproto::ids`]: 32 lowercase hex characters, on the wire and as
//! directory names `<datadir>/<tenant>/<timeline>/`), and the key of one acceptor.

use std::fmt;

pub use walproto::ids::{ParseIdError, TenantId, TimelineId};

/// The key of one acceptor: the timeline of a tenant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TenantTimeline {
    pub tenant: TenantId,
    pub timeline: TimelineId,
}

impl fmt::Display for TenantTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.timeline)
    }
}
