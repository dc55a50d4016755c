//! Tenant and timeline ids as the pageserver keeps them: the strings of
//! [`walproto::ids`] (32 lowercase hex characters, the form the safekeepers use too, so one id
//! names a timeline everywhere: directories, gRPC, the replication protocol's `options`).
//! Parsing and the rules live there; this maps their errors to [`TenantError`].

use walproto::ids::{TenantId, TimelineId};

use super::error::TenantError;

fn invalid(e: walproto::ids::ParseIdError) -> TenantError {
    TenantError::InvalidArgument(e.to_string())
}

/// Checks that `id` is a tenant id.
pub fn check_tenant_id(id: &str) -> Result<TenantId, TenantError> {
    id.parse().map_err(invalid)
}

/// Checks that `id` is a timeline id.
pub fn check_timeline_id(id: &str) -> Result<TimelineId, TenantError> {
    id.parse().map_err(invalid)
}

fn no_random(e: std::io::Error) -> TenantError {
    TenantError::Io {
        op: "read random bytes from",
        path: "/dev/urandom".into(),
        source: e,
    }
}

/// A fresh random tenant id.
pub fn generate_tenant_id() -> Result<String, TenantError> {
    Ok(TenantId::generate().map_err(no_random)?.to_string())
}

/// A fresh random timeline id.
pub fn generate_timeline_id() -> Result<String, TenantError> {
    Ok(TimelineId::generate().map_err(no_random)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = generate_tenant_id().unwrap();
        check_tenant_id(&id).unwrap();
        assert_ne!(id, generate_tenant_id().unwrap());
        check_timeline_id(&generate_timeline_id().unwrap()).unwrap();
        for bad in [
            "",
            "0123",
            &id.to_uppercase(),
            &format!("{id}0"),
            "g".repeat(32).as_str(),
        ] {
            let e = check_timeline_id(bad).unwrap_err();
            assert!(matches!(e, TenantError::InvalidArgument(_)), "{e}");
            let e = e.to_string();
            assert!(
                e.contains("timeline id") && e.contains("32 lowercase hex"),
                "{e}"
            );
        }
    }
}
