//! Who may call what: the one table from RPC to the scope it needs ([`needed_scope`]).
//!
//! A `tenant:<id>` token reads that tenant's timelines (pages, basebackup, sizes, restore
//! points), branches and deletes its timelines, reads their status and manages their leases.
//! Everything that changes where WAL comes from, creates or deletes tenants, or works on the
//! whole pageserver's resources (GC, compaction, flush, import of a directory on the
//! pageserver's host, resuming ingest) needs `admin`. `ListTenants` needs `admin` too: it
//! names every tenant.

use strata_auth::{Claims, Scope};
use tonic::{Request, Status};

use super::PageserverService;

/// Every RPC of `strata.pageserver.v1.Pageserver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    CreateTenant,
    ListTenants,
    ImportTimeline,
    CreateBranch,
    ListTimelines,
    TimelineStatus,
    DeleteTimeline,
    SetSafekeepers,
    LsnForTimestamp,
    ListRestorePoints,
    Compact,
    Flush,
    Basebackup,
    GetPage,
    Gc,
    CreateLease,
    RelSize,
    RelExists,
    DbSize,
    SlruSegment,
    ResumeIngest,
    ListRelations,
    GetPages,
    DeleteTenant,
    ListLeases,
    RevokeLease,
    GetTenantConfig,
    SetTenantConfig,
}

impl Rpc {
    /// Every RPC, for tests that go over the whole service.
    pub const ALL: [Rpc; 28] = [
        Rpc::CreateTenant,
        Rpc::ListTenants,
        Rpc::ImportTimeline,
        Rpc::CreateBranch,
        Rpc::ListTimelines,
        Rpc::TimelineStatus,
        Rpc::DeleteTimeline,
        Rpc::SetSafekeepers,
        Rpc::LsnForTimestamp,
        Rpc::ListRestorePoints,
        Rpc::Compact,
        Rpc::Flush,
        Rpc::Basebackup,
        Rpc::GetPage,
        Rpc::Gc,
        Rpc::CreateLease,
        Rpc::RelSize,
        Rpc::RelExists,
        Rpc::DbSize,
        Rpc::SlruSegment,
        Rpc::ResumeIngest,
        Rpc::ListRelations,
        Rpc::GetPages,
        Rpc::DeleteTenant,
        Rpc::ListLeases,
        Rpc::RevokeLease,
        Rpc::GetTenantConfig,
        Rpc::SetTenantConfig,
    ];

    /// The method's name in the .proto file.
    pub fn name(self) -> String {
        format!("{self:?}")
    }
}

/// The scope a call of `rpc` on tenant `tenant_id` needs. `tenant_id` is the request's field
/// as sent, not yet parsed: authorization comes first, so a caller the token does not allow
/// is refused as such whatever it sent, and a token names its tenant as a string anyway.
pub fn needed_scope(rpc: Rpc, tenant_id: &str) -> Scope {
    match rpc {
        Rpc::CreateTenant
        | Rpc::DeleteTenant
        | Rpc::ListTenants
        | Rpc::ImportTimeline
        | Rpc::SetSafekeepers
        | Rpc::Gc
        | Rpc::Compact
        | Rpc::Flush
        | Rpc::ResumeIngest
        | Rpc::SetTenantConfig => Scope::Admin,
        Rpc::CreateBranch
        | Rpc::ListTimelines
        | Rpc::TimelineStatus
        | Rpc::DeleteTimeline
        | Rpc::LsnForTimestamp
        | Rpc::ListRestorePoints
        | Rpc::Basebackup
        | Rpc::GetPage
        | Rpc::CreateLease
        | Rpc::RelSize
        | Rpc::RelExists
        | Rpc::DbSize
        | Rpc::SlruSegment
        | Rpc::ListRelations
        | Rpc::GetPages
        | Rpc::ListLeases
        | Rpc::RevokeLease
        | Rpc::GetTenantConfig => Scope::Tenant(tenant_id.to_string()),
    }
}

impl PageserverService {
    /// Refuses the call unless its token allows `rpc` on `tenant_id` (auth off: allows all).
    pub(super) fn authorize<T>(
        &self,
        req: &Request<T>,
        rpc: Rpc,
        tenant_id: &str,
    ) -> Result<(), Status> {
        strata_auth::check(
            req,
            self.auth.verifier.as_deref(),
            &needed_scope(rpc, tenant_id),
        )
    }

    /// A check of `admin` for part of a call whose RPC needs less (`what` names that part).
    pub(super) fn authorize_admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        strata_auth::check(req, self.auth.verifier.as_deref(), &Scope::Admin)
            .map_err(|s| Status::new(s.code(), format!("{what}: {}", s.message())))
    }

    /// The claims of a stream's token, checked to allow some tenant's reads: each request of
    /// the stream is then checked against its own tenant ([`allow_stream_request`]).
    pub(super) fn authorize_stream<T>(&self, req: &Request<T>) -> Result<Option<Claims>, Status> {
        let claims = strata_auth::authenticate(req, self.auth.verifier.as_deref())?;
        if let Some(c) = &claims {
            if !matches!(c.scope, Scope::Admin | Scope::Tenant(_)) {
                return Err(Status::permission_denied(format!(
                    "this call needs scope tenant:<id> or admin; the token has {}",
                    c.describe()
                )));
            }
        }
        Ok(claims)
    }
}

/// Whether a stream opened with `claims` may ask for `rpc` on `tenant_id`.
pub(super) fn allow_stream_request(
    claims: Option<&Claims>,
    rpc: Rpc,
    tenant_id: &str,
) -> Result<(), Status> {
    strata_auth::authorize(claims, &needed_scope(rpc, tenant_id), None)
}
