//! An in-memory page store over a base data directory, for replaying WAL in tests and in
//! `strata verify-redo`.
//!
//! Pages written by replay live in memory; a miss reads the block from the base copy's
//! relation files (`global/`, `base/<db>/`, `pg_tblspc/<spc>/PG_15_*/<db>/`, fork suffixes,
//! 1 GiB segments). The store also follows the records that change which pages exist: a
//! relation fork created or truncated hides base blocks, a database dropped hides its files, a
//! database copied (CREATE DATABASE ... STRATEGY file_copy) duplicates its pages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use walproto::consts::{BLCKSZ, INIT_FORKNUM};
use walproto::record::RelFileNode;

use super::page::Page;

/// (relation, fork, block).
pub type PageKey = (RelFileNode, u8, u32);

const GLOBAL_TABLESPACE: u32 = 1664;
const DEFAULT_TABLESPACE: u32 = 1663;
/// Blocks per 1 GiB segment file.
const RELSEG_SIZE: u32 = 131072;
const FORK_SUFFIX: [&str; 4] = ["", "_fsm", "_vm", "_init"];

/// Pages of a replay, over a base directory.
pub struct PageStore {
    base: PathBuf,
    pages: BTreeMap<PageKey, Box<Page>>,
    /// Base blocks of a fork at or beyond this number no longer exist.
    cutoff: HashMap<(RelFileNode, u8), u32>,
    /// (tablespace, database) whose base files no longer count.
    hidden_dbs: HashSet<(u32, u32)>,
    /// The resource manager whose record last wrote each page (which mask fits it).
    writers: HashMap<PageKey, u8>,
    /// Databases created by CREATE DATABASE ... STRATEGY wal_log.
    wal_log_dbs: HashSet<(u32, u32)>,
}

impl PageStore {
    pub fn new(base: &Path) -> PageStore {
        PageStore {
            base: base.to_path_buf(),
            pages: BTreeMap::new(),
            cutoff: HashMap::new(),
            hidden_dbs: HashSet::new(),
            writers: HashMap::new(),
            wal_log_dbs: HashSet::new(),
        }
    }

    /// Every page written by the replay.
    pub fn pages(&self) -> &BTreeMap<PageKey, Box<Page>> {
        &self.pages
    }

    /// The directory holding a database's files in the base.
    fn db_dir(&self, spc: u32, db: u32) -> Option<PathBuf> {
        match spc {
            GLOBAL_TABLESPACE => Some(self.base.join("global")),
            DEFAULT_TABLESPACE => Some(self.base.join("base").join(db.to_string())),
            _ => {
                let spc_dir = self.base.join("pg_tblspc").join(spc.to_string());
                let entries = std::fs::read_dir(&spc_dir).ok()?;
                entries
                    .filter_map(|e| e.ok())
                    .find(|e| e.file_name().to_string_lossy().starts_with("PG_15_"))
                    .map(|e| e.path().join(db.to_string()))
            }
        }
    }

    /// The page as replay left it, else from the base; `None` if it does not exist.
    pub fn get(&self, key: &PageKey) -> io::Result<Option<Box<Page>>> {
        if let Some(p) = self.pages.get(key) {
            return Ok(Some(p.clone()));
        }
        self.read_base(key)
    }

    fn read_base(&self, &(rel, fork, blk): &PageKey) -> io::Result<Option<Box<Page>>> {
        if self.hidden_dbs.contains(&(rel.spc, rel.db))
            || self.cutoff.get(&(rel, fork)).is_some_and(|&n| blk >= n)
            || fork as usize >= FORK_SUFFIX.len()
        {
            return Ok(None);
        }
        let Some(dir) = self.db_dir(rel.spc, rel.db) else {
            return Ok(None);
        };
        let seg = blk / RELSEG_SIZE;
        let mut name = format!("{}{}", rel.rel, FORK_SUFFIX[fork as usize]);
        if seg > 0 {
            name.push_str(&format!(".{seg}"));
        }
        let mut f = match File::open(dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let off = (blk % RELSEG_SIZE) as u64 * BLCKSZ as u64;
        if f.metadata()?.len() < off + BLCKSZ as u64 {
            return Ok(None);
        }
        f.seek(SeekFrom::Start(off))?;
        let mut p = Box::new([0u8; BLCKSZ]);
        f.read_exact(&mut p[..])?;
        Ok(Some(p))
    }

    pub fn put(&mut self, key: PageKey, page: Box<Page>) {
        self.pages.insert(key, page);
    }

    /// Stores a page written by a record of resource manager `rmid`.
    pub fn put_by(&mut self, key: PageKey, page: Box<Page>, rmid: u8) {
        self.writers.insert(key, rmid);
        self.pages.insert(key, page);
    }

    /// The resource manager of the last record that wrote the page through [`Self::put_by`].
    pub fn writer(&self, key: &PageKey) -> Option<u8> {
        self.writers.get(key).copied()
    }

    /// Every relation fork as replay sees it, with its size in blocks: the base's files
    /// (less dropped databases and truncated tails) and the pages replay wrote.
    pub fn fork_sizes(&self) -> io::Result<BTreeMap<(RelFileNode, u8), u32>> {
        let mut sizes = BTreeMap::new();
        for ((rel, fork), n) in scan_rel_files(&self.base)?.forks {
            if self.hidden_dbs.contains(&(rel.spc, rel.db)) {
                continue;
            }
            let cut = self.cutoff.get(&(rel, fork)).copied().unwrap_or(u32::MAX);
            sizes.insert((rel, fork), n.min(cut));
        }
        for &(rel, fork, blk) in self.pages.keys() {
            let n = sizes.entry((rel, fork)).or_insert(0);
            *n = (*n).max(blk.saturating_add(1));
        }
        Ok(sizes)
    }

    fn fork_range(rel: RelFileNode, fork: u8, from: u32) -> std::ops::RangeInclusive<PageKey> {
        (rel, fork, from)..=(rel, fork, u32::MAX)
    }

    /// SMGR TRUNCATE of one fork to `nblocks`.
    pub fn truncate(&mut self, rel: RelFileNode, fork: u8, nblocks: u32) {
        let keys: Vec<PageKey> = self
            .pages
            .range(Self::fork_range(rel, fork, nblocks))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.pages.remove(&k);
        }
        let c = self.cutoff.entry((rel, fork)).or_insert(u32::MAX);
        *c = (*c).min(nblocks);
    }

    /// SMGR CREATE: a new, empty fork.
    pub fn create(&mut self, rel: RelFileNode, fork: u8) {
        self.truncate(rel, fork, 0);
    }

    /// DATABASE CREATE_WAL_LOG: a new, empty database whose pages arrive as WAL.
    pub fn create_wal_log_db(&mut self, spc: u32, db: u32) {
        self.drop_db(spc, db);
        self.wal_log_dbs.insert((spc, db));
    }

    /// Whether the database was created by CREATE DATABASE ... STRATEGY wal_log.
    pub fn is_wal_log_db(&self, spc: u32, db: u32) -> bool {
        self.wal_log_dbs.contains(&(spc, db))
    }

    /// DATABASE DROP.
    pub fn drop_db(&mut self, spc: u32, db: u32) {
        self.pages
            .retain(|(r, _, _), _| !(r.spc == spc && r.db == db));
        self.hidden_dbs.insert((spc, db));
    }

    /// DATABASE CREATE_FILE_COPY: every existing page of the source database, as of now,
    /// becomes a page of the new one. Returns the number of pages copied.
    pub fn copy_db(&mut self, src: (u32, u32), dst: (u32, u32)) -> io::Result<usize> {
        self.drop_db(dst.0, dst.1);
        let mut copied: BTreeMap<PageKey, Box<Page>> = BTreeMap::new();
        let retarget = |r: RelFileNode| RelFileNode {
            spc: dst.0,
            db: dst.1,
            rel: r.rel,
        };
        if let Some(dir) = self
            .db_dir(src.0, src.1)
            .filter(|_| !self.hidden_dbs.contains(&src))
        {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries {
                    let name = e?.file_name().to_string_lossy().into_owned();
                    let Some((relnode, fork, seg)) = parse_rel_file_name(&name) else {
                        continue;
                    };
                    let rel = RelFileNode {
                        spc: src.0,
                        db: src.1,
                        rel: relnode,
                    };
                    let len = std::fs::metadata(dir.join(&name))?.len() / BLCKSZ as u64;
                    for i in 0..len as u32 {
                        let blk = seg * RELSEG_SIZE + i;
                        if let Some(p) = self.read_base(&(rel, fork, blk))? {
                            copied.insert((retarget(rel), fork, blk), p);
                        }
                    }
                }
            }
        }
        for ((r, fork, blk), p) in &self.pages {
            if r.spc == src.0 && r.db == src.1 {
                copied.insert((retarget(*r), *fork, *blk), p.clone());
            }
        }
        let n = copied.len();
        self.pages.extend(copied);
        Ok(n)
    }
}

/// The relation files of a data directory.
#[derive(Clone, Debug, Default)]
pub struct RelFiles {
    /// Every fork with a file (empty ones too), with its size in blocks.
    pub forks: BTreeMap<(RelFileNode, u8), u32>,
    /// Temporary relation files (`t<backend>_<relfilenode>...`).
    pub temp_files: u64,
}

impl RelFiles {
    /// An unlogged relation: it has an init fork.
    pub fn is_unlogged(&self, rel: RelFileNode) -> bool {
        self.forks.contains_key(&(rel, INIT_FORKNUM))
    }
}

/// Lists the relation files under `dir`: `global/`, `base/<db>/` and
/// `pg_tblspc/<spc>/PG_15_*/<db>/` (a symlink or, for in-place tablespaces, a directory).
pub fn scan_rel_files(dir: &Path) -> io::Result<RelFiles> {
    let mut out = RelFiles::default();
    scan_db_dir(&mut out, &dir.join("global"), GLOBAL_TABLESPACE, 0)?;
    for (db, path) in numbered_subdirs(&dir.join("base"))? {
        scan_db_dir(&mut out, &path, DEFAULT_TABLESPACE, db)?;
    }
    for (spc, path) in numbered_subdirs(&dir.join("pg_tblspc"))? {
        for e in read_dir_or_empty(&path)? {
            let e = e?;
            if !e.file_name().to_string_lossy().starts_with("PG_15_") {
                continue;
            }
            for (db, p) in numbered_subdirs(&e.path())? {
                scan_db_dir(&mut out, &p, spc, db)?;
            }
        }
    }
    Ok(out)
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<io::Result<std::fs::DirEntry>>> {
    match std::fs::read_dir(dir) {
        Ok(r) => Ok(r.collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Subdirectories named by a number (database or tablespace oids), following symlinks.
fn numbered_subdirs(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for e in read_dir_or_empty(dir)? {
        let e = e?;
        if let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() {
            if e.path().is_dir() {
                out.push((n, e.path()));
            }
        }
    }
    Ok(out)
}

fn scan_db_dir(out: &mut RelFiles, dir: &Path, spc: u32, db: u32) -> io::Result<()> {
    for e in read_dir_or_empty(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('t') && name[1..].starts_with(|c: char| c.is_ascii_digit()) {
            out.temp_files += 1;
            continue;
        }
        let Some((rel, fork, seg)) = parse_rel_file_name(&name) else {
            continue;
        };
        let meta = e.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let blocks = (meta.len() / BLCKSZ as u64).min(RELSEG_SIZE as u64) as u32;
        let rel = RelFileNode { spc, db, rel };
        let n = out.forks.entry((rel, fork)).or_insert(0);
        if blocks > 0 {
            *n = (*n).max(seg.saturating_mul(RELSEG_SIZE).saturating_add(blocks));
        }
    }
    Ok(())
}

/// `<relfilenode>[_fsm|_vm|_init][.<segment>]` → (relfilenode, fork, segment).
pub fn parse_rel_file_name(name: &str) -> Option<(u32, u8, u32)> {
    let (stem, seg) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse().ok()?),
        None => (name, 0),
    };
    let (num, fork) = match stem.split_once('_') {
        Some((n, f)) => (
            n,
            FORK_SUFFIX.iter().position(|s| s.get(1..) == Some(f))? as u8,
        ),
        None => (stem, 0),
    };
    Some((num.parse().ok()?, fork, seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_file_names() {
        assert_eq!(parse_rel_file_name("16384"), Some((16384, 0, 0)));
        assert_eq!(parse_rel_file_name("16384_vm"), Some((16384, 2, 0)));
        assert_eq!(parse_rel_file_name("16384_fsm.2"), Some((16384, 1, 2)));
        assert_eq!(parse_rel_file_name("pg_filenode.map"), None);
        assert_eq!(parse_rel_file_name("PG_VERSION"), None);
    }
}
