//! Retention: which history each timeline must keep, LSN leases, and GC of a tenant's
//! timelines (the storage side is [`crate::timeline::gc`]).
//!
//! The GC cutoff of a timeline is the minimum of
//!
//! - the PITR window: the newest commit's time minus the tenant's `pitr_interval`, as an LSN
//!   through the commit-time index (the end of the last commit at or before that time); the
//!   timeline's start if no commit is that old;
//! - the branch point of every child branch (a child reads its parent as of that LSN);
//! - the LSN of every unexpired lease.
//!
//! History below the cutoff may be removed; reads, basebackups, branches and leases below it
//! are refused with an error naming it. The cutoff never moves backwards.
//!
//! Leases (`leases.toml` in the timeline directory, replaced atomically) keep an LSN readable
//! until they expire, e.g. for a compute started at an older LSN or a backup in progress.
//! Expired leases stop counting and are dropped the next time the list is stored.
//!
//! Locking: GC of a tenant holds the tenant's `changes` lock (no branch appears meanwhile),
//! then per timeline its lease list (no lease appears meanwhile), then the timeline's write
//! lock while it writes images and removes layers.

use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layer_format::Lsn;
use serde::{Deserialize, Serialize};
use tracing::info;
use walproto::ids::TimelineId;

use super::error::{Result, TenantError};
use super::handle::TimelineHandle;
use super::layout::write_atomic;
use super::Tenant;
use crate::ingest::nonpage::read;
use crate::timeline::{GcReport, Timeline};

pub const LEASES_FILE: &str = "leases.toml";

/// The longest lease one request can take.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(30 * 86400);

/// The longest owner name a lease may carry.
pub const MAX_LEASE_OWNER_LEN: usize = 200;

/// One lease: keeps `lsn` readable until `expires_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `X/Y` as Postgres prints LSNs.
    pub lsn: String,
    pub expires_unix_ms: u64,
    /// Who holds it (`compute:<name>` for a lazy compute's page filesystem); empty: a user.
    /// A lease is one (LSN, owner): each holder renews and revokes only its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

impl Lease {
    pub fn lsn(&self) -> Option<Lsn> {
        self.lsn.parse().ok()
    }

    fn is(&self, lsn: Lsn, owner: &str) -> bool {
        self.lsn() == Some(lsn) && self.owner == owner
    }
}

/// An unexpired lease as `ListLeases` shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActiveLease {
    pub lsn: Lsn,
    pub expires_unix_ms: u64,
    pub owner: String,
}

fn check_owner(owner: &str) -> Result<()> {
    if owner.len() > MAX_LEASE_OWNER_LEN || owner.chars().any(char::is_control) {
        return Err(TenantError::InvalidArgument(format!(
            "lease owner {owner:?}: at most {MAX_LEASE_OWNER_LEN} bytes, no control characters"
        )));
    }
    Ok(())
}

/// The leases of one timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Leases {
    pub lease: Vec<Lease>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Leases {
    /// Reads `dir/leases.toml` (none: no leases).
    pub fn load(dir: &Path) -> Result<Leases> {
        let path = dir.join(LEASES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Leases::default()),
            Err(e) => return Err(TenantError::io("read", &path)(e)),
        };
        let l: Leases = toml::from_str(&text)
            .map_err(|e| TenantError::InvalidArgument(format!("{}: {e}", path.display())))?;
        for x in &l.lease {
            if x.lsn().is_none() {
                return Err(TenantError::InvalidArgument(format!(
                    "{}: bad lease LSN {:?}",
                    path.display(),
                    x.lsn
                )));
            }
        }
        Ok(l)
    }

    fn store(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string(self).expect("a list of strings and numbers serializes");
        write_atomic(&dir.join(LEASES_FILE), text.as_bytes())
    }

    /// The unexpired leases' LSNs.
    pub fn active(&self, now_ms: u64) -> Vec<Lsn> {
        self.lease
            .iter()
            .filter(|l| l.expires_unix_ms > now_ms)
            .filter_map(|l| l.lsn())
            .collect()
    }
}

/// Why a timeline's cutoff is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutoffParts {
    /// From the PITR window (the start if no commit is old enough).
    pub pitr_lsn: Lsn,
    /// Branch points of child branches.
    pub branch_points: Vec<Lsn>,
    /// Unexpired leases.
    pub leases: Vec<Lsn>,
    /// The minimum of the above.
    pub cutoff: Lsn,
}

/// What GC did to one timeline.
#[derive(Clone, Debug)]
pub struct TimelineGc {
    pub timeline_id: TimelineId,
    pub parts: CutoffParts,
    pub report: GcReport,
}

fn timeline_err(tl: &Timeline) -> impl FnOnce(crate::timeline::TimelineError) -> TenantError {
    TenantError::timeline(format!("reading {}", tl.dir().display()))
}

/// The newest indexed commit's time (Postgres µs), if any.
fn newest_commit_time(tl: &Timeline) -> Result<Option<i64>> {
    let at = tl.last_record_end();
    let newest = read::commit_count_at(tl, at).map_err(timeline_err(tl))?;
    Ok(newest.map(|(_, e)| e.max_time))
}

/// The LSN the PITR window starts at: the end of the last commit at or before the newest
/// commit's time minus `pitr`; the timeline's start if there is none.
pub fn pitr_cutoff(tl: &Timeline, pitr: Duration) -> Result<Lsn> {
    let start = tl.start_lsn();
    let Some(newest) = newest_commit_time(tl)? else {
        return Ok(start);
    };
    let t = newest.saturating_sub(pitr.as_micros().min(i64::MAX as u128) as i64);
    let lsn = read::lsn_for_timestamp(tl, t).map_err(timeline_err(tl))?;
    Ok(lsn.unwrap_or(start).max(start))
}

impl TimelineHandle {
    fn leases_locked(&self) -> MutexGuard<'_, Leases> {
        self.leases().lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unexpired leases' LSNs.
    pub fn active_leases(&self) -> Vec<Lsn> {
        self.leases_locked().active(now_unix_ms())
    }

    /// A user's lease (no owner): see [`Self::create_owned_lease`].
    pub fn create_lease(&self, lsn: Lsn, ttl: Duration) -> Result<u64> {
        self.create_owned_lease(lsn, ttl, "")
    }

    /// Keeps `lsn` readable for `ttl` on behalf of `owner` (empty: a user); returns the expiry
    /// (Unix ms). A lease of the same owner on the LSN is extended; other owners' leases there
    /// are left alone. The LSN must be in `[GC cutoff, last record end]`.
    pub fn create_owned_lease(&self, lsn: Lsn, ttl: Duration, owner: &str) -> Result<u64> {
        check_owner(owner)?;
        if ttl.is_zero() || ttl > MAX_LEASE_TTL {
            return Err(TenantError::InvalidArgument(format!(
                "lease TTL {ttl:?}: must be more than 0 and at most {MAX_LEASE_TTL:?}"
            )));
        }
        let mut leases = self.leases_locked();
        let (start, cutoff, end) =
            self.read(|t| (t.start_lsn(), t.gc_cutoff_lsn(), t.last_record_end()));
        let name = format!("{}/{}", self.tenant_id(), self.timeline_id());
        // Below the start there never was history here: not GC's doing.
        if lsn < start {
            return Err(TenantError::OutOfRange(format!(
                "LSN {lsn} is below timeline {name}'s start {start}, where its history begins: \
                 a lease can be taken at {}..={end}",
                cutoff.max(start)
            )));
        }
        if lsn < cutoff {
            return Err(TenantError::OutOfRange(format!(
                "LSN {lsn} is below timeline {name}'s GC cutoff {cutoff}: its history there is \
                 gone; a lease can be taken at {cutoff}..={end}"
            )));
        }
        if lsn > end {
            return Err(TenantError::OutOfRange(format!(
                "LSN {lsn} is beyond timeline {name}'s last record end {end}: a lease can be \
                 taken at {cutoff}..={end}"
            )));
        }
        let now = now_unix_ms();
        let expires = now.saturating_add(ttl.as_millis() as u64);
        let mut new = leases.clone();
        new.lease.retain(|l| l.expires_unix_ms > now);
        match new.lease.iter_mut().find(|l| l.is(lsn, owner)) {
            Some(l) => l.expires_unix_ms = l.expires_unix_ms.max(expires),
            None => new.lease.push(Lease {
                lsn: lsn.to_string(),
                expires_unix_ms: expires,
                owner: owner.to_string(),
            }),
        }
        new.store(self.dir())?;
        let got = new
            .lease
            .iter()
            .find(|l| l.is(lsn, owner))
            .map_or(expires, |l| l.expires_unix_ms);
        *leases = new;
        info!(timeline = %name, %lsn, owner, expires_unix_ms = got, "lease created");
        Ok(got)
    }

    /// The unexpired leases, lowest LSN first.
    pub fn list_leases(&self) -> Vec<ActiveLease> {
        let now = now_unix_ms();
        let mut v: Vec<ActiveLease> = self
            .leases_locked()
            .lease
            .iter()
            .filter(|l| l.expires_unix_ms > now)
            .filter_map(|l| {
                Some(ActiveLease {
                    lsn: l.lsn()?,
                    expires_unix_ms: l.expires_unix_ms,
                    owner: l.owner.clone(),
                })
            })
            .collect();
        v.sort();
        v
    }

    /// Ends a user's lease (no owner) on `lsn`: see [`Self::revoke_owned_lease`].
    pub fn revoke_lease(&self, lsn: Lsn) -> Result<()> {
        self.revoke_owned_lease(lsn, "")
    }

    /// Ends `owner`'s lease on `lsn` now (empty: the user's); stored before GC stops counting
    /// it. Other owners' leases on `lsn` stay. NotFound if `owner` has no unexpired lease on
    /// `lsn`.
    pub fn revoke_owned_lease(&self, lsn: Lsn, owner: &str) -> Result<()> {
        let mut leases = self.leases_locked();
        let now = now_unix_ms();
        let mut new = leases.clone();
        new.lease.retain(|l| l.expires_unix_ms > now);
        let before = new.lease.len();
        new.lease.retain(|l| !l.is(lsn, owner));
        if new.lease.len() == before {
            let whose = if owner.is_empty() {
                "no lease without an owner".to_string()
            } else {
                format!("no lease of {owner:?}")
            };
            return Err(TenantError::NotFound(format!(
                "timeline {}/{} has {whose} on {lsn}",
                self.tenant_id(),
                self.timeline_id()
            )));
        }
        new.store(self.dir())?;
        *leases = new;
        info!(tenant = %self.tenant_id(), timeline = %self.timeline_id(), %lsn, owner,
              "lease revoked");
        Ok(())
    }
}

impl Tenant {
    /// Where `h`'s GC cutoff would be now, and why.
    pub fn gc_cutoff(&self, h: &TimelineHandle) -> Result<CutoffParts> {
        let leases = h.active_leases();
        self.cutoff_with(h, leases)
    }

    /// The cutoff given the unexpired leases (call with the `changes` lock held for a
    /// consistent set of branches).
    fn cutoff_with(&self, h: &TimelineHandle, leases: Vec<Lsn>) -> Result<CutoffParts> {
        let pitr = self.conf().pitr_interval();
        let pitr_lsn = h.read(|t| pitr_cutoff(t, pitr))?;
        let branch_points: Vec<Lsn> = self
            .timelines()
            .iter()
            .filter(|c| {
                c.parent()
                    .is_some_and(|p| p.timeline_id() == h.timeline_id())
            })
            .filter_map(|c| c.read(|t| t.ancestor_link().map(|(_, l)| l)))
            .collect();
        let cutoff = branch_points
            .iter()
            .chain(leases.iter())
            .copied()
            .fold(pitr_lsn, Lsn::min);
        Ok(CutoffParts {
            pitr_lsn,
            branch_points,
            leases,
            cutoff,
        })
    }

    /// Collects garbage on `timeline` (every timeline if `None`). Waits for a GC of the
    /// tenant already running (GC holds the tenant's `changes` lock): one GC of a tenant
    /// at a time.
    pub fn gc(&self, timeline: Option<TimelineId>) -> Result<Vec<TimelineGc>> {
        let changes = super::lock(&self.changes);
        self.gc_locked(timeline, changes)
    }

    /// GC of every timeline unless the tenant is busy (a GC, a branch being created, an
    /// import or a deletion holds its `changes` lock): `None` then, for the periodic GC to
    /// try again at its next round instead of queueing behind the other GC.
    pub fn try_gc(&self) -> Option<Result<Vec<TimelineGc>>> {
        let changes = match self.changes.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.gc_locked(None, changes))
    }

    fn gc_locked(
        &self,
        timeline: Option<TimelineId>,
        _changes: MutexGuard<'_, ()>,
    ) -> Result<Vec<TimelineGc>> {
        let handles = match timeline {
            Some(id) => vec![self.timeline(id)?],
            None => self.timelines(),
        };
        let mut out = Vec::new();
        for h in handles {
            // No lease appears while the cutoff is computed and applied.
            let leases = h.leases_locked();
            let parts = self.cutoff_with(&h, leases.active(now_unix_ms()))?;
            let ctx = format!("GC of timeline {}/{}", self.id, h.timeline_id());
            let report = h.with_ingest(|w| {
                w.timeline_mut()
                    .gc(parts.cutoff)
                    .map_err(TenantError::timeline(ctx))
            })?;
            info!(tenant = %self.id, timeline = %h.timeline_id(), cutoff = %report.cutoff_lsn,
                  image_lsn = %report.image_lsn, removed = report.layers_removed,
                  bytes = report.bytes_removed, "GC done");
            drop(leases);
            out.push(TimelineGc {
                timeline_id: h.timeline_id(),
                parts,
                report,
            });
        }
        Ok(out)
    }
}
