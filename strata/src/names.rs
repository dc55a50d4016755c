//! Names people type for tenants, branches and computes: the one rule a new name must follow
//! ([`validate`]), and the map of tenant and branch names to the ids the services use,
//! `<cluster dir>/names.toml`. The pageserver knows timelines by id and their ancestry; the
//! names are the CLI's.
//!
//! Names become directory names (`computes/<name>`, `tmp/initdb-<tenant>`) and command-line
//! arguments, so an empty name, a slash or a space would write into the wrong directory or
//! break later. New names are checked where they enter (the command line's value parsers, and
//! [`Names::add_tenant`]/[`Names::add_branch`] behind them); names stored before the rule
//! existed are still looked up as they are, and a compute's name is used as a path only if
//! it is one plain path component ([`path_component`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::lock::NamesLock;

const NAMES_FILE: &str = "names.toml";

/// The longest name: Postgres's identifier limit, so a name fits wherever Postgres sees it.
pub const MAX_NAME_LEN: usize = 63;

/// What a name names, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tenant,
    Branch,
    Compute,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Tenant => "tenant",
            Kind::Branch => "branch",
            Kind::Compute => "compute",
        })
    }
}

/// A name that breaks the rule, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameError {
    pub kind: Kind,
    pub name: String,
    pub why: String,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a valid {} name: {}; a name is 1 to {MAX_NAME_LEN} letters, digits, \
             '_' or '-', not starting with '-'",
            self.name, self.kind, self.why
        )
    }
}

impl std::error::Error for NameError {}

/// The rule for every new tenant, branch and compute name: 1..=63 characters of
/// `[A-Za-z0-9_-]`, not starting with '-' (it would read as an option). That excludes "",
/// ".", "..", slashes and spaces.
pub fn validate(kind: Kind, name: &str) -> Result<(), NameError> {
    let fail = |why: String| {
        Err(NameError {
            kind,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return fail("it is empty".into());
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return fail(format!("it is {len} characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return fail(format!("it contains {c:?}"));
    }
    if name.starts_with('-') {
        return fail("it starts with '-'".into());
    }
    Ok(())
}

/// A new tenant's name as the command line takes it (its value parser).
pub fn new_tenant_name(s: &str) -> Result<String, NameError> {
    validate(Kind::Tenant, s).map(|()| s.to_string())
}

/// A new branch's name as the command line takes it (its value parser).
pub fn new_branch_name(s: &str) -> Result<String, NameError> {
    validate(Kind::Branch, s).map(|()| s.to_string())
}

/// `name` if it can be used as one directory name under another: not empty, not "." or
/// "..", no '/' or NUL. Weaker than [`validate`] so that a compute named before the rule
/// existed can still be stopped and removed, but never lets a name reach the parent
/// directory (`compute stop ''` must not remove every compute).
pub fn path_component(kind: Kind, name: &str) -> Result<&str, NameError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names a directory itself"
    } else if name.contains(['/', '\0']) {
        "it contains '/' or NUL"
    } else {
        return Ok(name);
    };
    Err(NameError {
        kind,
        name: name.to_string(),
        why: why.into(),
    })
}

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
    /// The names, to change and store: holds the names lock (`cluster::lock`) until the
    /// returned lock is dropped (names.toml is rewritten whole; two changes at once would
    /// lose one).
    pub fn load_for_change(dir: &Path) -> Result<(Names, NamesLock)> {
        let lock = NamesLock::acquire(dir)?;
        Ok((Names::load(dir)?, lock))
    }

    pub fn load(dir: &Path) -> Result<Names> {
        let p = dir.join(NAMES_FILE);
        match fs::read_to_string(&p) {
            Ok(t) => toml::from_str(&t).with_context(|| format!("parsing {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Written to a temporary file, fsynced and renamed (and the directory fsynced), so a
    /// crash leaves the old file or the new one, never half of one, and a change that was
    /// reported is not lost.
    /// `_held`: the names lock taken by [`Names::load_for_change`], so no other change lands
    /// between that load and this store.
    pub fn store(&self, dir: &Path, _held: &NamesLock) -> Result<()> {
        let p = dir.join(NAMES_FILE);
        strata_proxy::durable::write_file(&p, toml::to_string_pretty(self)?.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", p.display()))
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
        validate(Kind::Tenant, name)?;
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
        validate(Kind::Branch, branch)?;
        let b = self.branches.entry(tenant.into()).or_default();
        if b.contains_key(branch) {
            bail!("tenant {tenant:?} already has a branch named {branch:?}");
        }
        b.insert(branch.into(), timeline_id.into());
        Ok(())
    }

    /// Restore in place: `branch` names `new_timeline_id` from now on, and its old timeline
    /// gets the new name `backup`. One change of the map, stored by one [`Names::store`].
    pub fn swap_in_restored(
        &mut self,
        tenant: &str,
        branch: &str,
        new_timeline_id: &str,
        backup: &str,
    ) -> Result<()> {
        validate(Kind::Branch, backup)?;
        let old = self.timeline(tenant, branch)?;
        let b = self.branches.entry(tenant.into()).or_default();
        if b.contains_key(backup) {
            bail!("tenant {tenant:?} already has a branch named {backup:?}");
        }
        b.insert(backup.into(), old);
        b.insert(branch.into(), new_timeline_id.into());
        Ok(())
    }

    /// `text` with the ids of the known tenants and branches replaced by their names, so an
    /// error from a service speaks of what the user typed ("branch shop/dev" rather than
    /// "timeline 5b0b…/7c1d…").
    pub fn humanize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for (tenant, tid) in self.tenants.iter().filter(|(_, id)| !id.is_empty()) {
            let branches = self.branches.get(tenant).into_iter().flatten();
            for (branch, tlid) in branches.filter(|(_, id)| !id.is_empty()) {
                s = s.replace(
                    &format!("timeline {tid}/{tlid}"),
                    &format!("branch {tenant}/{branch}"),
                );
                s = s.replace(&format!("{tid}/{tlid}"), &format!("{tenant}/{branch}"));
                s = s.replace(&format!("timeline {tlid}"), &format!("branch {branch}"));
                s = s.replace(tlid.as_str(), branch);
            }
            s = s.replace(tid.as_str(), tenant);
        }
        s
    }

    /// Forgets a branch's name.
    pub fn remove_branch(&mut self, tenant: &str, branch: &str) {
        if let Some(b) = self.branches.get_mut(tenant) {
            b.remove(branch);
        }
    }

    /// Forgets a tenant and its branches' names; another tenant (if any) becomes the default.
    pub fn remove_tenant(&mut self, tenant: &str) {
        self.tenants.remove(tenant);
        self.branches.remove(tenant);
        if self.default_tenant.as_deref() == Some(tenant) {
            self.default_tenant = self.tenants.keys().next().cloned();
        }
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
        let (mut n, lock) = Names::load_for_change(dir.path()).unwrap();
        assert!(n
            .tenant(None)
            .unwrap_err()
            .to_string()
            .contains("tenant create"));
        n.add_tenant("shop", "aa").unwrap();
        n.add_branch("shop", "main", "t1").unwrap();
        assert!(n.add_branch("shop", "main", "t2").is_err());
        n.store(dir.path(), &lock).unwrap();
        let n = Names::load(dir.path()).unwrap();
        assert_eq!(n.tenant(None).unwrap(), ("shop".into(), "aa".into()));
        assert_eq!(n.timeline("shop", "main").unwrap(), "t1");
        let e = n.timeline("shop", "dev").unwrap_err().to_string();
        assert!(e.contains("main"), "{e}");
        assert_eq!(n.branch_of("shop", "t1"), Some("main"));
    }

    #[test]
    fn a_restore_swaps_timelines_in_one_stored_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Names::default();
        n.add_tenant("shop", "aa").unwrap();
        n.add_branch("shop", "main", "t1").unwrap();
        n.add_branch("shop", "kept", "t0").unwrap();
        assert!(n.swap_in_restored("shop", "main", "t2", "kept").is_err());
        assert!(n.swap_in_restored("shop", "nope", "t2", "x").is_err());
        assert!(n.swap_in_restored("shop", "main", "t2", "a b").is_err());
        assert_eq!(n.timeline("shop", "main").unwrap(), "t1");
        n.swap_in_restored("shop", "main", "t2", "main_old")
            .unwrap();
        let lock = NamesLock::acquire(dir.path()).unwrap();
        n.store(dir.path(), &lock).unwrap();
        let n = Names::load(dir.path()).unwrap();
        assert_eq!(n.timeline("shop", "main").unwrap(), "t2");
        assert_eq!(n.timeline("shop", "main_old").unwrap(), "t1");
        assert!(!dir.path().join("names.toml.tmp").exists());
    }

    #[test]
    fn ids_in_errors_become_names() {
        let mut n = Names::default();
        n.add_tenant("shop", "aa11").unwrap();
        n.add_branch("shop", "dev", "bb22").unwrap();
        assert_eq!(
            n.humanize("LSN 0/100 is below timeline aa11/bb22's GC cutoff; ancestor bb22"),
            "LSN 0/100 is below branch shop/dev's GC cutoff; ancestor dev"
        );
        assert_eq!(n.humanize("tenant aa11 not found"), "tenant shop not found");
        assert_eq!(n.humanize("nothing known"), "nothing known");
    }

    #[test]
    fn the_name_rule() {
        for ok in [
            "main",
            "a",
            "dev-2",
            "_x",
            "A_b-9",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(validate(Kind::Branch, ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "'.'"),
            ("..", "'.'"),
            ("a b", "' '"),
            ("a/b", "'/'"),
            ("-x", "starts with '-'"),
            ("é", "'é'"),
            (&"x".repeat(MAX_NAME_LEN + 1), "64 characters"),
        ] {
            let e = validate(Kind::Compute, bad).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("compute name"),
                "{bad:?}: {e}"
            );
        }
        let mut n = Names::default();
        assert!(n.add_tenant("", "aa").is_err());
        n.add_tenant("t", "aa").unwrap();
        assert!(n.add_branch("t", "x/y", "t1").is_err());
    }

    #[test]
    fn stored_names_are_path_components_or_refused() {
        assert_eq!(
            path_component(Kind::Compute, "old name").unwrap(),
            "old name"
        );
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(path_component(Kind::Compute, bad).is_err(), "{bad:?}");
        }
    }
}
