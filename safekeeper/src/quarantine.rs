//! Corrupt timelines: detected, moved aside with their evidence, and rebuilt from the peers.
//!
//! **Detection.** Before a timeline is opened (at startup, or on its first greeting, status or
//! replication request) [`verify`] checks it on disk:
//! - the control file: magic, format version, length and crc32c ([`crate::control_file`]);
//! - the WAL: every record from the start of the local WAL up to the control file's flush LSN
//!   is decoded with the WAL decoder (page headers, record headers, `xl_prev` chain, record
//!   CRCs). Only bytes below the persisted flush LSN are fed, so a record the flush LSN cuts
//!   through is not judged; every byte fed is WAL this node once fsynced and acknowledged, so
//!   any decode failure there (including zeroes where a record should start) is damage. WAL
//!   past the persisted flush LSN is the end-of-WAL search's business
//!   ([`crate::wal_storage`]), which cuts a torn tail there.
//!
//! While running, the replication server checks every record it sends; when one is bad it asks
//! the service to verify the timeline on disk ([`verify`] with the current flush LSN), and a
//! confirmed corruption quarantines the open timeline as well.
//!
//! **Quarantine.** [`quarantine`] renames `<tenant>/<timeline>` to
//! `<tenant>/<timeline>.corrupt-<unix seconds>` (the evidence stays as it was, plus a
//! `QUARANTINE` note saying what was found), fsyncs the tenant directory and logs an error
//! naming the file, the offset and the check that failed. A quarantined timeline is absent
//! for this node: its status answers NOT_FOUND naming the quarantine, replication is refused,
//! and a greeting cannot vote or append until it is recovered.
//!
//! **Recovery** is the absent-timeline recovery of [`crate::recovery`]: on the proposer's next
//! greeting, or at once in the background when `--peers` is set. It adopts the highest term of
//! the peers and fetches only committed WAL. Without `--peers` the timeline stays quarantined:
//! a greeting is refused rather than creating an empty timeline that forgot its term.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::lsn::segment_file_name;
use walproto::{Decoded, Lsn, WalStreamDecoder};

use crate::control_file::{self, fsync_dir, ControlFileError, CONTROL_FILE_NAME};
use crate::wal_storage::{find_segment, read_wal};

/// Suffix of a quarantined timeline directory, before the unix time.
pub const QUARANTINE_SUFFIX: &str = ".corrupt-";
/// The note written into a quarantined directory.
pub const NOTE_FILE: &str = "QUARANTINE";

/// What is wrong with a timeline on disk: the file, the byte offset in it if known, the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub what: String,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(o) = self.offset {
            write!(f, " at offset {o}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Why [`verify`] gave no verdict: the disk could not be read (not a sign of damage).
#[derive(Debug, thiserror::Error)]
#[error("verifying {path}: {message}")]
pub struct VerifyIoError {
    pub path: PathBuf,
    pub message: String,
}

/// What [`verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The WAL range whose records were decoded and found whole.
    pub from: Lsn,
    pub to: Lsn,
}

/// Checks the timeline in `dir` (see the module docs): `Ok(Ok(None))` if it holds no control
/// file, `Ok(Ok(Some(_)))` if it is sound, `Ok(Err(_))` if it is damaged. The WAL must be
/// whole up to `bound` if given (a running timeline's durable flush LSN), else up to the
/// control file's flush LSN.
pub fn verify(
    dir: &Path,
    bound: Option<Lsn>,
) -> Result<Result<Option<Verified>, Corruption>, VerifyIoError> {
    let state = match control_file::load(dir) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Ok(None)),
        Err(ControlFileError::Corrupt { path, check }) => {
            return Ok(Err(Corruption {
                file: path,
                offset: None,
                what: check,
            }))
        }
        Err(ControlFileError::Io { path, source }) => {
            return Err(VerifyIoError {
                path,
                message: source.to_string(),
            })
        }
    };
    let from = state.local_start_lsn;
    let to = bound.unwrap_or(state.flush_lsn);
    if from == Lsn(0) || to <= from {
        return Ok(Ok(Some(Verified { from, to: from })));
    }
    let started = Instant::now();
    let r = verify_wal(dir, state.pg_timeline, from, to)?;
    if r.is_ok() {
        info!(
            %from, %to,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "verified the WAL records of {} bytes ({:.1} segments) in {:?}",
            to.0 - from.0,
            segments_in(from, to),
            started.elapsed()
        );
    }
    Ok(r.map(|()| Some(Verified { from, to })))
}

/// The segment file holding `lsn` (either name) for messages.
fn segment_path(dir: &Path, tli: u32, lsn: Lsn) -> PathBuf {
    let segno = lsn.segment_number();
    find_segment(dir, tli, segno)
        .map_or_else(|| dir.join(segment_file_name(tli, segno)), |(p, _)| p)
}

/// Decodes every record in `[from, to)`; `from` is a record boundary or a segment start.
pub fn verify_wal(
    dir: &Path,
    tli: u32,
    from: Lsn,
    to: Lsn,
) -> Result<Result<(), Corruption>, VerifyIoError> {
    let mut decoder = WalStreamDecoder::new(from);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    let at = |lsn: Lsn, what: String| Corruption {
        file: segment_path(dir, tli, lsn),
        offset: Some(lsn.segment_offset()),
        what,
    };
    while pos < to {
        let want = ((to.0 - pos.0) as usize).min(buf.len());
        let n = read_wal(dir, tli, pos, &mut buf[..want]).map_err(|e| VerifyIoError {
            path: segment_path(dir, tli, pos),
            message: e.to_string(),
        })?;
        if n == 0 {
            return Ok(Err(at(
                pos,
                format!(
                    "segment missing: the WAL must run from {from} to the flush LSN {to}, \
                     but segment {} is not in {}",
                    segment_file_name(tli, pos.segment_number()),
                    dir.display()
                ),
            )));
        }
        decoder.feed(&buf[..n]);
        pos = Lsn(pos.0 + n as u64);
        loop {
            match decoder.next() {
                Ok(Decoded::Record(_)) => {}
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::EndOfWal { lsn, reason }) => {
                    return Ok(Err(at(
                        lsn,
                        format!(
                            "WAL ends at {lsn} ({reason}), below the flush LSN {to} this \
                             safekeeper acknowledged"
                        ),
                    )))
                }
                Err(e) => {
                    return Ok(Err(at(
                        e.lsn,
                        format!("bad WAL record at {}: {}", e.lsn, e.reason),
                    )))
                }
            }
        }
    }
    Ok(Ok(()))
}

/// Moves the timeline directory `dir` aside as `<dir>.corrupt-<unix seconds>`, with a note of
/// what was found, fsyncs its parent, and logs the error. Returns the new path.
pub fn quarantine(dir: &Path, c: &Corruption) -> Result<PathBuf, VerifyIoError> {
    let io = |path: &Path, e: std::io::Error| VerifyIoError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dir.parent().ok_or_else(|| VerifyIoError {
        path: dir.to_path_buf(),
        message: "a timeline directory without a parent".into(),
    })?;
    let mut target = parent.join(format!("{name}{QUARANTINE_SUFFIX}{secs}"));
    let mut n = 1;
    while target.exists() {
        target = parent.join(format!("{name}{QUARANTINE_SUFFIX}{secs}.{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target).map_err(|e| io(dir, e))?;
    fsync_dir(parent).map_err(|e| io(parent, e))?;
    // Best effort: the rename already is the quarantine.
    let note = format!("quarantined at unix time {secs}: {c}\n");
    let _ = std::fs::write(target.join(NOTE_FILE), note);
    error!(
        file = %c.file.display(),
        offset = ?c.offset,
        moved_to = %target.display(),
        "timeline quarantined: {c}; it is served and voted for no more until it is recovered \
         from the peers"
    );
    Ok(target)
}

/// The quarantined copies of the timeline directory `dir` (`<dir>.corrupt-*`), oldest first.
pub fn quarantined_copies(dir: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}{QUARANTINE_SUFFIX}", name.to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Timeline directories under `datadir` that were quarantined and not rebuilt yet:
/// `(tenant dir name, timeline dir name)`.
pub fn pending_on_disk(datadir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for tenant in std::fs::read_dir(datadir).into_iter().flatten().flatten() {
        let tname = tenant.file_name().to_string_lossy().into_owned();
        for tl in std::fs::read_dir(tenant.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = tl.file_name().to_string_lossy().into_owned();
            if let Some((timeline, _)) = n.split_once(QUARANTINE_SUFFIX) {
                let live = tenant.path().join(timeline).join(CONTROL_FILE_NAME);
                let pair = (tname.clone(), timeline.to_string());
                if !live.exists() && !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
    }
    out
}

/// Whole segments in `[from, to)` (for the timing log of a verification).
pub fn segments_in(from: Lsn, to: Lsn) -> f64 {
    (to.0.saturating_sub(from.0)) as f64 / WAL_SEGMENT_SIZE as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_file::ControlState;
    use crate::ids::TenantTimeline;
    use crate::wal_storage::WalStorage;
    use walproto::encoder::{build_record, WalWriter};

    const RM_XLOG: u8 = 0;
    const XLOG_NOOP: u8 = 0x20;

    fn id() -> TenantTimeline {
        TenantTimeline {
            tenant: "00112233445566778899aabbccddeeff".parse().unwrap(),
            timeline: "ffeeddccbbaa99887766554433221100".parse().unwrap(),
        }
    }

    /// A timeline directory holding `segments` segments of records from segment 1's start,
    /// with a control file whose flush LSN is the end of the last record; returns the record
    /// starts and the end.
    fn timeline(dir: &Path, segments: u64) -> (Vec<Lsn>, Lsn) {
        timeline_of(dir, segments, 2000)
    }

    fn timeline_of(dir: &Path, segments: u64, payload: usize) -> (Vec<Lsn>, Lsn) {
        let start = Lsn(WAL_SEGMENT_SIZE);
        let mut w = WalWriter::new(7, 1, start, Lsn(0));
        let mut starts = Vec::new();
        let mut end = start;
        let limit = start.0 + segments * WAL_SEGMENT_SIZE - 64 * 1024;
        let mut i = 0u32;
        while end.0 < limit {
            let (s, e) = w.append(&build_record(
                RM_XLOG,
                XLOG_NOOP,
                0,
                Lsn(0),
                &[],
                &vec![i as u8; payload],
            ));
            starts.push(s);
            end = e;
            i += 1;
        }
        let bytes = w.into_bytes();
        std::fs::create_dir_all(dir).unwrap();
        let mut st = WalStorage::open(dir, 1, Lsn(0), Lsn(0)).unwrap();
        st.reset(start).unwrap();
        st.write(start, &bytes[..(end.0 - start.0) as usize])
            .unwrap();
        st.flush().unwrap();
        drop(st);
        let mut s = ControlState::new(id(), 7, 1, WAL_SEGMENT_SIZE as u32);
        s.local_start_lsn = start;
        s.flush_lsn = end;
        s.commit_lsn = end;
        control_file::store(dir, &s).unwrap();
        (starts, end)
    }

    #[test]
    fn sound_wal_verifies_and_the_time_is_reported() {
        let base = tempfile::tempdir().unwrap();
        for payload in [2000, 60] {
            let dir = base.path().join(format!("tl{payload}"));
            let (starts, end) = timeline_of(&dir, 2, payload);
            let t = Instant::now();
            let v = verify(&dir, None).unwrap().unwrap().unwrap();
            let took = t.elapsed();
            assert_eq!(v.to, end);
            println!(
                "verified {:.2} segments of {} records ({payload}-byte payloads) in {took:?} \
                 ({:.0} MiB/s)",
                segments_in(v.from, v.to),
                starts.len(),
                (v.to.0 - v.from.0) as f64 / (1 << 20) as f64 / took.as_secs_f64()
            );
        }
        assert_eq!(
            verify(&base.path().join("none"), None).unwrap().unwrap(),
            None
        );
    }

    #[test]
    fn a_flipped_record_byte_is_found_with_file_and_offset() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("tl");
        let (starts, _) = timeline(&dir, 2);
        let victim = starts[starts.len() / 3];
        let seg = dir.join(segment_file_name(1, victim.segment_number()));
        let mut b = std::fs::read(&seg).unwrap();
        b[victim.segment_offset() as usize + 4] ^= 0x20;
        std::fs::write(&seg, &b).unwrap();
        let c = verify(&dir, None).unwrap().unwrap_err();
        assert_eq!(c.file, seg);
        assert_eq!(c.offset, Some(victim.segment_offset()));
        assert!(c.to_string().contains("bad WAL record"), "{c}");

        let moved = quarantine(&dir, &c).unwrap();
        assert!(!dir.exists());
        assert!(moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tl.corrupt-"));
        assert!(std::fs::read_to_string(moved.join(NOTE_FILE))
            .unwrap()
            .contains("bad WAL record"));
        assert_eq!(quarantined_copies(&dir), vec![moved]);
    }

    #[test]
    fn a_missing_segment_and_a_bad_control_file_are_corruption() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("tl");
        timeline(&dir, 3);
        std::fs::remove_file(dir.join(segment_file_name(1, 2))).unwrap();
        let c = verify(&dir, None).unwrap().unwrap_err();
        assert!(c.what.contains("segment missing"), "{c}");

        let cf = dir.join(CONTROL_FILE_NAME);
        let mut b = std::fs::read(&cf).unwrap();
        b[50] ^= 1;
        std::fs::write(&cf, &b).unwrap();
        let c = verify(&dir, None).unwrap().unwrap_err();
        assert_eq!(c.file, cf);
        assert!(c.what.contains("crc32c"), "{c}");
    }

    #[test]
    fn a_torn_tail_past_the_flush_lsn_is_not_corruption() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("tl");
        let (starts, _) = timeline(&dir, 1);
        // The control file says the WAL is durable only up to a record near the end; the
        // record after it is damaged (a torn write): not judged.
        let flush = starts[starts.len() - 3];
        let mut s = control_file::load(&dir).unwrap().unwrap();
        s.flush_lsn = Lsn(flush.0 + 10);
        s.commit_lsn = flush;
        control_file::store(&dir, &s).unwrap();
        let victim = starts[starts.len() - 2];
        let seg = dir.join(format!("{}.partial", segment_file_name(1, 1)));
        let seg = if seg.exists() {
            seg
        } else {
            dir.join(segment_file_name(1, 1))
        };
        let mut b = std::fs::read(&seg).unwrap();
        b[victim.segment_offset() as usize + 4] ^= 0x20;
        std::fs::write(&seg, &b).unwrap();
        assert!(verify(&dir, None).unwrap().is_ok());
    }
}
