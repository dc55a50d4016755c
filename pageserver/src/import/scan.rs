//! What a data directory holds, file by file: relation forks (with their segment files),
//! SLRU segments, two-phase state files and relmapper files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use layer_format::Key;
use walproto::consts::{BLCKSZ, INIT_FORKNUM};
use walproto::record::RelFileNode;

use super::{io, ImportError};
use crate::ingest::nonpage::slru::{encode_dir, KINDS};
use crate::ingest::nonpage::{index, keys};
use crate::redo::store::parse_rel_file_name;

pub const GLOBAL_TABLESPACE: u32 = 1664;
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// Blocks per relation segment file (`RELSEG_SIZE`, 1 GiB).
pub const RELSEG_SIZE: u64 = 131072;
/// Size of a relmapper file (`RELMAPPER_FILESIZE`).
pub const RELMAP_FILE_SIZE: usize = 512;

fn invalid(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One relation fork's segment files, in order.
pub type Forks = BTreeMap<(RelFileNode, u8), Vec<PathBuf>>;

/// Relation forks, and the directories (tablespace, database) that hold them.
#[derive(Default)]
pub struct RelFiles {
    pub forks: Forks,
    /// Every database directory seen, with its path (relmapper files live there).
    pub db_dirs: BTreeMap<(u32, u32), PathBuf>,
}

fn scan_db_dir(dir: &Path, spc: u32, db: u32, out: &mut RelFiles) -> Result<(), ImportError> {
    let mut segs: BTreeMap<(u32, u8), BTreeMap<u32, PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((rel, fork, seg)) = parse_rel_file_name(&name) {
            segs.entry((rel, fork)).or_default().insert(seg, e.path());
        }
    }
    // Unlogged relations (those with an init fork): only the init fork is WAL-logged, and a
    // basebackup rebuilds the main fork from it, as Postgres does after a crash.
    let unlogged: BTreeSet<u32> = segs
        .keys()
        .filter(|(_, f)| *f == INIT_FORKNUM)
        .map(|(r, _)| *r)
        .collect();
    for ((rel, fork), files) in segs {
        if unlogged.contains(&rel) && fork != INIT_FORKNUM {
            continue;
        }
        // Segment numbers must be 0, 1, 2, ... with no gap.
        for (i, seg) in files.keys().enumerate() {
            if *seg as usize != i {
                return Err(invalid(
                    dir,
                    format!("relation {rel} fork {fork}: segment {i} is missing"),
                ));
            }
        }
        let rnode = RelFileNode { spc, db, rel };
        out.forks
            .insert((rnode, fork), files.into_values().collect());
    }
    out.db_dirs.insert((spc, db), dir.to_path_buf());
    Ok(())
}

fn numbered(dir: &Path) -> Result<Vec<(u32, PathBuf)>, ImportError> {
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
}

/// Every relation fork of the data directory: `global/`, `base/<db>/` and
/// `pg_tblspc/<spc>/PG_15_*/<db>/`.
pub fn relations(datadir: &Path) -> Result<RelFiles, ImportError> {
    let mut out = RelFiles::default();
    scan_db_dir(&datadir.join("global"), GLOBAL_TABLESPACE, 0, &mut out)?;
    let base = datadir.join("base");
    if !base.is_dir() {
        return Err(invalid(&base, "missing: not a PostgreSQL data directory"));
    }
    for (db, path) in numbered(&base)? {
        scan_db_dir(&path, DEFAULT_TABLESPACE, db, &mut out)?;
    }
    for (spc, path) in numbered(&datadir.join("pg_tblspc"))? {
        for e in std::fs::read_dir(&path).map_err(io("list", &path))? {
            let e = e.map_err(io("list", &path))?;
            if e.file_name().to_string_lossy().starts_with("PG_15_") {
                for (db, p) in numbered(&e.path())? {
                    scan_db_dir(&p, spc, db, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

/// Blocks in a fork: whole blocks, and every segment but the last full.
pub fn fork_blocks(files: &[PathBuf]) -> Result<u64, ImportError> {
    let mut n = 0;
    for (i, f) in files.iter().enumerate() {
        let len = std::fs::metadata(f).map_err(io("stat", f))?.len();
        if len % BLCKSZ as u64 != 0 || (i + 1 < files.len() && len != RELSEG_SIZE * BLCKSZ as u64) {
            return Err(invalid(
                f,
                format!("{len} bytes is not a whole number of blocks of a full segment"),
            ));
        }
        n += len / BLCKSZ as u64;
    }
    Ok(n)
}

/// SLRU segment files as the values ingest writes: a page image per page, the segment's page
/// count, and the SLRU's segment directory.
pub fn slrus(datadir: &Path, out: &mut BTreeMap<Key, Bytes>) -> Result<u64, ImportError> {
    let mut pages = 0;
    for kind in KINDS {
        let dir = datadir.join(kind.dir_name());
        if !dir.is_dir() {
            return Err(invalid(&dir, "missing SLRU directory"));
        }
        let mut segs = BTreeMap::new();
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let e = e.map_err(io("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(segno) = parse_hex(&name, 4..=6) else {
                continue;
            };
            let path = e.path();
            let data = std::fs::read(&path).map_err(io("read", &path))?;
            if data.len() % BLCKSZ != 0 || data.len() > 32 * BLCKSZ {
                return Err(invalid(
                    &path,
                    format!("{} bytes is not a whole number of SLRU pages", data.len()),
                ));
            }
            let n = (data.len() / BLCKSZ) as u32;
            for (blk, page) in data.chunks_exact(BLCKSZ).enumerate() {
                out.insert(
                    Key::slru_block(kind, segno, blk as u32),
                    Bytes::copy_from_slice(page),
                );
            }
            out.insert(
                Key::slru_segment_size(kind, segno),
                Bytes::copy_from_slice(&n.to_le_bytes()),
            );
            segs.insert(segno, n);
            pages += n as u64;
        }
        out.insert(keys::slru_dir(kind), encode_dir(&segs));
    }
    Ok(pages)
}

fn parse_hex(name: &str, lens: std::ops::RangeInclusive<usize>) -> Option<u32> {
    if !lens.contains(&name.len()) || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(name, 16).ok()
}

/// `pg_twophase/<xid>` files: their contents without the trailing CRC-32C (checked), as
/// ingest stores a PREPARE record's state, and the list of prepared xids.
pub fn twophase(datadir: &Path, out: &mut BTreeMap<Key, Bytes>) -> Result<usize, ImportError> {
    let dir = datadir.join("pg_twophase");
    if !dir.is_dir() {
        return Err(invalid(&dir, "missing directory"));
    }
    let mut xids = BTreeSet::new();
    for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
        let e = e.map_err(io("list", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(xid) = parse_hex(&name, 8..=8) else {
            continue;
        };
        let path = e.path();
        let data = std::fs::read(&path).map_err(io("read", &path))?;
        let Some(split) = data.len().checked_sub(4) else {
            return Err(invalid(&path, "shorter than its CRC"));
        };
        let (state, crc) = data.split_at(split);
        if crc32c::crc32c(state).to_le_bytes() != crc {
            return Err(invalid(&path, "CRC mismatch in a two-phase state file"));
        }
        out.insert(Key::two_phase(xid), Bytes::copy_from_slice(state));
        xids.insert(xid);
    }
    if !xids.is_empty() {
        out.insert(keys::twophase_dir(), index::encode_u32_set(&xids));
    }
    Ok(xids.len())
}

/// Relmapper files: `global/pg_filenode.map` (required) and each database directory's.
pub fn relmaps(
    datadir: &Path,
    rels: &RelFiles,
    out: &mut BTreeMap<Key, Bytes>,
) -> Result<usize, ImportError> {
    let global = datadir.join("global/pg_filenode.map");
    if !global.exists() {
        return Err(invalid(&global, "missing relmapper file"));
    }
    let mut n = 0;
    for (&(spc, db), dir) in &rels.db_dirs {
        let path = dir.join("pg_filenode.map");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &path)(e)),
        };
        if data.len() != RELMAP_FILE_SIZE {
            return Err(invalid(
                &path,
                format!(
                    "{} bytes, a relmapper file has {RELMAP_FILE_SIZE}",
                    data.len()
                ),
            ));
        }
        out.insert(Key::relmap(spc, db), Bytes::from(data));
        n += 1;
    }
    Ok(n)
}
