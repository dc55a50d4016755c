//! The set of timelines a safekeeper holds, kept under `<datadir>/<tenant>/<timeline>/`, and
//! their lifecycle: opened on first use, offloaded while open, quarantined when damaged,
//! recovered from the peers, deleted on request ([`crate::delete`]).
//!
//! A timeline is verified before it is opened (control file checks and every WAL record up to
//! the persisted flush LSN); a damaged one is quarantined and rebuilt from the peers, see
//! [`crate::quarantine`] and [`crate::recovery`]. Damage a reader meets later is verified on
//! disk in the background ([`Timelines::report_bad_wal`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tracing::{error, info, info_span, warn, Instrument};

use crate::acceptor::{Acceptor, AcceptorError, GreetingInfo};
use crate::config::ServiceConfig;
use crate::convert::parse_ids;
use crate::ids::TenantTimeline;
use crate::timeline::Timeline;

/// The open timelines of one safekeeper and the ones being quarantined or recovered.
pub struct Timelines {
    node_id: u64,
    datadir: PathBuf,
    open: Mutex<HashMap<TenantTimeline, Arc<Timeline>>>,
    config: ServiceConfig,
    /// Starts each opened timeline's offload task (absent outside a tokio runtime).
    runtime: Option<tokio::runtime::Handle>,
    /// Timelines being recovered from peers right now.
    recovering: Mutex<HashSet<TenantTimeline>>,
    /// Quarantined timelines not yet recovered, and what was wrong.
    quarantined: Mutex<HashMap<TenantTimeline, String>>,
    /// This, for the tasks it starts.
    me: Weak<Timelines>,
}

impl Timelines {
    /// The timelines of node `node_id` in `datadir` (none is opened yet: see
    /// [`Timelines::open_all`]). Inside a tokio runtime, every timeline opened gets an
    /// offload task (see [`crate::offload`]).
    pub fn new(node_id: u64, datadir: PathBuf, config: ServiceConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Timelines {
            node_id,
            datadir,
            open: Mutex::new(HashMap::new()),
            config,
            runtime: tokio::runtime::Handle::try_current().ok(),
            recovering: Mutex::new(HashSet::new()),
            quarantined: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Opens every timeline on disk, so that their offload tasks run before any proposer
    /// or reader connects.
    ///
    /// Damaged timelines are quarantined (and recovered in the background with `--peers`), as
    /// are the ones quarantined before a restart and not recovered yet.
    pub fn open_all(&self) {
        for id in self.timelines_on_disk() {
            if let Err(e) = self.timeline(id, None) {
                warn!(timeline = %id, %e, "could not open timeline");
            }
        }
        for (t, l) in crate::quarantine::pending_on_disk(&self.datadir) {
            if let Ok(id) = parse_ids(&t, &l) {
                if self.quarantine_reason(id).is_some() {
                    continue; // quarantined just now, its recovery already started
                }
                warn!(timeline = %id, "timeline was quarantined before the restart and is not recovered yet");
                self.start_recovery(id);
            }
        }
    }

    /// The open timelines.
    pub fn open_timelines(&self) -> Vec<Arc<Timeline>> {
        self.lock_map().values().cloned().collect()
    }

    /// The timeline, opened from disk if it exists there; `None` if it does not.
    pub fn existing_timeline(
        &self,
        id: TenantTimeline,
    ) -> Result<Option<Arc<Timeline>>, AcceptorError> {
        self.timeline(id, None)
    }

    /// The timelines in the data directory (`<tenant>/<timeline>/` with a control file).
    pub fn timelines_on_disk(&self) -> Vec<TenantTimeline> {
        let mut found = Vec::new();
        let Ok(tenants) = std::fs::read_dir(&self.datadir) else {
            return found;
        };
        for tenant in tenants.flatten() {
            let Ok(timelines) = std::fs::read_dir(tenant.path()) else {
                continue;
            };
            for timeline in timelines.flatten() {
                let (Some(t), Some(l)) = (
                    tenant.file_name().to_str().map(str::to_string),
                    timeline.file_name().to_str().map(str::to_string),
                ) else {
                    continue;
                };
                if let Ok(id) = parse_ids(&t, &l) {
                    if timeline
                        .path()
                        .join(crate::control_file::CONTROL_FILE_NAME)
                        .exists()
                    {
                        found.push(id);
                    }
                }
            }
        }
        found.sort_by_key(|id| id.to_string());
        found
    }

    /// Persists every open timeline's state (clean shutdown; a crash is fine too, just slower
    /// to recover).
    pub fn shutdown(&self) {
        for tl in self.open_timelines() {
            if let Err(e) = tl.lock().persist_now() {
                warn!(timeline = %tl.id, %e, "could not persist timeline state at shutdown");
            }
        }
    }

    pub(crate) fn lock_map(&self) -> MutexGuard<'_, HashMap<TenantTimeline, Arc<Timeline>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of timeline `id`.
    pub(crate) fn timeline_dir(&self, id: TenantTimeline) -> PathBuf {
        self.datadir
            .join(id.tenant.to_string())
            .join(id.timeline.to_string())
    }

    pub(crate) fn recovering(&self) -> MutexGuard<'_, HashSet<TenantTimeline>> {
        self.recovering.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn quarantined(&self) -> MutexGuard<'_, HashMap<TenantTimeline, String>> {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the timeline is quarantined here, if it is.
    pub fn quarantine_reason(&self, id: TenantTimeline) -> Option<String> {
        self.quarantined().get(&id).cloned()
    }

    /// The error for a greeting of a quarantined timeline.
    fn quarantined_error(id: TenantTimeline, reason: &str) -> AcceptorError {
        AcceptorError::Invalid(format!(
            "timeline {id} is quarantined on this safekeeper ({reason}); it takes part again \
             once it is recovered from the peers"
        ))
    }

    /// Recovers quarantined timeline `id` from the peers in the background (nothing without
    /// `--peers` or a runtime).
    pub(crate) fn start_recovery(&self, id: TenantTimeline) {
        if self.config.peers.is_empty() {
            error!(timeline = %id, "timeline is quarantined and no --peers are configured to recover it from: restore it by hand");
            return;
        }
        if let (Some(rt), Some(me)) = (&self.runtime, self.me.upgrade()) {
            let span = info_span!("recovery", tenant = %id.tenant, timeline = %id.timeline);
            rt.spawn(crate::recovery::recover_in_background(me, id, None).instrument(span));
        }
    }

    /// A reader of `tl` met a bad record (`what`): verifies the WAL on disk up to the durable
    /// LSN in the background and quarantines the timeline if the damage is confirmed.
    pub fn report_bad_wal(&self, tl: &Arc<Timeline>, what: String) {
        if !tl.begin_check() {
            return;
        }
        let (Some(rt), Some(me)) = (self.runtime.clone(), self.me.upgrade()) else {
            tl.end_check();
            return;
        };
        let tl = tl.clone();
        rt.spawn(async move {
            warn!(timeline = %tl.id, "a reader met bad WAL ({what}); verifying the timeline on disk");
            let (dir, bound) = (tl.wal_dir(), tl.lsns().0);
            let r = tokio::task::spawn_blocking(move || {
                crate::quarantine::verify(&dir, Some(bound))
            })
            .await;
            tl.end_check();
            match r {
                Ok(Ok(Err(c))) => me.quarantine_open(tl, c),
                Ok(Ok(Ok(_))) => {
                    info!(timeline = %tl.id, "the WAL on disk verified; the bad read was not local damage")
                }
                Ok(Err(e)) => warn!(timeline = %tl.id, %e, "could not verify the timeline"),
                Err(e) => warn!(timeline = %tl.id, %e, "verification task failed"),
            }
        });
    }

    /// Damage confirmed in open timeline `tl`: out of the map at once; once every user let go
    /// of it (its WAL writer thread stopped), its directory is quarantined and recovered.
    fn quarantine_open(&self, tl: Arc<Timeline>, c: crate::quarantine::Corruption) {
        let id = tl.id;
        {
            let mut map = self.lock_map();
            if tl.mark_quarantined() {
                return;
            }
            if map.get(&id).is_some_and(|t| Arc::ptr_eq(t, &tl)) {
                map.remove(&id);
            }
            self.quarantined().insert(id, c.to_string());
        }
        error!(timeline = %id, "damage confirmed on disk: {c}; the timeline is quarantined once its sessions end");
        let weak = Arc::downgrade(&tl);
        drop(tl);
        if let (Some(rt), Some(me)) = (&self.runtime, self.me.upgrade()) {
            let span = info_span!("recovery", tenant = %id.tenant, timeline = %id.timeline);
            rt.spawn(
                crate::recovery::recover_in_background(me, id, Some((weak, c))).instrument(span),
            );
        }
    }

    /// The open timeline, opened from disk if it exists there, created if `create` is given.
    pub(crate) fn timeline(
        &self,
        id: TenantTimeline,
        create: Option<&GreetingInfo>,
    ) -> Result<Option<Arc<Timeline>>, AcceptorError> {
        let mut map = self.lock_map();
        if let Some(tl) = map.get(&id) {
            if let Some(g) = create {
                tl.lock().greet(g)?;
            }
            return Ok(Some(tl.clone()));
        }
        if let Some(reason) = self.quarantine_reason(id) {
            return match create {
                Some(_) => Err(Self::quarantined_error(id, &reason)),
                None => Ok(None),
            };
        }
        let dir = self.timeline_dir(id);
        match crate::quarantine::verify(&dir, None) {
            Ok(Ok(_)) => {}
            Ok(Err(c)) => {
                let moved =
                    crate::quarantine::quarantine(&dir, &c).map_err(|e| AcceptorError::Io {
                        path: e.path,
                        source: std::io::Error::other(e.message),
                    })?;
                let reason = format!("{c}; kept in {}", moved.display());
                self.quarantined().insert(id, reason.clone());
                self.start_recovery(id);
                return match create {
                    Some(_) => Err(Self::quarantined_error(id, &reason)),
                    None => Ok(None),
                };
            }
            Err(e) => {
                return Err(AcceptorError::Io {
                    path: e.path,
                    source: std::io::Error::other(e.message),
                })
            }
        }
        let acceptor = match create {
            Some(g) => Some(Acceptor::open_or_create(&dir, id, g)?),
            None => Acceptor::open(&dir, id)?,
        };
        Ok(acceptor.map(|a| {
            info!(timeline = %id, dir = %dir.display(), flush_lsn = %a.state().flush_lsn, term = a.state().term, "timeline opened");
            let tl = Timeline::new(a);
            map.insert(id, tl.clone());
            if let Some(rt) = &self.runtime {
                let span = info_span!("offload", tenant = %id.tenant, timeline = %id.timeline);
                rt.spawn(
                    crate::offload::run(tl.clone(), self.node_id, self.config.clone())
                        .instrument(span),
                );
            }
            tl
        }))
    }
}
