//! One open timeline: its acceptor behind a lock, the channel that tells when WAL became
//! durable, what its offload task did, and the flags its users watch (quarantined, being
//! verified, proposers connected). The set of timelines ([`crate::timelines`]) opens, verifies
//! and quarantines them; proposer sessions, the replication server and the offload task use
//! one through an `Arc`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use walproto::Lsn;

use crate::acceptor::Acceptor;
use crate::control_file::ControlState;
use crate::group_commit::{Durable, WalStats, WalSyncer};
use crate::ids::TenantTimeline;
use crate::offload::OffloadStatus;

/// One timeline's acceptor and the channels the sessions watch.
pub struct Timeline {
    pub id: TenantTimeline,
    acceptor: Mutex<Acceptor>,
    pub(crate) durable: watch::Receiver<Durable>,
    pub(crate) stats: Arc<WalStats>,
    /// Makes a session's appends durable on its own thread.
    pub(crate) syncer: WalSyncer,
    /// What the offload task last decided and uploaded.
    pub offload: Mutex<OffloadStatus>,
    /// Damage was confirmed: the timeline is out of the set and serves nothing more.
    quarantined: AtomicBool,
    /// A verification triggered by a bad read is running.
    checking: AtomicBool,
    /// Proposer sessions connected now (a deletion is refused while there is one).
    proposers: AtomicUsize,
}

/// Counts a proposer session for as long as it lives.
pub(crate) struct ProposerCount(Arc<Timeline>);

impl Drop for ProposerCount {
    fn drop(&mut self) {
        self.0.proposers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Timeline {
    pub(crate) fn new(acceptor: Acceptor) -> Arc<Self> {
        Arc::new(Timeline {
            id: acceptor.state().id,
            durable: acceptor.wal().durable(),
            stats: acceptor.wal().stats().clone(),
            syncer: acceptor.wal().syncer(),
            acceptor: Mutex::new(acceptor),
            offload: Mutex::new(OffloadStatus::default()),
            quarantined: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            proposers: AtomicUsize::new(0),
        })
    }

    /// Damage was found and confirmed on disk: the timeline is being quarantined (its
    /// sessions, readers and offload task should stop; it is recovered from the peers).
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    /// Marks the timeline quarantined; whether it already was.
    pub(crate) fn mark_quarantined(&self) -> bool {
        self.quarantined.swap(true, Ordering::AcqRel)
    }

    /// Claims the one verification after a bad read: false if the timeline is quarantined
    /// or a verification is running already. [`Timeline::end_check`] releases it.
    pub(crate) fn begin_check(&self) -> bool {
        !self.is_quarantined() && !self.checking.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// Counts a proposer session until the returned guard is dropped.
    pub(crate) fn count_proposer(self: &Arc<Self>) -> ProposerCount {
        self.proposers.fetch_add(1, Ordering::AcqRel);
        ProposerCount(self.clone())
    }

    /// Proposer sessions connected now.
    pub(crate) fn proposers(&self) -> usize {
        self.proposers.load(Ordering::Acquire)
    }

    /// The timeline is being deleted: its sessions and offload task stop as for a quarantine.
    pub(crate) fn take_out_of_service(&self) {
        self.quarantined.store(true, Ordering::Release);
    }

    /// The acceptor; a panic elsewhere does not make it unusable (its state is always whole).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Acceptor> {
        self.acceptor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the acceptor's current state.
    pub fn state(&self) -> ControlState {
        self.lock().state().clone()
    }

    /// The highest LSN known to be on a majority: what may be served to readers.
    pub fn commit_lsn(&self) -> Lsn {
        let mut acceptor = self.lock();
        let durable = self.durable.borrow().lsn;
        acceptor.on_durable(durable).1
    }

    /// The directory holding the timeline's segments.
    pub fn wal_dir(&self) -> PathBuf {
        self.lock().dir().to_path_buf()
    }

    /// (flush LSN, commit LSN) as of now.
    pub fn lsns(&self) -> (Lsn, Lsn) {
        let d = self.durable.borrow().lsn;
        self.lock().on_durable(d)
    }

    /// A pageserver reported WAL up to `lsn` durable in the object store.
    pub fn report_consumer_durable(&self, lsn: Lsn) {
        self.commit_lsn();
        self.lock().advance_consumer_durable(lsn);
    }

    pub(crate) fn offload_status(&self) -> OffloadStatus {
        self.offload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
