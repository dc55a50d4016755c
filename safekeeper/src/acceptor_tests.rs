//! Unit tests of the acceptor's rules, on real files.

use super::*;
use crate::term_history::TermSwitch;
use crate::testing::WalGen;
use crate::wal_storage::read_wal;

const SYSID: u64 = 7_000_000_000_000_000_001;
const START: Lsn = Lsn(0x0100_0000 + 40);

fn id() -> TenantTimeline {
    TenantTimeline {
        tenant: "11111111111111111111111111111111".parse().unwrap(),
        timeline: "22222222222222222222222222222222".parse().unwrap(),
    }
}

fn greeting() -> GreetingInfo {
    GreetingInfo {
        system_id: SYSID,
        pg_timeline: 1,
        wal_seg_size: WAL_SEGMENT_SIZE as u32,
    }
}

fn hist(v: &[(u64, Lsn)]) -> TermHistory {
    TermHistory(
        v.iter()
            .map(|&(term, start)| TermSwitch { term, start })
            .collect(),
    )
}

fn read(dir: &Path, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = vec![0u8; (to.0 - from.0) as usize];
    let mut pos = 0;
    while pos < out.len() {
        let n = read_wal(dir, 1, Lsn(from.0 + pos as u64), &mut out[pos..]).unwrap();
        assert!(n > 0, "WAL missing at {}", from.0 + pos as u64);
        pos += n;
    }
    out
}

/// An acceptor elected in term 1 with `n` records of WAL appended and flushed.
fn with_wal(dir: &Path, n: usize) -> (Acceptor, WalGen, Vec<u8>) {
    let mut a = Acceptor::open_or_create(dir, id(), &greeting()).unwrap();
    assert!(a.vote(1).unwrap().granted);
    a.elected(1, hist(&[(1, START)]), START, START).unwrap();
    let mut gen = WalGen::new(SYSID, 1, START);
    let (bytes, _) = gen.records(n, 3000);
    a.append(1, START, Bytes::from(bytes.clone()), Lsn(0), Lsn(0))
        .unwrap();
    let durable = a.wal().flush_blocking().unwrap();
    a.on_durable(durable);
    (a, gen, bytes)
}

#[test]
fn vote_granted_only_for_a_higher_term_and_persisted_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Acceptor::open_or_create(dir.path(), id(), &greeting()).unwrap();
    let v = a.vote(5).unwrap();
    assert!(v.granted);
    assert_eq!(v.term, 5);
    // The term is on disk by the time the answer exists.
    assert_eq!(control_file::load(dir.path()).unwrap().unwrap().term, 5);
    for t in [5, 4, 0] {
        let v = a.vote(t).unwrap();
        assert!(!v.granted, "term {t}");
        assert_eq!(v.term, 5);
    }
    assert!(a.vote(6).unwrap().granted);
    drop(a);
    let mut a = Acceptor::open(dir.path(), id()).unwrap().unwrap();
    assert!(!a.vote(6).unwrap().granted, "term survives a restart");
}

#[test]
fn vote_reports_flush_lsn_and_last_log_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _gen, bytes) = with_wal(dir.path(), 10);
    let v = a.vote(2).unwrap();
    assert_eq!(v.flush_lsn, Lsn(START.0 + bytes.len() as u64));
    assert_eq!(v.last_log_term, 1);
    assert_eq!(v.term_history, hist(&[(1, START)]));
    assert_eq!(v.local_start_lsn, START);
}

#[test]
fn stale_and_unelected_appends_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut gen, _) = with_wal(dir.path(), 3);
    let at = gen.next_lsn();
    let (more, _) = gen.records(1, 100);
    // A newer proposer asked for votes: the term-1 proposer is stale.
    assert!(a.vote(2).unwrap().granted);
    let err = a
        .append(1, at, Bytes::from(more.clone()), Lsn(0), Lsn(0))
        .unwrap_err();
    assert!(
        matches!(err, AcceptorError::StaleTerm { got: 1, current: 2 }),
        "{err}"
    );
    // Term 2 has not been through Elected here yet.
    let err = a
        .append(2, at, Bytes::from(more.clone()), Lsn(0), Lsn(0))
        .unwrap_err();
    assert!(
        err.to_string().contains("before this acceptor accepted"),
        "{err}"
    );
    // Elected in a term below ours is stale too.
    let err = a.elected(1, hist(&[(1, START)]), at, at).unwrap_err();
    assert!(matches!(err, AcceptorError::StaleTerm { .. }));
    // Gaps are refused.
    a.elected(2, hist(&[(1, START), (2, at)]), at, at).unwrap();
    let err = a
        .append(2, Lsn(at.0 + 8), Bytes::from(more), Lsn(0), Lsn(0))
        .unwrap_err();
    assert!(err.to_string().contains("not contiguous"), "{err}");
}

#[test]
fn election_truncates_the_divergent_tail() {
    let dir = tempfile::tempdir().unwrap();
    // Term 1 wrote 40 records (crossing a page boundary many times).
    let (mut a, _gen, bytes) = with_wal(dir.path(), 40);
    let end1 = Lsn(START.0 + bytes.len() as u64);
    // A proposer of term 3 whose donor's term-1 log ended earlier, at `cut` (a record end).
    let mut g = WalGen::new(SYSID, 1, START);
    let (_, ends) = g.records(20, 3000);
    let cut = ends[19];
    assert!(cut < end1);
    assert!(a.vote(3).unwrap().granted);
    let theirs = hist(&[(1, START), (3, cut)]);
    // Not allowed beyond the common point.
    let err = a
        .elected(3, theirs.clone(), Lsn(cut.0 + 8), Lsn(cut.0 + 8))
        .unwrap_err();
    assert!(err.to_string().contains("agrees"), "{err}");
    assert_eq!(a.elected(3, theirs.clone(), cut, cut).unwrap(), cut);
    // The history is persisted before any append is possible.
    let st = control_file::load(dir.path()).unwrap().unwrap();
    assert_eq!(
        (st.term, st.term_history.clone(), st.flush_lsn),
        (3, theirs.clone(), cut)
    );
    // The divergent bytes are gone (zeros), the common prefix is intact.
    assert_eq!(
        read(dir.path(), START, cut),
        bytes[..(cut.0 - START.0) as usize]
    );
    assert!(read(dir.path(), cut, end1).iter().all(|&b| b == 0));
    // Term 3 WAL goes on from `cut`, and survives a restart.
    let (new, _) = g.records(5, 500);
    a.append(3, cut, Bytes::from(new.clone()), Lsn(0), Lsn(0))
        .unwrap();
    let flushed = a.wal().flush_blocking().unwrap();
    assert_eq!(flushed, Lsn(cut.0 + new.len() as u64));
    drop(a);
    let mut a = Acceptor::open(dir.path(), id()).unwrap().unwrap();
    let v = a.vote(4).unwrap();
    assert_eq!(v.flush_lsn, flushed);
    assert_eq!(v.last_log_term, 3);
    assert_eq!(read(dir.path(), cut, flushed), new);
}

#[test]
fn election_never_truncates_committed_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut gen, bytes) = with_wal(dir.path(), 10);
    let end = Lsn(START.0 + bytes.len() as u64);
    let (more, _) = gen.records(1, 10);
    // A heartbeat carries the proposer's commit LSN.
    a.append(1, end, Bytes::from(more), end, Lsn(0)).unwrap();
    a.wal().flush_blocking().unwrap();
    a.on_durable(a.wal().durable().borrow().lsn);
    assert_eq!(a.state().commit_lsn, end);
    assert!(a.vote(2).unwrap().granted);
    let err = a.elected(2, hist(&[(2, START)]), START, START).unwrap_err();
    assert!(err.to_string().contains("committed WAL"), "{err}");
}

#[test]
fn commit_lsn_never_above_flush_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut gen, _) = with_wal(dir.path(), 2);
    let at = gen.next_lsn();
    let (more, _) = gen.records(3, 200);
    let end = Lsn(at.0 + more.len() as u64);
    // The proposer claims a commit LSN far beyond anything written.
    a.append(1, at, Bytes::from(more), Lsn(end.0 + 1_000_000), Lsn(0))
        .unwrap();
    let (flush, commit) = a.on_durable(at);
    assert_eq!(
        (flush, commit),
        (at, at),
        "not yet durable: commit stays at the old flush"
    );
    let durable = a.wal().flush_blocking().unwrap();
    let (flush, commit) = a.on_durable(durable);
    assert_eq!(flush, end);
    assert_eq!(commit, end);
    a.persist().unwrap();
    let st = control_file::load(dir.path()).unwrap().unwrap();
    assert!(st.commit_lsn <= st.flush_lsn);
    assert_eq!(st.commit_lsn, end);
}

#[test]
fn identity_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Acceptor::open_or_create(dir.path(), id(), &greeting()).unwrap());
    let mut g = greeting();
    g.system_id += 1;
    let err = Acceptor::open_or_create(dir.path(), id(), &g)
        .err()
        .unwrap();
    assert!(err.to_string().contains("system id"), "{err}");
    let mut g = greeting();
    g.wal_seg_size = 1 << 20;
    assert!(Acceptor::open_or_create(dir.path(), id(), &g).is_err());
}

#[test]
fn bad_elections_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Acceptor::open_or_create(dir.path(), id(), &greeting()).unwrap();
    assert!(a.vote(2).unwrap().granted);
    let cases = [
        (2, hist(&[(2, Lsn(0))]), Lsn(0), "WAL never starts"),
        (2, hist(&[(1, START)]), START, "must end with its term"),
        (
            2,
            hist(&[(2, START), (1, START)]),
            START,
            "does not increase",
        ),
    ];
    for (term, h, start, want) in cases {
        let err = a.elected(term, h, start, start).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    let err = a
        .elected(2, hist(&[(2, START)]), START, Lsn(START.0 + 8))
        .unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
    // Still usable afterwards.
    a.elected(2, hist(&[(2, START)]), START, START).unwrap();
    let (wal, _) = WalGen::new(SYSID, 1, START).records(2, 10);
    a.append(2, START, Bytes::from(wal), Lsn(0), Lsn(0))
        .unwrap();
    assert!(a.wal().flush_blocking().unwrap() > START);
}

#[test]
fn old_wal_is_removed_only_below_offloaded_and_consumer_durable() {
    let dir = tempfile::tempdir().unwrap();
    // 3000-byte records: 16000 of them span about three segments.
    let (mut a, _, bytes) = with_wal(dir.path(), 16_000);
    let end = Lsn(START.0 + bytes.len() as u64);
    a.append(1, end, Bytes::new(), end, Lsn(0)).unwrap();
    let (_, commit) = a.on_durable(end);
    assert_eq!(commit, end);
    let seg = |n: u64| Lsn(n * WAL_SEGMENT_SIZE);
    assert!(end.segment_number() >= 3, "{end}");
    let files = |d: &Path| -> usize {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("0000000100"))
            .count()
    };
    let before = files(dir.path());

    // Offloaded but no consumer has reported: nothing goes.
    a.advance_offloaded(seg(3));
    assert_eq!(a.remove_old_wal().unwrap(), None);
    // A consumer reports: removal stops at the lower of the two, at a segment boundary.
    a.advance_consumer_durable(Lsn(seg(2).0 + 100));
    assert_eq!(a.remove_old_wal().unwrap(), Some(seg(2)));
    assert_eq!(files(dir.path()), before - 1);
    assert_eq!(a.state().local_start_lsn, seg(2));
    assert_eq!(
        control_file::load(dir.path())
            .unwrap()
            .unwrap()
            .local_start_lsn,
        seg(2),
        "the new WAL start is durable"
    );
    assert_eq!(a.remove_old_wal().unwrap(), None, "nothing more to remove");
    // A consumer can never be ahead of the commit LSN, and the segment holding the commit
    // LSN always stays.
    a.advance_consumer_durable(Lsn(u64::MAX));
    assert_eq!(a.state().consumer_durable_lsn, commit);
    a.advance_offloaded(Lsn(u64::MAX - WAL_SEGMENT_SIZE + 1));
    assert_eq!(a.remove_old_wal().unwrap(), Some(commit.segment_start()));
    assert_eq!(
        read(dir.path(), commit.segment_start(), commit),
        bytes[(commit.segment_start().0 - START.0) as usize..]
    );
    drop(a);
    // Restart: the WAL starts where the removal left it, everything after it intact.
    let a = Acceptor::open(dir.path(), id()).unwrap().unwrap();
    assert_eq!(a.state().local_start_lsn, commit.segment_start());
    assert_eq!(a.state().flush_lsn, end);
}

#[test]
fn lazy_persist_runs_outside_the_lock_and_never_undoes_a_newer_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _, bytes) = with_wal(dir.path(), 3);
    let end = Lsn(START.0 + bytes.len() as u64);
    // Due once the interval passed; nothing else is written meanwhile.
    a.last_persist = Instant::now() - PERSIST_INTERVAL;
    let job = a
        .lazy_persist()
        .expect("the flush LSN moved: a write is due");
    assert!(a.lazy_persist().is_none(), "one lazy write at a time");
    // The job runs with the acceptor free to take appends and votes.
    let r = job.run();
    assert!(r.is_ok());
    a.finish_persist(job, &r);
    assert_eq!(
        control_file::load(dir.path()).unwrap().unwrap().flush_lsn,
        end
    );
    assert!(!a.persist_due());

    // A snapshot taken before a vote must not be written after it: the term would regress.
    a.on_durable(end);
    a.advance_offloaded(Lsn(WAL_SEGMENT_SIZE));
    a.last_persist = Instant::now() - PERSIST_INTERVAL;
    let stale = a.lazy_persist().expect("the offloaded LSN moved");
    assert!(a.vote(5).unwrap().granted);
    let r = stale.run();
    assert!(r.is_ok());
    a.finish_persist(stale, &r);
    let on_disk = control_file::load(dir.path()).unwrap().unwrap();
    assert_eq!(
        on_disk.term, 5,
        "the older snapshot was not written over the vote"
    );
    assert_eq!(on_disk.offloaded_lsn, Lsn(WAL_SEGMENT_SIZE));
    assert_eq!(&on_disk, a.state());
    // And a lazy write can start again afterwards.
    a.advance_offloaded(Lsn(2 * WAL_SEGMENT_SIZE));
    a.last_persist = Instant::now() - PERSIST_INTERVAL;
    let job = a.lazy_persist().expect("due again");
    let r = job.run();
    a.finish_persist(job, &r);
    let on_disk = control_file::load(dir.path()).unwrap().unwrap();
    assert_eq!(on_disk.offloaded_lsn, Lsn(2 * WAL_SEGMENT_SIZE));
    assert_eq!(on_disk.term, 5);
}

/// Issue 17, wedge 1: after a WAL switch the commit LSN sits exactly on a segment boundary and
/// WAL removal goes up to it. The writer must not lose its open segment: the next append (an
/// INSERT after `pg_switch_wal()`) is written and flushed.
#[test]
fn removal_up_to_a_segment_boundary_commit_leaves_the_writer_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _, bytes) = with_wal(dir.path(), 10);
    let end = Lsn(START.0 + bytes.len() as u64);
    let boundary = Lsn(end.segment_start().0 + WAL_SEGMENT_SIZE);
    // The switch record's padding: zeros to the end of the segment.
    let pad = vec![0u8; (boundary.0 - end.0) as usize];
    a.append(1, end, Bytes::from(pad), boundary, Lsn(0))
        .unwrap();
    assert_eq!(a.wal().flush_blocking().unwrap(), boundary);
    assert_eq!(a.on_durable(boundary), (boundary, boundary));
    a.advance_offloaded(boundary);
    a.advance_consumer_durable(boundary);
    assert_eq!(a.remove_old_wal().unwrap(), Some(boundary));
    let (more, _) = WalGen::new(SYSID, 1, boundary).records(3, 100);
    let more_end = Lsn(boundary.0 + more.len() as u64);
    a.append(1, boundary, Bytes::from(more.clone()), boundary, Lsn(0))
        .unwrap();
    assert_eq!(
        a.wal().flush_blocking().unwrap(),
        more_end,
        "the append after the removal is durable"
    );
    assert_eq!(read(dir.path(), boundary, more_end), more);
}

/// Issue 17, wedge 2: a failed control-file save (a full disk) leaves the WAL start where
/// it was, so the next attempt removes the same segments: none is leaked.
#[test]
fn a_failed_removal_save_moves_nothing_and_the_retry_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _, bytes) = with_wal(dir.path(), 16_000);
    let end = Lsn(START.0 + bytes.len() as u64);
    a.append(1, end, Bytes::new(), end, Lsn(0)).unwrap();
    a.on_durable(end);
    a.advance_offloaded(end.segment_start());
    a.advance_consumer_durable(end);
    let start = a.state().local_start_lsn;
    // Make the save fail: the temporary file's name is taken by a directory with a file in it.
    let blocker = dir.path().join("safekeeper.control.tmp");
    let _ = std::fs::remove_file(&blocker);
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    assert!(a.remove_old_wal().is_err());
    assert_eq!(a.state().local_start_lsn, start, "unchanged in memory");
    assert!(
        read_wal(dir.path(), 1, START, &mut [0u8; 8]).unwrap() == 8,
        "the first segment is still there"
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(a.remove_old_wal().unwrap(), Some(end.segment_start()));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("0000000100"))
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the segment holding the commit LSN: {left:?}"
    );
}
