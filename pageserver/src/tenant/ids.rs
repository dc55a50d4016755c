//! Tenant and timeline ids: 128-bit values written as 32 lowercase hex characters, the same
//! form the safekeepers use, so one id names a timeline everywhere (directories, gRPC, the
//! replication protocol's `options`). Lowercase only, so that an id has one directory name.

use std::io::Read;

use super::error::TenantError;

/// Checks that `id` is 32 lowercase hex characters; `what` names it in the error.
pub fn check_id(what: &'static str, id: &str) -> Result<(), TenantError> {
    let ok = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TenantError::InvalidArgument(format!(
            "invalid {what} id {:?}: expected 32 lowercase hex characters",
            id.chars().take(64).collect::<String>()
        )))
    }
}

/// A fresh random id (from the kernel's random source).
pub fn generate_id() -> Result<String, TenantError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| TenantError::Io {
            op: "read random bytes from",
            path: "/dev/urandom".into(),
            source: e,
        })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = generate_id().unwrap();
        check_id("tenant", &id).unwrap();
        assert_ne!(id, generate_id().unwrap());
        for bad in [
            "",
            "0123",
            &id.to_uppercase(),
            &format!("{id}0"),
            "g".repeat(32).as_str(),
        ] {
            let e = check_id("timeline", bad).unwrap_err().to_string();
            assert!(
                e.contains("timeline id") && e.contains("32 lowercase hex"),
                "{e}"
            );
        }
    }
}
