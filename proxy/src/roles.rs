//! The roles the proxy knows: `<cluster dir>/proxy/roles.json` (mode 0600, written durably),
//! each a name in one tenant with a SCRAM-SHA-256 verifier. `strata role create|list|delete`
//! edits the file; the proxy reads it at every connection, so a change applies at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scram::{ScramError, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("role {role:?} of tenant {tenant:?} exists already")]
    Exists { role: String, tenant: String },
    #[error("no role {role:?} in tenant {tenant:?}")]
    Missing { role: String, tenant: String },
    #[error("{0:?} is not a valid role name: 1 to 63 characters, no NUL, '@' or whitespace")]
    BadName(String),
    #[error(
        "{0:?} is the cluster's own login (what `strata query` uses): choose another role name"
    )]
    Reserved(String),
    #[error("role {role:?}: {source}")]
    Verifier { role: String, source: ScramError },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Roles {
    pub roles: Vec<Role>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// The tenant's name (as in `strata tenant list`).
    pub tenant: String,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub verifier: String,
}

/// The cluster's own login at the proxy: its password is the cluster's compute password
/// (`<cluster dir>/auth/compute_password`, readable by whoever runs the cluster, and already
/// the key to every compute), and it may use any tenant. `strata query` logs in with it.
pub const CLUSTER_ROLE: &str = "strata";

pub fn roles_file(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("proxy").join("roles.json")
}

/// A role name: what a client sends as `user` (Postgres's identifier limit; no '@', which
/// would read as a tenant or branch separator elsewhere).
pub fn validate_name(name: &str) -> Result<(), RolesError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 63
        && !name
            .chars()
            .any(|c| c == '\0' || c == '@' || c.is_whitespace());
    if name == CLUSTER_ROLE {
        Err(RolesError::Reserved(name.to_string()))
    } else if ok {
        Ok(())
    } else {
        Err(RolesError::BadName(name.to_string()))
    }
}

impl Roles {
    /// The roles of a cluster; none if the file does not exist.
    pub fn load(cluster_dir: &Path) -> Result<Roles, RolesError> {
        let path = roles_file(cluster_dir);
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| RolesError::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Roles::default()),
            Err(source) => Err(RolesError::Read { path, source }),
        }
    }

    /// Writes the file durably, readable only by its owner (it holds verifiers).
    pub fn store(&self, cluster_dir: &Path) -> Result<(), RolesError> {
        let path = roles_file(cluster_dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| RolesError::Parse {
            path: path.clone(),
            source,
        })?;
        crate::durable::write_file(&path, &bytes, 0o600)
            .map_err(|source| RolesError::Write { path, source })
    }

    pub fn add(&mut self, name: &str, tenant: &str, password: &str) -> Result<(), RolesError> {
        validate_name(name)?;
        if self.find(name, tenant).is_some() {
            return Err(RolesError::Exists {
                role: name.into(),
                tenant: tenant.into(),
            });
        }
        let verifier = Verifier::new(password).map_err(|source| RolesError::Verifier {
            role: name.into(),
            source,
        })?;
        self.roles.push(Role {
            name: name.into(),
            tenant: tenant.into(),
            verifier: verifier.to_string(),
        });
        self.roles
            .sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(())
    }

    pub fn remove(&mut self, name: &str, tenant: &str) -> Result<(), RolesError> {
        let before = self.roles.len();
        self.roles
            .retain(|r| !(r.name == name && r.tenant == tenant));
        if self.roles.len() == before {
            return Err(RolesError::Missing {
                role: name.into(),
                tenant: tenant.into(),
            });
        }
        Ok(())
    }

    pub fn find(&self, name: &str, tenant: &str) -> Option<&Role> {
        self.roles
            .iter()
            .find(|r| r.name == name && r.tenant == tenant)
    }

    /// The tenants that have a role named `name`.
    pub fn tenants_of(&self, name: &str) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.tenant.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn roles_round_trip_private_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Roles::load(d.path()).unwrap();
        r.add("alice", "shop", "pw").unwrap();
        r.add("alice", "blog", "pw2").unwrap();
        assert!(matches!(
            r.add("alice", "shop", "x"),
            Err(RolesError::Exists { .. })
        ));
        assert!(matches!(
            r.add("a@b", "shop", "x"),
            Err(RolesError::BadName(_))
        ));
        assert!(matches!(
            r.add("", "shop", "x"),
            Err(RolesError::BadName(_))
        ));
        assert!(matches!(
            r.add(CLUSTER_ROLE, "shop", "x"),
            Err(RolesError::Reserved(_))
        ));
        r.store(d.path()).unwrap();
        let mode = std::fs::metadata(roles_file(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut r = Roles::load(d.path()).unwrap();
        assert_eq!(r.tenants_of("alice"), vec!["blog", "shop"]);
        let v = Verifier::parse(&r.find("alice", "shop").unwrap().verifier).unwrap();
        assert_eq!(v, Verifier::with_salt("pw", &v.salt, v.iterations));
        r.remove("alice", "blog").unwrap();
        assert!(r.remove("alice", "blog").is_err());
        assert_eq!(r.tenants_of("alice"), vec!["shop"]);
    }
}
