//! The acceptor's persistent state, one small checksummed file per timeline.
//!
//! Everything the Paxos rules need to survive a crash lives here: the current term (persisted
//! before a vote is answered), the term history (persisted before appends of a new term are
//! accepted), and lazily the flush and commit LSNs. The file is replaced atomically: written to
//! a temporary file, fsynced, renamed over the old one, and the directory fsynced, so a crash
//! leaves either the old or the new state, never a mix.
//!
//! Layout (little-endian), format version 2:
//!
//! ```text
//! magic u32 "SKCF" | version u32 | tenant [16] | timeline [16] | system_id u64 | pg_timeline u32
//! | wal_seg_size u32 | term u64 | flush_lsn u64 | commit_lsn u64 | truncate_lsn u64
//! | local_start_lsn u64 | offloaded_lsn u64 | consumer_durable_lsn u64
//! | history_len u32 | history_len × (term u64, start_lsn u64) | crc32c u32
//! ```
//!
//! Version 1 is the same without `offloaded_lsn` and `consumer_durable_lsn` (read as 0); it is
//! still read, and rewritten as version 2 on the next store.
//!
//! The crc32c covers every byte before it. The file length must match `history_len` exactly.
//! A file failing any check makes its timeline quarantined and recovered from the peers
//! ([`crate::quarantine`]) instead of failing to open forever.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use walproto::Lsn;

use crate::ids::{TenantId, TenantTimeline, TimelineId};
use crate::term_history::{TermHistory, TermSwitch};

pub const CONTROL_FILE_NAME: &str = "safekeeper.control";
const MAGIC: u32 = u32::from_le_bytes(*b"SKCF");
const FORMAT_VERSION: u32 = 2;
/// Bytes before the history entries, per format version.
const fn fixed_len(version: u32) -> usize {
    let lsns = if version >= 2 { 7 } else { 5 };
    4 + 4 + 16 + 16 + 8 + 4 + 4 + 8 * lsns + 4
}
/// A history longer than this is a corrupt length, not a real history.
const MAX_HISTORY: u32 = 1 << 20;

/// The persisted acceptor state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlState {
    pub id: TenantTimeline,
    pub system_id: u64,
    pub pg_timeline: u32,
    pub wal_seg_size: u32,
    /// Highest term voted in or accepted; 0 = never.
    pub term: u64,
    pub term_history: TermHistory,
    /// A durable LSN: never above WAL that was fsynced (lowered before any truncation).
    pub flush_lsn: Lsn,
    /// Never above `flush_lsn` in the same file.
    pub commit_lsn: Lsn,
    /// The proposer's hint: every safekeeper holds WAL up to here.
    pub truncate_lsn: Lsn,
    /// Where this acceptor's WAL begins; 0 = no WAL yet.
    pub local_start_lsn: Lsn,
    /// Every complete segment below this LSN is in the object store (a segment boundary;
    /// 0 = nothing offloaded).
    pub offloaded_lsn: Lsn,
    /// The highest LSN a pageserver reported as durable in the object store (the `apply`
    /// field of its standby status updates); 0 = none reported yet.
    pub consumer_durable_lsn: Lsn,
}

/// Why the control file could not be read or written. Names the file and the failed check.
#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    #[error("control file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control file {path} is corrupt: {check}")]
    Corrupt { path: PathBuf, check: String },
}

impl ControlState {
    /// The state of a timeline this acceptor has never seen.
    pub fn new(id: TenantTimeline, system_id: u64, pg_timeline: u32, wal_seg_size: u32) -> Self {
        ControlState {
            id,
            system_id,
            pg_timeline,
            wal_seg_size,
            term: 0,
            term_history: TermHistory::default(),
            flush_lsn: Lsn(0),
            commit_lsn: Lsn(0),
            truncate_lsn: Lsn(0),
            local_start_lsn: Lsn(0),
            offloaded_lsn: Lsn(0),
            consumer_durable_lsn: Lsn(0),
        }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b =
            Vec::with_capacity(fixed_len(FORMAT_VERSION) + 16 * self.term_history.0.len() + 4);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.id.tenant.0);
        b.extend_from_slice(&self.id.timeline.0);
        b.extend_from_slice(&self.system_id.to_le_bytes());
        b.extend_from_slice(&self.pg_timeline.to_le_bytes());
        b.extend_from_slice(&self.wal_seg_size.to_le_bytes());
        for v in [
            self.term,
            self.flush_lsn.0,
            self.commit_lsn.0,
            self.truncate_lsn.0,
            self.local_start_lsn.0,
            self.offloaded_lsn.0,
            self.consumer_durable_lsn.0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.term_history.0.len() as u32).to_le_bytes());
        for e in &self.term_history.0 {
            b.extend_from_slice(&e.term.to_le_bytes());
            b.extend_from_slice(&e.start.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the file's bytes; `path` only names the file in errors.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Self, ControlFileError> {
        let corrupt = |check: String| ControlFileError::Corrupt {
            path: path.to_path_buf(),
            check,
        };
        if b.len() < fixed_len(1) + 4 {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {} bytes of an empty state",
                b.len(),
                fixed_len(1) + 4
            )));
        }
        let mut r = Reader { b, pos: 0 };
        let magic = r.u32();
        if magic != MAGIC {
            return Err(corrupt(format!(
                "bad magic {magic:#010x}, expected {MAGIC:#010x}"
            )));
        }
        let version = r.u32();
        if version != FORMAT_VERSION && version != 1 {
            return Err(corrupt(format!(
                "unsupported format version {version} (this build reads 1 and {FORMAT_VERSION})"
            )));
        }
        let fixed = fixed_len(version);
        if b.len() < fixed + 4 {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {} bytes of an empty version {version} state",
                b.len(),
                fixed + 4
            )));
        }
        let history_len = u32::from_le_bytes(b[fixed - 4..fixed].try_into().unwrap_or_default());
        let want = (history_len <= MAX_HISTORY).then(|| fixed + 16 * history_len as usize + 4);
        if want != Some(b.len()) {
            return Err(corrupt(format!(
                "file is {} bytes but its term history length {history_len} needs {}",
                b.len(),
                want.map_or_else(|| "an impossible size".to_string(), |w| w.to_string())
            )));
        }
        let body = &b[..b.len() - 4];
        let stored = u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap_or_default());
        let actual = crc32c::crc32c(body);
        if stored != actual {
            return Err(corrupt(format!(
                "crc32c mismatch: stored {stored:#010x}, computed {actual:#010x}"
            )));
        }
        let tenant = TenantId(r.array());
        let timeline = TimelineId(r.array());
        let system_id = r.u64();
        let pg_timeline = r.u32();
        let wal_seg_size = r.u32();
        let term = r.u64();
        let flush_lsn = Lsn(r.u64());
        let commit_lsn = Lsn(r.u64());
        let truncate_lsn = Lsn(r.u64());
        let local_start_lsn = Lsn(r.u64());
        let (offloaded_lsn, consumer_durable_lsn) = if version >= 2 {
            (Lsn(r.u64()), Lsn(r.u64()))
        } else {
            (Lsn(0), Lsn(0))
        };
        let _len = r.u32();
        let mut entries = Vec::with_capacity(history_len as usize);
        for _ in 0..history_len {
            let term = r.u64();
            let start = Lsn(r.u64());
            entries.push(TermSwitch { term, start });
        }
        let term_history = TermHistory(entries);
        term_history
            .validate()
            .map_err(|e| corrupt(format!("invalid term history: {e}")))?;
        if let Some(last) = term_history.last() {
            if last.term > term {
                return Err(corrupt(format!(
                    "term history's last term {} is above the current term {term}",
                    last.term
                )));
            }
        }
        if commit_lsn > flush_lsn {
            return Err(corrupt(format!(
                "commit LSN {commit_lsn} is above flush LSN {flush_lsn}"
            )));
        }
        Ok(ControlState {
            id: TenantTimeline { tenant, timeline },
            system_id,
            pg_timeline,
            wal_seg_size,
            term,
            term_history,
            flush_lsn,
            commit_lsn,
            truncate_lsn,
            local_start_lsn,
            offloaded_lsn,
            consumer_durable_lsn,
        })
    }
}

/// A fixed-layout reader; callers have checked the length first.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Reads `<dir>/safekeeper.control`; `Ok(None)` if there is none.
pub fn load(dir: &Path) -> Result<Option<ControlState>, ControlFileError> {
    let path = dir.join(CONTROL_FILE_NAME);
    match fs::read(&path) {
        Ok(b) => ControlState::decode(&path, &b).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ControlFileError::Io { path, source }),
    }
}

/// The file the next state is written to before it is renamed over the control file.
const TMP_NAME: &str = "safekeeper.control.tmp";
/// The replaced control file, kept for a moment to become the next [`TMP_NAME`].
const OLD_NAME: &str = "safekeeper.control.old";

/// Atomically replaces `<dir>/safekeeper.control` with `state`: written to a temporary file,
/// fsynced, renamed over the old one, the directory fsynced.
///
/// It works on a full disk: the temporary file is the previous control file's own file (kept
/// by a hard link across the rename), so writing the new state overwrites blocks that are
/// already allocated and needs no free space. WAL removal, which is what frees space, saves
/// the new WAL start here first.
pub fn store(dir: &Path, state: &ControlState) -> Result<(), ControlFileError> {
    let path = dir.join(CONTROL_FILE_NAME);
    let tmp = dir.join(TMP_NAME);
    let old = dir.join(OLD_NAME);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ControlFileError::Io { path, source }
    };
    reuse_old_as_tmp(&old, &tmp).map_err(io_err(&tmp))?;
    let bytes = state.encode();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all_at(&bytes, 0).map_err(io_err(&tmp))?;
    f.set_len(bytes.len() as u64).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    // Keep the file about to be replaced: the next store writes into it. Optional (it only
    // saves allocating), so a failure here just means the next store allocates.
    let kept = fs::hard_link(&path, &old).is_ok();
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(dir).map_err(io_err(dir))?;
    if kept {
        let _ = fs::rename(&old, &tmp);
    }
    Ok(())
}

/// Before a store: a leftover `old` becomes the temporary file if it is no longer the control
/// file itself (a crash before the rename leaves it a second name of the live file, which must
/// never be written into); a temporary file with another name is dropped for the same reason.
fn reuse_old_as_tmp(old: &Path, tmp: &Path) -> io::Result<()> {
    for p in [old, tmp] {
        match fs::symlink_metadata(p) {
            Ok(m) if !m.is_file() || m.nlink() != 1 => fs::remove_file(p)?,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if old.exists() {
        if tmp.exists() {
            fs::remove_file(old)?;
        } else {
            fs::rename(old, tmp)?;
        }
    }
    Ok(())
}

/// Makes a rename or a file creation in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlState {
        let id = TenantTimeline {
            tenant: "00112233445566778899aabbccddeeff".parse().unwrap(),
            timeline: "ffeeddccbbaa99887766554433221100".parse().unwrap(),
        };
        let mut s = ControlState::new(id, 0x1234_5678_9abc_def0, 1, 16 << 20);
        s.term = 7;
        s.term_history = TermHistory(vec![
            TermSwitch {
                term: 2,
                start: Lsn(0x100_0000),
            },
            TermSwitch {
                term: 5,
                start: Lsn(0x180_0000),
            },
            TermSwitch {
                term: 7,
                start: Lsn(0x200_0028),
            },
        ]);
        s.flush_lsn = Lsn(0x210_0000);
        s.commit_lsn = Lsn(0x20f_0000);
        s.truncate_lsn = Lsn(0x1f0_0000);
        s.local_start_lsn = Lsn(0x100_0000);
        s.offloaded_lsn = Lsn(0x200_0000);
        s.consumer_durable_lsn = Lsn(0x1f8_0000);
        s
    }

    #[test]
    fn round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let s = sample();
        store(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        let mut s2 = s;
        s2.term = 9;
        store(dir.path(), &s2).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s2.clone()));
        // A shorter state written into the previous, longer file: no stale bytes remain.
        s2.term_history.0.truncate(1);
        s2.term = 2;
        store(dir.path(), &s2).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s2));
    }

    #[test]
    fn the_next_store_writes_into_the_replaced_file_never_into_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp, old) = (
            dir.path().join(CONTROL_FILE_NAME),
            dir.path().join(TMP_NAME),
            dir.path().join(OLD_NAME),
        );
        let mut s = sample();
        store(dir.path(), &s).unwrap();
        let first = fs::metadata(&path).unwrap().ino();
        s.term = 8;
        store(dir.path(), &s).unwrap();
        assert_eq!(
            fs::metadata(&tmp).unwrap().ino(),
            first,
            "the replaced control file is kept as the next temporary file"
        );
        assert!(!old.exists());
        // A crash between the hard link and the rename: `old` is the live file's second name.
        fs::hard_link(&path, &old).unwrap();
        let witness = dir.path().join("witness");
        fs::hard_link(&path, &witness).unwrap();
        s.term = 9;
        store(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        // The file that was live was never written in place: it still holds term 8.
        let was_live = fs::read(&witness).unwrap();
        assert_eq!(ControlState::decode(&path, &was_live).unwrap().term, 8);
    }

    #[test]
    fn every_byte_flip_and_truncation_is_detected() {
        let b = sample().encode();
        let path = Path::new("/x/safekeeper.control");
        for i in 0..b.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut c = b.clone();
                c[i] ^= flip;
                let err =
                    ControlState::decode(path, &c).expect_err(&format!("byte {i} ^ {flip:#x}"));
                let msg = err.to_string();
                assert!(msg.contains("/x/safekeeper.control"), "{msg}");
            }
        }
        for len in 0..b.len() {
            let err = ControlState::decode(path, &b[..len]).expect_err(&format!("len {len}"));
            assert!(matches!(err, ControlFileError::Corrupt { .. }), "{err}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(ControlState::decode(path, &longer).is_err());
    }

    #[test]
    fn errors_name_the_check() {
        let path = Path::new("/x/safekeeper.control");
        let mut b = sample().encode();
        b[0] ^= 1;
        assert!(ControlState::decode(path, &b)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let mut b = sample().encode();
        b[60] ^= 1;
        assert!(ControlState::decode(path, &b)
            .unwrap_err()
            .to_string()
            .contains("crc32c"));
        let b = sample().encode();
        assert!(ControlState::decode(path, &b[..b.len() - 1])
            .unwrap_err()
            .to_string()
            .contains("bytes"));
    }

    #[test]
    fn version_1_files_are_still_read() {
        let mut s = sample();
        s.offloaded_lsn = Lsn(0);
        s.consumer_durable_lsn = Lsn(0);
        let v2 = s.encode();
        // A version 1 file: no offload LSNs, version field 1, its own checksum.
        let fixed2 = fixed_len(2);
        let mut v1 = Vec::new();
        v1.extend_from_slice(&v2[..4]);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&v2[8..fixed2 - 4 - 16]);
        v1.extend_from_slice(&v2[fixed2 - 4..v2.len() - 4]);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let path = Path::new("/x/safekeeper.control");
        assert_eq!(ControlState::decode(path, &v1).unwrap(), s);
    }
}
