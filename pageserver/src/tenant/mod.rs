//! Tenants and their timelines on one pageserver: creation (empty tenant, timeline by import
//! of a data directory, branch of a timeline at an LSN, a time or a restore point), listing,
//! deletion, and loading everything at start, each timeline at its durable state.
//!
//! - [`layout`]: the directories and the crash-safe way they are created and deleted.
//! - [`conf`]: a tenant's TOML configuration.
//! - [`ids`]: 32-hex-character ids.
//! - [`handle`]: one timeline as the service shares it (locks, WAL stream, safekeepers).
//! - [`branch`]: where a branch may start.
//! - [`gc`]: retention (PITR window, branch points, leases) and GC.
//! - [`layer_source`]: where timelines get the layers their directory lacks (restored on
//!   demand), given to the [`TenantManager`] by whoever knows the object store.
//!
//! Creations and deletions in one tenant are serialized by a per-tenant lock; reads of
//! existing timelines never wait for them.

pub mod branch;
pub mod conf;
mod delete;
pub mod error;
pub mod gc;
pub mod handle;
pub mod ids;
pub mod layer_source;
pub mod layout;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use layer_format::Lsn;
use tracing::{error, info, warn};
use walproto::ids::{TenantId, TimelineId};

pub use branch::BranchTarget;
pub use conf::TenantConf;
pub use error::{Result, TenantError};
pub use handle::{IngestStop, TimelineHandle, TimelineServiceConf, TimelineStatus, WalProgress};
pub use layer_source::{LayerSource, LocalLayers};

use crate::import::import_datadir;
use crate::timeline::ancestor::Ancestor;
use crate::timeline::{Timeline, TimelineConf, TimelineMetadata};
use layout::{
    create_dir_durable, rename_durable, tenant_dir, tenants_dir, timelines_dir, write_atomic,
    TENANT_CONF, TIMELINE_CONF, TMP_SUFFIX,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One tenant: its configuration and timelines.
pub struct Tenant {
    id: TenantId,
    dir: PathBuf,
    /// Swapped by [`Tenant::set_conf`]; read where it is used (GC, new timelines), never kept.
    conf: RwLock<TenantConf>,
    timelines: Mutex<BTreeMap<TimelineId, Arc<TimelineHandle>>>,
    /// Timelines that failed to load, with the reason (never served; kept for listings).
    broken: Mutex<BTreeMap<TimelineId, String>>,
    /// Serializes creations and deletions of timelines.
    changes: Mutex<()>,
    /// Where its timelines' layers not on the local disk come from.
    layers: Arc<dyn LayerSource>,
}

impl Tenant {
    pub fn id(&self) -> TenantId {
        self.id
    }

    /// The configuration in effect now.
    pub fn conf(&self) -> TenantConf {
        self.conf.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies `changes` (key, value) all or none: checked, written to `tenant.toml` durably,
    /// then in effect for the running tenant (its timelines get their new tunables now, GC
    /// reads the PITR window at its next run). Returns the configuration now in effect.
    pub fn set_conf(&self, changes: &[(String, String)]) -> Result<TenantConf> {
        // Serialized with branch creation: a new timeline opens with the configuration that
        // is in effect, not one replaced while it was being made.
        let _changes = lock(&self.changes);
        let mut next = self.conf();
        for (k, v) in changes {
            next.set(k, v)?;
        }
        write_atomic(&self.dir.join(TENANT_CONF), next.to_toml().as_bytes())?;
        *self.conf.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        let tl_conf = next.timeline_conf();
        for h in self.timelines() {
            h.with_ingest(|w| w.timeline_mut().set_conf(tl_conf.clone()));
        }
        info!(tenant = %self.id, conf = %next.to_toml().replace('\n', "; "), "tenant configuration changed");
        Ok(next)
    }

    pub fn timelines(&self) -> Vec<Arc<TimelineHandle>> {
        lock(&self.timelines).values().cloned().collect()
    }

    /// Timelines that could not be loaded, and why.
    pub fn broken_timelines(&self) -> BTreeMap<TimelineId, String> {
        lock(&self.broken).clone()
    }

    pub fn timeline(&self, id: TimelineId) -> Result<Arc<TimelineHandle>> {
        if let Some(t) = lock(&self.timelines).get(&id) {
            return Ok(t.clone());
        }
        if let Some(why) = lock(&self.broken).get(&id) {
            return Err(TenantError::FailedPrecondition(format!(
                "timeline {}/{id} failed to load: {why}",
                self.id
            )));
        }
        Err(TenantError::NotFound(format!(
            "tenant {} has no timeline {id}",
            self.id
        )))
    }

    fn timelines_dir(&self) -> PathBuf {
        timelines_dir(&self.dir)
    }

    fn timeline_dir(&self, id: TimelineId) -> PathBuf {
        layout::timeline_dir(&self.timelines_dir(), id)
    }

    /// Loads every timeline in the directory, parents before branches. A timeline that fails
    /// (or whose ancestor failed) is logged and listed as broken.
    fn load_timelines(&self) -> Result<()> {
        let dir = self.timelines_dir();
        let mut metas: BTreeMap<TimelineId, TimelineMetadata> = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for e in std::fs::read_dir(&dir).map_err(TenantError::io("list", &dir))? {
            let e = e.map_err(TenantError::io("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                // An interrupted creation or deletion.
                info!(path = %e.path().display(), "removing an unfinished timeline directory");
                std::fs::remove_dir_all(e.path()).map_err(TenantError::io("remove", e.path()))?;
                continue;
            }
            let Ok(id) = name.parse::<TimelineId>() else {
                warn!(path = %e.path().display(), "ignoring an entry that is not a timeline id");
                continue;
            };
            match TimelineMetadata::load(&e.path()) {
                Ok(Some(m)) => {
                    metas.insert(id, m);
                }
                Ok(None) => {
                    broken.insert(id, "no metadata file".to_string());
                }
                Err(err) => {
                    broken.insert(id, err.to_string());
                }
            }
        }
        let tl_conf = self.conf().timeline_conf();
        // Each timeline's ancestor, as the metadata names it (parsed once, here).
        let mut pending: BTreeMap<TimelineId, Option<TimelineId>> = BTreeMap::new();
        for (id, m) in metas {
            match m.ancestor.map(|(a, _)| a.parse::<TimelineId>()).transpose() {
                Ok(ancestor) => {
                    pending.insert(id, ancestor);
                }
                Err(e) => {
                    broken.insert(id, format!("its metadata names no valid ancestor: {e}"));
                }
            }
        }
        // Parents first: repeatedly open the timelines whose ancestor is open (or absent).
        while !pending.is_empty() {
            let ready: Vec<TimelineId> = pending
                .iter()
                .filter(|(_, ancestor)| match ancestor {
                    None => true,
                    Some(a) => {
                        lock(&self.timelines).contains_key(a)
                            || broken.contains_key(a)
                            || !pending.contains_key(a)
                    }
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                for id in pending.keys() {
                    broken.insert(*id, "its ancestors form a cycle".into());
                }
                break;
            }
            for id in ready {
                let ancestor = pending.remove(&id).expect("listed as ready");
                let parent = match ancestor {
                    None => None,
                    Some(a) => match lock(&self.timelines).get(&a) {
                        Some(p) => Some(p.clone()),
                        None => {
                            broken.insert(id, format!("its ancestor {a} is missing or broken"));
                            continue;
                        }
                    },
                };
                match self.open_timeline(id, &self.timeline_dir(id), tl_conf.clone(), parent) {
                    Ok(h) => {
                        let s = h.status();
                        info!(tenant = %self.id, timeline = %id, start = %s.start_lsn,
                              disk_consistent = %s.disk_consistent_lsn, "timeline loaded");
                        lock(&self.timelines).insert(id, h);
                    }
                    Err(e) => {
                        broken.insert(id, e.to_string());
                    }
                }
            }
        }
        for (id, why) in &broken {
            error!(tenant = %self.id, timeline = %id, reason = %why, "timeline not loaded");
        }
        *lock(&self.broken) = broken;
        Ok(())
    }

    /// Opens the timeline in `dir` with the fetcher of its layers not there.
    fn open_timeline(
        &self,
        id: TimelineId,
        dir: &Path,
        conf: TimelineConf,
        parent: Option<Arc<TimelineHandle>>,
    ) -> Result<Arc<TimelineHandle>> {
        let fetch = self
            .layers
            .fetcher_for(dir)
            .map_err(TenantError::timeline(format!("timeline {}/{id}", self.id)))?;
        TimelineHandle::open(self.id, id, dir, conf, fetch, parent)
    }

    /// A new timeline id (given or generated) that is not taken.
    fn new_timeline_id(&self, id: Option<TimelineId>) -> Result<TimelineId> {
        let id = match id {
            Some(id) => id,
            None => ids::generate_timeline_id()?,
        };
        if lock(&self.timelines).contains_key(&id)
            || lock(&self.broken).contains_key(&id)
            || self.timeline_dir(id).exists()
        {
            return Err(TenantError::AlreadyExists(format!(
                "timeline {}/{id} already exists",
                self.id
            )));
        }
        Ok(id)
    }

    /// A fresh `.tmp` directory to build timeline `id` in.
    fn tmp_dir(&self, id: TimelineId) -> Result<PathBuf> {
        let tmp = layout::timeline_tmp_dir(&self.timelines_dir(), id);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(TenantError::io("remove", &tmp))?;
        }
        Ok(tmp)
    }

    /// Moves a finished timeline directory into place and opens it.
    fn install(
        &self,
        id: TimelineId,
        tmp: &Path,
        safekeepers: Vec<String>,
        parent: Option<Arc<TimelineHandle>>,
    ) -> Result<Arc<TimelineHandle>> {
        let conf = TimelineServiceConf { safekeepers };
        let text = toml::to_string(&conf).expect("a list of strings serializes");
        write_atomic(&tmp.join(TIMELINE_CONF), text.as_bytes())?;
        let dir = self.timeline_dir(id);
        rename_durable(tmp, &dir)?;
        let h = self.open_timeline(id, &dir, self.conf().timeline_conf(), parent)?;
        lock(&self.timelines).insert(id, h.clone());
        Ok(h)
    }

    /// Creates a timeline from a cleanly shut down data directory, at its checkpoint LSN
    /// (or `lsn`), or from a pg_basebackup output (no `lsn`), readable from the backup's end.
    pub fn import_timeline(
        &self,
        id: Option<TimelineId>,
        datadir: &Path,
        lsn: Option<Lsn>,
        safekeepers: Vec<String>,
    ) -> Result<Arc<TimelineHandle>> {
        for a in &safekeepers {
            handle::check_safekeeper_addr(a)?;
        }
        let _changes = lock(&self.changes);
        let id = self.new_timeline_id(id)?;
        let tmp = self.tmp_dir(id)?;
        // Without an LSN either kind of data directory: a clean shutdown, or a pg_basebackup
        // output (with a backup_label) whose WAL is ingested through the backup's end.
        let imported = match lsn {
            None => crate::import::import(datadir, &tmp, self.conf().timeline_conf()),
            Some(_) => import_datadir(datadir, &tmp, self.conf().timeline_conf(), lsn),
        };
        let (tl, rep) = imported.map_err(|source| TenantError::Import {
            datadir: datadir.to_path_buf(),
            source: Box::new(source),
        })?;
        drop(tl);
        info!(tenant = %self.id, timeline = %id, lsn = %rep.lsn, blocks = rep.blocks,
              datadir = %datadir.display(), "imported a data directory");
        self.install(id, &tmp, safekeepers, None)
    }

    /// Creates a branch of `parent_id` at `target`.
    pub fn create_branch(
        &self,
        parent_id: TimelineId,
        id: Option<TimelineId>,
        target: &BranchTarget,
        safekeepers: Vec<String>,
    ) -> Result<Arc<TimelineHandle>> {
        for a in &safekeepers {
            handle::check_safekeeper_addr(a)?;
        }
        let _changes = lock(&self.changes);
        let parent = self.timeline(parent_id)?;
        let name = format!("{}/{parent_id}", self.id);
        let lsn = parent.read(|t| branch::resolve(t, &name, target))?;
        // The branch reads the parent's layers as of `lsn`: they must hold all of it.
        if parent.read(|t| t.disk_consistent_lsn()) < lsn {
            parent.flush()?;
        }
        let id = self.new_timeline_id(id)?;
        let tmp = self.tmp_dir(id)?;
        let ancestor = Ancestor {
            id: parent_id.to_string(),
            lsn,
            timeline: parent.clone(),
        };
        let tl = Timeline::create_branch(&tmp, self.conf().timeline_conf(), ancestor).map_err(
            TenantError::timeline(format!("creating branch {}/{id}", self.id)),
        )?;
        drop(tl);
        info!(tenant = %self.id, timeline = %id, parent = %parent_id, %lsn, "branch created");
        self.install(id, &tmp, safekeepers, Some(parent))
    }

    /// Deletes a timeline that has no branches.
    pub fn delete_timeline(&self, id: TimelineId) -> Result<()> {
        let _changes = lock(&self.changes);
        let known = lock(&self.timelines).contains_key(&id) || lock(&self.broken).contains_key(&id);
        if !known {
            self.timeline(id)?;
        }
        let children: Vec<TimelineId> = self
            .timelines()
            .iter()
            .filter(|t| t.parent().is_some_and(|p| p.timeline_id() == id))
            .map(|t| t.timeline_id())
            .collect();
        if !children.is_empty() {
            return Err(TenantError::FailedPrecondition(format!(
                "timeline {}/{id} has branches {children:?}; delete them first",
                self.id
            )));
        }
        lock(&self.timelines).remove(&id);
        lock(&self.broken).remove(&id);
        let dir = self.timeline_dir(id);
        let tmp = self.tmp_dir(id)?;
        rename_durable(&dir, &tmp)?;
        std::fs::remove_dir_all(&tmp).map_err(TenantError::io("remove", &tmp))?;
        info!(tenant = %self.id, timeline = %id, "timeline deleted");
        Ok(())
    }
}

/// Every tenant of a pageserver's data directory.
pub struct TenantManager {
    data_dir: PathBuf,
    tenants: RwLock<BTreeMap<TenantId, Arc<Tenant>>>,
    /// Serializes tenant creation.
    creating: Mutex<()>,
    /// Handed to every tenant (see [`layer_source`]).
    layers: Arc<dyn LayerSource>,
}

impl TenantManager {
    /// Opens `data_dir` (created if missing) and loads every tenant and timeline in it, each
    /// with all its layers local.
    pub fn load(data_dir: &Path) -> Result<TenantManager> {
        Self::load_with(data_dir, Arc::new(LocalLayers))
    }

    /// Like [`TenantManager::load`], the layers timelines lack fetched through `layers` (a
    /// pageserver with an object store: `crate::remote::RemoteLayerSource`).
    pub fn load_with(data_dir: &Path, layers: Arc<dyn LayerSource>) -> Result<TenantManager> {
        let root = tenants_dir(data_dir);
        std::fs::create_dir_all(&root).map_err(TenantError::io("create directory", &root))?;
        let mut tenants = BTreeMap::new();
        for e in std::fs::read_dir(&root).map_err(TenantError::io("list", &root))? {
            let e = e.map_err(TenantError::io("list", &root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                std::fs::remove_dir_all(e.path()).map_err(TenantError::io("remove", e.path()))?;
                continue;
            }
            let Ok(id) = name.parse::<TenantId>() else {
                warn!(path = %e.path().display(), "ignoring an entry that is not a tenant id");
                continue;
            };
            let conf_path = e.path().join(TENANT_CONF);
            let text =
                std::fs::read_to_string(&conf_path).map_err(TenantError::io("read", &conf_path))?;
            let conf = TenantConf::parse(&text, &conf_path.display().to_string())?;
            let t = Arc::new(Tenant {
                id,
                dir: e.path(),
                conf: RwLock::new(conf),
                timelines: Mutex::new(BTreeMap::new()),
                broken: Mutex::new(BTreeMap::new()),
                changes: Mutex::new(()),
                layers: layers.clone(),
            });
            t.load_timelines()?;
            tenants.insert(id, t);
        }
        Ok(TenantManager {
            data_dir: data_dir.to_path_buf(),
            tenants: RwLock::new(tenants),
            creating: Mutex::new(()),
            layers,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let g = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        g.values().cloned().collect()
    }

    pub fn tenant(&self, id: TenantId) -> Result<Arc<Tenant>> {
        let g = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = g.get(&id) {
            return Ok(t.clone());
        }
        Err(TenantError::NotFound(format!("no tenant {id}")))
    }

    pub fn timeline(&self, tenant: TenantId, timeline: TimelineId) -> Result<Arc<TimelineHandle>> {
        self.tenant(tenant)?.timeline(timeline)
    }

    /// Creates an empty tenant (id generated if not given).
    pub fn create_tenant(&self, id: Option<TenantId>, conf: TenantConf) -> Result<Arc<Tenant>> {
        conf.validate()?;
        let id = match id {
            Some(id) => id,
            None => ids::generate_tenant_id()?,
        };
        let _creating = lock(&self.creating);
        let dir = tenant_dir(&self.data_dir, id);
        if self.tenant(id).is_ok() || dir.exists() {
            return Err(TenantError::AlreadyExists(format!(
                "tenant {id} already exists"
            )));
        }
        let tmp = layout::tenant_tmp_dir(&self.data_dir, id);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(TenantError::io("remove", &tmp))?;
        }
        create_dir_durable(&timelines_dir(&tmp))?;
        write_atomic(&tmp.join(TENANT_CONF), conf.to_toml().as_bytes())?;
        rename_durable(&tmp, &dir)?;
        let t = Arc::new(Tenant {
            id,
            dir,
            conf: RwLock::new(conf),
            timelines: Mutex::new(BTreeMap::new()),
            broken: Mutex::new(BTreeMap::new()),
            changes: Mutex::new(()),
            layers: self.layers.clone(),
        });
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, t.clone());
        info!(tenant = %id, "tenant created");
        Ok(t)
    }

    /// Makes everything ingested durable (a clean shutdown). Returns the failures.
    pub fn flush_all(&self) -> Vec<TenantError> {
        let mut errs = Vec::new();
        for t in self.tenants() {
            for h in t.timelines() {
                if let Err(e) = h.flush() {
                    error!(tenant = %t.id, timeline = %h.timeline_id(), error = %e, "flush failed");
                    errs.push(e);
                }
            }
        }
        errs
    }
}
