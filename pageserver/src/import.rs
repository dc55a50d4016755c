//! Import: a cleanly shut down data directory (what initdb leaves, or a copy of a stopped
//! server's) becomes image layers at one LSN: every block of every relation fork, each fork's
//! size, and the relation directories ([`crate::ingest::reldir`]).
//!
//! The LSN is the checkpoint in `global/pg_control` unless the caller gives one (a base whose
//! WAL was reset, as the tests' workload does with `pg_resetwal`). Image layers are cut at
//! about [`IMAGE_LAYER_BYTES`] so a layer stays a reasonable unit to read and upload; together
//! they tile the whole key space, so a key no layer holds does not exist at the import LSN.
//!
//! Not imported yet: SLRUs (`pg_xact`, `pg_multixact`), relmapper files, two-phase state and
//! the control data (the next step of the pageserver; see docs/architecture.md).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use layer_format::{ImageLayerWriter, Key, LayerDesc, Lsn};
use walproto::consts::BLCKSZ;
use walproto::record::RelFileNode;

use crate::ingest::reldir::{encode_db_dir, encode_rel_dir, size_value};
use crate::redo::store::parse_rel_file_name;
use crate::timeline::{Timeline, TimelineConf, TimelineError};

/// Target size of one image layer file.
pub const IMAGE_LAYER_BYTES: u64 = 128 * 1024 * 1024;
const GLOBAL_TABLESPACE: u32 = 1664;
const DEFAULT_TABLESPACE: u32 = 1663;
const RELSEG_SIZE: u64 = 131072;
/// `DB_SHUTDOWNED`, `DB_SHUTDOWNED_IN_RECOVERY`.
const CLEAN_STATES: [u32; 2] = [1, 2];

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
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { op, path, source }
}

/// What `pg_control` says about a data directory.
#[derive(Clone, Copy, Debug)]
pub struct ControlInfo {
    pub state: u32,
    /// `checkPoint`: the last checkpoint record's LSN.
    pub checkpoint: Lsn,
}

/// Reads `global/pg_control` (PG15 layout: `state` at 16, `checkPoint` at 32).
pub fn read_control(datadir: &Path) -> Result<ControlInfo, ImportError> {
    let path = datadir.join("global/pg_control");
    let b = std::fs::read(&path).map_err(io("read", &path))?;
    if b.len() < 40 {
        return Err(ImportError::Invalid {
            path,
            reason: format!("only {} bytes", b.len()),
        });
    }
    Ok(ControlInfo {
        state: u32::from_le_bytes(b[16..20].try_into().unwrap()),
        checkpoint: Lsn(u64::from_le_bytes(b[32..40].try_into().unwrap())),
    })
}

/// What an import stored.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub lsn: Lsn,
    pub forks: usize,
    pub blocks: u64,
    pub layers: Vec<LayerDesc>,
    pub bytes: u64,
}

/// One relation fork's segment files, in order.
type Forks = BTreeMap<(RelFileNode, u8), Vec<PathBuf>>;

fn scan_db_dir(dir: &Path, spc: u32, db: u32, out: &mut Forks) -> Result<(), ImportError> {
    let mut segs: BTreeMap<(u32, u8), BTreeMap<u32, PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((rel, fork, seg)) = parse_rel_file_name(&name) {
            segs.entry((rel, fork)).or_default().insert(seg, e.path());
        }
    }
    for ((rel, fork), files) in segs {
        let rnode = RelFileNode { spc, db, rel };
        out.insert((rnode, fork), files.into_values().collect());
    }
    Ok(())
}

fn scan(datadir: &Path) -> Result<Forks, ImportError> {
    let mut forks = Forks::new();
    scan_db_dir(&datadir.join("global"), GLOBAL_TABLESPACE, 0, &mut forks)?;
    let numbered = |dir: &Path| -> Result<Vec<(u32, PathBuf)>, ImportError> {
        let mut v = Vec::new();
        if !dir.exists() {
            return Ok(v);
        }
        for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let e = e.map_err(io("list", dir))?;
            if let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() {
                v.push((n, e.path()));
            }
        }
        Ok(v)
    };
    for (db, path) in numbered(&datadir.join("base"))? {
        scan_db_dir(&path, DEFAULT_TABLESPACE, db, &mut forks)?;
    }
    for (spc, path) in numbered(&datadir.join("pg_tblspc"))? {
        for e in std::fs::read_dir(&path).map_err(io("list", &path))? {
            let e = e.map_err(io("list", &path))?;
            if e.file_name().to_string_lossy().starts_with("PG_15_") {
                for (db, p) in numbered(&e.path())? {
                    scan_db_dir(&p, spc, db, &mut forks)?;
                }
            }
        }
    }
    Ok(forks)
}

fn fork_blocks(files: &[PathBuf]) -> Result<u64, ImportError> {
    let mut n = 0;
    for (i, f) in files.iter().enumerate() {
        let len = std::fs::metadata(f).map_err(io("stat", f))?.len();
        if len % BLCKSZ as u64 != 0 || (i + 1 < files.len() && len != RELSEG_SIZE * BLCKSZ as u64) {
            return Err(ImportError::Invalid {
                path: f.clone(),
                reason: format!("{len} bytes is not a whole number of blocks of a full segment"),
            });
        }
        n += len / BLCKSZ as u64;
    }
    Ok(n)
}

/// Writes image layers of `datadir` at `lsn` (default: its checkpoint) into a new timeline in
/// `timeline_dir`, whose history starts there.
pub fn import_datadir(
    datadir: &Path,
    timeline_dir: &Path,
    conf: TimelineConf,
    lsn: Option<Lsn>,
) -> Result<(Timeline, ImportReport), ImportError> {
    let control = read_control(datadir)?;
    if !CLEAN_STATES.contains(&control.state) {
        return Err(ImportError::Invalid {
            path: datadir.join("global/pg_control"),
            reason: format!(
                "the cluster was not shut down cleanly (state {}); import needs a clean shutdown",
                control.state
            ),
        });
    }
    let lsn = lsn.unwrap_or(control.checkpoint);
    let forks = scan(datadir)?;
    let mut tl = Timeline::create(timeline_dir, conf, lsn)?;
    let mut rep = ImportReport {
        lsn,
        forks: forks.len(),
        ..Default::default()
    };
    // Key order: each fork's blocks then its size key (kind 1), the database list (kind 3),
    // then each database's relation list (kind 4).
    let mut sizes = Vec::new();
    for ((rel, fork), files) in &forks {
        sizes.push(((*rel, *fork), fork_blocks(files)?));
    }
    let mut w = LayerCutter::new(timeline_dir, lsn);
    for ((rel, fork), n) in &sizes {
        let files = &forks[&(*rel, *fork)];
        let mut buf = vec![0u8; BLCKSZ];
        let mut blk = 0u32;
        for f in files {
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
    let mut dbs: BTreeMap<(u32, u32), Vec<(u32, u8)>> = BTreeMap::new();
    for (rel, fork) in forks.keys() {
        dbs.entry((rel.spc, rel.db))
            .or_default()
            .push((rel.rel, *fork));
    }
    w.put(Key::db_dir(), &encode_db_dir(dbs.keys().copied()))?;
    for (db, rels) in &dbs {
        let v: Bytes = encode_rel_dir(rels.iter().copied());
        w.put(Key::rel_dir(db.0, db.1), &v)?;
    }
    let (layers, bytes) = w.finish()?;
    tl.add_image_layers(&layers, bytes)?;
    rep.layers = layers;
    rep.bytes = bytes;
    Ok((tl, rep))
}

/// Streams images into image layers of about [`IMAGE_LAYER_BYTES`], cut so their key ranges
/// tile `Key::MIN..Key::MAX`. A layer's end is only known when the next one starts, so values
/// are buffered per layer (bounded by the cut size) and written when the layer closes.
struct LayerCutter<'a> {
    dir: &'a Path,
    lsn: Lsn,
    start: Key,
    pending: Vec<(Key, Vec<u8>)>,
    pending_bytes: u64,
    done: Vec<LayerDesc>,
    bytes: u64,
}

impl<'a> LayerCutter<'a> {
    fn new(dir: &'a Path, lsn: Lsn) -> Self {
        LayerCutter {
            dir,
            lsn,
            start: Key::MIN,
            pending: Vec::new(),
            pending_bytes: 0,
            done: Vec::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, key: Key, v: &[u8]) -> Result<(), ImportError> {
        if self.pending_bytes >= IMAGE_LAYER_BYTES {
            self.write(key)?;
        }
        self.pending_bytes += v.len() as u64;
        self.pending.push((key, v.to_vec()));
        Ok(())
    }

    fn write(&mut self, end: Key) -> Result<(), ImportError> {
        let mut w = ImageLayerWriter::new(self.dir, self.start..end, self.lsn)
            .map_err(TimelineError::from)?;
        for (k, v) in self.pending.drain(..) {
            w.put(k, &v).map_err(TimelineError::from)?;
        }
        let written = w.finish().map_err(TimelineError::from)?;
        self.bytes += written.file_size;
        self.done.push(written.desc);
        self.start = end;
        self.pending_bytes = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<LayerDesc>, u64), ImportError> {
        self.write(Key::MAX)?;
        Ok((self.done, self.bytes))
    }
}
