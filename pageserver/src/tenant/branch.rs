//! Where a branch starts: an LSN, the state as of a time, or a named restore point, checked
//! against what the parent timeline holds.
//!
//! - **LSN**: any LSN in `[parent start, parent last record end]`, resolved to the record
//!   boundary it denotes as Postgres's `recovery_target_lsn` with `recovery_target_inclusive
//!   = off` does: every record starting before it ([`crate::timeline::boundary`]). An LSN
//!   inside a record that crosses a WAL page (every page- or segment-aligned LSN inside a
//!   record) or inside a page header is moved to that record's end (the page start);
//!   otherwise it must be 8-byte aligned, and one inside a record lying within a page means
//!   the state before that record (the pageserver keeps no WAL to tell).
//! - **Time T, inclusive** (`recovery_target_inclusive = on`): the state after every commit
//!   whose time is ≤ T: the end LSN of the last such commit (`lsn_for_timestamp`). With
//!   commits slightly out of time order in the WAL, it stops before the first commit later
//!   than T, as Postgres's recovery does.
//! - **Time T, exclusive**: the state after every commit whose time is < T, i.e. inclusive at
//!   T − 1 µs (commit times are whole microseconds). Both give the end of a commit record,
//!   a true record boundary.
//! - **Restore point**: the end LSN of the `pg_create_restore_point` record with that name;
//!   the first one if the name was used more than once (where Postgres's recovery stops).
//!
//! A time before the first commit, an unknown name or an LSN outside the range is an error
//! that says what is possible.

use layer_format::Lsn;

use super::error::{Result, TenantError};
use crate::ingest::nonpage::index::CommitEntry;
use crate::ingest::nonpage::{keys, read};
use crate::timeline::{boundary, Timeline};

/// Microseconds from the Unix epoch to Postgres's (2000-01-01 UTC).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchTarget {
    /// The parent's last record end.
    Tip,
    Lsn(Lsn),
    /// Microseconds since the Unix epoch.
    Timestamp {
        unix_micros: i64,
        inclusive: bool,
    },
    RestorePoint(String),
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of Unix microseconds.
pub fn format_unix_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn timeline_err(tl: &Timeline) -> impl FnOnce(crate::timeline::TimelineError) -> TenantError {
    TenantError::timeline(format!("reading {}", tl.dir().display()))
}

/// The first indexed commit (time in Unix µs, end LSN), if any.
fn first_commit(tl: &Timeline) -> Result<Option<(i64, Lsn)>> {
    let at = tl.last_record_end();
    if read::commit_count_at(tl, at)
        .map_err(timeline_err(tl))?
        .is_none()
    {
        return Ok(None);
    }
    let key = keys::commit_entry(0).expect("entry 0 is in range");
    let Some(b) = tl.get_image_value(key, at).map_err(timeline_err(tl))? else {
        return Ok(None);
    };
    let e = CommitEntry::decode(&b).map_err(TenantError::InvalidArgument)?;
    Ok(Some((e.time + PG_EPOCH_UNIX_MICROS, e.lsn)))
}

/// PostgreSQL's timestamp range in its own microseconds since 2000-01-01
/// (`MIN_TIMESTAMP`..`END_TIMESTAMP` in `datatype/timestamp.h`: 4714-11-24 BC to 294276 AD).
const PG_MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const PG_END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

/// `unix_micros` as Postgres microseconds since 2000, or an error if no Postgres timestamp
/// can be that time (a commit time never is): far outside that range, the conversion itself
/// would overflow.
pub fn pg_time_of_unix_micros(unix_micros: i64) -> Result<i64> {
    unix_micros
        .checked_sub(PG_EPOCH_UNIX_MICROS)
        .filter(|t| (PG_MIN_TIMESTAMP..PG_END_TIMESTAMP).contains(t))
        .ok_or_else(|| {
            TenantError::InvalidArgument(format!(
                "timestamp {unix_micros} µs since the Unix epoch is outside PostgreSQL's \
                 timestamp range (4714-11-24 BC to 294276 AD): no commit can have that time"
            ))
        })
}

/// The LSN of the state as of `unix_micros` (see the module doc).
pub fn lsn_for_time(tl: &Timeline, name: &str, unix_micros: i64, inclusive: bool) -> Result<Lsn> {
    let pg_time = pg_time_of_unix_micros(unix_micros)?;
    // Exclusive: strictly before T. Nothing is before the first representable time.
    let t = if inclusive {
        Some(pg_time)
    } else {
        pg_time.checked_sub(1)
    };
    if let Some(t) = t {
        if let Some(lsn) = read::lsn_for_timestamp(tl, t).map_err(timeline_err(tl))? {
            return Ok(lsn);
        }
    }
    let when = format_unix_micros(unix_micros);
    let rel = if inclusive { "at or before" } else { "before" };
    Err(match first_commit(tl)? {
        Some((first, lsn)) => TenantError::OutOfRange(format!(
            "timeline {name} has no commit {rel} {when}: its first commit is at {} (LSN {lsn}); \
             give that time or later",
            format_unix_micros(first)
        )),
        None => TenantError::OutOfRange(format!(
            "timeline {name} has no commit {rel} {when}: it has no commits yet (give an LSN instead)"
        )),
    })
}

/// Restore points as of the timeline's tip: (name, LSN, Unix µs).
pub fn restore_points(tl: &Timeline) -> Result<Vec<(String, Lsn, i64)>> {
    Ok(read::restore_points(tl, tl.last_record_end())
        .map_err(timeline_err(tl))?
        .into_iter()
        .map(|(n, l, t)| (n, l, t + PG_EPOCH_UNIX_MICROS))
        .collect())
}

/// Resolves `target` on the parent `tl` (named `name` in errors) and checks the LSN.
pub fn resolve(tl: &Timeline, name: &str, target: &BranchTarget) -> Result<Lsn> {
    let lsn = match target {
        BranchTarget::Tip => tl.last_record_end(),
        BranchTarget::Lsn(l) => {
            check_lsn_range(tl, name, *l)?;
            let b = boundary::resolve(tl, *l).map_err(timeline_err(tl))?;
            if let Some(why) = b.describe() {
                tracing::info!("branch of {name}: {why}");
            }
            b.lsn()
        }
        BranchTarget::Timestamp {
            unix_micros,
            inclusive,
        } => lsn_for_time(tl, name, *unix_micros, *inclusive)?,
        BranchTarget::RestorePoint(rp) => {
            let pts = restore_points(tl)?;
            match pts.iter().find(|p| &p.0 == rp) {
                Some(p) => p.1,
                None if pts.is_empty() => {
                    return Err(TenantError::NotFound(format!(
                        "timeline {name} has no restore point {rp:?}: it has none"
                    )))
                }
                None => {
                    let names: Vec<&str> = pts.iter().take(20).map(|p| p.0.as_str()).collect();
                    return Err(TenantError::NotFound(format!(
                        "timeline {name} has no restore point {rp:?}; it has {names:?}"
                    )));
                }
            }
        }
    };
    check_branch_lsn(tl, name, lsn)?;
    Ok(lsn)
}

/// Checks that a branch of `tl` can start at `lsn` (see the module doc).
pub fn check_branch_lsn(tl: &Timeline, name: &str, lsn: Lsn) -> Result<()> {
    check_lsn_range(tl, name, lsn)?;
    if !lsn.0.is_multiple_of(8) {
        return Err(TenantError::InvalidArgument(format!(
            "LSN {lsn} is not a record boundary: records start and end on 8-byte boundaries"
        )));
    }
    let header = boundary::page_header_size(lsn.page_start());
    let off = lsn.page_offset();
    if off > 0 && off < header {
        return Err(TenantError::InvalidArgument(format!(
            "LSN {lsn} is inside a WAL page header, not a record boundary (the page starts at {})",
            lsn.page_start()
        )));
    }
    Ok(())
}

/// Checks that `lsn` is in the part of `tl`'s history a branch can start in.
fn check_lsn_range(tl: &Timeline, name: &str, lsn: Lsn) -> Result<()> {
    let (start, end) = (tl.start_lsn(), tl.last_record_end());
    let older = match tl.ancestor_link() {
        Some((id, _)) => format!("; older history is on its ancestor {id}"),
        None => String::new(),
    };
    if lsn < start {
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is below timeline {name}'s start {start}: a branch of it can start at \
             {start}..={end}{older}"
        )));
    }
    if lsn > end {
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is beyond timeline {name}'s last record end {end}: a branch of it can \
             start at {start}..={end}"
        )));
    }
    let cutoff = tl.gc_cutoff_lsn();
    if lsn < cutoff {
        return Err(TenantError::OutOfRange(format!(
            "LSN {lsn} is below timeline {name}'s GC cutoff {cutoff}: its history there is \
             garbage collected; a branch of it can start at {cutoff}..={end}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_times_are_invalid_arguments() {
        for us in [i64::MIN, i64::MIN + 1, -300_000_000_000_000_000] {
            let e = pg_time_of_unix_micros(us).unwrap_err();
            assert!(
                matches!(&e, TenantError::InvalidArgument(m) if m.contains("outside PostgreSQL's timestamp range")),
                "{us}: {e}"
            );
        }
        assert_eq!(pg_time_of_unix_micros(PG_EPOCH_UNIX_MICROS).unwrap(), 0);
        assert_eq!(pg_time_of_unix_micros(0).unwrap(), -PG_EPOCH_UNIX_MICROS);
        let first = PG_MIN_TIMESTAMP + PG_EPOCH_UNIX_MICROS;
        assert_eq!(pg_time_of_unix_micros(first).unwrap(), PG_MIN_TIMESTAMP);
        assert!(pg_time_of_unix_micros(first - 1).is_err());
        // Year 294247: within Postgres's range (it ends in 294276), a time after every commit.
        assert!(pg_time_of_unix_micros(i64::MAX).is_ok());
        assert!(
            format_unix_micros(i64::MIN).len() > 10,
            "formats without overflow"
        );
        assert!(
            format_unix_micros(i64::MAX).len() > 10,
            "formats without overflow"
        );
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_unix_micros(PG_EPOCH_UNIX_MICROS + 1),
            "2000-01-01T00:00:00.000001Z"
        );
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            format_unix_micros(1_709_210_096_000_000),
            "2024-02-29T12:34:56.000000Z"
        );
    }
}
