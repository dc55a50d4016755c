//! Basebackup at an LSN: a data directory (a tar stream or a directory) that vanilla
//! PostgreSQL 15 starts from as it is, with no `pg_resetwal`:
//!
//! - `PG_VERSION` (root and each database's directory), `global/pg_control` generated: a
//!   clean shutdown (`DB_SHUTDOWNED`) whose checkpoint is the generated record below; every
//!   other field (system identifier, catalog version, settings, checksum version, sizes)
//!   from the control file the timeline was imported with ([`crate::import::info`]).
//! - Relmapper files, every relation fork's pages at the LSN (`pd_lsn` as stored, the data
//!   checksum recomputed when the cluster has checksums; a block without history is zeros),
//!   unlogged relations as after a crash (init fork, main fork a copy of it), SLRU segments
//!   (`pg_xact`, `pg_multixact`, `pg_commit_ts`), `pg_twophase` files (state + CRC-32C),
//!   `pg_logical/replorigin_checkpoint` (replication origin progress).
//! - Commit timestamps: the checkpoint's oldest/newest commit-timestamp xids, the control
//!   file's `track_commit_timestamp` and the `postgresql.conf` setting are what the WAL last
//!   set ([`crate::ingest::nonpage::commit_ts`]), so the compute keeps `pg_commit_ts` and
//!   answers `pg_xact_commit_timestamp` as the primary did.
//! - `pg_wal`: the segment holding a shutdown checkpoint record at the LSN ([`wal`]) with the
//!   counters the WAL implies there (`CheckpointState`), `xl_prev` naming the record before.
//! - The empty directories Postgres expects, and minimal `postgresql.conf` (the settings the
//!   control file records, which a hot standby must at least match), `pg_hba.conf` (peer on
//!   the local socket only), `pg_ident.conf`, `postgresql.auto.conf`: the caller appends or
//!   replaces what it needs (port, sockets, replication).
//! - Non-default tablespaces are what Postgres expects (and `pg_basebackup`'s tar has): a
//!   symbolic link `pg_tblspc/<oid>` to a directory holding `PG_15_<catversion>/<db>/…`.
//!   The link points at `../../tablespaces/<oid>`, beside the data directory; a compute's
//!   unpacker makes that a directory the compute owns (`compute::node::unpack`). In-place
//!   directories would make a hot standby PANIC ("unexpected directory entry") and turn a
//!   branch's tablespace into an in-place one. Every tablespace the WAL created and did not
//!   drop gets its link and directory, even while it holds no relation.
//!
//! Slim: with [`BasebackupOptions::without_relation_files`] every relation file
//! ([`relfiles`]) is left out and no relation page is read; a lazy compute's page filesystem
//! serves those files (ListRelations and GetPages, which read pages with [`pages::page_at`],
//! the code that writes them here).
//!
//! Modes: [`Mode::ReadWrite`] starts a primary that writes WAL after the checkpoint on the
//! same Postgres timeline ID (1 by default): a Strata branch is a Strata timeline, the
//! compute's Postgres never changes its own timeline ID and the walproposer streams from
//! the checkpoint on. [`Mode::ReadOnly`] adds `standby.signal`: Postgres starts in archive
//! recovery at the shutdown checkpoint, which makes it consistent at once (hot standby,
//! read-only, with nothing more to replay).
//!
//! The LSN must be a record boundary: between the timeline's start and its last record's
//! end, at or above where the timeline is consistent. The timeline knows the record before
//! its last record's end and before its start; for any other LSN the caller names the
//! record that ends there ([`BasebackupOptions::prev_lsn`], found with
//! [`record_ending_at`] over the WAL).

pub mod checksum;
pub mod pages;
pub mod relfiles;
pub mod sink;
pub mod wal;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use layer_format::Lsn;
use walproto::consts::{BLCKSZ, MAIN_FORKNUM};
use walproto::rmgr::xlog::CheckPoint;
use walproto::walfiles::{WalDirReader, WalReadError};

use crate::import::control::ControlSettings;
use crate::import::info::ImportInfo;
use crate::import::scan::{DEFAULT_TABLESPACE, GLOBAL_TABLESPACE, RELSEG_SIZE};
use crate::ingest::nonpage::read::{
    checkpoint_state_at, prepared_xacts, relmap_at, slru_page_at, slru_segments,
};
use crate::ingest::nonpage::slru::KINDS;
use crate::ingest::nonpage::{commit_ts, origins};
use crate::timeline::{ReadStats, Timeline, TimelineError};
use sink::{DirSink, Sink, TarSink};

#[derive(Debug, thiserror::Error)]
pub enum BasebackupError {
    #[error("basebackup at {lsn}: {reason}")]
    BadLsn { lsn: Lsn, reason: String },
    #[error("basebackup at {lsn}: {reason}")]
    Missing { lsn: Lsn, reason: String },
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("writing {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("finding the record that ends at {lsn}: {reason}")]
    Wal { lsn: Lsn, reason: String },
}

/// Read-write (a primary continuing from the LSN) or read-only (a hot standby at the LSN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

#[derive(Clone, Debug)]
pub struct BasebackupOptions {
    pub lsn: Lsn,
    /// The start of the record that ends at `lsn`; needed for a read-write basebackup unless
    /// `lsn` is the timeline's last record end or its start.
    pub prev_lsn: Option<Lsn>,
    pub mode: Mode,
    /// The Postgres timeline ID of the generated WAL.
    pub pg_timeline: u32,
    /// Threads reconstructing a relation's pages at once (1: the calling thread only).
    pub threads: usize,
    /// A slim basebackup: every file but the relation files ([`relfiles`]), which a lazy
    /// compute's page filesystem serves (their directories, `PG_VERSION` and
    /// `pg_filenode.map` are still written). No relation page is read.
    pub without_relation_files: bool,
}

impl BasebackupOptions {
    pub fn new(lsn: Lsn, mode: Mode) -> Self {
        BasebackupOptions {
            lsn,
            prev_lsn: None,
            mode,
            pg_timeline: 1,
            threads: pages::default_threads(),
            without_relation_files: false,
        }
    }
}

/// What a basebackup wrote.
#[derive(Clone, Debug, Default)]
pub struct BasebackupReport {
    pub lsn: Lsn,
    /// The generated checkpoint record (its own redo LSN) and its end, where the new server
    /// writes its first record.
    pub checkpoint_lsn: Lsn,
    pub checkpoint_end: Lsn,
    pub prev_lsn: Lsn,
    pub checkpoint: CheckPoint,
    pub databases: usize,
    pub forks: usize,
    pub rel_pages: u64,
    pub slru_pages: u64,
    pub prepared_xacts: usize,
    pub files: u64,
    pub bytes: u64,
    /// Layer files visited per page read while the relation pages were reconstructed (with
    /// any other reads of the timeline at the same time): the read amplification at the LSN.
    pub page_reads: ReadStats,
    pub elapsed_secs: f64,
}

/// The directories of a PostgreSQL 15 data directory that hold no Strata state.
const DIRS: &[&str] = &[
    "global",
    "base",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_xact",
    "pg_multixact",
    "pg_multixact/offsets",
    "pg_multixact/members",
    "pg_twophase",
    "pg_commit_ts",
    "pg_subtrans",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_dynshmem",
    "pg_replslot",
    "pg_tblspc",
    "pg_stat",
    "pg_stat_tmp",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
];

/// Counts what passes through to the sink, and names the file an I/O error was about.
struct Out<'a> {
    sink: &'a mut dyn Sink,
    rep: BasebackupReport,
}

impl Out<'_> {
    fn err(path: &str) -> impl FnOnce(io::Error) -> BasebackupError + '_ {
        move |source| BasebackupError::Io {
            path: path.to_string(),
            source,
        }
    }

    fn dir(&mut self, path: &str) -> Result<(), BasebackupError> {
        self.sink.dir(path).map_err(Self::err(path))
    }

    fn file(&mut self, path: &str, data: &[u8]) -> Result<(), BasebackupError> {
        self.sink.file(path, data).map_err(Self::err(path))?;
        self.rep.files += 1;
        self.rep.bytes += data.len() as u64;
        Ok(())
    }
}

/// Where (spc, db)'s files go.
fn db_path(spc: u32, db: u32, catver: u32) -> String {
    match spc {
        GLOBAL_TABLESPACE => "global".into(),
        DEFAULT_TABLESPACE => format!("base/{db}"),
        _ => format!("pg_tblspc/{spc}/PG_15_{catver}/{db}"),
    }
}

fn fork_file(dir: &str, rel: u32, fork: u8, seg: u64) -> String {
    let suffix = match fork {
        MAIN_FORKNUM => "",
        1 => "_fsm",
        2 => "_vm",
        _ => "_init",
    };
    if seg == 0 {
        format!("{dir}/{rel}{suffix}")
    } else {
        format!("{dir}/{rel}{suffix}.{seg}")
    }
}

/// Finds the start of the record that ends exactly at `lsn` in the WAL files of `wal_dir`:
/// the `xl_prev` a checkpoint at `lsn` needs. An error if no record ends there.
pub fn record_ending_at(wal_dir: &Path, lsn: Lsn) -> Result<Lsn, BasebackupError> {
    let werr = |reason: String| BasebackupError::Wal { lsn, reason };
    if lsn.0 == 0 {
        return Err(werr("0/0 is not a record boundary".into()));
    }
    // The record may start segments before `lsn`: begin in lsn's segment and step back
    // until some record is found.
    let mut from = Lsn(lsn.0 - 1).segment_start();
    loop {
        let mut r = match WalDirReader::open(wal_dir, from, Some(lsn), None) {
            Ok(r) => r,
            Err(e @ WalReadError::NoStartSegment { .. }) => return Err(werr(e.to_string())),
            Err(e) => return Err(werr(e.to_string())),
        };
        let mut last = None;
        while let Some(rec) = r.next_record().map_err(|e| werr(e.to_string()))? {
            last = Some((rec.lsn, rec.end_lsn));
        }
        match last {
            Some((start, end)) if end == lsn => return Ok(start),
            Some((start, end)) => {
                return Err(werr(format!(
                    "not a record boundary: the record at {start} ends at {end}, the next one does not end at {lsn}"
                )))
            }
            None if from.0 == 0 => return Err(werr("no record ends there".into())),
            None => from = Lsn(from.0 - walproto::consts::WAL_SEGMENT_SIZE),
        }
    }
}

/// Checks the LSN and finds the record before it.
fn resolve_prev(
    tl: &Timeline,
    info: &ImportInfo,
    opts: &BasebackupOptions,
) -> Result<Lsn, BasebackupError> {
    let lsn = opts.lsn;
    let bad = |reason: String| BasebackupError::BadLsn { lsn, reason };
    let (start, end) = (tl.start_lsn(), tl.last_record_end());
    if lsn < info.consistent_lsn {
        return Err(bad(format!(
            "the timeline is consistent only from {} (the end of the base backup it was imported from)",
            info.consistent_lsn
        )));
    }
    let known = if lsn == end && tl.last_record_lsn() != Lsn::INVALID {
        Some(tl.last_record_lsn())
    } else if lsn == start && info.prev_lsn != Lsn::INVALID {
        Some(info.prev_lsn)
    } else {
        None
    };
    match (known, opts.prev_lsn) {
        (Some(k), Some(p)) if k != p => Err(bad(format!(
            "the record ending there starts at {k}, not at the given {p}"
        ))),
        (Some(k), _) => Ok(k),
        (None, Some(p)) if p >= start && p < lsn => Ok(p),
        (None, Some(p)) => Err(bad(format!(
            "the given previous record {p} is not inside the timeline's history before it"
        ))),
        // The import knew no record before its start: Postgres only needs xl_prev below the
        // checkpoint, and ingest checks no xl_prev for a timeline's first record.
        (None, None) if lsn == start => Ok(Lsn::INVALID),
        // A hot standby only reads our checkpoint with random access, where Postgres checks
        // just that xl_prev lies below the record; it never continues the history, so the
        // exact previous record does not matter. The timeline's start is a record boundary
        // below the LSN. (Time travel needs this: any LSN, no WAL at hand.)
        (None, None) if opts.mode == Mode::ReadOnly => Ok(start),
        (None, None) => Err(bad(format!(
            "cannot tell whether {lsn} is a record boundary: give the start of the record \
             that ends there (basebackup::record_ending_at over the WAL)"
        ))),
    }
}

fn postgresql_conf(s: &ControlSettings) -> String {
    let wal_level = match s.wal_level {
        0 => "minimal",
        2 => "logical",
        _ => "replica",
    };
    format!(
        "# Written by Strata's basebackup: the settings the WAL was written with (from\n\
         # pg_control). A hot standby needs at least these values; append your own below.\n\
         wal_level = '{wal_level}'\n\
         max_connections = {}\n\
         max_worker_processes = {}\n\
         max_wal_senders = {}\n\
         max_prepared_transactions = {}\n\
         max_locks_per_transaction = {}\n",
        s.max_connections,
        s.max_worker_processes,
        s.max_wal_senders,
        s.max_prepared_xacts,
        s.max_locks_per_xact
    )
}

/// Writes the basebackup of `tl` at `opts.lsn` into `sink`.
pub fn basebackup(
    tl: &Timeline,
    opts: &BasebackupOptions,
    sink: &mut dyn Sink,
) -> Result<BasebackupReport, BasebackupError> {
    let t0 = std::time::Instant::now();
    let stats_before = tl.read_stats();
    let lsn = opts.lsn;
    let missing = |reason: &str| BasebackupError::Missing {
        lsn,
        reason: reason.to_string(),
    };
    let (start, end) = (tl.start_lsn(), tl.last_record_end());
    if lsn < start || lsn > end {
        return Err(BasebackupError::BadLsn {
            lsn,
            reason: format!("outside the timeline's history {start}..={end}"),
        });
    }
    let info = ImportInfo::load(tl, lsn)?
        .ok_or_else(|| missing("the timeline holds no import info (not created by an import)"))?;
    let prev = resolve_prev(tl, &info, opts)?;
    let control = &info.control;
    let counters = checkpoint_state_at(tl, lsn)?
        .ok_or_else(|| missing("no checkpoint counters at this LSN"))?;
    let global_map = relmap_at(tl, GLOBAL_TABLESPACE, 0, lsn)?
        .ok_or_else(|| missing("no global relmapper file"))?;
    let rel_files = relfiles::relation_files_at(tl, lsn)?;
    let cts = commit_ts::state_at(tl, lsn)?;
    let origins = origins::origins_at(tl, lsn)?;
    let tablespaces = crate::ingest::nonpage::NonPageState::load_tablespaces(tl, lsn)?;
    let tli = opts.pg_timeline;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let wal = wal::checkpoint_wal(control.system_identifier(), tli, lsn, prev, |redo| {
        CheckPoint {
            redo,
            this_timeline_id: tli,
            prev_timeline_id: tli,
            full_page_writes: true,
            next_xid: counters.next_xid,
            next_oid: counters.next_oid,
            next_multi: counters.next_multi,
            next_multi_offset: counters.next_multi_offset,
            oldest_xid: counters.oldest_xid,
            oldest_xid_db: counters.oldest_xid_db,
            oldest_multi: counters.oldest_multi,
            oldest_multi_db: counters.oldest_multi_db,
            time: now,
            oldest_commit_ts_xid: cts.oldest,
            newest_commit_ts_xid: cts.newest,
            // A shutdown checkpoint has no running transactions.
            oldest_active_xid: 0,
        }
    });

    let mut out = Out {
        sink,
        rep: BasebackupReport {
            lsn,
            checkpoint_lsn: wal.record_lsn,
            checkpoint_end: wal.end_lsn,
            prev_lsn: prev,
            checkpoint: wal.checkpoint,
            ..Default::default()
        },
    };
    for d in DIRS {
        out.dir(d)?;
    }
    let catver = control.catalog_version();
    let dbs = relfiles::database_dirs(&rel_files);
    let mut spcs = BTreeSet::new();
    let user_spcs = tablespaces.iter().copied().chain(dbs.iter().map(|d| d.0));
    for spc in user_spcs {
        if spc != GLOBAL_TABLESPACE && spc != DEFAULT_TABLESPACE && spcs.insert(spc) {
            let link = format!("pg_tblspc/{spc}");
            out.sink
                .dir_link(&link, &sink::tablespace_link_target(spc))
                .map_err(Out::err(&link))?;
            out.dir(&format!("pg_tblspc/{spc}/PG_15_{catver}"))?;
        }
    }
    for &(spc, db) in &dbs {
        if spc != GLOBAL_TABLESPACE {
            out.dir(&db_path(spc, db, catver))?;
        }
    }

    out.file("PG_VERSION", b"15\n")?;
    let mut conf = postgresql_conf(&control.settings());
    if cts.active {
        conf.push_str("track_commit_timestamp = on\n");
    }
    out.file("postgresql.conf", conf.as_bytes())?;
    out.file("postgresql.auto.conf", b"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n")?;
    out.file(
        "pg_hba.conf",
        b"# Written by Strata's basebackup: replace as needed.\nlocal all all peer\nlocal replication all peer\n",
    )?;
    out.file("pg_ident.conf", b"")?;
    let mut pg_control = control.shut_down_at(wal.record_lsn, &wal.checkpoint);
    set_track_commit_timestamp(&mut pg_control, cts.active);
    out.file("global/pg_control", &pg_control)?;
    out.file("global/pg_filenode.map", &global_map)?;
    for &(spc, db) in &dbs {
        if spc == GLOBAL_TABLESPACE {
            continue;
        }
        // A database's relmapper file is in its default tablespace's directory, which also
        // holds its PG_VERSION.
        if let Some(map) = relmap_at(tl, spc, db, lsn)? {
            let path = db_path(spc, db, catver);
            out.file(&format!("{path}/PG_VERSION"), b"15\n")?;
            out.file(&format!("{path}/pg_filenode.map"), &map)?;
            out.rep.databases += 1;
        }
    }

    let reader = pages::PageReader {
        tl,
        lsn,
        checksums: control.data_checksums(),
        threads: opts.threads.max(1),
    };
    let written_files = if opts.without_relation_files {
        &[][..]
    } else {
        &rel_files[..]
    };
    for f in written_files {
        write_fork(&mut out, &reader, catver, f)?;
        // The copy of an unlogged relation's init fork is not a fork of its own.
        if f.fork == f.source_fork {
            out.rep.forks += 1;
        }
    }

    for kind in KINDS {
        for (segno, npages) in slru_segments(tl, kind, lsn)? {
            let path = format!("{}/{segno:04X}", kind.dir_name());
            out.sink
                .begin_file(&path, npages as u64 * BLCKSZ as u64)
                .map_err(Out::err(&path))?;
            for blk in 0..npages {
                let p = slru_page_at(tl, kind, segno, blk, lsn)?;
                let data: &[u8] = match &p {
                    Some(p) => &p[..],
                    None => &[0u8; BLCKSZ],
                };
                out.sink.write(data).map_err(Out::err(&path))?;
            }
            out.sink.end_file().map_err(Out::err(&path))?;
            out.rep.files += 1;
            out.rep.bytes += npages as u64 * BLCKSZ as u64;
            out.rep.slru_pages += npages as u64;
        }
    }

    for (xid, state) in prepared_xacts(tl, lsn)? {
        let mut data = state.to_vec();
        data.extend_from_slice(&crc32c::crc32c(&state).to_le_bytes());
        out.file(&format!("pg_twophase/{xid:08X}"), &data)?;
        out.rep.prepared_xacts += 1;
    }

    out.file(
        "pg_logical/replorigin_checkpoint",
        &origins.checkpoint_file(),
    )?;

    for (name, data) in &wal.segments {
        out.file(&format!("pg_wal/{name}"), data)?;
    }
    if opts.mode == Mode::ReadOnly {
        out.file("standby.signal", b"")?;
    }
    out.sink.finish().map_err(Out::err("(end)"))?;
    let mut rep = out.rep;
    rep.page_reads = reads_since(&stats_before, &tl.read_stats());
    rep.elapsed_secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        lsn = %rep.lsn,
        files = rep.files,
        bytes = rep.bytes,
        rel_pages = rep.rel_pages,
        threads = reader.threads,
        secs = format!("{:.3}", rep.elapsed_secs),
        "basebackup generated; {}",
        rep.page_reads.summary()
    );
    Ok(rep)
}

/// Sets `track_commit_timestamp` in a generated control file (the imported file's value is
/// stale once `XLOG/PARAMETER_CHANGE` changed it) and recomputes its CRC.
fn set_track_commit_timestamp(pg_control: &mut [u8], on: bool) {
    // Offsets in ControlFileData: see crate::import::control.
    const TRACK_COMMIT_TS: usize = 200;
    const CRC: usize = 288;
    if pg_control.len() < CRC + 4 {
        return;
    }
    pg_control[TRACK_COMMIT_TS] = on as u8;
    let crc = crc32c::crc32c(&pg_control[..CRC]);
    pg_control[CRC..CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The reads counted in `after` but not in `before`.
fn reads_since(before: &ReadStats, after: &ReadStats) -> ReadStats {
    let hist = after
        .hist
        .iter()
        .enumerate()
        .map(|(n, c)| c.saturating_sub(before.hist.get(n).copied().unwrap_or(0)))
        .collect();
    ReadStats { hist }
}

/// Writes one relation file's pages (read as its source fork) as its segment files.
fn write_fork(
    out: &mut Out<'_>,
    reader: &pages::PageReader<'_>,
    catver: u32,
    file: &relfiles::RelationFile,
) -> Result<(), BasebackupError> {
    let rel = file.rel;
    let dir = db_path(rel.spc, rel.db, catver);
    let n = file.nblocks as u64;
    let segs = n.div_ceil(RELSEG_SIZE).max(1);
    for seg in 0..segs {
        let first = seg * RELSEG_SIZE;
        let count = (n - first.min(n)).min(RELSEG_SIZE);
        let path = fork_file(&dir, rel.rel, file.fork, seg);
        out.sink
            .begin_file(&path, count * BLCKSZ as u64)
            .map_err(Out::err(&path))?;
        let sink = &mut *out.sink;
        reader.read_range(
            rel,
            file.source_fork,
            first as u32,
            count as u32,
            &mut |pages| sink.write(pages).map_err(Out::err(&path)),
        )?;
        out.sink.end_file().map_err(Out::err(&path))?;
        out.rep.files += 1;
        out.rep.bytes += count * BLCKSZ as u64;
        out.rep.rel_pages += count;
    }
    Ok(())
}

/// The basebackup as a tar stream.
pub fn basebackup_tar<W: Write>(
    tl: &Timeline,
    opts: &BasebackupOptions,
    out: W,
) -> Result<BasebackupReport, BasebackupError> {
    let mut sink = TarSink::new(out);
    basebackup(tl, opts, &mut sink)
}

/// The basebackup written into `dir` (empty or missing), fsynced.
pub fn basebackup_to_dir(
    tl: &Timeline,
    opts: &BasebackupOptions,
    dir: &Path,
) -> Result<BasebackupReport, BasebackupError> {
    let mut sink = DirSink::new(dir).map_err(|source| BasebackupError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    basebackup(tl, opts, &mut sink)
}
