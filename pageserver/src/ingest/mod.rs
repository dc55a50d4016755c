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

mod failpoint;
pub mod nonpage;
pub mod reldir;
pub mod strip;

use bytes::Bytes;
use layer_format::{Key, Lsn, Value};
use walproto::consts::{BLCKSZ, VISIBILITYMAP_FORKNUM};
use walproto::image::BlockImage;
use walproto::record::{BlockRef, DecodedRecord, RelFileNode};
use walproto::rmgr::dbase::DbaseRecord;
use walproto::rmgr::smgr::{SmgrRecord, SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM};
use walproto::rmgr::xact::XactRecord;
use walproto::rmgr::{self, ParsedRecord};

use crate::redo::{self, extra_targets, has_native_redo, may_create, record_name, ExtraOp};
use crate::timeline::{Timeline, TimelineError};
use nonpage::NonPageState;
use reldir::{size_value, RelDirectory};

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

    fn err(rec: &DecodedRecord, reason: impl Into<String>) -> IngestError {
        IngestError::Record {
            record: record_name(rec),
            lsn: rec.lsn,
            reason: reason.into(),
        }
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

    /// Ingests one record. On error nothing of the record is stored.
    pub fn ingest_record(&mut self, rec: &DecodedRecord) -> Result<Outcome, IngestError> {
        if self.check_position(rec)? == Outcome::AlreadyIngested {
            self.stats.skipped += 1;
            return Ok(Outcome::AlreadyIngested);
        }
        if let Some(why) = failpoint::refuses(rec) {
            return Err(Self::err(rec, why));
        }
        let lsn = rec.end_lsn;
        // Everything is computed first, then stored, so an error leaves no partial record.
        // A record has a few values: small vectors, no tree nodes to allocate per record.
        let mut values: SmallMap<Key, Pending> = SmallMap::default();
        let mut sizes: SmallMap<(RelFileNode, u8), u32> = SmallMap::default();
        let mut checks = Vec::new();
        let mut structural = Structural::None;
        // Only the rmgrs whose main data ingest uses are parsed (heap, b-tree... records are
        // parsed by redo, which reports its own errors).
        let parsed = if parse_used(rec.rmid()) {
            match rmgr::parse(rec) {
                Ok(p) => p,
                Err(e) if needs_parse(rec) => return Err(Self::err(rec, e.to_string())),
                Err(_) => None,
            }
        } else {
            None
        };
        match &parsed {
            Some(ParsedRecord::Smgr(s)) => structural = Structural::Smgr(*s),
            Some(ParsedRecord::Dbase(d)) => structural = Structural::Dbase(d.clone()),
            Some(ParsedRecord::Xact(x)) => {
                if let Some(rels) = dropped_rels(x) {
                    structural = Structural::DropRels(rels.to_vec());
                }
            }
            _ => {}
        }
        let nonpage = self
            .nonpage
            .record_values(rec, parsed.as_ref())
            .map_err(|e| Self::err(rec, e))?;
        let mut unsupported = Vec::new();
        let stripped = if self.conf.strip_check_images && has_native_redo(rec.rmid()) {
            strip::strip_check_images(rec).map_err(|e| Self::err(rec, e))?
        } else {
            None
        };
        // The bytes stored for the record's pages (written straight from here, no copy).
        let raw: &[u8] = stripped.as_deref().unwrap_or(&rec.raw);
        for blk in &rec.blocks {
            let key = Key::rel_block(blk.rel, blk.fork, blk.blkno);
            let cur = sizes
                .get(&(blk.rel, blk.fork))
                .copied()
                .or_else(|| self.dir.size(blk.rel, blk.fork));
            let native = has_native_redo(rec.rmid());
            let check_image = blk.image.as_ref().filter(|i| !i.apply());
            let value = if blk.applies_image() || (!native && check_image.is_some()) {
                Pending::Value(Value::image(restore_image(rec, blk)?))
            } else if native {
                // Heap2 VISIBLE's VM page may not exist yet: then redo starts from zeroes.
                let missing = cur.is_none_or(|n| blk.blkno >= n);
                let init = blk.will_init() || (missing && may_create(rec, blk));
                if let (true, Some(img)) = (self.conf.collect_checks, check_image) {
                    checks.push(ImageCheck {
                        key,
                        lsn,
                        rmid: rec.rmid(),
                        fork: blk.fork,
                        blkno: blk.blkno,
                        record: record_name(rec),
                        image: img.clone(),
                    });
                }
                Pending::Record { will_init: init }
            } else {
                let e = IngestError::Unsupported {
                    record: record_name(rec),
                    lsn: rec.lsn,
                    block_id: blk.id,
                    rel: blk.rel,
                    fork: blk.fork,
                    blkno: blk.blkno,
                };
                if !self.conf.count_unsupported {
                    return Err(e);
                }
                unsupported.push(e.to_string());
                continue;
            };
            if cur.is_none() && !value.will_init() {
                return Err(IngestError::UnknownRelation {
                    record: record_name(rec),
                    lsn: rec.lsn,
                    block_id: blk.id,
                    rel: blk.rel,
                    fork: blk.fork,
                });
            }
            if cur.is_none_or(|n| blk.blkno >= n) {
                sizes.insert((blk.rel, blk.fork), blk.blkno + 1);
            }
            // Two references to one page in a record: the record is stored once and redo
            // applies every reference to the page.
            values.insert_if_absent(key, || value);
        }
        let extras = extra_targets(rec).map_err(|e| Self::err(rec, e.to_string()))?;
        for t in extras {
            let key = Key::rel_block(t.rel, t.fork, t.blkno);
            let cur = sizes
                .get(&(t.rel, t.fork))
                .copied()
                .or_else(|| self.dir.size(t.rel, t.fork));
            let exists = cur.is_some_and(|n| t.blkno < n);
            match t.op {
                // visibilitymap_pin extends the fork with the page if needed.
                ExtraOp::VmClear { .. } => {
                    if !exists {
                        sizes.insert((t.rel, t.fork), t.blkno + 1);
                    }
                    values.insert_if_absent(key, || Pending::Record { will_init: !exists });
                }
                // Only an existing page is changed.
                ExtraOp::VmTruncate { .. } if exists => {
                    values.insert_if_absent(key, || Pending::Record { will_init: false });
                }
                ExtraOp::VmTruncate { .. } => {}
            }
        }
        let mut dbs_changed: Vec<(u32, u32)> = Vec::new();
        let mut db_list_changed = false;
        match structural {
            Structural::None => {}
            // The relation's files go with the transaction's end (smgrdounlinkall at commit,
            // or the files of relations created by an aborted transaction): it no longer
            // exists, so a basebackup or RelExists must not show it. Its old pages stay in
            // the layers for reads at earlier LSNs.
            Structural::DropRels(rels) => {
                for rel in rels {
                    sizes.0.retain(|((r, _), _)| *r != rel);
                    if self.dir.drop_rel(rel) {
                        dbs_changed.push((rel.spc, rel.db));
                    }
                }
            }
            Structural::Smgr(SmgrRecord::Create { rnode, fork }) => {
                let fork = u8::try_from(fork).map_err(|_| Self::err(rec, "bad fork"))?;
                if self.dir.size(rnode, fork).is_none() {
                    sizes.insert((rnode, fork), 0u32);
                }
            }
            Structural::Smgr(SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            }) => {
                let mut cut = |fork: u8, n: u32| {
                    if let Some(cur) = self.dir.size(rnode, fork) {
                        if n < cur {
                            sizes.insert((rnode, fork), n);
                        }
                    }
                };
                if flags & SMGR_TRUNCATE_HEAP != 0 {
                    cut(0, blkno);
                }
                if flags & SMGR_TRUNCATE_VM != 0 {
                    cut(VISIBILITYMAP_FORKNUM, redo::vm::truncated_nblocks(blkno));
                }
                // SMGR_TRUNCATE_FSM: FSM pages only ever arrive as full-page images, which
                // initialize them; the FSM's exact surviving size is not tracked.
            }
            Structural::Dbase(DbaseRecord::CreateFileCopy {
                db_id,
                tablespace_id,
                src_db_id,
                src_tablespace_id,
            }) => {
                let at = self.tl.last_record_end();
                let dst = (tablespace_id, db_id);
                self.dir.drop_db(dst);
                for (src_rel, fork, n) in self.dir.forks((src_tablespace_id, src_db_id)) {
                    let rel = RelFileNode {
                        spc: tablespace_id,
                        db: db_id,
                        rel: src_rel.rel,
                    };
                    for b in 0..n {
                        let page = self.tl.get_page(Key::rel_block(src_rel, fork, b), at)?;
                        let page = page.map_or_else(
                            || Bytes::from(vec![0u8; BLCKSZ]),
                            |p| Bytes::copy_from_slice(&p[..]),
                        );
                        values.insert(Key::rel_block(rel, fork, b), Value::image(page));
                    }
                    sizes.insert((rel, fork), n);
                }
                // The copied directory includes the template's pg_filenode.map; WAL has no
                // RelMap UPDATE for it, so the copy must carry it over.
                let src_map = Key::relmap(src_tablespace_id, src_db_id);
                if let Some(map) = self.tl.get_image_value(src_map, at)? {
                    values.insert(Key::relmap(tablespace_id, db_id), Value::image(map));
                }
                db_list_changed = true;
                dbs_changed.push(dst);
            }
            Structural::Dbase(DbaseRecord::CreateWalLog {
                db_id,
                tablespace_id,
            }) => {
                db_list_changed |= self.dir.drop_db((tablespace_id, db_id));
                self.wal_log_dbs.insert((tablespace_id, db_id));
            }
            Structural::Dbase(DbaseRecord::Drop {
                db_id,
                tablespace_ids,
            }) => {
                for spc in tablespace_ids {
                    if self.dir.drop_db((spc, db_id)) {
                        db_list_changed = true;
                        dbs_changed.push((spc, db_id));
                    }
                    self.wal_log_dbs.remove(&(spc, db_id));
                }
            }
        }
        for &((rel, fork), n) in &sizes.0 {
            let had_db = self.dir.has_db((rel.spc, rel.db));
            if self.dir.set_size(rel, fork, n) {
                dbs_changed.push((rel.spc, rel.db));
            }
            db_list_changed |= !had_db;
            values.insert(Key::rel_size(rel, fork), Value::image(size_value(n)));
        }
        dbs_changed.sort();
        dbs_changed.dedup();
        for db in dbs_changed {
            values.insert(
                Key::rel_dir(db.0, db.1),
                Value::image(self.dir.rel_dir_value(db)),
            );
        }
        if db_list_changed {
            values.insert(Key::db_dir(), Value::image(self.dir.db_dir_value()));
        }
        let new_nonpage = nonpage.map(|(state, vals)| {
            for (k, v) in vals {
                values.insert(k, v);
            }
            state
        });
        values.0.sort_unstable_by_key(|(k, _)| *k);
        for (key, value) in &values.0 {
            // An error here is an I/O error (the values were checked above): the open layer
            // may hold part of the record, and the timeline must be reopened from its
            // durable state.
            match value {
                Pending::Record { will_init } => {
                    self.tl.put_pg_record(*key, lsn, *will_init, raw)?
                }
                Pending::Value(v) => self.tl.put(*key, lsn, v)?,
            }
        }
        self.tl.finish_record(rec.lsn, rec.end_lsn)?;
        if let Some(state) = new_nonpage {
            self.nonpage = state;
        }
        self.stats.records += 1;
        self.stats.wal_bytes += rec.header.tot_len as u64;
        self.stats.values += values.0.len() as u64;
        self.stats.unsupported += unsupported.len() as u64;
        for u in unsupported {
            if self.stats.problems.len() < 20 {
                self.stats.problems.push(u);
            }
        }
        self.checks.extend(checks);
        Ok(Outcome::Ingested)
    }
}

/// A value of the record being ingested.
enum Pending {
    /// The record itself (`Value::pg_record(will_init, <the stored record bytes>)`), written
    /// from the decoded record's bytes without a copy or a reference count per key.
    Record {
        will_init: bool,
    },
    Value(Value),
}

impl Pending {
    fn will_init(&self) -> bool {
        match self {
            Pending::Record { will_init } => *will_init,
            Pending::Value(v) => v.will_init(),
        }
    }
}

impl From<Value> for Pending {
    fn from(v: Value) -> Pending {
        Pending::Value(v)
    }
}

/// A map as a vector searched linearly: the values and sizes of one record (a handful, or a
/// few thousand for a CREATE DATABASE copy, once).
struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: PartialEq + Copy, V> SmallMap<K, V> {
    fn get(&self, k: &K) -> Option<&V> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    /// Inserts or replaces.
    fn insert(&mut self, k: K, v: impl Into<V>) {
        let v = v.into();
        match self.0.iter_mut().find(|(x, _)| *x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }

    /// Inserts unless the key is there already (the first value wins).
    fn insert_if_absent(&mut self, k: K, v: impl FnOnce() -> V) {
        if self.get(&k).is_none() {
            self.0.push((k, v()));
        }
    }
}

/// Why [`WalIngest::ingest_pipelined`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Ingest(IngestError),
    #[error("reading the WAL: {0}")]
    Read(#[source] E),
}

/// Records handed from the decoding thread to the ingesting thread at a time (amortizes the
/// channel's synchronization over many small records).
const PIPELINE_BATCH: usize = 256;
/// How many records ahead of the one being ingested the index slots of its pages are
/// prefetched ([`WalIngest::prefetch_puts`]): far enough for the loads to land, near enough
/// for them to stay in the cache.
const PREFETCH_AHEAD: usize = 4;
/// Batches in flight between the threads (bounds the memory ahead of ingest).
const PIPELINE_DEPTH: usize = 16;

impl WalIngest {
    /// Starts loading the open layer's index slots for `rec`'s pages: on WAL that touches
    /// pages at random (pgbench), the probe's cache misses were most of a put's own time.
    #[inline]
    fn prefetch_puts(&self, rec: &DecodedRecord) {
        for blk in &rec.blocks {
            self.tl
                .prefetch_put(&Key::rel_block(blk.rel, blk.fork, blk.blkno));
        }
        // A commit adds the next commit-time entry, a new key (or the one after, if a commit
        // comes first).
        if rec.rmid() == rmgr::RM_XACT_ID {
            let next = self.nonpage.commits;
            for key in [next, next + 1]
                .into_iter()
                .filter_map(nonpage::keys::commit_entry)
            {
                self.tl.prefetch_put(&key);
            }
        }
    }

    /// Ingests every record `next` yields, decoding on a thread of its own while this thread
    /// ingests (the two overlap; ingest order is the WAL's). Stops at the first error of
    /// either side.
    ///
    /// Ingested batches go back to the decoding thread, which drops the records there: their
    /// memory was allocated on that thread, and freeing it there is a local free instead of a
    /// cross-thread one, and the batch vector is reused.
    pub fn ingest_pipelined<E: std::error::Error + Send + 'static>(
        &mut self,
        mut next: impl FnMut() -> Result<Option<DecodedRecord>, E> + Send,
    ) -> Result<(), PipelineError<E>> {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Result<Vec<DecodedRecord>, E>>(PIPELINE_DEPTH);
        let (done_tx, done_rx) = sync_channel::<Vec<DecodedRecord>>(PIPELINE_DEPTH + 2);
        std::thread::scope(|scope| {
            scope.spawn(move || loop {
                let mut spare = None;
                while let Ok(mut used) = done_rx.try_recv() {
                    used.clear();
                    spare = Some(used);
                }
                let mut batch = spare.unwrap_or_else(|| Vec::with_capacity(PIPELINE_BATCH));
                let end = loop {
                    match next() {
                        Ok(Some(rec)) => {
                            batch.push(rec);
                            if batch.len() == PIPELINE_BATCH {
                                break false;
                            }
                        }
                        Ok(None) => break true,
                        Err(e) => {
                            let _ = tx.send(Ok(batch));
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                };
                // A closed channel: the ingesting side stopped on an error.
                if tx.send(Ok(batch)).is_err() || end {
                    return;
                }
            });
            // Dropping `rx` on an error ends the decoding thread at its next send.
            for batch in rx {
                let batch = batch.map_err(PipelineError::Read)?;
                for (i, rec) in batch.iter().enumerate() {
                    if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                        self.prefetch_puts(ahead);
                    }
                    self.ingest_record(rec).map_err(PipelineError::Ingest)?;
                }
                // Full (the decoder is not taking them back, e.g. it has ended): drop here.
                let _ = done_tx.try_send(batch);
            }
            Ok(())
        })
    }
}

/// The relations whose files a transaction record drops, if any.
fn dropped_rels(x: &XactRecord) -> Option<&[RelFileNode]> {
    match x {
        XactRecord::Commit(p)
        | XactRecord::Abort(p)
        | XactRecord::CommitPrepared(p)
        | XactRecord::AbortPrepared(p)
            if !p.rels.is_empty() =>
        {
            Some(&p.rels)
        }
        _ => None,
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

enum Structural {
    None,
    DropRels(Vec<RelFileNode>),
    Smgr(SmgrRecord),
    Dbase(DbaseRecord),
}

/// The page an image-carrying block reference holds after the record
/// ([`redo::restore_image`]).
fn restore_image(rec: &DecodedRecord, blk: &BlockRef) -> Result<Bytes, IngestError> {
    let mut p = Box::new([0u8; BLCKSZ]);
    redo::restore_image(rec, blk, &mut p)
        .map_err(|e| WalIngest::err(rec, format!("block {}: {}", blk.id, e.0)))?;
    Ok(Bytes::copy_from_slice(&p[..]))
}
