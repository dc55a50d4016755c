//! Groups and their cuts, kept in the cluster's object store (where the data is: a cut is
//! worth as much as the WAL and layers it points into, and outlives the cluster directory
//! with them). The key layout, under the store's prefix:
//!
//! ```text
//! groups/<group>/group.json                      the group (members, period)
//! groups/<group>/cuts/<unix µs, 20 digits>-<cut>  one cut: {member → LSN}, time, name, pause
//! ```
//!
//! each a crc-checked object (`remote_store::Store::put_checked`: a `.crc32c` side object
//! next to it). A cut's object is written, and acknowledged by the store (a local store
//! fsyncs it), before the cut is reported; it is never rewritten.
//!
//! The cluster directory keeps a cache: `groups/<group>/group.json` and `cuts.jsonl` (one cut
//! per line, in the order they were seen). Reading a group's cuts lists the keys in the store
//! and reads only the objects the cache lacks, so `restore-point list` of a group cut every
//! second for hours does not read thousands of objects each time. Losing the cache loses
//! nothing: it is filled again from the store.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use object_store::path::Path as Key;
use remote_store::{S3Options, Store};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;

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

/// The object store's top-level folder of every group.
const GROUPS: &str = "groups";
const GROUP_OBJECT: &str = "group.json";
const CUTS: &str = "cuts";
const CUTS_CACHE: &str = "cuts.jsonl";

/// Where the groups are: the cluster's object store, with the cluster directory as a cache.
pub struct GroupStore {
    dir: PathBuf,
    store: Store,
    rt: tokio::runtime::Runtime,
}

fn fsync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsyncing {}", d.display()))
}

/// The last part of a cut's key: its time first, so keys sort by time.
fn cut_key_name(cut: &Cut) -> String {
    format!("{:020}-{}", cut.time_us, cut.name)
}

impl GroupStore {
    /// The group store of the cluster in `dir` (its `remote_storage` of `strata.toml`).
    pub fn open(dir: &Path) -> Result<GroupStore> {
        let cfg = ClusterConfig::load(dir)?;
        let store = Store::from_url(&cfg.remote_storage, &S3Options::from_env())
            .with_context(|| format!("the object store {}", cfg.remote_storage))?;
        GroupStore::with_store(dir, store)
    }

    /// The groups of the cluster in `dir`, kept in `store`.
    pub fn with_store(dir: &Path, store: Store) -> Result<GroupStore> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(GroupStore {
            dir: dir.to_path_buf(),
            store,
            rt,
        })
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cache_dir(&self, group: &str) -> PathBuf {
        self.dir.join(GROUPS).join(group)
    }

    fn group_key(&self, group: &str) -> Key {
        self.store.key(&[GROUPS, group, GROUP_OBJECT])
    }

    fn cuts_prefix(&self, group: &str) -> Key {
        self.store.key(&[GROUPS, group, CUTS])
    }

    fn put(&self, key: &Key, value: &impl Serialize) -> Result<()> {
        let data = Bytes::from(serde_json::to_vec(value)?);
        self.rt
            .block_on(self.store.put_checked(key, data))
            .with_context(|| format!("storing {key} in {}", self.store))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &Key) -> Result<Option<T>> {
        let Some(data) = self
            .rt
            .block_on(self.store.get_checked(key))
            .with_context(|| format!("reading {key} from {}", self.store))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&data)
            .map(Some)
            .with_context(|| format!("parsing {key} of {}", self.store))
    }

    /// Writes `text` to `name` in the group's cache directory (temporary file, fsync, rename,
    /// directory fsync).
    fn write_cache(&self, group: &str, name: &str, text: &str) -> Result<()> {
        let d = self.cache_dir(group);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let tmp = d.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        let p = d.join(name);
        fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
        fsync_dir(&d)
    }

    /// The group named `name`: from the cache, else from the object store (and cached).
    pub fn load(&self, name: &str) -> Result<Group> {
        crate::names::validate(crate::names::Kind::Branch, name)?;
        let cached = self.cache_dir(name).join(GROUP_OBJECT);
        if let Ok(text) = fs::read_to_string(&cached) {
            return serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", cached.display()));
        }
        let g: Group = self.get(&self.group_key(name))?.with_context(|| {
            format!(
                "no group named {name:?} in {} (see strata group list)",
                self.store
            )
        })?;
        self.write_cache(name, GROUP_OBJECT, &serde_json::to_string_pretty(&g)?)?;
        Ok(g)
    }

    /// Stores a new group (refused if one of that name exists), the object store first.
    pub fn create(&self, g: &Group) -> Result<()> {
        let key = self.group_key(&g.name);
        if self.get::<Group>(&key)?.is_some() {
            bail!("a group named {:?} exists", g.name);
        }
        self.put(&key, g)?;
        self.write_cache(&g.name, GROUP_OBJECT, &serde_json::to_string_pretty(g)?)
    }

    /// Every group in the object store, by name.
    pub fn list(&self) -> Result<Vec<Group>> {
        let prefix = self.store.key(&[GROUPS]);
        let listing = self
            .rt
            .block_on(self.store.store().list_with_delimiter(Some(&prefix)));
        let names: Vec<String> = match listing {
            Ok(l) => l
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect(),
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {prefix} in {}", self.store)),
        };
        let mut out = Vec::new();
        for name in names {
            // A folder without its group object: a create that did not finish.
            if crate::names::validate(crate::names::Kind::Branch, &name).is_ok() {
                if let Some(g) = self.get::<Group>(&self.group_key(&name))? {
                    out.push(g);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stores `cut` of `group` in the object store (durable when this returns), then in the
    /// cache (a cache that cannot be written is only a warning: the store has the cut).
    pub fn add_cut(&self, group: &Group, cut: &Cut) -> Result<()> {
        let key = self.cuts_prefix(&group.name).join(cut_key_name(cut));
        self.put(&key, cut)?;
        if let Err(e) = self.cache_cuts(&group.name, std::slice::from_ref(cut)) {
            eprintln!(
                "strata: warning: cut {} is stored, but not cached: {e:#}",
                cut.name
            );
        }
        Ok(())
    }

    fn cuts_cache(&self, group: &str) -> PathBuf {
        self.cache_dir(group).join(CUTS_CACHE)
    }

    /// Appends `cuts` to the cache file and fsyncs it.
    fn cache_cuts(&self, group: &str, cuts: &[Cut]) -> Result<()> {
        let d = self.cache_dir(group);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let p = self.cuts_cache(group);
        let new = !p.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        let mut text = String::new();
        for c in cuts {
            text.push_str(&serde_json::to_string(c)?);
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .with_context(|| format!("appending to {}", p.display()))?;
        if new {
            fsync_dir(&d)?;
        }
        Ok(())
    }

    /// The cached cuts by key name. Lines that do not parse (a torn last line, a damaged
    /// file) are skipped: whatever the cache lacks is read from the store.
    fn cached_cuts(&self, group: &str) -> HashMap<String, Cut> {
        let text = fs::read_to_string(self.cuts_cache(group)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Cut>(l).ok())
            .map(|c| (cut_key_name(&c), c))
            .collect()
    }

    /// Every cut of `group` in the object store, oldest first.
    pub fn cuts(&self, group: &Group) -> Result<Vec<Cut>> {
        let prefix = self.cuts_prefix(&group.name);
        let keys = self
            .rt
            .block_on(self.store.list(&prefix))
            .with_context(|| format!("listing {prefix} in {}", self.store))?;
        let mut cached = self.cached_cuts(&group.name);
        let mut cuts = Vec::new();
        let mut fetched = Vec::new();
        for key in keys {
            let Some(name) = key.filename().filter(|n| !n.ends_with(".crc32c")) else {
                continue;
            };
            if let Some(c) = cached.remove(name) {
                cuts.push(c);
                continue;
            }
            // None: a put that did not finish (no checksum yet), never reported.
            if let Some(c) = self.get::<Cut>(&key)? {
                if cut_key_name(&c) != name {
                    bail!(
                        "{key} in {} holds cut {} at {}",
                        self.store,
                        c.name,
                        c.time_us
                    );
                }
                fetched.push(c.clone());
                cuts.push(c);
            }
        }
        if !fetched.is_empty() {
            if let Err(e) = self.cache_cuts(&group.name, &fetched) {
                eprintln!(
                    "strata: warning: caching the cuts of group {}: {e:#}",
                    group.name
                );
            }
        }
        cuts.sort_by(|a, b| (a.time_us, &a.name).cmp(&(b.time_us, &b.name)));
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
    fn groups_and_cuts_live_in_the_object_store_and_survive_the_cache() -> Result<()> {
        let d = tempfile::tempdir()?;
        let remote = d.path().join("remote");
        let gs = GroupStore::with_store(d.path(), Store::local(&remote)?)?;
        let g = Group {
            name: "bank".into(),
            members: vec![],
            every_ms: Some(1000),
        };
        gs.create(&g)?;
        assert!(gs.create(&g).is_err(), "created twice");
        assert_eq!(gs.list()?, vec![g.clone()]);
        gs.add_cut(&g, &cut("two", 2_000_000))?;
        gs.add_cut(&g, &cut("one", 1_000_000))?;
        assert!(remote
            .join("groups/bank/cuts/00000000000001000000-one")
            .exists());
        let both = vec![cut("one", 1_000_000), cut("two", 2_000_000)];
        assert_eq!(gs.cuts(&g)?, both);

        // A torn cache line is skipped; the store has the cut.
        let mut f = OpenOptions::new()
            .append(true)
            .open(gs.cuts_cache("bank"))?;
        f.write_all(b"{\"name\":\"thr")?;
        assert_eq!(gs.cuts(&g)?, both);

        // The cluster directory's groups/ lost: everything comes back from the store.
        fs::remove_dir_all(d.path().join(GROUPS))?;
        assert_eq!(gs.load("bank")?, g);
        assert_eq!(gs.list()?, vec![g.clone()]);
        let cuts = gs.cuts(&g)?;
        assert_eq!(cuts, both);
        assert_eq!(gs.cached_cuts("bank").len(), 2, "cached again");
        assert_eq!(find_cut(&g, &cuts, "one")?.name, "one");
        assert_eq!(find_cut(&g, &cuts, "@1")?.name, "one");
        assert_eq!(find_cut(&g, &cuts, "@5")?.name, "two");
        assert!(find_cut(&g, &cuts, "@0").is_err());

        // A damaged cut object is an error, not a silently different cut.
        let obj = remote.join("groups/bank/cuts/00000000000002000000-two");
        let mut bytes = fs::read(&obj)?;
        bytes[3] ^= 1;
        fs::write(&obj, bytes)?;
        fs::remove_dir_all(d.path().join(GROUPS))?;
        let e = format!("{:#}", gs.cuts(&g).unwrap_err());
        assert!(e.contains("damaged"), "{e}");
        Ok(())
    }
}
