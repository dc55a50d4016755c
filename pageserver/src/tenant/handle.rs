//! One timeline as the service shares it: its [`WalIngest`] behind a read-write lock (reads —
//! GetPage, basebackup, status — share it; ingest takes it exclusively), the WAL stream
//! decoder of the walreceiver feeding it (the ingest driver's [`StreamDecoder`]; chunks are
//! decoded without the ingest lock and ingested with [`ingest_batch_yielding`]), and its list
//! of safekeepers (`timeline.toml`).
//!
//! **Reads do not wait for an ingest batch.** A batch holds the write lock, but hands it to
//! any waiting reader after every record (a fair hand-over, `parking_lot`'s `bump`): a read
//! waits for at most the record being stored, never for the rest of the batch. A reader
//! therefore always sees the timeline at a record boundary: the values of every record up to
//! `last_record_end`, nothing of a later one. The position the walreceiver received up to is
//! an atomic, so status and feedback do not wait for the stream either.
//!
//! Lock order: `stream` before `ingest`; a branch's `ingest` before its ancestor's (reads
//! only). Nothing takes them the other way round.
//!
//! **Stopped ingest.** A record ingest refuses (a custom resource manager's record, a record
//! needing redo this pageserver lacks, a relation that does not exist...) would be refused
//! again however often it is retried, so the timeline *stops* at it ([`IngestStop`]): it
//! takes no WAL until the pageserver restarts (an upgrade that can ingest it) or
//! [`TimelineHandle::resume_ingest`]. Everything before the record stays readable, and the
//! safekeepers keep the WAL from the record on (the positions reported to them stop there).
//! A storage failure midway through a record stops the timeline too, until a restart reopens
//! it from its durable state. WAL that cannot be decoded is not a stop: it may be one
//! safekeeper's problem, and the stream is retried.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use layer_format::Lsn;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::error;
use walproto::ids::{TenantId, TimelineId};
use walproto::record::DecodedRecord;
use walproto::rmgr::record_name;

use super::error::{Result, TenantError};
use super::layout::{write_atomic, TIMELINE_CONF};
use crate::ingest::driver::{ingest_batch_yielding, DecodedChunk};
use crate::ingest::{IngestConf, IngestError, StreamDecoder, WalIngest};
use crate::timeline::ancestor::{Ancestor, AncestorTimeline};
use crate::timeline::layer_map::LayerFetch;
use crate::timeline::{CompactionReport, Timeline, TimelineConf};
use crate::walreceiver::{Feedback, Staged, WalSink};

const BLCKSZ: u64 = 8192;

/// `timeline.toml`: what the service needs to know of a timeline besides its storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimelineServiceConf {
    /// `host:port` of the safekeepers' replication listeners (`--listen-pg`).
    pub safekeepers: Vec<String>,
}

/// What a status request reports.
#[derive(Clone, Debug)]
pub struct TimelineStatus {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// (ancestor timeline id, branch LSN).
    pub ancestor: Option<(String, Lsn)>,
    pub start_lsn: Lsn,
    pub last_record_lsn: Lsn,
    pub last_record_end: Lsn,
    pub disk_consistent_lsn: Lsn,
    /// `0/0` when no remote storage is configured or nothing is uploaded yet.
    pub remote_consistent_lsn: Lsn,
    /// The oldest LSN readable on this timeline: the GC cutoff, or the start before GC.
    pub gc_cutoff_lsn: Lsn,
    /// Sum of the relation forks' sizes at the ingest position, in bytes.
    pub logical_size: u64,
    pub layers: usize,
    /// WAL received by the walreceiver (may be ahead of `last_record_end` by a partial record).
    pub received_lsn: Lsn,
    pub safekeepers: Vec<String>,
    /// Set while the timeline takes no WAL.
    pub ingest_stop: Option<IngestStop>,
    /// Why the walreceiver is not streaming now, if it says so.
    pub walreceiver_problem: Option<String>,
}

/// Why a timeline takes no more WAL: the record it could not ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestStop {
    /// Start LSN of the record (everything before it is ingested: it equals the timeline's
    /// last record end).
    pub record_lsn: Lsn,
    /// Its type, as pg_waldump names it, or its custom resource manager id.
    pub record: String,
    /// What is wrong, in plain words.
    pub reason: String,
    pub since_unix_ms: u64,
    /// Storing the record failed midway: the open layer may hold part of it, so only a
    /// restart (reopening from the durable state) resumes.
    pub needs_restart: bool,
}

impl IngestStop {
    /// One sentence for logs, errors and status pages.
    pub fn describe(&self) -> String {
        let how = if self.needs_restart {
            "a pageserver restart resumes it"
        } else {
            "a pageserver restart (after an upgrade that can ingest it) or ResumeIngest resumes it"
        };
        format!(
            "ingest stopped at {} record at {}: {}; WAL from there waits in the safekeepers, \
             reads before it work; {how}",
            self.record, self.record_lsn, self.reason
        )
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The record's type for an [`IngestStop`]: a custom resource manager's id, which tells an
/// operator which extension wrote it.
fn record_label(r: &DecodedRecord) -> String {
    let rmid = r.rmid();
    if rmid >= walproto::rmgr::RM_MIN_CUSTOM_ID {
        format!(
            "a custom resource manager {rmid} (info {:#04x})",
            r.header.info
        )
    } else {
        format!("a {}", record_name(r))
    }
}

/// What is wrong with `r`, which ingest refused with `e` (without the record's name and LSN,
/// which the stop gives already).
fn stop_reason(r: &DecodedRecord, e: &IngestError) -> String {
    let full = e.to_string();
    let named = format!("{} at {}: ", record_name(r), r.lsn);
    let what = full.strip_prefix(&named).unwrap_or(&full);
    let rmid = r.rmid();
    if rmid >= walproto::rmgr::RM_MIN_CUSTOM_ID {
        format!(
            "records of custom resource manager {rmid} (written by a Postgres extension) \
             cannot be ingested by this pageserver: {what}"
        )
    } else {
        what.to_string()
    }
}

/// The walreceiver's view of a timeline's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalProgress {
    pub received: Lsn,
    pub durable_local: Lsn,
    pub durable_remote: Lsn,
}

pub struct TimelineHandle {
    tenant_id: TenantId,
    timeline_id: TimelineId,
    dir: PathBuf,
    ingest: RwLock<WalIngest>,
    /// Decoder of the WAL stream; `None` until the first chunk, and again after an error (the
    /// next stream starts at the ingest position).
    stream: Mutex<Option<StreamDecoder>>,
    /// Where the stream's next chunk must start (`0/0`: no stream), published for status and
    /// feedback, which must not wait for the stream lock a batch holds.
    received: AtomicU64,
    service_conf: Mutex<TimelineServiceConf>,
    remote_consistent_lsn: AtomicU64,
    /// The ancestor's handle, kept alive as long as the branch.
    parent: Option<Arc<TimelineHandle>>,
    /// Set when ingest stopped at a record (see the module doc); watched by the walreceiver's
    /// task, which waits for it to clear.
    ingest_stop: watch::Sender<Option<IngestStop>>,
    /// Why the walreceiver is not streaming, as it last said.
    walreceiver_problem: Mutex<Option<String>>,
    /// LSN leases (see `super::gc`).
    leases: Mutex<super::gc::Leases>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks `host:port`.
pub fn check_safekeeper_addr(a: &str) -> Result<()> {
    let ok = a
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(TenantError::InvalidArgument(format!(
            "safekeeper address {a:?}: expected host:port of its replication listener"
        )))
    }
}

impl TimelineHandle {
    /// Opens the timeline in `dir` at its durable state, its layers not in `dir` fetched by
    /// `fetch` (see `Timeline::open`); a branch needs its parent's handle.
    pub fn open(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        dir: &Path,
        conf: TimelineConf,
        fetch: Option<Arc<dyn LayerFetch>>,
        parent: Option<Arc<TimelineHandle>>,
    ) -> Result<Arc<TimelineHandle>> {
        let ctx = || format!("timeline {tenant_id}/{timeline_id}");
        let mut tl = Timeline::open(dir, conf, fetch).map_err(TenantError::timeline(ctx()))?;
        match (tl.ancestor_link(), &parent) {
            (Some((id, lsn)), Some(p)) if id == p.timeline_id.to_string() => {
                let a = Ancestor {
                    id: id.to_string(),
                    lsn,
                    timeline: p.clone(),
                };
                tl.attach_ancestor(a)
                    .map_err(TenantError::timeline(ctx()))?;
            }
            (None, None) => {}
            (link, _) => {
                return Err(TenantError::FailedPrecondition(format!(
                    "{}: its metadata names ancestor {:?}, the handle given is {:?}",
                    ctx(),
                    link.map(|l| l.0),
                    parent.as_ref().map(|p| &p.timeline_id)
                )))
            }
        }
        Self::from_timeline(tenant_id, timeline_id, tl, parent)
    }

    /// Wraps an open (and, for a branch, attached) timeline.
    pub fn from_timeline(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        tl: Timeline,
        parent: Option<Arc<TimelineHandle>>,
    ) -> Result<Arc<TimelineHandle>> {
        let dir = tl.dir().to_path_buf();
        let ingest = WalIngest::new(tl, IngestConf::default()).map_err(TenantError::ingest(
            format!("loading the ingest state of {tenant_id}/{timeline_id}"),
        ))?;
        let conf_path = dir.join(TIMELINE_CONF);
        let service_conf = match std::fs::read_to_string(&conf_path) {
            Ok(t) => toml::from_str(&t).map_err(|e| {
                TenantError::InvalidArgument(format!("{}: {e}", conf_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TimelineServiceConf::default(),
            Err(e) => return Err(TenantError::io("read", &conf_path)(e)),
        };
        let leases = super::gc::Leases::load(&dir)?;
        Ok(Arc::new(TimelineHandle {
            tenant_id,
            timeline_id,
            dir,
            ingest: RwLock::new(ingest),
            stream: Mutex::new(None),
            received: AtomicU64::new(0),
            service_conf: Mutex::new(service_conf),
            remote_consistent_lsn: AtomicU64::new(0),
            parent,
            ingest_stop: watch::Sender::new(None),
            walreceiver_problem: Mutex::new(None),
            leases: Mutex::new(leases),
        }))
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn timeline_id(&self) -> TimelineId {
        self.timeline_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn parent(&self) -> Option<&Arc<TimelineHandle>> {
        self.parent.as_ref()
    }

    pub(super) fn leases(&self) -> &Mutex<super::gc::Leases> {
        &self.leases
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, WalIngest> {
        self.ingest.read()
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, WalIngest> {
        self.ingest.write()
    }

    /// Publishes where `stream` takes its next chunk (see `received`).
    fn publish_received(&self, stream: &Option<StreamDecoder>) {
        let at = stream.as_ref().map_or(0, |d| d.input_lsn().0);
        self.received.store(at, Ordering::Release);
    }

    /// Runs `f` with the timeline read-locked.
    pub fn read<T>(&self, f: impl FnOnce(&Timeline) -> T) -> T {
        f(self.read_guard().timeline())
    }

    /// Runs `f` with the ingest write-locked (keep it short: reads wait).
    pub fn with_ingest<T>(&self, f: impl FnOnce(&mut WalIngest) -> T) -> T {
        f(&mut self.write_guard())
    }

    fn ctx(&self) -> String {
        format!("timeline {}/{}", self.tenant_id, self.timeline_id)
    }

    pub fn status(&self) -> TimelineStatus {
        let received = self.wal_progress().received;
        let g = self.read_guard();
        let tl = g.timeline();
        let logical_size = g
            .directory()
            .all_forks()
            .iter()
            .map(|(_, _, n)| *n as u64 * BLCKSZ)
            .sum();
        TimelineStatus {
            tenant_id: self.tenant_id,
            timeline_id: self.timeline_id,
            ancestor: tl.ancestor_link().map(|(id, l)| (id.to_string(), l)),
            start_lsn: tl.start_lsn(),
            last_record_lsn: tl.last_record_lsn(),
            last_record_end: tl.last_record_end(),
            disk_consistent_lsn: tl.disk_consistent_lsn(),
            remote_consistent_lsn: Lsn(self.remote_consistent_lsn.load(Ordering::Relaxed)),
            gc_cutoff_lsn: tl.gc_cutoff_lsn(),
            logical_size,
            layers: tl.layer_descs().len(),
            received_lsn: received,
            safekeepers: self.safekeepers(),
            ingest_stop: self.ingest_stop(),
            walreceiver_problem: lock(&self.walreceiver_problem).clone(),
        }
    }

    /// Why the timeline takes no WAL, if it does not.
    pub fn ingest_stop(&self) -> Option<IngestStop> {
        self.ingest_stop.borrow().clone()
    }

    /// Follows [`TimelineHandle::ingest_stop`].
    pub fn watch_ingest_stop(&self) -> watch::Receiver<Option<IngestStop>> {
        self.ingest_stop.subscribe()
    }

    /// Takes WAL again from the record ingest stopped at (which is tried again): for when the
    /// cause is gone without a restart. Returns the stop that was cleared, if any. Refused
    /// after a storage failure midway through a record: only a restart clears that.
    pub fn resume_ingest(&self) -> Result<Option<IngestStop>> {
        let _stream = lock(&self.stream);
        let cur = self.ingest_stop();
        if let Some(s) = &cur {
            if s.needs_restart {
                return Err(TenantError::FailedPrecondition(format!(
                    "{}: {}; it cannot be resumed without a restart",
                    self.ctx(),
                    s.describe()
                )));
            }
            self.ingest_stop.send_replace(None);
        }
        Ok(cur)
    }

    /// Records why the walreceiver is not streaming (`None`: it streams, or has nothing to do).
    pub fn set_walreceiver_problem(&self, problem: Option<String>) {
        *lock(&self.walreceiver_problem) = problem;
    }

    fn stop_ingest(&self, stop: IngestStop) {
        crate::metrics::ingest_error();
        error!(tenant = %self.tenant_id, timeline = %self.timeline_id,
               record_lsn = %stop.record_lsn, "{}", stop.describe());
        self.ingest_stop.send_replace(Some(stop));
    }

    pub fn safekeepers(&self) -> Vec<String> {
        lock(&self.service_conf).safekeepers.clone()
    }

    /// Stores a new safekeeper list (durably, before it takes effect).
    pub fn set_safekeepers(&self, list: Vec<String>) -> Result<()> {
        for a in &list {
            check_safekeeper_addr(a)?;
        }
        let mut c = lock(&self.service_conf);
        let new = TimelineServiceConf { safekeepers: list };
        let text = toml::to_string(&new).expect("a list of strings serializes");
        write_atomic(&self.dir.join(TIMELINE_CONF), text.as_bytes())?;
        *c = new;
        Ok(())
    }

    /// Published by the remote uploader.
    pub fn set_remote_consistent_lsn(&self, lsn: Lsn) {
        self.remote_consistent_lsn
            .fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// Freezes and writes the open layer: everything ingested becomes durable.
    pub fn flush(&self) -> Result<()> {
        self.write_guard()
            .timeline_mut()
            .flush()
            .map_err(TenantError::timeline(format!("flushing {}", self.ctx())))
    }

    pub fn compact(&self) -> Result<CompactionReport> {
        self.write_guard()
            .timeline_mut()
            .compact()
            .map_err(TenantError::timeline(format!("compacting {}", self.ctx())))
    }

    fn new_decoder(&self) -> StreamDecoder {
        StreamDecoder::at_ingest_position(self.read_guard().timeline())
    }

    /// Where a WAL stream must (re)start: the end of the last record ingested.
    pub fn wal_start_lsn(&self) -> Lsn {
        self.read(|t| t.last_record_end())
    }

    /// Begins a new WAL stream at `at`, which must be [`TimelineHandle::wal_start_lsn`]:
    /// a record received only in part is forgotten.
    pub fn restart_wal_stream(&self, at: Lsn) -> Result<()> {
        let mut stream = lock(&self.stream);
        let dec = self.new_decoder();
        let res = if dec.input_lsn() != at {
            *stream = None;
            Err(TenantError::InvalidArgument(format!(
                "{}: a WAL stream must start at the ingest position {}, not at {at}",
                self.ctx(),
                dec.input_lsn()
            )))
        } else {
            *stream = Some(dec);
            Ok(())
        };
        self.publish_received(&stream);
        res
    }

    pub fn wal_progress(&self) -> WalProgress {
        let received = match self.received.load(Ordering::Acquire) {
            0 => None,
            at => Some(Lsn(at)),
        };
        let g = self.read_guard();
        let tl = g.timeline();
        WalProgress {
            received: received.unwrap_or(tl.last_record_end()),
            durable_local: tl.disk_consistent_lsn(),
            durable_remote: Lsn(self.remote_consistent_lsn.load(Ordering::Relaxed)),
        }
    }

    /// Forgets the stream (the next one starts at the ingest position).
    pub fn reset_wal_stream(&self) {
        let mut stream = lock(&self.stream);
        *stream = None;
        self.publish_received(&stream);
    }

    /// Takes the next chunk of a WAL stream, which must start where the previous chunk ended
    /// (the first at [`TimelineHandle::wal_start_lsn`], unless a stream was begun with
    /// [`TimelineHandle::restart_wal_stream`]), decodes it (without the ingest lock, so reads
    /// go on meanwhile) and ingests every record it completes through the ingest driver
    /// ([`ingest_batch_yielding`]: reads get in between records). Returns the number of records
    /// ingested. On any error the stream is forgotten: the sender must restart at
    /// `wal_start_lsn()`.
    pub fn receive_wal(&self, start: Lsn, wal: &[u8]) -> Result<usize> {
        let chunk = self.decode_wal(start, wal)?;
        self.ingest_decoded(&chunk)
    }

    /// [`TimelineHandle::receive_wal`]'s first half: decodes the chunk into the records it
    /// completes. Chunks must be decoded and then ingested in stream order (the walreceiver's
    /// pipeline decodes a few ahead of ingest, on another thread).
    pub fn decode_wal(&self, start: Lsn, wal: &[u8]) -> Result<DecodedChunk> {
        let mut stream = lock(&self.stream);
        let res = self.decode_into(&mut stream, start, wal);
        self.publish_received(&stream);
        res
    }

    /// [`TimelineHandle::decode_wal`] with the stream locked.
    fn decode_into(
        &self,
        stream: &mut Option<StreamDecoder>,
        start: Lsn,
        wal: &[u8],
    ) -> Result<DecodedChunk> {
        if let Some(stop) = self.ingest_stop() {
            *stream = None;
            return Err(TenantError::FailedPrecondition(format!(
                "{}: takes no WAL: {}",
                self.ctx(),
                stop.describe()
            )));
        }
        let dec = match stream.as_mut() {
            Some(d) => d,
            None => stream.insert(self.new_decoder()),
        };
        let chunk = dec
            .decode_chunk(start, wal)
            .map_err(|e| TenantError::InvalidArgument(format!("{}: {e}", self.ctx())))?;
        if chunk.failed.is_some() {
            // Nothing after it decodes; the next stream starts at the ingest position.
            *stream = None;
        }
        Ok(chunk)
    }

    /// [`TimelineHandle::receive_wal`]'s second half: ingests a decoded chunk's records
    /// through the ingest driver ([`ingest_batch_yielding`]: reads get in between records),
    /// then reports why the stream ended after them, if it did.
    pub fn ingest_decoded(&self, chunk: &DecodedChunk) -> Result<usize> {
        let ingested = if chunk.records.is_empty() {
            0
        } else {
            match ingest_batch_yielding(&self.ingest, &chunk.records) {
                Ok(n) => n,
                Err(e) => {
                    // Records decoded after it are not ingested: forget the stream.
                    self.reset_wal_stream();
                    let r = &chunk.records[e.ingested];
                    self.stop_at(r, &e.error);
                    crate::metrics::records_ingested(e.ingested);
                    return Err(TenantError::ingest(self.ctx())(e.error));
                }
            }
        };
        crate::metrics::records_ingested(ingested);
        if let Some(e) = &chunk.failed {
            crate::metrics::ingest_error();
            return Err(TenantError::InvalidArgument(format!("{}: {e}", self.ctx())));
        }
        Ok(ingested)
    }

    /// Stops ingest at `r`, which ingest refused with `e`. Refusals (a gap, a bad record)
    /// store nothing; a storage error may have stored part of the record. Either way the
    /// same record would fail again.
    fn stop_at(&self, r: &DecodedRecord, e: &IngestError) {
        let needs_restart = matches!(e, IngestError::Timeline(_));
        self.stop_ingest(IngestStop {
            record_lsn: r.lsn,
            record: record_label(r),
            reason: if needs_restart {
                format!("storing it failed: {e}")
            } else {
                stop_reason(r, e)
            },
            since_unix_ms: unix_ms_now(),
            needs_restart,
        });
    }
}

/// The walreceiver feeds the timeline through its handle.
impl WalSink for TimelineHandle {
    fn start_lsn(&self) -> Lsn {
        self.wal_start_lsn()
    }

    fn stopped(&self) -> Option<String> {
        self.ingest_stop().map(|s| s.describe())
    }

    fn problem(&self, problem: Option<String>) {
        self.set_walreceiver_problem(problem);
    }

    fn restart(&self, at: Lsn) -> anyhow::Result<()> {
        Ok(self.restart_wal_stream(at)?)
    }

    fn receive(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<()> {
        self.receive_wal(start, wal)?;
        Ok(())
    }

    fn decode(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<Staged> {
        Ok(Staged::Decoded(self.decode_wal(start, wal)?))
    }

    fn ingest(&self, staged: &Staged) -> anyhow::Result<()> {
        match staged {
            Staged::Raw { start, wal } => self.receive_wal(*start, wal)?,
            Staged::Decoded(chunk) => self.ingest_decoded(chunk)?,
        };
        Ok(())
    }

    fn feedback(&self) -> Feedback {
        let p = self.wal_progress();
        Feedback {
            received: p.received,
            durable_local: p.durable_local,
            durable_remote: p.durable_remote,
        }
    }
}

impl AncestorTimeline for TimelineHandle {
    fn with_timeline(&self, f: &mut dyn FnMut(&Timeline)) {
        f(self.read_guard().timeline())
    }
}
