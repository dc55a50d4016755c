//! Groups and their cuts on disk: `<cluster dir>/groups/<name>/group.json` (written to a
//! temporary file, fsynced, renamed, directory fsynced) and `cuts.jsonl` (one cut per line,
//! appended and fsynced before the cut is reported).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One member: a tenant's branch, one server of the sharded cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub tenant: String,
    pub tenant_id: String,
    pub branch: String,
    pub timeline_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
    /// The automatic cutter's period in milliseconds (none: cuts only on demand).
    pub every_ms: Option<u64>,
}

/// A consistent cut: where each member's history is cut, and when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cut {
    pub name: String,
    /// Unix microseconds while every fence held.
    pub time_us: i64,
    /// Tenant name → the member's quorum commit LSN while fenced.
    pub lsns: BTreeMap<String, String>,
    /// Milliseconds from the first fence request to the last fence lifted.
    pub pause_ms: f64,
}

pub fn groups_dir(dir: &Path) -> PathBuf {
    dir.join("groups")
}

fn group_dir(dir: &Path, name: &str) -> PathBuf {
    groups_dir(dir).join(name)
}

fn fsync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsyncing {}", d.display()))
}

impl Group {
    pub fn load(dir: &Path, name: &str) -> Result<Group> {
        crate::names::validate(crate::names::Kind::Branch, name)?;
        let p = group_dir(dir, name).join("group.json");
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "no group named {name:?} ({} unreadable; see strata group list)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Writes the group durably; fails if `create` and it exists.
    pub fn store(&self, dir: &Path, create: bool) -> Result<()> {
        let d = group_dir(dir, &self.name);
        let p = d.join("group.json");
        if create && p.exists() {
            bail!("a group named {:?} exists", self.name);
        }
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let tmp = d.join("group.json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
        fsync_dir(&d)?;
        fsync_dir(&groups_dir(dir))
    }

    pub fn list(dir: &Path) -> Result<Vec<Group>> {
        let d = groups_dir(dir);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if group_dir(dir, &name).join("group.json").exists() {
                out.push(Group::load(dir, &name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn cuts_file(&self, dir: &Path) -> PathBuf {
        group_dir(dir, &self.name).join("cuts.jsonl")
    }

    /// Appends `cut` and fsyncs it.
    pub fn append_cut(&self, dir: &Path, cut: &Cut) -> Result<()> {
        let p = self.cuts_file(dir);
        let new = !p.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        let mut line = serde_json::to_string(cut)?;
        line.push('\n');
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .with_context(|| format!("appending to {}", p.display()))?;
        if new {
            fsync_dir(&group_dir(dir, &self.name))?;
        }
        Ok(())
    }

    /// Every cut, oldest first. A torn last line (a crash mid-append, never reported) is
    /// skipped.
    pub fn cuts(&self, dir: &Path) -> Result<Vec<Cut>> {
        let p = self.cuts_file(dir);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut cuts = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str::<Cut>(l) {
                Ok(c) => cuts.push(c),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => bail!("{} line {}: {e}", p.display(), i + 1),
            }
        }
        Ok(cuts)
    }
}

/// The cut `at` names: a cut of that name, else the latest cut at or before that time.
pub fn find_cut(group: &Group, cuts: &[Cut], at: &str) -> Result<Cut> {
    if let Some(c) = cuts.iter().find(|c| c.name == at) {
        return Ok(c.clone());
    }
    let us = match crate::target::Target::parse(at) {
        Ok(crate::target::Target::Time(us)) => us,
        _ => bail!(
            "{at:?} is neither a cut of group {} nor a time like 2026-11-21 22:10:05+00 or \
             @<unix seconds>",
            group.name
        ),
    };
    cuts.iter()
        .filter(|c| c.time_us <= us)
        .max_by_key(|c| c.time_us)
        .cloned()
        .with_context(|| {
            format!(
                "group {} has no cut at or before {}{}",
                group.name,
                crate::target::format_time(us),
                cuts.first()
                    .map_or(" (it has no cuts)".to_string(), |c| format!(
                        " (the first is {} at {})",
                        c.name,
                        crate::target::format_time(c.time_us)
                    ))
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(name: &str, time_us: i64) -> Cut {
        Cut {
            name: name.into(),
            time_us,
            lsns: BTreeMap::from([("a".into(), "0/10".into())]),
            pause_ms: 1.0,
        }
    }

    #[test]
    fn groups_and_cuts_round_trip_and_torn_lines_are_skipped() -> Result<()> {
        let d = tempfile::tempdir()?;
        let g = Group {
            name: "bank".into(),
            members: vec![],
            every_ms: Some(1000),
        };
        g.store(d.path(), true)?;
        assert!(g.store(d.path(), true).is_err(), "created twice");
        assert_eq!(Group::list(d.path())?, vec![g.clone()]);
        g.append_cut(d.path(), &cut("one", 1_000_000))?;
        g.append_cut(d.path(), &cut("two", 2_000_000))?;
        let mut f = OpenOptions::new()
            .append(true)
            .open(g.cuts_file(d.path()))?;
        f.write_all(b"{\"name\":\"thr")?;
        let cuts = g.cuts(d.path())?;
        assert_eq!(cuts, vec![cut("one", 1_000_000), cut("two", 2_000_000)]);
        assert_eq!(find_cut(&g, &cuts, "one")?.name, "one");
        assert_eq!(find_cut(&g, &cuts, "@1")?.name, "one");
        assert_eq!(find_cut(&g, &cuts, "@5")?.name, "two");
        assert!(find_cut(&g, &cuts, "@0").is_err());
        Ok(())
    }
}
