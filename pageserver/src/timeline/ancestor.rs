//! Branches: a timeline whose history begins at an LSN of another timeline, its *ancestor*.
//! Nothing is copied: the child's metadata names (ancestor id, branch LSN), its start LSN is
//! the branch LSN, and a read of key K at LSN L on the child that finds no image or
//! `will_init` record among the child's own versions continues in the ancestor at the branch
//! LSN (L is never below it) and applies the child's records on top.
//!
//! Reads below the branch LSN are refused on the child: a branch exposes its ancestor's history
//! only *as of* the branch point. Older history belongs to the ancestor and is read there; this
//! keeps what a branch pins in its ancestor to one LSN, which is what retention must keep.
//!
//! The ancestor is reached through [`AncestorTimeline`], which the owner of the timelines (the
//! tenant manager) implements with its own locking: a child read holds the child's read lock
//! and takes the ancestor's, never the other way round, so locks are always taken down the
//! branch tree towards the root and cannot deadlock.
//!
//! Compaction of a child writes image layers that claim every key of their range: the child's
//! key space therefore includes the ancestor's keys as of the branch point
//! ([`Timeline::ancestor_keys`]); the ancestor's layers must hold everything up to the branch
//! point (the tenant manager flushes the parent before it creates a branch).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use layer_format::{Key, Lsn};

use super::error::{Result, TimelineError};
use super::layer_map::LayerFile;
use super::metadata::TimelineMetadata;
use super::{Timeline, TimelineConf};

/// Access to an ancestor timeline, with whatever locking its owner uses.
pub trait AncestorTimeline: Send + Sync {
    /// Calls `f` with the ancestor, which stays readable (and unchanged below the branch
    /// point) for the duration of the call.
    fn with_timeline(&self, f: &mut dyn FnMut(&Timeline));
}

/// A child's link to its ancestor.
#[derive(Clone)]
pub struct Ancestor {
    /// The ancestor timeline's id (as the metadata stores it).
    pub id: String,
    /// The branch point: the child's start LSN.
    pub lsn: Lsn,
    pub timeline: Arc<dyn AncestorTimeline>,
}

impl std::fmt::Debug for Ancestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ancestor({} at {})", self.id, self.lsn)
    }
}

impl Ancestor {
    /// Runs `f` on the ancestor timeline and returns its result.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Timeline) -> T) -> T {
        let mut f = Some(f);
        let mut out = None;
        self.timeline.with_timeline(&mut |t| {
            if let Some(f) = f.take() {
                out = Some(f(t));
            }
        });
        out.expect("AncestorTimeline::with_timeline must call its closure")
    }
}

impl Timeline {
    /// Creates a branch in `dir`: an empty timeline whose history begins at `ancestor.lsn`
    /// of `ancestor`, attached to it.
    pub fn create_branch(dir: &Path, conf: TimelineConf, ancestor: Ancestor) -> Result<Timeline> {
        std::fs::create_dir_all(dir).map_err(TimelineError::io("create directory", dir))?;
        if TimelineMetadata::load(dir)?.is_some() {
            return Err(TimelineError::Invalid(format!(
                "{} already holds a timeline",
                dir.display()
            )));
        }
        let meta = TimelineMetadata {
            start_lsn: ancestor.lsn,
            ancestor: Some((ancestor.id.clone(), ancestor.lsn)),
            disk_consistent_lsn: ancestor.lsn,
            last_record_lsn: Lsn::INVALID,
            gc_cutoff_lsn: Lsn::INVALID,
            layers: Vec::new(),
        };
        meta.store(dir)?;
        // New: every layer it will have is written here.
        let mut tl = Timeline::open(dir, conf, None)?;
        tl.attach_ancestor(ancestor)?;
        Ok(tl)
    }

    /// The (ancestor id, branch LSN) the metadata names, if this timeline is a branch.
    pub fn ancestor_link(&self) -> Option<(&str, Lsn)> {
        self.meta
            .ancestor
            .as_ref()
            .map(|(id, lsn)| (id.as_str(), *lsn))
    }

    /// Attaches the ancestor a branch's metadata names (after [`Timeline::open`]); reads that
    /// reach the branch point fail until it is attached.
    pub fn attach_ancestor(&mut self, ancestor: Ancestor) -> Result<()> {
        match self.ancestor_link() {
            Some((id, lsn)) if id == ancestor.id && lsn == ancestor.lsn => {
                self.ancestor = Some(ancestor);
                Ok(())
            }
            Some((id, lsn)) => Err(TimelineError::Invalid(format!(
                "timeline {} branches from {id} at {lsn}, not from {} at {}",
                self.dir.display(),
                ancestor.id,
                ancestor.lsn
            ))),
            None => Err(TimelineError::Invalid(format!(
                "timeline {} is not a branch; it has no ancestor to attach",
                self.dir.display()
            ))),
        }
    }

    /// The ancestor a read that reached this timeline's start continues in; an error if the
    /// metadata names one that is not attached.
    pub(super) fn ancestor_for_read(&self, key: Key, lsn: Lsn) -> Result<Option<&Ancestor>> {
        match (&self.ancestor, self.ancestor_link()) {
            (Some(a), _) => Ok(Some(a)),
            (None, None) => Ok(None),
            (None, Some((id, at))) => Err(TimelineError::Reconstruct {
                key,
                lsn,
                reason: format!("the branch's ancestor {id} (branch point {at}) is not attached"),
            }),
        }
    }

    /// Every key the ancestors hold as of the branch point (empty for a timeline that is not
    /// a branch): the part of a branch's key space that lives in its ancestors.
    pub fn ancestor_keys(&self) -> Result<BTreeSet<Key>> {
        let Some(a) = self.ancestor_for_read(Key::MIN, self.meta.start_lsn)? else {
            return Ok(BTreeSet::new());
        };
        a.read(|t| {
            let mut keys = t.durable_keys_at(a.lsn)?;
            keys.extend(t.ancestor_keys()?);
            Ok(keys)
        })
    }

    /// Every key of the durable layers that begin at or below `lsn` (possibly more keys than
    /// exist at `lsn`, never fewer if everything up to `lsn` is durable).
    fn durable_keys_at(&self, lsn: Lsn) -> Result<BTreeSet<Key>> {
        if self.meta.disk_consistent_lsn < lsn {
            return Err(TimelineError::Invalid(format!(
                "keys at {lsn} requested, but {} is durable only up to {}",
                self.dir.display(),
                self.meta.disk_consistent_lsn
            )));
        }
        let mut keys = BTreeSet::new();
        for l in self.layers.layers() {
            if l.desc.lsn_range.start > lsn {
                continue;
            }
            match l.file()? {
                LayerFile::Delta(d) => {
                    let mut last = None;
                    for e in d.entries() {
                        let k = e?.key;
                        if last != Some(k) {
                            keys.insert(k);
                            last = Some(k);
                        }
                    }
                }
                LayerFile::Image(img) => {
                    for k in img.keys() {
                        keys.insert(k?);
                    }
                }
            }
        }
        Ok(keys)
    }
}
