//! Tenant and timeline ids as the pageserver meets them at its edges (gRPC requests, CLI
//! flags, directory names): the typed ids of [`walproto::ids`] (32 lowercase hex characters,
//! the form the safekeepers use too, so one id names a timeline everywhere). Parsed once
//! there; past the edge every map and call takes the typed id. This maps their errors to
//! [`TenantError`].

use walproto::ids::{TenantId, TimelineId};

use super::error::TenantError;

fn invalid(e: walproto::ids::ParseIdError) -> TenantError {
    TenantError::InvalidArgument(e.to_string())
}

/// Parses a tenant id.
pub fn check_tenant_id(id: &str) -> Result<TenantId, TenantError> {
    id.parse().map_err(invalid)
}

/// Parses a timeline id.
pub fn check_timeline_id(id: &str) -> Result<TimelineId, TenantError> {
    id.parse().map_err(invalid)
}

/// A tenant id a request may leave empty (then the pageserver makes one up).
pub fn optional_tenant_id(id: &str) -> Result<Option<TenantId>, TenantError> {
    (!id.is_empty()).then(|| check_tenant_id(id)).transpose()
}

/// A timeline id a request may leave empty (then the pageserver makes one up).
pub fn optional_timeline_id(id: &str) -> Result<Option<TimelineId>, TenantError> {
    (!id.is_empty()).then(|| check_timeline_id(id)).transpose()
}

fn no_random(e: std::io::Error) -> TenantError {
    TenantError::Io {
        op: "read random bytes from",
        path: "/dev/urandom".into(),
        source: e,
    }
}

/// A fresh random tenant id.
pub fn generate_tenant_id() -> Result<TenantId, TenantError> {
    TenantId::generate().map_err(no_random)
}

/// A fresh random timeline id.
pub fn generate_timeline_id() -> Result<TimelineId, TenantError> {
    TimelineId::generate().map_err(no_random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = generate_tenant_id().unwrap();
        assert_eq!(check_tenant_id(&id.to_string()).unwrap(), id);
        assert_ne!(id, generate_tenant_id().unwrap());
        let tl = generate_timeline_id().unwrap();
        assert_eq!(optional_timeline_id(&tl.to_string()).unwrap(), Some(tl));
        assert_eq!(optional_timeline_id("").unwrap(), None);
        assert_eq!(optional_tenant_id("").unwrap(), None);
        let id = id.to_string();
        for bad in [
            "0123",
            &id.to_uppercase(),
            &format!("{id}0"),
            "g".repeat(32).as_str(),
        ] {
            for e in [
                check_timeline_id(bad).unwrap_err(),
                optional_timeline_id(bad).unwrap_err(),
            ] {
                assert!(matches!(e, TenantError::InvalidArgument(_)), "{e}");
                let e = e.to_string();
                assert!(
                    e.contains("timeline id") && e.contains("32 lowercase hex"),
                    "{e}"
                );
            }
        }
        assert!(check_timeline_id("").is_err());
    }
}
