//! Reading the non-page state back at an LSN.
//!
//! Everything except SLRU pages is stored as images, which [`Timeline::get_image_value`]
//! reads. SLRU pages are zero images plus Strata records ([`crate::redo::slru`]): once the read
//! path dispatches Strata records to [`crate::redo::slru::apply`], [`slru_page_at`] is a plain
//! GetPage. Until then it falls back to collecting the key's versions from the timeline's
//! layer files itself, which sees only what is durable (at or below
//! [`Timeline::disk_consistent_lsn`]; flush first).

use std::collections::BTreeMap;

use bytes::Bytes;
use layer_format::{Key, LayerKind, Lsn, RecordPayload, SlruKind, Value};

use super::counters::CheckpointState;
use super::index::{self, CommitEntry, RestorePoint};
use super::{keys, slru};
use crate::redo::{slru as slru_redo, Page};
use crate::timeline::layer_map::LayerFile;
use crate::timeline::{Timeline, TimelineError};

type Result<T> = std::result::Result<T, TimelineError>;

fn bad(key: Key, lsn: Lsn, reason: impl Into<String>) -> TimelineError {
    TimelineError::Reconstruct {
        key,
        lsn,
        reason: reason.into(),
    }
}

/// The checkpoint counters the WAL implies at `lsn`; `None` before any record set them.
pub fn checkpoint_state_at(tl: &Timeline, lsn: Lsn) -> Result<Option<CheckpointState>> {
    let key = Key::checkpoint();
    tl.get_image_value(key, lsn)?
        .map(|b| CheckpointState::decode(&b).map_err(|e| bad(key, lsn, e)))
        .transpose()
}

/// Restore points created at or below `lsn`: (name, LSN, time in Postgres microseconds).
pub fn restore_points(tl: &Timeline, lsn: Lsn) -> Result<Vec<(String, Lsn, i64)>> {
    let key = keys::restore_points();
    let Some(b) = tl.get_image_value(key, lsn)? else {
        return Ok(Vec::new());
    };
    let pts = index::decode_restore_points(&b).map_err(|e| bad(key, lsn, e))?;
    Ok(pts
        .into_iter()
        .map(|RestorePoint { name, lsn, time }| (name, lsn, time))
        .collect())
}

fn commit_entry(tl: &Timeline, n: u64, at: Lsn) -> Result<CommitEntry> {
    let key = keys::commit_entry(n).ok_or_else(|| bad(Key::MIN, at, "entry out of range"))?;
    let b = tl
        .get_image_value(key, at)?
        .ok_or_else(|| bad(key, at, format!("commit-time entry {n} is missing")))?;
    CommitEntry::decode(&b).map_err(|e| bad(key, at, e))
}

/// How many commit-time entries exist at `at`, and the newest one; `None` before the first
/// commit. The stored count is a lower bound (see [`index::COUNT_STRIDE`]): the entries after
/// it exist as a contiguous run, whose end a binary search over their existence finds.
pub fn commit_count_at(tl: &Timeline, at: Lsn) -> Result<Option<(u64, CommitEntry)>> {
    let key = keys::commit_count();
    let stored = match tl.get_image_value(key, at)? {
        Some(b) => {
            index::decode_commit_count(&b)
                .map_err(|e| bad(key, at, e))?
                .0
        }
        None => 0,
    };
    let exists = |n: u64| -> Result<bool> {
        match keys::commit_entry(n) {
            Some(k) => Ok(tl.get_image_value(k, at)?.is_some()),
            None => Ok(false),
        }
    };
    // The count n is in [stored, stored + COUNT_STRIDE): entries stored..n-1 exist, n does not.
    let (mut lo, mut hi) = (stored, stored + index::COUNT_STRIDE);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if exists(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Ok(None);
    }
    Ok(Some((lo, commit_entry(tl, lo - 1, at)?)))
}

/// The end LSN of the last commit at or before time `t` (Postgres microseconds since 2000),
/// as ingested so far; `None` if no commit is that old. With commits slightly out of time
/// order in the WAL, this is the last commit before which every commit is at or before `t`.
pub fn lsn_for_timestamp(tl: &Timeline, t: i64) -> Result<Option<Lsn>> {
    let at = tl.last_record_end();
    let Some((n, _)) = commit_count_at(tl, at)? else {
        return Ok(None);
    };
    // The number of entries whose max_time <= t (max_time is monotonic).
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if commit_entry(tl, mid, at)?.max_time <= t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Ok(None);
    }
    Ok(Some(commit_entry(tl, lo - 1, at)?.lsn))
}

/// The prepared transactions at `lsn` and their state file contents (without the CRC that
/// Postgres appends when it writes `pg_twophase/<xid>`).
pub fn prepared_xacts(tl: &Timeline, lsn: Lsn) -> Result<Vec<(u32, Bytes)>> {
    let key = keys::twophase_dir();
    let Some(b) = tl.get_image_value(key, lsn)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for xid in index::decode_u32_set(&b).map_err(|e| bad(key, lsn, e))? {
        let k = Key::two_phase(xid);
        match tl.get_image_value(k, lsn)? {
            Some(b) if !b.is_empty() => out.push((xid, b)),
            _ => return Err(bad(k, lsn, format!("prepared xact {xid} has no state"))),
        }
    }
    Ok(out)
}

/// The relmapper file of (`spc`, `db`) at `lsn`, if the WAL wrote one.
pub fn relmap_at(tl: &Timeline, spc: u32, db: u32, lsn: Lsn) -> Result<Option<Bytes>> {
    tl.get_image_value(Key::relmap(spc, db), lsn)
}

/// The segments of `slru` at `lsn` (segment number → pages).
pub fn slru_segments(tl: &Timeline, slru: SlruKind, lsn: Lsn) -> Result<BTreeMap<u32, u32>> {
    let key = keys::slru_dir(slru);
    match tl.get_image_value(key, lsn)? {
        Some(b) => slru::decode_dir(&b).map_err(|e| bad(key, lsn, e)),
        None => Ok(BTreeMap::new()),
    }
}

/// SLRU page `blkno` of segment `segno` at `lsn`, or `None` if it has no history.
pub fn slru_page_at(
    tl: &Timeline,
    slru: SlruKind,
    segno: u32,
    blkno: u32,
    lsn: Lsn,
) -> Result<Option<Box<Page>>> {
    let key = Key::slru_block(slru, segno, blkno);
    match tl.get_page(key, lsn) {
        Ok(p) => Ok(p),
        Err(first) => {
            if lsn > tl.disk_consistent_lsn() {
                return Err(bad(
                    key,
                    lsn,
                    format!(
                        "{first}; reading Strata SLRU records without the read path needs durable layers (durable up to {})",
                        tl.disk_consistent_lsn()
                    ),
                ));
            }
            reconstruct_from_layers(tl, key, lsn)
        }
    }
}

/// One version of a key found in a layer file; `None`: an image layer without the key (the
/// key does not exist at that LSN).
type Version = (Lsn, Option<Value>);

/// Collects `key`'s versions at or below `lsn` from every layer file, newest first, down to
/// an image or a `will_init` record, and applies the Strata records oldest first.
fn reconstruct_from_layers(tl: &Timeline, key: Key, lsn: Lsn) -> Result<Option<Box<Page>>> {
    let mut versions: Vec<Version> = Vec::new();
    for desc in tl.layer_descs() {
        if !desc.key_range.contains(&key) || desc.lsn_range.start > lsn {
            continue;
        }
        let layer = tl.layer(&desc)?;
        match (layer.file()?, desc.kind) {
            (LayerFile::Delta(d), LayerKind::Delta) => {
                for e in d.versions(key, lsn)? {
                    let e = e?;
                    let v = d.read_value(&e.handle)?;
                    let init = v.will_init();
                    versions.push((e.lsn, Some(v)));
                    if init {
                        break;
                    }
                }
            }
            (LayerFile::Image(img), _) => {
                versions.push((img.lsn(), img.get(key)?.map(Value::image)))
            }
            _ => return Err(bad(key, lsn, "layer file kind differs from its name")),
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.dedup_by_key(|v| v.0);
    let mut chain: Vec<(Lsn, Value)> = Vec::new();
    let mut base: Option<Box<Page>> = None;
    for (l, v) in versions {
        match v {
            None => break,
            Some(Value::Image(b)) => {
                let p: Box<Page> = Box::new(
                    b.as_ref()
                        .try_into()
                        .map_err(|_| bad(key, l, format!("image of {} bytes", b.len())))?,
                );
                base = Some(p);
                break;
            }
            Some(v) => {
                let init = v.will_init();
                chain.push((l, v));
                if init {
                    break;
                }
            }
        }
    }
    let mut page = base;
    for (l, v) in chain.into_iter().rev() {
        let Value::WalRecord(r) = v else { continue };
        match r.payload {
            RecordPayload::Strata { kind, data } => {
                if r.will_init {
                    page = None;
                }
                slru_redo::apply(kind, &data, &mut page).map_err(|e| bad(key, l, e.to_string()))?
            }
            RecordPayload::Postgres(_) => {
                return Err(bad(key, l, "a Postgres record under an SLRU key"));
            }
        }
    }
    Ok(page)
}
