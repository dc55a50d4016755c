//! Import: a PostgreSQL 15 data directory becomes a timeline whose history starts at the
//! checkpoint's redo LSN, holding what ingest would hold there, under the same keys and
//! encodings (a reader cannot tell an imported value from an ingested one):
//!
//! - every block of every relation fork (main, fsm, vm, init; unlogged relations only by
//!   their init fork), each fork's size, and the relation directories;
//! - relmapper files (`global/` and each database's `pg_filenode.map`);
//! - CLOG and MultiXact SLRU pages with their segment sizes and directories;
//! - `pg_twophase` state files (without their CRC, as a PREPARE record stores them);
//! - the checkpoint counters, from the checkpoint the import starts at;
//! - [`info::ImportInfo`]: the control file, the previous record's LSN and where the
//!   timeline becomes consistent.
//!
//! Two kinds of data directory:
//!
//! - **Cleanly shut down** ([`import_datadir`]; what initdb leaves, a stopped server): the
//!   import LSN is the shutdown checkpoint record's own LSN (its redo LSN), so WAL ingest
//!   resumes with that record; the timeline is consistent from the import LSN on.
//! - **A `pg_basebackup -Fp -X stream|fetch` output** ([`import_pg_basebackup`]): the files
//!   are images at the backup's start (`START WAL LOCATION` in `backup_label`, the redo LSN),
//!   the counters come from the backup's checkpoint record, then the WAL in its `pg_wal` is
//!   ingested from the start through its end. The copy's pages may be torn or newer than the
//!   start; the full-page images that follow the redo point (full-page writes are forced
//!   during a backup) replace them, so the timeline is consistent (readable) from the backup's
//!   end: the end of the `XLOG/BACKUP_END` record naming this start, or for a backup taken
//!   from a standby the control file's minimum recovery point.
//!
//! Image layers are cut at about [`IMAGE_LAYER_BYTES`] and tile the whole key space, so a key
//! no layer holds does not exist at the import LSN.

pub mod backup_label;
pub mod control;
pub mod info;
mod layers;
pub mod scan;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use layer_format::{Key, LayerDesc, Lsn};
use walproto::consts::BLCKSZ;
use walproto::rmgr::xlog::{CheckPoint, XlogRecord};
use walproto::rmgr::ParsedRecord;
use walproto::walfiles::{WalDirReader, WalReadError};

use crate::ingest::nonpage::counters::CheckpointState;
use crate::ingest::reldir::{encode_db_dir, encode_rel_dir, size_value};
use crate::ingest::{IngestConf, IngestError, PipelineError, WalIngest};
use crate::timeline::{Timeline, TimelineConf, TimelineError};
use backup_label::BackupLabel;
use control::{ControlFile, DB_SHUTDOWNED, DB_SHUTDOWNED_IN_RECOVERY};
use info::ImportInfo;
use layers::LayerCutter;
pub use layers::IMAGE_LAYER_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("reading the backup's WAL: {0}")]
    Wal(#[from] WalReadError),
    #[error("ingesting the backup's WAL: {0}")]
    Ingest(#[from] IngestError),
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { op, path, source }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What `pg_control` says about a data directory.
#[derive(Clone, Copy, Debug)]
pub struct ControlInfo {
    pub state: u32,
    /// `checkPoint`: the last checkpoint record's LSN.
    pub checkpoint: Lsn,
}

/// Reads and checks `global/pg_control` (PostgreSQL 15 layout, CRC).
pub fn read_control_file(datadir: &Path) -> Result<ControlFile, ImportError> {
    let path = datadir.join("global/pg_control");
    let b = std::fs::read(&path).map_err(io("read", &path))?;
    ControlFile::parse(&b).map_err(|reason| invalid(&path, reason))
}

/// The state and last checkpoint of `global/pg_control`.
pub fn read_control(datadir: &Path) -> Result<ControlInfo, ImportError> {
    let c = read_control_file(datadir)?;
    Ok(ControlInfo {
        state: c.state(),
        checkpoint: c.checkpoint_lsn(),
    })
}

/// Refuses what is not a PostgreSQL 15 data directory.
fn check_data_dir(datadir: &Path) -> Result<(), ImportError> {
    let path = datadir.join("PG_VERSION");
    let v = match std::fs::read_to_string(&path) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(
                datadir,
                "no PG_VERSION file: not a PostgreSQL data directory",
            ))
        }
        Err(e) => return Err(io("read", &path)(e)),
    };
    if v.trim() != "15" {
        return Err(invalid(
            &path,
            format!(
                "a PostgreSQL {} data directory; Strata imports PostgreSQL 15",
                v.trim()
            ),
        ));
    }
    Ok(())
}

/// What an import stored.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    /// The import LSN: where the timeline's history starts.
    pub lsn: Lsn,
    /// From where the timeline is consistent (readable).
    pub consistent_lsn: Lsn,
    /// The start of the record before the import LSN (`0/0` if unknown).
    pub prev_lsn: Lsn,
    /// A `pg_basebackup` output (not a cleanly shut down directory).
    pub from_backup: bool,
    pub forks: usize,
    pub blocks: u64,
    pub slru_pages: u64,
    pub prepared_xacts: usize,
    pub relmaps: usize,
    /// Records of the backup's WAL ingested after the images.
    pub wal_records: u64,
    /// Where the ingested WAL ends (the import LSN if none was ingested).
    pub wal_end: Lsn,
    pub layers: Vec<LayerDesc>,
    pub bytes: u64,
}

fn counters_from(cp: &CheckPoint) -> CheckpointState {
    let mut s = CheckpointState::default();
    s.apply_shutdown_checkpoint(cp);
    s
}

/// The `xl_prev` of the record at `lsn` in `wal_dir`, if that WAL is there.
fn prev_of_record_at(wal_dir: &Path, lsn: Lsn) -> Option<Lsn> {
    let mut r = WalDirReader::open(wal_dir, lsn, None, None).ok()?;
    let rec = r.next_record().ok()??;
    (rec.lsn == lsn).then_some(rec.header.prev)
}

/// Imports a cleanly shut down data directory at `lsn` (default: its checkpoint record's LSN,
/// where ingest resumes) into a new timeline in `timeline_dir`.
pub fn import_datadir(
    datadir: &Path,
    timeline_dir: &Path,
    conf: TimelineConf,
    lsn: Option<Lsn>,
) -> Result<(Timeline, ImportReport), ImportError> {
    check_data_dir(datadir)?;
    let control = read_control_file(datadir)?;
    if ![DB_SHUTDOWNED, DB_SHUTDOWNED_IN_RECOVERY].contains(&control.state()) {
        let reason = if datadir.join("backup_label").exists() {
            "a base backup (it has a backup_label): import it with import_pg_basebackup".into()
        } else {
            format!(
                "the cluster was not shut down cleanly (state {}) and has no backup_label; \
                 import needs a clean shutdown or a pg_basebackup",
                control.state()
            )
        };
        return Err(invalid(&datadir.join("global/pg_control"), reason));
    }
    let lsn = lsn.unwrap_or(control.checkpoint_lsn());
    let cp = control
        .checkpoint()
        .map_err(|e| invalid(&datadir.join("global/pg_control"), e))?;
    // A standby shut down after replaying past its last restartpoint: its pages are as of
    // the minimum recovery point, so nothing below that is consistent.
    let consistent_lsn = if control.state() == DB_SHUTDOWNED_IN_RECOVERY {
        lsn.max(control.min_recovery_point())
    } else {
        lsn
    };
    let info = ImportInfo {
        prev_lsn: prev_of_record_at(&datadir.join("pg_wal"), lsn).unwrap_or(Lsn::INVALID),
        consistent_lsn,
        control,
    };
    write_images(datadir, timeline_dir, conf, lsn, counters_from(&cp), info)
}

/// What the first pass over a backup's WAL found.
struct BackupWal {
    prev: Lsn,
    checkpoint: CheckPoint,
    end: Lsn,
    /// End of the last record read without error.
    wal_end: Lsn,
}

fn scan_backup_wal(
    datadir: &Path,
    label: &BackupLabel,
    control: &ControlFile,
) -> Result<BackupWal, ImportError> {
    let wal = datadir.join("pg_wal");
    let mut r = WalDirReader::open(&wal, label.start, None, None)?;
    let mut prev = None;
    let mut checkpoint = None;
    let mut end = None;
    let mut wal_end = label.start;
    loop {
        let rec = match r.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            // Garbage after the backup's end (a recycled segment fetched whole) ends the WAL.
            Err(_) if end.is_some_and(|e| e <= wal_end) => break,
            Err(e) => return Err(e.into()),
        };
        if prev.is_none() {
            if rec.lsn != label.start {
                return Err(invalid(
                    &wal,
                    format!(
                        "the first record at or after the backup start {} is at {}",
                        label.start, rec.lsn
                    ),
                ));
            }
            prev = Some(rec.header.prev);
        }
        if rec.rmid() == walproto::rmgr::RM_XLOG_ID {
            match walproto::rmgr::parse(&rec) {
                Ok(Some(ParsedRecord::Xlog(
                    XlogRecord::CheckpointOnline(cp) | XlogRecord::CheckpointShutdown(cp),
                ))) if rec.lsn == label.checkpoint => checkpoint = Some(cp),
                Ok(Some(ParsedRecord::Xlog(XlogRecord::BackupEnd { start_point })))
                    if start_point == label.start && !label.from_standby =>
                {
                    end = Some(rec.end_lsn)
                }
                _ => {}
            }
        }
        wal_end = rec.end_lsn;
    }
    if label.from_standby {
        let mrp = control.min_recovery_point();
        if mrp == Lsn::INVALID {
            return Err(invalid(
                &datadir.join("global/pg_control"),
                "a backup from a standby without a minimum recovery point",
            ));
        }
        end = Some(mrp);
    }
    let checkpoint = checkpoint.ok_or_else(|| {
        invalid(
            &wal,
            format!(
                "the checkpoint record at {} named by backup_label is not in pg_wal",
                label.checkpoint
            ),
        )
    })?;
    let end = match end {
        Some(e) if e <= wal_end => e,
        _ => {
            return Err(invalid(
                &wal,
                format!(
                    "the WAL ends at {wal_end}, before the end of the backup started at {} \
                     (take the backup with -X stream or -X fetch)",
                    label.start
                ),
            ))
        }
    };
    Ok(BackupWal {
        prev: prev.unwrap_or(Lsn::INVALID),
        checkpoint,
        end,
        wal_end,
    })
}

/// Imports a `pg_basebackup -Fp` output with its WAL (`-X stream` or `-X fetch`): images at
/// the backup's start, then the WAL from the start to the end of `pg_wal`. The timeline is
/// consistent from [`ImportReport::consistent_lsn`] on.
pub fn import_pg_basebackup(
    datadir: &Path,
    timeline_dir: &Path,
    conf: TimelineConf,
) -> Result<(Timeline, ImportReport), ImportError> {
    check_data_dir(datadir)?;
    let control = read_control_file(datadir)?;
    let label_path = datadir.join("backup_label");
    let text = match std::fs::read_to_string(&label_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(
                datadir,
                "no backup_label: not a base backup (a stopped server's data directory is \
                 imported with import_datadir)",
            ))
        }
        Err(e) => return Err(io("read", &label_path)(e)),
    };
    let label = BackupLabel::parse(&text).map_err(|r| invalid(&label_path, r))?;
    let wal = scan_backup_wal(datadir, &label, &control)?;
    let info = ImportInfo {
        prev_lsn: wal.prev,
        consistent_lsn: wal.end,
        control,
    };
    let counters = counters_from(&wal.checkpoint);
    let (tl, mut rep) = write_images(datadir, timeline_dir, conf, label.start, counters, info)?;
    rep.from_backup = true;
    let mut ingest = WalIngest::new(tl, IngestConf::default())?;
    let mut r = WalDirReader::open(
        &datadir.join("pg_wal"),
        label.start,
        Some(wal.wal_end),
        None,
    )?;
    ingest
        .ingest_pipelined_with(|| r.next_record(), |_, _| rep.wal_records += 1)
        .map_err(|e| match e {
            PipelineError::Ingest(e) => ImportError::Ingest(e),
            PipelineError::Read(e) => ImportError::Wal(e),
        })?;
    ingest.timeline_mut().flush()?;
    let tl = ingest.into_timeline();
    rep.wal_end = tl.last_record_end();
    Ok((tl, rep))
}

/// Imports either kind of data directory: a base backup if it has a `backup_label`.
pub fn import(
    datadir: &Path,
    timeline_dir: &Path,
    conf: TimelineConf,
) -> Result<(Timeline, ImportReport), ImportError> {
    if datadir.join("backup_label").exists() {
        import_pg_basebackup(datadir, timeline_dir, conf)
    } else {
        import_datadir(datadir, timeline_dir, conf, None)
    }
}

/// Scans everything first (so bad input creates no timeline), then writes the image layers.
fn write_images(
    datadir: &Path,
    timeline_dir: &Path,
    conf: TimelineConf,
    lsn: Lsn,
    counters: CheckpointState,
    info: ImportInfo,
) -> Result<(Timeline, ImportReport), ImportError> {
    let rels = scan::relations(datadir)?;
    let mut rest: BTreeMap<Key, Bytes> = BTreeMap::new();
    let mut rep = ImportReport {
        lsn,
        consistent_lsn: info.consistent_lsn,
        prev_lsn: info.prev_lsn,
        forks: rels.forks.len(),
        wal_end: lsn,
        ..Default::default()
    };
    rep.slru_pages = scan::slrus(datadir, &mut rest)?;
    rep.prepared_xacts = scan::twophase(datadir, &mut rest)?;
    rep.relmaps = scan::relmaps(datadir, &rels, &mut rest)?;
    rest.insert(Key::checkpoint(), counters.encode());
    rest.insert(ImportInfo::key(), info.encode());
    let mut sizes = Vec::new();
    let mut dbs: BTreeMap<(u32, u32), Vec<(u32, u8)>> = BTreeMap::new();
    for ((rel, fork), files) in &rels.forks {
        sizes.push(((*rel, *fork), scan::fork_blocks(files)?));
        dbs.entry((rel.spc, rel.db))
            .or_default()
            .push((rel.rel, *fork));
    }
    rest.insert(Key::db_dir(), encode_db_dir(dbs.keys().copied()));
    for (db, forks) in &dbs {
        rest.insert(
            Key::rel_dir(db.0, db.1),
            encode_rel_dir(forks.iter().copied()),
        );
    }

    let mut tl = Timeline::create(timeline_dir, conf, lsn)?;
    let mut w = LayerCutter::new(timeline_dir, lsn);
    // Key order: relation blocks and sizes (kind 1) sort before every other key.
    let mut buf = vec![0u8; BLCKSZ];
    for ((rel, fork), n) in &sizes {
        let mut blk = 0u32;
        for f in &rels.forks[&(*rel, *fork)] {
            let mut file = File::open(f).map_err(io("open", f))?;
            let len = std::fs::metadata(f).map_err(io("stat", f))?.len();
            for _ in 0..len / BLCKSZ as u64 {
                file.read_exact(&mut buf).map_err(io("read", f))?;
                w.put(Key::rel_block(*rel, *fork, blk), &buf)?;
                blk += 1;
            }
        }
        rep.blocks += *n;
        w.put(Key::rel_size(*rel, *fork), &size_value(*n as u32))?;
    }
    for (k, v) in &rest {
        w.put(*k, v)?;
    }
    let (layers, bytes) = w.finish()?;
    tl.add_image_layers(&layers, bytes)?;
    rep.layers = layers;
    rep.bytes = bytes;
    Ok((tl, rep))
}
