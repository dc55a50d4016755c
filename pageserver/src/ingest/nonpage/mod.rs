//! The non-page state a basebackup needs, derived from the WAL: CLOG, MultiXact and commit
//! timestamp SLRU pages, two-phase state files, relmapper files, the checkpoint counters,
//! restore points, the LSN↔commit-time index, replication origin progress and tablespaces.
//!
//! [`NonPageState`] holds what ingest must know to produce the next values (the counters,
//! which SLRU segments exist, which xacts are prepared, how many commits are indexed); it is
//! loaded from the timeline when ingest starts, so a resumed ingest continues where the
//! durable state ends. [`NonPageState::record_values`] turns one record into values without
//! changing the state; the caller commits the returned state only once the values are stored.
//!
//! What is stored (keys: [`keys`] and `layer-format`):
//! - CLOG pages (`Key::slru_block(Clog, ..)`): COMMIT / ABORT (and the `_PREPARED` forms)
//!   become one [`crate::redo::slru::KIND_CLOG_SET`] record per CLOG page the transaction tree
//!   touches, setting the final status (a committed tree's subxacts end COMMITTED, as in
//!   Postgres's files after redo); ZEROPAGE is a zero image (`will_init`).
//! - MultiXact offsets / members pages: ZERO_OFF_PAGE / ZERO_MEM_PAGE are zero images;
//!   CREATE_ID sets `offsets[mid]` and, as PostgreSQL 15.15 and later do, `offsets[mid + 1]`
//!   (the end of the members), and each member's xid and flag byte.
//! - SLRU segments: `Key::slru_segment_size(slru, segno)` holds the segment's page count
//!   (`u32` LE; an empty image once truncated away) and [`keys::slru_dir`] lists the live
//!   segments, so a reader knows which segments exist without a key-range scan. TRUNCATE
//!   records remove segments the way `SimpleLruTruncate` / `PerformMembersTruncation` do.
//! - Two-phase: PREPARE stores its main data (the state file's contents without the trailing
//!   CRC) at `Key::two_phase(xid)`; COMMIT/ABORT PREPARED store an empty image there (a
//!   tombstone), and [`keys::twophase_dir`] lists the live prepared xids.
//! - RelMap UPDATE: the 512-byte file as an image at `Key::relmap(spc, db)`.
//! - Checkpoint counters ([`counters`]) at `Key::checkpoint()`, an image per change (nextXid
//!   rounded up to a multiple of 1,024 between checkpoints, so not one per transaction).
//! - Restore points and commit times ([`index`]).
//! - `pg_commit_ts` ([`commit_ts`]): while `track_commit_timestamp` is on (as the control
//!   file at import, then `XLOG/PARAMETER_CHANGE`, set it), CommitTs ZEROPAGE is a zero image,
//!   a commit one [`commit_ts::KIND_COMMIT_TS_SET`] record per page, TRUNCATE removes
//!   segments; the module's on/off state and oldest/newest xids at
//!   [`keys::commit_ts_state`]. Switching it off removes every segment, as Postgres does.
//! - Replication origins ([`origins`]): the progress slots at [`keys::replication_origins`]
//!   after ReplicationOrigin SET / DROP and commits or aborts made with an origin.
//! - Tablespaces: the OIDs Tablespace CREATE made and DROP did not remove, at
//!   [`keys::tablespaces`] (a basebackup gives even an empty one its directory).
//!
//! Records that carry no state a basebackup needs (nothing above is derived from them):
//! - XLOG NOOP, SWITCH (segment padding), BACKUP_END, FPW_CHANGE, END_OF_RECOVERY,
//!   OVERWRITE_CONTRECORD: they mark WAL positions or a server's recovery; the basebackup
//!   writes its own shutdown checkpoint. FPI / FPI_FOR_HINT carry page images, stored as pages.
//! - XLOG PARAMETER_CHANGE beyond `track_commit_timestamp`: the other settings (wal_level,
//!   max_connections, ...) only constrain a hot standby; the basebackup writes the imported
//!   control file's values (a compute may need to raise them in its own configuration).
//! - Standby RUNNING_XACTS, LOCK, INVALIDATIONS: a hot standby's snapshot, AccessExclusive
//!   locks and cache invalidations while replaying; a basebackup starts from a shutdown
//!   checkpoint with no transaction running and empty caches.
//! - LogicalMessage MESSAGE: only logical decoding reads it; it changes no file.
//! - Heap2 NEW_CID, XLOG/XACT records' invalidation lists: for logical decoding and caches.
//! - Tablespace CREATE's location: a basebackup links `pg_tblspc/<oid>` to a directory the
//!   compute owns, never to the primary's location.
//! - Relation pages of every rmgr (heap, index AMs, sequences, Generic): pages, not
//!   non-page state ([`crate::redo`]).

pub mod commit_ts;
pub mod counters;
pub mod index;
pub mod keys;
pub mod origins;
pub mod read;
pub mod slru;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use layer_format::{Key, Lsn, SlruKind, Value};
use walproto::record::DecodedRecord;
use walproto::rmgr::clog::ClogRecord;
use walproto::rmgr::committs::CommitTsRecord;
use walproto::rmgr::multixact::MultiXactRecord;
use walproto::rmgr::replorigin::ReplOriginRecord;
use walproto::rmgr::tblspc::TblspcRecord;
use walproto::rmgr::xact::XactRecord;
use walproto::rmgr::xlog::XlogRecord;
use walproto::rmgr::{self as rmgrs, ParsedRecord};

use crate::redo::slru as fmt;
use crate::timeline::{Timeline, TimelineError};
use commit_ts::CommitTsState;
use counters::CheckpointState;
use index::{CommitEntry, RestorePoint};
use origins::Origins;
use slru::SlruSegments;

/// The state after a record, and the values it stores.
pub type RecordValues = (NonPageState, Vec<(Key, Value)>);

/// What ingest tracks of the non-page state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonPageState {
    pub checkpoint: CheckpointState,
    pub restore_points: Vec<RestorePoint>,
    pub prepared: BTreeSet<u32>,
    /// Commit-time index entries stored so far.
    pub commits: u64,
    /// The largest commit time indexed so far (see [`index`]).
    pub max_commit_time: i64,
    pub segments: SlruSegments,
    /// `pg_commit_ts`'s shared state ([`commit_ts`]).
    pub commit_ts: CommitTsState,
    pub origins: Origins,
    /// Tablespaces the WAL created (and did not drop).
    pub tablespaces: BTreeSet<u32>,
}

/// The records of resource managers that ingest does not parse itself ([`rmgrs::parse`]
/// has no typed parser for them) but whose state is kept here.
enum OwnParsed {
    CommitTs(CommitTsRecord),
    ReplOrigin(ReplOriginRecord),
    Tblspc(TblspcRecord),
}

fn parse_own(rec: &DecodedRecord) -> Result<Option<OwnParsed>, String> {
    let (info, data) = (rec.header.info, rec.main_data_bytes());
    let r = match rec.rmid() {
        rmgrs::RM_COMMIT_TS_ID => CommitTsRecord::parse(info, &data).map(OwnParsed::CommitTs),
        rmgrs::RM_REPLORIGIN_ID => ReplOriginRecord::parse(info, &data).map(OwnParsed::ReplOrigin),
        rmgrs::RM_TBLSPC_ID => TblspcRecord::parse(info, &data).map(OwnParsed::Tblspc),
        _ => return Ok(None),
    };
    r.map(Some).map_err(|e| e.to_string())
}

impl NonPageState {
    /// The state as of `lsn` (the ingest position) in `tl`.
    pub fn load(tl: &Timeline, lsn: Lsn) -> Result<NonPageState, TimelineError> {
        let bad = |key: Key, reason: String| TimelineError::Reconstruct { key, lsn, reason };
        let mut s = NonPageState::default();
        if let Some(b) = tl.get_image_value(Key::checkpoint(), lsn)? {
            s.checkpoint = CheckpointState::decode(&b).map_err(|e| bad(Key::checkpoint(), e))?;
        }
        if let Some(b) = tl.get_image_value(keys::restore_points(), lsn)? {
            s.restore_points =
                index::decode_restore_points(&b).map_err(|e| bad(keys::restore_points(), e))?;
        }
        if let Some(b) = tl.get_image_value(keys::twophase_dir(), lsn)? {
            s.prepared = index::decode_u32_set(&b)
                .map_err(|e| bad(keys::twophase_dir(), e))?
                .into_iter()
                .collect();
        }
        if let Some((n, newest)) = read::commit_count_at(tl, lsn)? {
            s.commits = n;
            s.max_commit_time = newest.max_time;
        }
        s.segments = SlruSegments::load(tl, lsn)?;
        s.commit_ts = commit_ts::state_at(tl, lsn)?;
        s.origins = origins::origins_at(tl, lsn)?;
        s.tablespaces = Self::load_tablespaces(tl, lsn)?;
        Ok(s)
    }

    /// The tablespaces the WAL created and did not drop, as of `lsn`.
    pub fn load_tablespaces(tl: &Timeline, lsn: Lsn) -> Result<BTreeSet<u32>, TimelineError> {
        let key = keys::tablespaces();
        match tl.get_image_value(key, lsn)? {
            Some(b) => Ok(index::decode_u32_set(&b)
                .map_err(|reason| TimelineError::Reconstruct { key, lsn, reason })?
                .into_iter()
                .collect()),
            None => Ok(BTreeSet::new()),
        }
    }

    /// The values `rec` implies, and the state after it. `Ok(None)`: the record changes
    /// nothing of the non-page state. Errors name what is wrong; the caller adds the record
    /// and LSN.
    pub fn record_values(
        &self,
        rec: &DecodedRecord,
        parsed: Option<&ParsedRecord>,
    ) -> Result<Option<RecordValues>, String> {
        let relevant = matches!(
            parsed,
            Some(
                ParsedRecord::Xact(_)
                    | ParsedRecord::Clog(_)
                    | ParsedRecord::MultiXact(_)
                    | ParsedRecord::RelMap(_)
                    | ParsedRecord::Xlog(
                        XlogRecord::CheckpointShutdown(_)
                            | XlogRecord::CheckpointOnline(_)
                            | XlogRecord::NextOid(_)
                            | XlogRecord::RestorePoint { .. }
                            | XlogRecord::ParameterChange(_)
                    )
            )
        );
        let own = parse_own(rec)?;
        // `ApplyWalRecord`: nextXid moves past every record's xid (stored rounded up).
        let mut checkpoint = self.checkpoint;
        checkpoint.reserve_next_xid_past(rec.xid());
        if !relevant && own.is_none() && checkpoint == self.checkpoint {
            return Ok(None);
        }
        let mut s = self.clone();
        s.checkpoint = checkpoint;
        let mut out = Out::default();
        match parsed {
            Some(ParsedRecord::Xact(x)) => s.xact(rec, x, &mut out)?,
            Some(ParsedRecord::Clog(c)) => s.clog(c, &mut out),
            Some(ParsedRecord::MultiXact(m)) => s.multixact(rec, m, &mut out),
            Some(ParsedRecord::RelMap(m)) => {
                out.put(Key::relmap(m.tsid, m.dbid), Value::image(m.data.clone()));
            }
            Some(ParsedRecord::Xlog(x)) => match x {
                XlogRecord::CheckpointShutdown(cp) => s.checkpoint.apply_shutdown_checkpoint(cp),
                XlogRecord::CheckpointOnline(cp) => s.checkpoint.apply_online_checkpoint(cp),
                XlogRecord::NextOid(oid) => s.checkpoint.next_oid = *oid,
                // `CommitTsParameterChange`.
                XlogRecord::ParameterChange(p) => {
                    if p.track_commit_timestamp && !s.commit_ts.active {
                        // nextXid is exact here in practice: the record follows the
                        // shutdown checkpoint of the restart that changed the setting.
                        s.commit_ts.activate(s.checkpoint.next_xid32());
                        let page = commit_ts::page_of(s.checkpoint.next_xid32());
                        if !s.segments.has_page(SlruKind::CommitTs, page) {
                            let key = s.segments.touch(SlruKind::CommitTs, page);
                            out.put(key, zero_page());
                        }
                    } else if !p.track_commit_timestamp && s.commit_ts.active {
                        s.commit_ts.deactivate();
                        s.segments.remove_all(SlruKind::CommitTs);
                    }
                }
                XlogRecord::RestorePoint { time, name } => {
                    s.restore_points.push(RestorePoint {
                        name: name.clone(),
                        lsn: rec.end_lsn,
                        time: *time,
                    });
                    out.put(
                        keys::restore_points(),
                        Value::image(index::encode_restore_points(&s.restore_points)),
                    );
                }
                _ => {}
            },
            _ => {}
        }
        match own {
            Some(OwnParsed::CommitTs(CommitTsRecord::ZeroPage { pageno })) => {
                let key = s.segments.touch(SlruKind::CommitTs, pageno as u32);
                out.put(key, zero_page());
            }
            Some(OwnParsed::CommitTs(CommitTsRecord::Truncate { pageno, oldest_xid })) => {
                s.commit_ts.advance_oldest(oldest_xid);
                s.segments
                    .truncate(SlruKind::CommitTs, pageno as u32, commit_ts::page_precedes);
            }
            Some(OwnParsed::ReplOrigin(ReplOriginRecord::Set {
                remote_lsn,
                node_id,
                force,
            })) => s.origins.advance(node_id, remote_lsn, rec.end_lsn.0, force),
            Some(OwnParsed::ReplOrigin(ReplOriginRecord::Drop { node_id })) => {
                s.origins.drop_origin(node_id)
            }
            Some(OwnParsed::Tblspc(TblspcRecord::Create { ts_id, .. })) => {
                s.tablespaces.insert(ts_id);
            }
            Some(OwnParsed::Tblspc(TblspcRecord::Drop { ts_id })) => {
                s.tablespaces.remove(&ts_id);
            }
            None => {}
        }
        if s.checkpoint != self.checkpoint {
            out.put(Key::checkpoint(), Value::image(s.checkpoint.encode()));
        }
        if s.commit_ts != self.commit_ts {
            out.put(keys::commit_ts_state(), Value::image(s.commit_ts.encode()));
        }
        if s.origins != self.origins {
            out.put(
                keys::replication_origins(),
                Value::image(s.origins.encode()),
            );
        }
        if s.tablespaces != self.tablespaces {
            out.put(
                keys::tablespaces(),
                Value::image(index::encode_u32_set(&s.tablespaces)),
            );
        }
        s.segments.emit_changes(&self.segments, &mut out);
        Ok(Some((s, out.finish())))
    }

    fn xact(&mut self, rec: &DecodedRecord, x: &XactRecord, out: &mut Out) -> Result<(), String> {
        match x {
            XactRecord::Commit(p)
            | XactRecord::CommitPrepared(p)
            | XactRecord::Abort(p)
            | XactRecord::AbortPrepared(p) => {
                let prepared = matches!(
                    x,
                    XactRecord::CommitPrepared(_) | XactRecord::AbortPrepared(_)
                );
                let commit = matches!(x, XactRecord::Commit(_) | XactRecord::CommitPrepared(_));
                let xid = if p.twophase_xid != 0 {
                    p.twophase_xid
                } else {
                    rec.xid()
                };
                if xid == 0 {
                    return Err(
                        "no transaction id (neither the record's nor a two-phase one)".into(),
                    );
                }
                let status = if commit {
                    fmt::CLOG_COMMITTED
                } else {
                    fmt::CLOG_ABORTED
                };
                // The xids grouped by CLOG page, pages ascending, each page's xids in the
                // record's order (a stable sort). Most commits have no subtransactions: then
                // nothing is allocated.
                let page_of = |x: &u32| x / fmt::CLOG_XACTS_PER_PAGE;
                let mut all = Vec::new();
                let xids: &[u32] = if p.subxacts.is_empty() {
                    std::slice::from_ref(&xid)
                } else {
                    all.push(xid);
                    all.extend_from_slice(&p.subxacts);
                    all.sort_by_key(page_of);
                    &all
                };
                for &x in std::iter::once(&xid).chain(&p.subxacts) {
                    // `TransactionIdLatest` + `AdvanceNextFullTransactionIdPastXid`.
                    self.checkpoint.reserve_next_xid_past(x);
                }
                for group in xids.chunk_by(|a, b| page_of(a) == page_of(b)) {
                    let key = self.segments.touch(SlruKind::Clog, page_of(&group[0]));
                    let data = fmt::encode_clog_set(status, group);
                    out.put(key, Value::strata_record(false, fmt::KIND_CLOG_SET, data));
                }
                // `xact_redo_commit` / `xact_redo_abort`: the session origin's progress.
                let origin = rec.origin.unwrap_or(0);
                if p.has_origin() {
                    self.origins
                        .advance(origin, p.origin_lsn.0, rec.end_lsn.0, false);
                }
                if commit && self.commit_ts.active {
                    // `TransactionTreeSetCommitTsData`: an applied remote transaction keeps
                    // its origin's commit time.
                    let time = if p.has_origin() {
                        p.origin_timestamp
                    } else {
                        p.xact_time
                    };
                    let ts_page = |x: &u32| commit_ts::page_of(*x);
                    let mut tree: Vec<u32> = std::iter::once(xid)
                        .chain(p.subxacts.iter().copied())
                        .collect();
                    tree.sort_by_key(ts_page);
                    for group in tree.chunk_by(|a, b| ts_page(a) == ts_page(b)) {
                        let key = self.segments.touch(SlruKind::CommitTs, ts_page(&group[0]));
                        let data = commit_ts::encode_set(time, origin, group);
                        out.put(
                            key,
                            Value::strata_record(false, commit_ts::KIND_COMMIT_TS_SET, data),
                        );
                    }
                    let mut latest = xid;
                    for &x in &p.subxacts {
                        if counters::xid_precedes(latest, x) {
                            latest = x;
                        }
                    }
                    self.commit_ts.committed(latest);
                }
                if commit {
                    self.max_commit_time = self.max_commit_time.max(p.xact_time);
                    let entry = CommitEntry {
                        lsn: rec.end_lsn,
                        time: p.xact_time,
                        max_time: self.max_commit_time,
                    };
                    let key = keys::commit_entry(self.commits)
                        .ok_or("the commit-time index is full (2^32 - 16 commits)")?;
                    out.put(key, Value::image(entry.encode()));
                    self.commits += 1;
                    if self.commits.is_multiple_of(index::COUNT_STRIDE) {
                        out.put(
                            keys::commit_count(),
                            Value::image(index::encode_commit_count(
                                self.commits,
                                self.max_commit_time,
                            )),
                        );
                    }
                }
                if prepared {
                    self.prepared.remove(&xid);
                    out.put(Key::two_phase(xid), Value::image(Bytes::new()));
                    out.put(
                        keys::twophase_dir(),
                        Value::image(index::encode_u32_set(&self.prepared)),
                    );
                }
            }
            XactRecord::Prepare(p) => {
                if p.xid == 0 {
                    return Err("PREPARE of transaction id 0".into());
                }
                self.checkpoint.reserve_next_xid_past(p.xid);
                for &x in &p.subxacts {
                    self.checkpoint.reserve_next_xid_past(x);
                }
                self.prepared.insert(p.xid);
                out.put(Key::two_phase(p.xid), Value::image(rec.main_data_bytes()));
                out.put(
                    keys::twophase_dir(),
                    Value::image(index::encode_u32_set(&self.prepared)),
                );
            }
            XactRecord::Assignment { xtop, subxacts } => {
                self.checkpoint.reserve_next_xid_past(*xtop);
                for &x in subxacts {
                    self.checkpoint.reserve_next_xid_past(x);
                }
            }
            XactRecord::Invalidations { .. } => {}
        }
        Ok(())
    }

    fn clog(&mut self, c: &ClogRecord, out: &mut Out) {
        match *c {
            ClogRecord::ZeroPage { pageno } => {
                let key = self.segments.touch(SlruKind::Clog, pageno as u32);
                out.put(key, zero_page());
            }
            ClogRecord::Truncate {
                pageno,
                oldest_xact,
                oldest_xact_db,
            } => {
                self.segments
                    .truncate(SlruKind::Clog, pageno as u32, slru::clog_page_precedes);
                self.checkpoint
                    .advance_oldest_xid(oldest_xact, oldest_xact_db);
            }
        }
    }

    fn multixact(&mut self, rec: &DecodedRecord, m: &MultiXactRecord, out: &mut Out) {
        match m {
            MultiXactRecord::ZeroOffPage { pageno } => {
                let key = self
                    .segments
                    .touch(SlruKind::MultiXactOffsets, *pageno as u32);
                out.put(key, zero_page());
            }
            MultiXactRecord::ZeroMemPage { pageno } => {
                let key = self
                    .segments
                    .touch(SlruKind::MultiXactMembers, *pageno as u32);
                out.put(key, zero_page());
            }
            MultiXactRecord::CreateId { mid, moff, members } => {
                // `RecordNewMultiXact`: offsets[mid] and offsets[mid + 1].
                let mut next = mid.wrapping_add(1);
                if next == 0 {
                    next = 1;
                }
                let mut next_off = moff.wrapping_add(members.len() as u32);
                if next_off == 0 {
                    next_off = 1;
                }
                let mut offs: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
                for (m, off) in [(*mid, *moff), (next, next_off)] {
                    offs.entry(m / fmt::MULTIXACT_OFFSETS_PER_PAGE)
                        .or_default()
                        .push((m % fmt::MULTIXACT_OFFSETS_PER_PAGE, off));
                }
                for (page, entries) in offs {
                    let key = self.segments.touch(SlruKind::MultiXactOffsets, page);
                    let data = fmt::encode_mxoff_set(&entries);
                    out.put(key, Value::strata_record(false, fmt::KIND_MXOFF_SET, data));
                }
                let mut mems: BTreeMap<u32, Vec<(u32, u32, u32)>> = BTreeMap::new();
                let mut max_xid = rec.xid();
                for (i, mem) in members.iter().enumerate() {
                    let off = moff.wrapping_add(i as u32);
                    mems.entry(off / fmt::MULTIXACT_MEMBERS_PER_PAGE)
                        .or_default()
                        .push((off, mem.xid, mem.status));
                    if counters::xid_precedes(max_xid, mem.xid) {
                        max_xid = mem.xid;
                    }
                }
                for (page, entries) in mems {
                    let key = self.segments.touch(SlruKind::MultiXactMembers, page);
                    let data = fmt::encode_mxmember_set(&entries);
                    out.put(
                        key,
                        Value::strata_record(false, fmt::KIND_MXMEMBER_SET, data),
                    );
                }
                self.checkpoint.reserve_next_xid_past(max_xid);
                self.checkpoint
                    .advance_multi(mid.wrapping_add(1), moff.wrapping_add(members.len() as u32));
            }
            MultiXactRecord::TruncateId(t) => {
                let cutoff =
                    counters::previous_multi(t.end_trunc_off) / fmt::MULTIXACT_OFFSETS_PER_PAGE;
                self.segments.truncate(
                    SlruKind::MultiXactOffsets,
                    cutoff,
                    slru::offsets_page_precedes,
                );
                self.segments
                    .truncate_members(t.start_trunc_memb, t.end_trunc_memb);
                // `SetMultiXactIdLimit(endTruncOff, oldestMultiDB)`.
                self.checkpoint.oldest_multi = t.end_trunc_off;
                self.checkpoint.oldest_multi_db = t.oldest_multi_db;
            }
        }
    }
}

fn zero_page() -> Value {
    Value::image(Bytes::from(vec![0u8; walproto::consts::BLCKSZ]))
}

/// The values of one record; a key set twice keeps the last value. A record has a handful,
/// so a vector searched linearly (no tree nodes to allocate per commit record).
#[derive(Default)]
pub(crate) struct Out {
    values: Vec<(Key, Value)>,
}

impl Out {
    pub(crate) fn put(&mut self, key: Key, v: Value) {
        // Two changes to one SLRU page in a record are merged by the callers; the remaining
        // duplicates (directory images) are whole values, so the last one wins.
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.values.push((key, v)),
        }
    }

    fn finish(self) -> Vec<(Key, Value)> {
        self.values
    }
}
