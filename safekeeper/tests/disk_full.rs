//! Issue 17, wedge 2, on a real full file system: an acceptor whose timeline lives on a small
//! tmpfs runs out of space mid-stream. Appends fail (nothing unflushed is acknowledged), WAL
//! removal still frees space (the control file is saved without free space), the proposer
//! rejoining makes the writer go on from its last flushed LSN, and every acknowledged byte
//! survives a restart.
//!
//! Needs root (it mounts a tmpfs); without permission to mount it says so loudly and skips.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use safekeeper::acceptor::{Acceptor, GreetingInfo};
use safekeeper::ids::TenantTimeline;
use safekeeper::term_history::{TermHistory, TermSwitch};
use safekeeper::testing::WalGen;
use safekeeper::wal_storage::read_wal;
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::Lsn;

const SYSID: u64 = 7_000_000_000_000_000_017;
const START: Lsn = Lsn(WAL_SEGMENT_SIZE + 40);
/// Room for the segments written before the disk is filled, and not much more.
const FS_SIZE: &str = "96m";

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (after a loud message) if this process may not mount.
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("sk-disk-full-")
            .tempdir()
            .expect("a scratch directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        if !out.status.success() {
            eprintln!(
                "\n!!!!!!!! SKIPPED: cannot mount a tmpfs here ({}): the full-disk test needs \
                 root and permission to mount !!!!!!!!\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a file until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut small = vec![0xa5u8; 512];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Whatever is left in the last page.
    while let Ok(n) = f.write(&small) {
        if n == 0 {
            break;
        }
        small.truncate(n);
    }
    path
}

fn id() -> TenantTimeline {
    TenantTimeline {
        tenant: "17171717171717171717171717171717".parse().unwrap(),
        timeline: "27272727272727272727272727272727".parse().unwrap(),
    }
}

fn greeting() -> GreetingInfo {
    GreetingInfo {
        system_id: SYSID,
        pg_timeline: 1,
        wal_seg_size: WAL_SEGMENT_SIZE as u32,
    }
}

fn hist() -> TermHistory {
    TermHistory(vec![TermSwitch {
        term: 1,
        start: START,
    }])
}

/// Appends `data` at `at` and waits for it to be durable; the new durable LSN.
fn append_durable(a: &mut Acceptor, at: Lsn, data: &[u8], commit: Lsn) -> Result<Lsn, String> {
    a.append(1, at, Bytes::copy_from_slice(data), commit, Lsn(0))
        .map_err(|e| e.to_string())?;
    let d = a.wal().flush_blocking().map_err(|e| e.to_string())?;
    a.on_durable(d);
    Ok(d)
}

fn read_back(dir: &Path, from: Lsn, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = read_wal(dir, 1, Lsn(from.0 + pos as u64), &mut out[pos..]).unwrap();
        assert!(n > 0, "WAL missing at {}", Lsn(from.0 + pos as u64));
        pos += n;
    }
    out
}

#[test]
fn a_full_disk_stops_appends_until_space_returns_and_loses_nothing() {
    let Some(fs) = SmallFs::mount(FS_SIZE) else {
        return;
    };
    let dir = fs.path().join("timeline");
    let mut a = Acceptor::open_or_create(&dir, id(), &greeting()).unwrap();
    assert!(a.vote(1).unwrap().granted);
    a.elected(1, hist(), START, START).unwrap();
    let mut gen = WalGen::new(SYSID, 1, START);
    // All WAL written, from START: the test's record of what each LSN must hold.
    let mut wal: Vec<u8> = Vec::new();

    // Two and a half segments, committed, offloaded and consumed up to the commit LSN.
    let mut acked = START;
    while acked.0 < START.0 + 2 * WAL_SEGMENT_SIZE + WAL_SEGMENT_SIZE / 2 {
        let (chunk, _) = gen.records(100, 8000);
        acked = append_durable(&mut a, acked, &chunk, acked).expect("room on the disk yet");
        wal.extend_from_slice(&chunk);
    }
    a.append(1, acked, Bytes::new(), acked, Lsn(0)).unwrap();
    assert_eq!(a.on_durable(acked), (acked, acked));

    // Fill the disk, then keep appending: an append fails once the segments already
    // allocated (the current one and the one zero-filled ahead) are used up.
    let filler = fill(fs.path());
    let mut failed = None;
    for _ in 0..60 {
        let (chunk, _) = gen.records(100, 8000);
        match append_durable(&mut a, acked, &chunk, acked) {
            Ok(d) => {
                acked = d;
                wal.extend_from_slice(&chunk);
            }
            Err(e) => {
                failed = Some((e, chunk));
                break;
            }
        }
    }
    let (failure, unacked) = failed.expect("appends on a full disk failed within 48 MB");
    assert!(failure.contains("No space left"), "{failure}");
    let durable = a.wal().durable().borrow().clone();
    assert_eq!(durable.lsn, acked, "nothing unflushed was made durable");
    assert!(durable.error.is_some(), "the failure is published");

    // WAL removal frees space on the full disk: the control file is saved without any.
    a.append(1, acked, Bytes::new(), acked, Lsn(0)).unwrap();
    assert_eq!(a.on_durable(acked), (acked, acked));
    a.advance_offloaded(acked.segment_start());
    a.advance_consumer_durable(acked);
    let start = a
        .remove_old_wal()
        .expect("removal works on a full disk")
        .expect("segments below the commit LSN go");
    assert_eq!(start, acked.segment_start());

    // Until the proposer rejoins, the writer stays stopped: it cannot know what it wrote.
    assert!(append_durable(&mut a, acked, &unacked, acked).is_err());
    // The proposer rejoins (Elected at this acceptor's flush LSN) and sends the WAL that
    // failed again: the writer goes on from its last flushed LSN.
    let flush = a
        .elected(1, hist(), acked, acked)
        .expect("rejoin after the failure");
    assert_eq!(flush, acked);
    acked = append_durable(&mut a, acked, &unacked, acked).expect("appends resume");
    wal.extend_from_slice(&unacked);

    // The filler goes too: plenty of room.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..30 {
        let (chunk, _) = gen.records(100, 8000);
        acked = append_durable(&mut a, acked, &chunk, acked).expect("room again");
        wal.extend_from_slice(&chunk);
    }
    a.persist_now().unwrap();
    drop(a);

    // A restart finds every acknowledged byte.
    let a = Acceptor::open(&dir, id()).unwrap().expect("the timeline");
    assert!(
        a.state().flush_lsn >= acked,
        "{} < {acked}",
        a.state().flush_lsn
    );
    let from = a.state().local_start_lsn;
    let skip = (from.0 - START.0) as usize;
    assert_eq!(
        read_back(&dir, from, (acked.0 - from.0) as usize),
        wal[skip..(acked.0 - START.0) as usize],
        "the acknowledged WAL is intact"
    );
}
