//! Garbage collection: removes the layer files no read at or above the GC cutoff needs.
//!
//! The tenant computes the cutoff (the PITR window, branch points, leases; see
//! `crate::tenant::gc`); here the timeline
//!
//! 1. picks the *image point* P: the newest LSN ≤ the cutoff (and durable) that no delta run
//!    spans — the end of a delta run or an existing image run. An image at an LSN inside a
//!    delta run would make reads apply that run's records below the image on top of it (see
//!    [`super::compaction`]), so GC only ever cuts history at run boundaries;
//! 2. makes sure an image layer at P exists for every key: partitions not already tiled by
//!    image layers at P are materialized through the read path, exactly as compaction makes
//!    its images (a partition that cannot be rebuilt keeps its whole history);
//! 3. removes every layer whose LSN range lies at or below P (not the images at P) and whose
//!    keys all lie in key ranges the images at P cover: a read at any LSN ≥ P of such a key
//!    stops at the image (an image layer that lacks a key in its range says the key does not
//!    exist), so it never visits them. Reads at branch points and lease LSNs are reads at LSNs
//!    ≥ the cutoff ≥ P: they keep working.
//!
//! The cutoff is stored in the metadata (`gc_cutoff_lsn`): GetPage, image-value reads (and so
//! basebackups) and branch creation below it are refused with an error naming it. It only moves
//! forward.
//!
//! Crash safety is compaction's: the new image files are durable before the metadata lists
//! them; the metadata without the removed layers (and with the new cutoff) is stored before
//! any file is deleted; [`Timeline::open`] deletes unlisted files. A crash at any point leaves
//! the old or the new layer set, both complete for reads at or above the stored cutoff.

use std::ops::Range;

use layer_format::{Key, LayerDesc, LayerKind, Lsn};

use super::compaction::FailPoint;
use super::error::{Result, TimelineError};
use super::layer_map::LayerFile;
use super::Timeline;

/// What one GC of a timeline did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The cutoff now stored: reads below it are refused.
    pub cutoff_lsn: Lsn,
    /// Where history was cut: the image point (`0/0` if there was none below the cutoff).
    pub image_lsn: Lsn,
    pub image_layers_written: usize,
    pub image_bytes_written: u64,
    pub layers_removed: usize,
    pub bytes_removed: u64,
    /// Layers at or below the image point kept (keys in partitions that could not be
    /// materialized).
    pub layers_kept_below: usize,
    /// Partitions that could not be materialized at the image point.
    pub partitions_skipped: usize,
}

/// Whether the layers `tiles` (sorted by key range start) cover `range` without a gap.
fn tiled(tiles: &[Range<Key>], range: &Range<Key>) -> bool {
    let mut at = range.start;
    for kr in tiles {
        if kr.start <= at && at < kr.end {
            at = kr.end;
        }
        if at >= range.end {
            return true;
        }
    }
    at >= range.end
}

/// The parts of `range` that no range of `tiles` (sorted, disjoint) covers.
fn gaps(tiles: &[Range<Key>], range: &Range<Key>) -> Vec<Range<Key>> {
    let mut out = Vec::new();
    let mut at = range.start;
    for t in tiles {
        if t.end <= at || t.start >= range.end {
            continue;
        }
        if t.start > at {
            out.push(at..t.start);
        }
        at = at.max(t.end);
    }
    if at < range.end {
        out.push(at..range.end);
    }
    out
}

impl Timeline {
    /// The oldest LSN reads are allowed at: the start, or the GC cutoff once GC ran.
    pub fn gc_cutoff_lsn(&self) -> Lsn {
        self.meta.gc_cutoff_lsn.max(self.meta.start_lsn)
    }

    /// Refuses a read below the GC cutoff, naming it.
    pub(super) fn check_gc_cutoff(&self, key: Key, lsn: Lsn) -> Result<()> {
        let cutoff = self.meta.gc_cutoff_lsn;
        if cutoff != Lsn::INVALID && lsn < cutoff {
            return Err(TimelineError::Reconstruct {
                key,
                lsn,
                reason: format!(
                    "below the GC cutoff {cutoff}: history older than that was garbage \
                     collected; read at {cutoff}..={} instead",
                    self.last_record_end
                ),
            });
        }
        Ok(())
    }

    /// Collects garbage below `cutoff` (see the module doc). The stored cutoff becomes
    /// `max(stored, cutoff)`, clamped to the ingested history.
    pub fn gc(&mut self, cutoff: Lsn) -> Result<GcReport> {
        self.gc_with(cutoff, FailPoint::None)
    }

    /// GC with a failpoint (tests): [`FailPoint::AfterNewFiles`] stops after the images at
    /// the image point are durable but unlisted, [`FailPoint::AfterMetadata`] after the
    /// metadata without the removed layers is stored, before their files are deleted. The
    /// timeline must then be dropped and reopened.
    #[doc(hidden)]
    pub fn gc_with(&mut self, cutoff: Lsn, fp: FailPoint) -> Result<GcReport> {
        let timer = strata_metrics::Timer::start();
        let r = self.gc_now(cutoff, fp);
        crate::metrics::gc_run(timer);
        r
    }

    fn gc_now(&mut self, cutoff: Lsn, fp: FailPoint) -> Result<GcReport> {
        self.drain_background()?;
        if cutoff > self.last_record_end {
            return Err(TimelineError::Invalid(format!(
                "GC cutoff {cutoff} is beyond the last record end {}",
                self.last_record_end
            )));
        }
        let cutoff = cutoff.max(self.gc_cutoff_lsn());
        let mut rep = GcReport {
            cutoff_lsn: cutoff,
            ..GcReport::default()
        };
        let Some(p) = self.image_point(cutoff) else {
            self.store_cutoff(cutoff, &[], fp)?;
            return Ok(rep);
        };
        rep.image_lsn = p;

        // 2. Images at P for every partition not yet tiled by them.
        let parts = self.partitions()?;
        let mut skipped: Vec<Range<Key>> = Vec::new();
        let mut written = Vec::new();
        let existing = self.image_tiles(p);
        for part in parts {
            for gap in gaps(&existing, &part) {
                match self.write_image(&gap, p) {
                    Ok(w) => written.push(w),
                    Err(
                        TimelineError::Reconstruct { .. }
                        | TimelineError::Redo { .. }
                        | TimelineError::Value { .. },
                    ) => skipped.push(gap),
                    Err(e) => return Err(e),
                }
            }
        }
        rep.partitions_skipped = skipped.len();
        rep.image_layers_written = written.len();
        rep.image_bytes_written = written.iter().map(|w| w.file_size).sum();
        if fp == FailPoint::AfterNewFiles {
            return Err(TimelineError::Invalid(
                "failpoint: stopped after writing the GC images".into(),
            ));
        }
        if !written.is_empty() {
            self.writes.image_bytes += rep.image_bytes_written;
            self.writes.layer_bytes += rep.image_bytes_written;
            self.replace_layers(&[], &written, FailPoint::None)?;
        }

        // 3. Layers at or below P whose every key an image at P covers.
        let tiles = self.image_tiles(p);
        let mut remove: Vec<LayerDesc> = Vec::new();
        for l in self.layers.layers() {
            let d = &l.desc;
            let at_p = d.kind == LayerKind::Image && d.image_lsn() == p;
            if at_p || d.lsn_range.end.0 > p.0 + 1 {
                continue;
            }
            let covered = if tiled(&tiles, &d.key_range) {
                true
            } else {
                let ok = |k: Key| {
                    tiles.iter().any(|t| t.contains(&k)) && !skipped.iter().any(|s| s.contains(&k))
                };
                let mut all = true;
                match l.file()? {
                    LayerFile::Delta(dl) => {
                        for e in dl.entries() {
                            if !ok(e?.key) {
                                all = false;
                                break;
                            }
                        }
                    }
                    LayerFile::Image(img) => {
                        for k in img.keys() {
                            if !ok(k?) {
                                all = false;
                                break;
                            }
                        }
                    }
                }
                all
            };
            if covered {
                rep.layers_removed += 1;
                rep.bytes_removed += l.file_size();
                remove.push(d.clone());
            } else {
                rep.layers_kept_below += 1;
            }
        }
        self.store_cutoff(cutoff, &remove, fp)?;
        Ok(rep)
    }

    /// Stores the metadata with the new cutoff and without `remove`, then deletes their
    /// files.
    fn store_cutoff(&mut self, cutoff: Lsn, remove: &[LayerDesc], fp: FailPoint) -> Result<()> {
        if cutoff == self.meta.gc_cutoff_lsn && remove.is_empty() {
            return Ok(());
        }
        let old = self.meta.gc_cutoff_lsn;
        self.meta.gc_cutoff_lsn = cutoff;
        // The failpoint after new files has been taken above; only AfterMetadata applies here.
        let fp = match fp {
            FailPoint::AfterMetadata => FailPoint::AfterMetadata,
            _ => FailPoint::None,
        };
        let res = self.replace_layers(remove, &[], fp);
        if res.is_err() && self.meta.gc_cutoff_lsn != cutoff {
            self.meta.gc_cutoff_lsn = old;
        }
        res
    }

    /// The newest LSN ≤ `cutoff` and ≤ the disk-consistent LSN that no delta run spans and
    /// that has layers below or at it: the end of a delta run or an image run's LSN.
    fn image_point(&self, cutoff: Lsn) -> Option<Lsn> {
        let limit = cutoff.min(self.meta.disk_consistent_lsn);
        self.layers
            .runs()
            .iter()
            .map(|r| match r.kind {
                LayerKind::Image => r.lsn_range.start,
                LayerKind::Delta => Lsn(r.lsn_range.end.0.saturating_sub(1)),
            })
            .filter(|&x| x <= limit && x >= self.meta.start_lsn)
            .max()
    }

    /// Key ranges of the image layers at `lsn`, sorted.
    fn image_tiles(&self, lsn: Lsn) -> Vec<Range<Key>> {
        let mut v: Vec<Range<Key>> = self
            .layers
            .layers()
            .filter(|l| l.desc.kind == LayerKind::Image && l.desc.image_lsn() == lsn)
            .map(|l| l.desc.key_range.clone())
            .collect();
        v.sort_by_key(|r| r.start);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> Key {
        let mut x = [0u8; layer_format::KEY_SIZE];
        x[layer_format::KEY_SIZE - 1] = b;
        Key::from_bytes(x)
    }

    #[test]
    fn tiling() {
        let t = vec![k(1)..k(5), k(5)..k(9)];
        assert!(tiled(&t, &(k(2)..k(9))));
        assert!(!tiled(&t, &(k(0)..k(3))));
        assert!(!tiled(&t, &(k(2)..k(10))));
        assert!(!tiled(&[k(1)..k(3), k(4)..k(9)], &(k(2)..k(5))));
        assert_eq!(gaps(&t, &(k(0)..k(12))), vec![k(0)..k(1), k(9)..k(12)]);
        assert_eq!(gaps(&t, &(k(2)..k(8))), vec![]);
        assert_eq!(
            gaps(&[k(1)..k(3), k(4)..k(9)], &(k(2)..k(5))),
            vec![k(3)..k(4)]
        );
    }
}
