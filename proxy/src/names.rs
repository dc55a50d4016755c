//! The cluster's names of tenants and branches (`<cluster dir>/names.toml`, written by the
//! `strata` command), read at each connection so new branches route at once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{sqlstate, ClientError};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Names {
    /// The tenant the cluster's own login uses when none is named.
    #[serde(default)]
    pub default_tenant: Option<String>,
    /// tenant name → tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// tenant name → (branch name → timeline id).
    #[serde(default)]
    pub branches: BTreeMap<String, BTreeMap<String, String>>,
}

/// A branch the proxy routes to: names and the ids the cluster knows it by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Branch {
    pub tenant: String,
    pub branch: String,
    pub tenant_id: String,
    pub timeline_id: String,
}

impl Names {
    pub fn load(cluster_dir: &Path) -> Result<Names, ClientError> {
        let p = cluster_dir.join("names.toml");
        match std::fs::read_to_string(&p) {
            Ok(t) => toml::from_str(&t)
                .map_err(|e| ClientError::internal(format!("parsing {}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(ClientError::internal(format!(
                "reading {}: {e}",
                p.display()
            ))),
        }
    }

    /// The tenant's id, or 3D000 naming the tenants there are.
    pub fn tenant_id(&self, tenant: &str) -> Result<&str, ClientError> {
        self.tenants.get(tenant).map(String::as_str).ok_or_else(|| {
            ClientError::new(
                sqlstate::INVALID_CATALOG_NAME,
                format!("tenant \"{tenant}\" does not exist"),
            )
            .with_hint(format!("tenants: {}", listing(self.tenants.keys())))
        })
    }

    /// The branch, or 3D000 naming the tenant's branches.
    pub fn branch(&self, tenant: &str, branch: &str) -> Result<Branch, ClientError> {
        let tenant_id = self.tenant_id(tenant)?.to_string();
        let branches = self.branches.get(tenant);
        match branches.and_then(|b| b.get(branch)) {
            Some(tl) => Ok(Branch {
                tenant: tenant.into(),
                branch: branch.into(),
                tenant_id,
                timeline_id: tl.clone(),
            }),
            None => Err(ClientError::new(
                sqlstate::INVALID_CATALOG_NAME,
                format!("branch \"{branch}\" of tenant \"{tenant}\" does not exist"),
            )
            .with_hint(format!(
                "branches: {}",
                listing(branches.into_iter().flat_map(|b| b.keys()))
            ))),
        }
    }

    /// The tenant name of a tenant id.
    pub fn tenant_of_id(&self, id: &str) -> Option<&str> {
        self.tenants
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.as_str())
    }
}

fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let joined = names.map(String::as_str).collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        "none".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tenants_and_branches_are_3d000() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("names.toml"),
            "default_tenant = \"shop\"\n[tenants]\nshop = \"aa\"\n[branches.shop]\nmain = \"t1\"\n",
        )
        .unwrap();
        let n = Names::load(d.path()).unwrap();
        assert_eq!(n.branch("shop", "main").unwrap().timeline_id, "t1");
        let e = n.branch("shop", "dev").unwrap_err();
        assert_eq!(e.code, "3D000");
        assert_eq!(e.hint.as_deref(), Some("branches: main"));
        assert_eq!(n.tenant_id("blog").unwrap_err().code, "3D000");
        assert_eq!(n.tenant_of_id("aa"), Some("shop"));
    }
}
