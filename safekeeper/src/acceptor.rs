//! The Paxos (Raft-like) acceptor for one timeline.
//!
//! Rules, each enforced here and nowhere else:
//! - **Vote**: granted only for a term above the current term, and the new term is persisted
//!   before the answer leaves; the answer carries the flush LSN, the term of the WAL there and
//!   the term history, from which the proposer picks the most advanced log.
//! - **Elected**: a term below ours is stale. The proposer's history is validated and must end
//!   with its own term. The WAL is cut back to `start_streaming_at`, which may not be above the
//!   highest point where our history agrees with the proposer's (the divergent tail goes), nor
//!   above our flush LSN (no gaps), nor below our commit LSN (committed WAL never changes). The
//!   new term history is persisted before any append of the new term is accepted. Crash order:
//!   the persisted flush LSN is lowered first, then the WAL truncated, then the history stored,
//!   so a restart at any point sees a history that truly describes the WAL on disk.
//! - **Append**: only in the current term, only after its Elected, only contiguous.
//! - **Flush LSN** moves only after fsync (it comes from the group-commit writer).
//! - **Commit LSN** = max(previous, min(proposer's commit LSN, our flush LSN)); persisted lazily,
//!   always together with a flush LSN at least as high.
//!
//! Lazy persistence runs outside the acceptor's lock ([`Acceptor::lazy_persist`] takes a
//! snapshot, [`PersistJob::run`] writes it, [`Acceptor::finish_persist`] records it), so appends
//! never queue behind a control-file fsync. Every snapshot gets a sequence number under the
//! lock, and the file is written under a separate file lock that remembers the sequence number
//! on disk: a snapshot older than what is on disk is never written, so a lazy write can never
//! undo a term, a history or a lowered flush LSN persisted synchronously after it was taken.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::Lsn;

use crate::control_file::{self, ControlFileError, ControlState};
use crate::group_commit::WalWriterHandle;
use crate::ids::TenantTimeline;
use crate::term_history::{TermHistory, TermHistoryError};
use crate::wal_storage::{WalError, WalStorage};

/// How often at most the lazily persisted LSNs are written to the control file.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error("stale term {got}: this acceptor is at term {current}")]
    StaleTerm { got: u64, current: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    ControlFile(#[from] ControlFileError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("timeline directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(msg: String) -> AcceptorError {
    AcceptorError::Invalid(msg)
}

/// The identity a proposer presents in its greeting.
#[derive(Clone, Debug)]
pub struct GreetingInfo {
    pub system_id: u64,
    pub pg_timeline: u32,
    pub wal_seg_size: u32,
}

/// The acceptor's answer to a vote request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    pub granted: bool,
    pub flush_lsn: Lsn,
    pub last_log_term: u64,
    pub term_history: TermHistory,
    pub truncate_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub local_start_lsn: Lsn,
}

pub struct Acceptor {
    dir: PathBuf,
    /// Current state; its LSNs run ahead of `persisted`.
    state: ControlState,
    persisted: ControlState,
    /// The sequence number of `persisted`.
    persisted_seq: u64,
    /// Snapshots of `state` taken for writing so far.
    snapshot_seq: u64,
    /// Held while the control file is written; holds the sequence number of the state on disk.
    file: Arc<Mutex<u64>>,
    /// A lazy write runs outside the lock.
    lazy_in_flight: bool,
    last_persist: Instant,
    wal: WalWriterHandle,
    /// End of the WAL handed to the writer (durable or not).
    write_lsn: Lsn,
    /// The commit LSN the current term's proposer last sent.
    proposer_commit: Lsn,
}

impl Acceptor {
    /// Creates the timeline directory and its first control file (term 0, no WAL), or opens it
    /// if it exists, then checks that the proposer's identity matches what is stored.
    pub fn open_or_create(
        dir: &Path,
        id: TenantTimeline,
        g: &GreetingInfo,
    ) -> Result<Self, AcceptorError> {
        if g.wal_seg_size as u64 != WAL_SEGMENT_SIZE {
            return Err(invalid(format!(
                "WAL segment size {} is not supported (only {WAL_SEGMENT_SIZE})",
                g.wal_seg_size
            )));
        }
        if g.pg_timeline == 0 {
            return Err(invalid("Postgres timeline 0 is invalid".into()));
        }
        if let Some(a) = Self::open(dir, id)? {
            a.check_identity(g)?;
            return Ok(a);
        }
        let io = |source| AcceptorError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        if let Some(parent) = dir.parent() {
            control_file::fsync_dir(parent).map_err(io)?;
            if let Some(grand) = parent.parent() {
                control_file::fsync_dir(grand).map_err(io)?;
            }
        }
        let state = ControlState::new(id, g.system_id, g.pg_timeline, g.wal_seg_size);
        control_file::store(dir, &state)?;
        Self::start(dir, state)
    }

    /// Opens an existing timeline; `None` if `dir` holds no control file.
    pub fn open(dir: &Path, id: TenantTimeline) -> Result<Option<Self>, AcceptorError> {
        let Some(state) = control_file::load(dir)? else {
            return Ok(None);
        };
        if state.id != id {
            return Err(invalid(format!(
                "control file in {} belongs to {}, not {id}",
                dir.display(),
                state.id
            )));
        }
        Self::start(dir, state).map(Some)
    }

    fn start(dir: &Path, mut state: ControlState) -> Result<Self, AcceptorError> {
        // Recovery logs and the writer thread carry the timeline in their span.
        let _span = tracing::info_span!("timeline", tenant = %state.id.tenant, timeline = %state.id.timeline)
            .entered();
        let storage = WalStorage::open(
            dir,
            state.pg_timeline,
            state.local_start_lsn,
            state.flush_lsn,
        )?;
        let flush = storage.flush_lsn();
        if flush < state.commit_lsn {
            return Err(invalid(format!(
                "WAL in {} ends at {flush}, below the persisted commit LSN {}: acknowledged WAL is missing",
                dir.display(),
                state.commit_lsn
            )));
        }
        let persisted = state.clone();
        state.flush_lsn = flush;
        let wal =
            WalWriterHandle::start(storage, state.id.timeline.to_string()).map_err(|source| {
                AcceptorError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        Ok(Acceptor {
            dir: dir.to_path_buf(),
            state,
            persisted,
            persisted_seq: 0,
            snapshot_seq: 0,
            file: Arc::new(Mutex::new(0)),
            lazy_in_flight: false,
            last_persist: Instant::now(),
            wal,
            write_lsn: flush,
            proposer_commit: Lsn(0),
        })
    }

    fn check_identity(&self, g: &GreetingInfo) -> Result<(), AcceptorError> {
        let s = &self.state;
        if s.system_id != g.system_id
            || s.pg_timeline != g.pg_timeline
            || s.wal_seg_size != g.wal_seg_size
        {
            return Err(invalid(format!(
                "timeline {} belongs to system id {} (Postgres timeline {}, segment size {}), \
                 but the proposer has system id {} (Postgres timeline {}, segment size {})",
                s.id,
                s.system_id,
                s.pg_timeline,
                s.wal_seg_size,
                g.system_id,
                g.pg_timeline,
                g.wal_seg_size
            )));
        }
        Ok(())
    }

    /// Checks a greeting against an acceptor that is already open.
    pub fn greet(&self, g: &GreetingInfo) -> Result<(), AcceptorError> {
        self.check_identity(g)
    }

    pub fn state(&self) -> &ControlState {
        &self.state
    }

    pub fn wal(&self) -> &WalWriterHandle {
        &self.wal
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }

    /// Writes the current state now (under the acceptor's lock: for the writes the Paxos rules
    /// wait on). Waits for a lazy write in progress; one taken before this is never written
    /// after it.
    fn persist(&mut self) -> Result<(), AcceptorError> {
        self.persist_changed(|_| {})
    }

    /// Like [`Acceptor::persist`], with `change` applied to the state: in memory only once it
    /// is on disk, so a failed write (a full disk) leaves the state as it was.
    fn persist_changed(
        &mut self,
        change: impl FnOnce(&mut ControlState),
    ) -> Result<(), AcceptorError> {
        let mut next = self.state.clone();
        change(&mut next);
        self.snapshot_seq += 1;
        let seq = self.snapshot_seq;
        {
            let mut on_disk = self.file.lock().unwrap_or_else(|p| p.into_inner());
            control_file::store(&self.dir, &next)?;
            *on_disk = seq;
        }
        self.state = next;
        self.persisted = self.state.clone();
        self.persisted_seq = seq;
        self.last_persist = Instant::now();
        Ok(())
    }

    /// If [`Acceptor::persist_due`] and no lazy write is running: a snapshot of the state to
    /// write outside the lock ([`PersistJob::run`]), then report with
    /// [`Acceptor::finish_persist`].
    pub fn lazy_persist(&mut self) -> Option<PersistJob> {
        if self.lazy_in_flight || !self.persist_due() {
            return None;
        }
        self.lazy_in_flight = true;
        self.snapshot_seq += 1;
        Some(PersistJob {
            dir: self.dir.clone(),
            state: self.state.clone(),
            seq: self.snapshot_seq,
            file: self.file.clone(),
        })
    }

    /// Records the outcome of a lazy write started by [`Acceptor::lazy_persist`].
    pub fn finish_persist(&mut self, job: PersistJob, result: &Result<(), AcceptorError>) {
        self.lazy_in_flight = false;
        if result.is_ok() && job.seq > self.persisted_seq {
            self.persisted = job.state;
            self.persisted_seq = job.seq;
            self.last_persist = Instant::now();
        }
    }

    /// Takes in the writer's durable LSN; returns (flush LSN, commit LSN).
    pub fn on_durable(&mut self, durable: Lsn) -> (Lsn, Lsn) {
        // After a truncation the writer's LSN may lag the one we set; never above what we wrote.
        let flush = durable.min(self.write_lsn);
        self.state.flush_lsn = flush;
        let commit = self.proposer_commit.min(flush);
        if commit > self.state.commit_lsn {
            self.state.commit_lsn = commit;
        }
        (self.state.flush_lsn, self.state.commit_lsn)
    }

    /// The lazily kept LSNs moved and a while has passed (or a segment filled): time to persist.
    pub fn persist_due(&self) -> bool {
        let s = &self.state;
        let p = &self.persisted;
        if s.flush_lsn == p.flush_lsn
            && s.commit_lsn == p.commit_lsn
            && s.truncate_lsn == p.truncate_lsn
            && s.offloaded_lsn == p.offloaded_lsn
            && s.consumer_durable_lsn == p.consumer_durable_lsn
        {
            return false;
        }
        let segment_filled = s.flush_lsn.segment_number() != p.flush_lsn.segment_number();
        segment_filled || self.last_persist.elapsed() >= PERSIST_INTERVAL
    }

    /// Persists the current state now (clean shutdown, a new offloaded LSN). The WAL is
    /// flushed first; a writer that failed (a full disk) does not stop the rest of the state
    /// from being saved with the flush LSN it last made durable.
    pub fn persist_now(&mut self) -> Result<(), AcceptorError> {
        let d = match self.wal.flush_blocking() {
            Ok(d) => d,
            Err(_) => self.wal.durable().borrow().lsn,
        };
        self.on_durable(d);
        self.persist()
    }

    fn durable_now(&mut self) -> (Lsn, Lsn) {
        let d = self.wal.durable().borrow().lsn;
        self.on_durable(d)
    }

    /// Every complete segment below `lsn` is in the object store (ours or a peer's upload);
    /// kept in memory now and persisted with the next control file write.
    pub fn advance_offloaded(&mut self, lsn: Lsn) {
        self.state.offloaded_lsn = self.state.offloaded_lsn.max(lsn);
    }

    /// A pageserver made WAL up to `lsn` durable remotely. Never above our commit LSN: a
    /// consumer cannot have made durable what was not committed.
    pub fn advance_consumer_durable(&mut self, lsn: Lsn) {
        let lsn = lsn.min(self.state.commit_lsn);
        self.state.consumer_durable_lsn = self.state.consumer_durable_lsn.max(lsn);
    }

    /// Where local WAL may be removed up to (a segment boundary), or `None` if nothing may
    /// go: only below what is both offloaded and made durable by a consumer, and never the
    /// segment holding the commit LSN (the proposer and readers still need it). A commit LSN
    /// on a segment boundary (after a WAL switch) belongs to the next segment: the one before
    /// it is complete, and the writer closed and renamed it when it flushed its end
    /// ([`WalStorage::write`]), so removing it never pulls a file from under the writer.
    pub fn removal_horizon(&self) -> Option<Lsn> {
        let s = &self.state;
        if s.consumer_durable_lsn == Lsn(0) || s.offloaded_lsn == Lsn(0) {
            return None;
        }
        let horizon = s
            .offloaded_lsn
            .min(s.consumer_durable_lsn)
            .min(s.commit_lsn)
            .segment_start();
        (horizon > s.local_start_lsn.segment_start()).then_some(horizon)
    }

    /// Removes the local segments below [`Acceptor::removal_horizon`]: the control file first
    /// says the WAL starts there (so a crash never leaves a control file pointing at removed
    /// files), then the files go and the directory is fsynced. Returns the new WAL start.
    /// The WAL start moves in memory only once it is on disk: if the save fails, the next
    /// attempt removes from the same start (nothing is leaked), and segments left by a crash
    /// after the save are removed when the timeline opens. The save works on a full disk
    /// ([`control_file::store`]), so removal is what frees space there.
    pub fn remove_old_wal(&mut self) -> Result<Option<Lsn>, AcceptorError> {
        let Some(horizon) = self.removal_horizon() else {
            return Ok(None);
        };
        let first = self.state.local_start_lsn.segment_number();
        self.persist_changed(|s| s.local_start_lsn = horizon)?;
        crate::wal_storage::remove_segments(
            &self.dir,
            self.state.pg_timeline,
            first..horizon.segment_number(),
        )?;
        Ok(Some(horizon))
    }

    /// Handles a vote request (see the module docs).
    pub fn vote(&mut self, term: u64) -> Result<Vote, AcceptorError> {
        let granted = term > self.state.term;
        if granted {
            self.state.term = term;
            self.persist()?;
        }
        let (flush, commit) = self.durable_now();
        Ok(Vote {
            term: self.state.term,
            granted,
            flush_lsn: flush,
            last_log_term: self.state.term_history.last_log_term(flush),
            term_history: self.state.term_history.up_to(flush),
            truncate_lsn: self.state.truncate_lsn,
            commit_lsn: commit,
            local_start_lsn: self.state.local_start_lsn,
        })
    }

    /// Handles the proposer's election (see the module docs); returns the flush LSN after it.
    pub fn elected(
        &mut self,
        term: u64,
        history: TermHistory,
        start_streaming_at: Lsn,
        truncate_to: Lsn,
    ) -> Result<Lsn, AcceptorError> {
        if term < self.state.term {
            return Err(AcceptorError::StaleTerm {
                got: term,
                current: self.state.term,
            });
        }
        history
            .validate()
            .map_err(|e: TermHistoryError| invalid(format!("proposer's term history: {e}")))?;
        if history.last().map(|e| e.term) != Some(term) {
            return Err(invalid(format!(
                "proposer's term history must end with its term {term}, got {:?}",
                history.last()
            )));
        }
        if truncate_to != start_streaming_at {
            return Err(invalid(format!(
                "truncate LSN {truncate_to} differs from start streaming LSN {start_streaming_at}"
            )));
        }
        let start = start_streaming_at;
        if start == Lsn(0) {
            return Err(invalid(
                "start streaming LSN 0/0 is invalid: WAL never starts at 0".into(),
            ));
        }
        // Everything queued becomes durable first, so the WAL's end is known. After a failed
        // write or fsync the WAL is cut back to the last flushed LSN here: the proposer
        // rejoining is what lets a writer that failed (a full disk) go on.
        let flush = self.wal.recover_blocking()?;
        self.on_durable(flush);
        if self.state.local_start_lsn == Lsn(0) {
            // No WAL yet: ours begins where the proposer starts streaming.
            self.wal.reset_blocking(start)?;
            self.state.local_start_lsn = start;
        } else {
            let common = self
                .state
                .term_history
                .highest_common_point(flush, &history);
            if start > flush {
                return Err(invalid(format!(
                    "start streaming LSN {start} is beyond this acceptor's flush LSN {flush}: it would leave a gap"
                )));
            }
            if start < self.state.local_start_lsn {
                return Err(invalid(format!(
                    "start streaming LSN {start} is before this acceptor's WAL start {}",
                    self.state.local_start_lsn
                )));
            }
            if start < self.state.commit_lsn {
                return Err(invalid(format!(
                    "start streaming LSN {start} is below the commit LSN {}: committed WAL is never truncated",
                    self.state.commit_lsn
                )));
            }
            match common {
                Some(c) if start <= c => {}
                _ => {
                    return Err(invalid(format!(
                    "start streaming LSN {start} is above the highest point {common:?} where this \
                         acceptor's history {:?} agrees with the proposer's {:?}",
                    self.state.term_history.0, history.0
                )))
                }
            }
            if start < self.persisted.flush_lsn {
                // Lower the durable flush LSN before the WAL it names goes away.
                self.state.flush_lsn = start;
                self.persist()?;
            }
            self.wal.truncate_blocking(start)?;
        }
        self.write_lsn = start;
        self.proposer_commit = Lsn(0);
        self.state.term = term;
        self.state.term_history = history;
        self.state.flush_lsn = start;
        self.state.truncate_lsn = self.state.truncate_lsn.min(start);
        self.persist()?;
        Ok(start)
    }

    /// Accepts WAL `[begin, begin + data.len())` of `term` (see the module docs). Durability is
    /// announced by the writer; `commit` and `truncate_hint` are the proposer's LSNs.
    pub fn append(
        &mut self,
        term: u64,
        begin: Lsn,
        data: Bytes,
        commit: Lsn,
        truncate_hint: Lsn,
    ) -> Result<(), AcceptorError> {
        if term < self.state.term {
            return Err(AcceptorError::StaleTerm {
                got: term,
                current: self.state.term,
            });
        }
        if term > self.state.term || self.state.term_history.last().map(|e| e.term) != Some(term) {
            return Err(invalid(format!(
                "append in term {term} before this acceptor accepted that term's election"
            )));
        }
        if begin != self.write_lsn {
            return Err(invalid(format!(
                "append at {begin} is not contiguous: this acceptor's WAL ends at {}",
                self.write_lsn
            )));
        }
        let end = begin.checked_add(data.len() as u64).ok_or_else(|| {
            invalid(format!(
                "append at {begin} of {} bytes overflows",
                data.len()
            ))
        })?;
        if !data.is_empty() {
            self.wal.write(begin, data)?;
            self.write_lsn = end;
        }
        self.proposer_commit = self.proposer_commit.max(commit);
        // The hint can only name WAL everyone holds, so never beyond our own end.
        self.state.truncate_lsn = self.state.truncate_lsn.max(truncate_hint.min(end));
        Ok(())
    }
}

/// A snapshot of the acceptor's state to write to the control file outside the acceptor's lock.
pub struct PersistJob {
    dir: PathBuf,
    state: ControlState,
    seq: u64,
    file: Arc<Mutex<u64>>,
}

impl PersistJob {
    /// Writes the snapshot (blocking: write, fsync, rename, directory fsync), unless a newer
    /// state is on disk already.
    pub fn run(&self) -> Result<(), AcceptorError> {
        let mut on_disk = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if *on_disk >= self.seq {
            return Ok(());
        }
        control_file::store(&self.dir, &self.state)?;
        *on_disk = self.seq;
        Ok(())
    }
}

#[cfg(test)]
#[path = "acceptor_tests.rs"]
mod tests;
