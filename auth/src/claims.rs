use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::AuthError;

/// What a token allows; its text is `admin`, `tenant:<id>` or `safekeeper`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Admin,
    /// A tenant id in hex.
    Tenant(String),
    Safekeeper,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Tenant(id) => write!(f, "tenant:{id}"),
            Scope::Safekeeper => f.write_str("safekeeper"),
        }
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s {
            "admin" => Ok(Scope::Admin),
            "safekeeper" => Ok(Scope::Safekeeper),
            _ => match s.strip_prefix("tenant:") {
                Some(id) if !id.is_empty() => Ok(Scope::Tenant(id.to_string())),
                _ => Err(AuthError::BadScope(s.to_string())),
            },
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub scope: Scope,
    /// Limits a `safekeeper` token to one tenant's timelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

impl Claims {
    /// Claims of `scope` issued now, without expiry.
    pub fn new(scope: Scope) -> Claims {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Claims {
            scope,
            tenant_id: None,
            iat,
            exp: None,
        }
    }

    /// Whether the token may do what `needed` stands for, for some tenant: `admin` allows
    /// everything, `tenant:X` allows `Tenant(X)` only, `safekeeper` allows `Safekeeper` (a
    /// tenant-limited one only for its tenant: where the tenant is known, use
    /// [`Claims::allows_for`]).
    pub fn allows(&self, needed: &Scope) -> bool {
        match (&self.scope, needed) {
            (Scope::Admin, _) => true,
            (Scope::Tenant(have), Scope::Tenant(want)) => have == want,
            (Scope::Safekeeper, Scope::Safekeeper) => true,
            _ => false,
        }
    }

    /// Whether the token may do `needed` for the timelines of tenant `tenant_id`.
    pub fn allows_for(&self, needed: &Scope, tenant_id: &str) -> bool {
        self.allows(needed)
            && match (&self.scope, &self.tenant_id) {
                (Scope::Safekeeper, Some(limit)) => limit == tenant_id,
                _ => true,
            }
    }

    /// The scope as a reader should see it: `safekeeper for tenant X` for a limited token.
    pub fn describe(&self) -> String {
        match (&self.scope, &self.tenant_id) {
            (Scope::Safekeeper, Some(t)) => format!("safekeeper (for tenant {t} only)"),
            (scope, _) => scope.to_string(),
        }
    }

    /// Why the token may not do `needed` (for `tenant_id`, if given), or `None` if it may.
    pub fn refusal(&self, needed: &Scope, tenant_id: Option<&str>) -> Option<String> {
        let allowed = match tenant_id {
            Some(t) => self.allows_for(needed, t),
            None => self.allows(needed),
        };
        if allowed {
            return None;
        }
        let needs = match needed {
            Scope::Admin => "admin".to_string(),
            other => format!("{other} or admin"),
        };
        let what = match tenant_id {
            Some(t) if *needed == Scope::Safekeeper => format!(" for tenant {t}"),
            _ => String::new(),
        };
        Some(format!(
            "this call needs scope {needs}{what}; the token has {}",
            self.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(scope: Scope, tenant_id: Option<&str>) -> Claims {
        Claims {
            tenant_id: tenant_id.map(str::to_string),
            ..Claims::new(scope)
        }
    }

    #[test]
    fn scope_text_round_trips_and_refuses_unknown_text() {
        for s in [
            Scope::Admin,
            Scope::Safekeeper,
            Scope::Tenant("ab12".into()),
        ] {
            assert_eq!(s.to_string().parse::<Scope>().unwrap(), s);
        }
        for bad in ["", "tenant:", "root", "Admin", "tenant"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn admin_allows_everything_tenant_only_itself_safekeeper_only_safekeeper() {
        let t = |id: &str| Scope::Tenant(id.into());
        let admin = claims(Scope::Admin, None);
        assert!(
            admin.allows(&Scope::Admin)
                && admin.allows(&t("a"))
                && admin.allows(&Scope::Safekeeper)
        );
        let ta = claims(t("a"), None);
        assert!(ta.allows(&t("a")));
        assert!(!ta.allows(&t("b")) && !ta.allows(&Scope::Admin) && !ta.allows(&Scope::Safekeeper));
        let sk = claims(Scope::Safekeeper, None);
        assert!(sk.allows(&Scope::Safekeeper) && sk.allows_for(&Scope::Safekeeper, "any"));
        assert!(!sk.allows(&Scope::Admin) && !sk.allows(&t("a")));
        let limited = claims(Scope::Safekeeper, Some("a"));
        assert!(limited.allows_for(&Scope::Safekeeper, "a"));
        assert!(!limited.allows_for(&Scope::Safekeeper, "b"));
    }

    #[test]
    fn refusal_names_the_scope_needed_and_the_one_held() {
        let ta = claims(Scope::Tenant("a".into()), None);
        assert_eq!(
            ta.refusal(&Scope::Tenant("b".into()), None).unwrap(),
            "this call needs scope tenant:b or admin; the token has tenant:a"
        );
        assert_eq!(
            ta.refusal(&Scope::Admin, None).unwrap(),
            "this call needs scope admin; the token has tenant:a"
        );
        let limited = claims(Scope::Safekeeper, Some("a"));
        assert_eq!(
            limited.refusal(&Scope::Safekeeper, Some("b")).unwrap(),
            "this call needs scope safekeeper or admin for tenant b; the token has safekeeper (for tenant a only)"
        );
        assert!(limited.refusal(&Scope::Safekeeper, Some("a")).is_none());
    }
}
