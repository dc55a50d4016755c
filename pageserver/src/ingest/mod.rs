//! WAL ingest: each decoded record becomes (key, record end LSN, value) in a timeline.
//!
//! - Every block reference: an image if the record restores one (`BKPIMAGE_APPLY`), or, for
//!   resource managers without native redo, the `wal_consistency_checking` image; otherwise
//!   the raw record, with `will_init` when it rebuilds the page from nothing. A consistency
//!   image on a natively redone record is never stored: it only checks the redo
//!   ([`ImageCheck`]).
//! - Visibility-map pages a heap record changes outside its block references
//!   ([`crate::redo::extra_targets`]): the raw record, under the VM page's key.
//! - Relation sizes and directories ([`reldir`]): a block past a fork's end extends it; SMGR
//!   CREATE / TRUNCATE, DATABASE CREATE (both strategies) and DROP change them.
//! - The non-page state a basebackup needs ([`nonpage`]): CLOG and MultiXact SLRU pages,
//!   two-phase state, relmapper files, checkpoint counters, restore points and commit times.
//!
//! Ingest refuses what it cannot store faithfully, naming the record: a gap in the WAL, an
//! LSN below the timeline's start, a record for a relation that does not exist, a record that
//! needs redo Strata lacks.

mod blocks;
pub mod driver;
mod failpoint;
pub mod nonpage;
mod pending;
mod relchange;
pub mod reldir;
pub mod strip;

use layer_format::{Key, Lsn};
use walproto::image::BlockImage;
use walproto::record::{DecodedRecord, RelFileNode};
use walproto::rmgr::{self, record_name, ParsedRecord};

use crate::redo::has_native_redo;
use crate::timeline::{Timeline, TimelineError};
use nonpage::NonPageState;
use pending::PendingRecord;
use relchange::{DirChanges, DirState, RelChange};
use reldir::RelDirectory;

pub use driver::{BatchError, PipelineError, StreamDecoder, StreamError};

/// Why a record cannot be ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("record at {lsn} is below the timeline's start {start}")]
    BelowStart { lsn: Lsn, start: Lsn },
    #[error("WAL gap: record at {lsn} (xl_prev {prev}) does not follow the last ingested record at {last} (ending {last_end})")]
    Gap {
        lsn: Lsn,
        prev: Lsn,
        last: Lsn,
        last_end: Lsn,
    },
    #[error("WAL gap: the first record must start at the timeline's start {start}, got {lsn}")]
    NotAtStart { lsn: Lsn, start: Lsn },
    #[error("{record} at {lsn}: block {block_id} is in relation {rel} fork {fork}, which does not exist (no size, no SMGR CREATE, and the record does not initialize the page)")]
    UnknownRelation {
        record: String,
        lsn: Lsn,
        block_id: u8,
        rel: RelFileNode,
        fork: u8,
    },
    #[error("{record} at {lsn}: block {block_id} ({rel} fork {fork} blk {blkno}) needs redo Strata lacks and carries no image")]
    Unsupported {
        record: String,
        lsn: Lsn,
        block_id: u8,
        rel: RelFileNode,
        fork: u8,
        blkno: u32,
    },
    #[error("{record} at {lsn}: {reason}")]
    Record {
        record: String,
        lsn: Lsn,
        reason: String,
    },
}

/// A natively redone page whose record carries Postgres's own post-record image (without
/// `BKPIMAGE_APPLY`): GetPage at `lsn` must equal it, masked.
#[derive(Clone, Debug)]
pub struct ImageCheck {
    pub key: Key,
    /// The record's end LSN: the page version to read.
    pub lsn: Lsn,
    pub rmid: u8,
    pub fork: u8,
    pub blkno: u32,
    /// `Rmgr/TYPE`.
    pub record: String,
    pub image: BlockImage,
}

/// How ingest treats what it cannot store.
#[derive(Clone, Debug, Default)]
pub struct IngestConf {
    /// Collect [`ImageCheck`]s (`strata verify-redo`).
    pub collect_checks: bool,
    /// Count blocks without native redo and without image instead of failing
    /// (`verify-redo` reports them all).
    pub count_unsupported: bool,
    /// Store natively redone records without their consistency-check images (the images are
    /// checked, never used; without them a verification run stores what production would).
    pub strip_check_images: bool,
}

/// Counters of an ingest.
#[derive(Clone, Debug, Default)]
pub struct IngestStats {
    pub records: u64,
    /// Bytes of the records ingested (`xl_tot_len`).
    pub wal_bytes: u64,
    pub values: u64,
    pub unsupported: u64,
    /// Records skipped because they were already durable (a resumed ingest).
    pub skipped: u64,
    pub problems: Vec<String>,
}

/// Whether a record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ingested,
    /// At or below the ingest position already (after a restart the WAL is re-read from the
    /// durable LSN's page).
    AlreadyIngested,
}

/// A refusal of `rec` for `reason`.
pub(crate) fn record_error(rec: &DecodedRecord, reason: impl Into<String>) -> IngestError {
    IngestError::Record {
        record: record_name(rec),
        lsn: rec.lsn,
        reason: reason.into(),
    }
}

/// Feeds decoded records into a timeline.
pub struct WalIngest {
    tl: Timeline,
    dir: RelDirectory,
    conf: IngestConf,
    stats: IngestStats,
    /// Checks collected since the last [`WalIngest::take_checks`].
    checks: Vec<ImageCheck>,
    /// Databases created with `STRATEGY wal_log` (their VM pages lose bits in the copy; see
    /// `redo::datadir`). In memory only: it only classifies `--final` differences.
    wal_log_dbs: std::collections::BTreeSet<(u32, u32)>,
    /// What the non-page state needs to know to produce the next record's values.
    nonpage: NonPageState,
}

impl WalIngest {
    /// Starts ingesting into `tl` at its ingest position (reads the relation directory).
    pub fn new(tl: Timeline, conf: IngestConf) -> Result<WalIngest, IngestError> {
        let dir = RelDirectory::load(&tl, tl.last_record_end())?;
        let nonpage = NonPageState::load(&tl, tl.last_record_end())?;
        Ok(WalIngest {
            nonpage,
            tl,
            dir,
            conf,
            stats: IngestStats::default(),
            checks: Vec::new(),
            wal_log_dbs: Default::default(),
        })
    }

    pub fn timeline(&self) -> &Timeline {
        &self.tl
    }

    pub fn timeline_mut(&mut self) -> &mut Timeline {
        &mut self.tl
    }

    pub fn into_timeline(self) -> Timeline {
        self.tl
    }

    pub fn directory(&self) -> &RelDirectory {
        &self.dir
    }

    /// The non-page state as of the last ingested record.
    pub fn nonpage_state(&self) -> &NonPageState {
        &self.nonpage
    }

    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    pub fn is_wal_log_db(&self, spc: u32, db: u32) -> bool {
        self.wal_log_dbs.contains(&(spc, db))
    }

    /// Number of checks collected and not yet taken.
    pub fn pending_checks(&self) -> usize {
        self.checks.len()
    }

    /// The checks collected so far, leaving none.
    pub fn take_checks(&mut self) -> Vec<ImageCheck> {
        std::mem::take(&mut self.checks)
    }

    /// Where the record stands relative to the ingest position.
    fn check_position(&self, rec: &DecodedRecord) -> Result<Outcome, IngestError> {
        let start = self.tl.start_lsn();
        if rec.lsn < start {
            return Err(IngestError::BelowStart {
                lsn: rec.lsn,
                start,
            });
        }
        let (last, last_end) = (self.tl.last_record_lsn(), self.tl.last_record_end());
        if last == Lsn::INVALID {
            // A branch at a page start: its first record follows the page header.
            if rec.lsn != start && rec.lsn != crate::timeline::boundary::first_record_lsn(start) {
                return Err(IngestError::NotAtStart {
                    lsn: rec.lsn,
                    start,
                });
            }
            return Ok(Outcome::Ingested);
        }
        if rec.end_lsn <= last_end {
            return Ok(Outcome::AlreadyIngested);
        }
        if rec.header.prev != last || rec.lsn < last_end {
            return Err(IngestError::Gap {
                lsn: rec.lsn,
                prev: rec.header.prev,
                last,
                last_end,
            });
        }
        Ok(Outcome::Ingested)
    }

    /// Ingests one record. On error nothing of the record is stored (except after a storage
    /// error midway, [`IngestError::Timeline`]: then the timeline must be reopened).
    pub fn ingest_record(&mut self, rec: &DecodedRecord) -> Result<Outcome, IngestError> {
        if self.check_position(rec)? == Outcome::AlreadyIngested {
            self.stats.skipped += 1;
            return Ok(Outcome::AlreadyIngested);
        }
        if let Some(why) = failpoint::refuses(rec) {
            return Err(record_error(rec, why));
        }
        // Everything is computed first, then stored, so an error leaves no partial record.
        let parsed = parse_for_ingest(rec)?;
        let nonpage = self
            .nonpage
            .record_values(rec, parsed.as_ref())
            .map_err(|e| record_error(rec, e))?;
        let stripped = if self.conf.strip_check_images && has_native_redo(rec.rmid()) {
            strip::strip_check_images(rec).map_err(|e| record_error(rec, e))?
        } else {
            None
        };
        let mut pending = PendingRecord::default();
        blocks::block_values(rec, &self.dir, &self.conf, &mut pending)?;
        blocks::extra_page_values(rec, &self.dir, &mut pending)?;
        let mut dir_state = DirState {
            tl: &self.tl,
            dir: &mut self.dir,
            wal_log_dbs: &mut self.wal_log_dbs,
        };
        let mut changed = DirChanges::default();
        if let Some(change) = RelChange::of(parsed.as_ref()) {
            dir_state.apply(rec, change, &mut pending, &mut changed)?;
        }
        dir_state.size_and_directory_values(changed, &mut pending);
        let new_nonpage = nonpage.map(|(state, vals)| {
            for (k, v) in vals {
                pending.values.insert(k, v);
            }
            state
        });
        // The bytes stored for the record's pages (written straight from here, no copy).
        let raw: &[u8] = stripped.as_deref().unwrap_or(&rec.raw);
        pending.store(&mut self.tl, rec.end_lsn, raw)?;
        self.tl.finish_record(rec.lsn, rec.end_lsn)?;
        if let Some(state) = new_nonpage {
            self.nonpage = state;
        }
        self.count(rec, pending);
        Ok(Outcome::Ingested)
    }

    fn count(&mut self, rec: &DecodedRecord, pending: PendingRecord) {
        self.stats.records += 1;
        self.stats.wal_bytes += u64::from(rec.header.tot_len);
        self.stats.values += pending.values.0.len() as u64;
        self.stats.unsupported += pending.unsupported.len() as u64;
        for u in pending.unsupported {
            if self.stats.problems.len() < 20 {
                self.stats.problems.push(u);
            }
        }
        self.checks.extend(pending.checks);
    }
}

/// What [`rmgr::parse`] makes of `rec`, where ingest uses it: only the rmgrs whose main data
/// ingest needs are parsed (heap, b-tree... records are parsed by redo, which reports its
/// own errors).
fn parse_for_ingest(rec: &DecodedRecord) -> Result<Option<ParsedRecord>, IngestError> {
    if !parse_used(rec.rmid()) {
        return Ok(None);
    }
    match rmgr::parse(rec) {
        Ok(p) => Ok(p),
        Err(e) if needs_parse(rec) => Err(record_error(rec, e.to_string())),
        Err(_) => Ok(None),
    }
}

/// Whether ingest looks at what [`rmgr::parse`] makes of this rmgr's records: structure
/// (SMGR, DATABASE) and the non-page state ([`NonPageState::record_values`]). The parse of
/// the others (heap, b-tree, ...) would be thrown away.
fn parse_used(rmid: u8) -> bool {
    matches!(
        rmid,
        rmgr::RM_SMGR_ID
            | rmgr::RM_DBASE_ID
            | rmgr::RM_XACT_ID
            | rmgr::RM_CLOG_ID
            | rmgr::RM_MULTIXACT_ID
            | rmgr::RM_RELMAP_ID
            | rmgr::RM_XLOG_ID
    )
}

/// Whether a record's main data must parse: its resource manager changes relation
/// structure or non-page state Strata tracks.
fn needs_parse(rec: &DecodedRecord) -> bool {
    use walproto::rmgr::xlog::{
        XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN, XLOG_NEXTOID, XLOG_RESTORE_POINT,
    };
    match rec.rmid() {
        rmgr::RM_SMGR_ID
        | rmgr::RM_DBASE_ID
        | rmgr::RM_XACT_ID
        | rmgr::RM_CLOG_ID
        | rmgr::RM_MULTIXACT_ID
        | rmgr::RM_RELMAP_ID => true,
        rmgr::RM_XLOG_ID => matches!(
            rec.header.info & 0xF0,
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE | XLOG_NEXTOID | XLOG_RESTORE_POINT
        ),
        _ => false,
    }
}
