//! Names people type for tenants and branches, mapped to the ids the services use:
//! `<cluster dir>/names.toml`. The pageserver knows timelines by id and their ancestry; the
//! names are the CLI's.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const NAMES_FILE: &str = "names.toml";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Names {
    /// The tenant commands use when none is named.
    pub default_tenant: Option<String>,
    /// tenant name → tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// tenant name → (branch name → timeline id).
    #[serde(default)]
    pub branches: BTreeMap<String, BTreeMap<String, String>>,
}

impl Names {
    pub fn load(dir: &Path) -> Result<Names> {
        let p = dir.join(NAMES_FILE);
        match fs::read_to_string(&p) {
            Ok(t) => toml::from_str(&t).with_context(|| format!("parsing {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a file.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let p = dir.join(NAMES_FILE);
        let tmp = dir.join(format!("{NAMES_FILE}.tmp"));
        fs::write(&tmp, toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))
    }

    /// The tenant `name`, or the default one: (name, id).
    pub fn tenant(&self, name: Option<&str>) -> Result<(String, String)> {
        let name = match name.or(self.default_tenant.as_deref()) {
            Some(n) => n.to_string(),
            None => bail!("no tenant yet: create one with `strata tenant create`"),
        };
        match self.tenants.get(&name) {
            Some(id) => Ok((name, id.clone())),
            None => bail!(
                "no tenant named {name:?}; tenants: {}",
                list(self.tenants.keys())
            ),
        }
    }

    pub fn add_tenant(&mut self, name: &str, id: &str) -> Result<()> {
        if self.tenants.contains_key(name) {
            bail!("a tenant named {name:?} exists already");
        }
        self.tenants.insert(name.into(), id.into());
        if self.default_tenant.is_none() {
            self.default_tenant = Some(name.into());
        }
        Ok(())
    }

    pub fn timeline(&self, tenant: &str, branch: &str) -> Result<String> {
        let branches = self.branches.get(tenant);
        match branches.and_then(|b| b.get(branch)) {
            Some(id) => Ok(id.clone()),
            None => bail!(
                "tenant {tenant:?} has no branch named {branch:?}; branches: {}",
                list(branches.into_iter().flat_map(|b| b.keys()))
            ),
        }
    }

    pub fn add_branch(&mut self, tenant: &str, branch: &str, timeline_id: &str) -> Result<()> {
        let b = self.branches.entry(tenant.into()).or_default();
        if b.contains_key(branch) {
            bail!("tenant {tenant:?} already has a branch named {branch:?}");
        }
        b.insert(branch.into(), timeline_id.into());
        Ok(())
    }

    /// The branch name of a timeline id, if it has one.
    pub fn branch_of(&self, tenant: &str, timeline_id: &str) -> Option<&str> {
        self.branches
            .get(tenant)?
            .iter()
            .find(|(_, id)| id.as_str() == timeline_id)
            .map(|(n, _)| n.as_str())
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_errors_list_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Names::load(dir.path()).unwrap();
        assert!(n
            .tenant(None)
            .unwrap_err()
            .to_string()
            .contains("tenant create"));
        n.add_tenant("shop", "aa").unwrap();
        n.add_branch("shop", "main", "t1").unwrap();
        assert!(n.add_branch("shop", "main", "t2").is_err());
        n.store(dir.path()).unwrap();
        let n = Names::load(dir.path()).unwrap();
        assert_eq!(n.tenant(None).unwrap(), ("shop".into(), "aa".into()));
        assert_eq!(n.timeline("shop", "main").unwrap(), "t1");
        let e = n.timeline("shop", "dev").unwrap_err().to_string();
        assert!(e.contains("main"), "{e}");
        assert_eq!(n.branch_of("shop", "t1"), Some("main"));
    }
}
