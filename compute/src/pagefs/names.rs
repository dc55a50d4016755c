//! Where Postgres 15 keeps relation files, and which file names are relation files.

use std::path::{Path, PathBuf};

/// Blocks of 8192 bytes in one segment file (`RELSEG_SIZE`, 1 GiB).
pub const BLOCKS_PER_SEGMENT: u32 = 131_072;
/// Postgres's block size.
pub const BLOCK_SIZE: u64 = 8192;
/// The default tablespace (`base/`).
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// The shared tablespace (`global/`).
pub const GLOBAL_TABLESPACE: u32 = 1664;
/// The directory a tablespace keeps inside its location (`TABLESPACE_VERSION_DIRECTORY`).
pub const TABLESPACE_VERSION_DIR: &str = "PG_15_202209061";
/// Where the mount keeps the tablespaces it serves: `pg_tblspc/<oid>` is a symbolic link (as
/// Postgres requires) to `<mount>/strata_tablespaces/<oid>`, so their relation files, too, are
/// reached through the page filesystem.
pub const SERVED_TABLESPACES_DIR: &str = "strata_tablespaces";

/// A relation fork: the unit pages are addressed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelTag {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    /// 0 main, 1 fsm, 2 visibility map, 3 init.
    pub fork: u32,
}

/// One relation fork as the page source lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationFork {
    /// Where the file is (its fork is the file name's).
    pub tag: RelTag,
    pub nblocks: u32,
    /// The fork whose pages the file holds (the init fork for an unlogged relation's main fork
    /// after a crash; otherwise `tag.fork`).
    pub source_fork: u32,
}

/// The parts of a relation file's name: `<rel>[_fsm|_vm|_init][.<seg>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelFileName {
    pub rel: u32,
    pub fork: u32,
    pub segment: u32,
}

/// Parses a relation file name; `None` for every other file (`PG_VERSION`, `pg_filenode.map`,
/// `pg_internal.init`, temp relations `t3_16384`, ...).
pub fn parse_rel_file_name(name: &str) -> Option<RelFileName> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, parse_number(seg)?),
        None => (name, 0),
    };
    let (digits, fork) = match stem.split_once('_') {
        Some((digits, "fsm")) => (digits, 1),
        Some((digits, "vm")) => (digits, 2),
        Some((digits, "init")) => (digits, 3),
        Some(_) => return None,
        None => (stem, 0),
    };
    let rel = parse_number(digits)?;
    // Segment 0 is never named `.0`.
    if segment == 0 && name.contains('.') {
        return None;
    }
    Some(RelFileName { rel, fork, segment })
}

/// A decimal number as Postgres writes OIDs: digits, no leading zero, not 0.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The tablespace and database of a directory that holds relation files (relative to the data
/// directory): `global`, `base/<db>`, `pg_tblspc/<spc>/PG_15_.../<db>` (also
/// `strata_tablespaces/<spc>/PG_15_.../<db>`, where the mount serves tablespaces).
pub fn rel_dir_tag(dir: &Path) -> Option<(u32, u32)> {
    let parts: Vec<&str> = dir.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    match parts.as_slice() {
        ["global"] => Some((GLOBAL_TABLESPACE, 0)),
        ["base", db] => Some((DEFAULT_TABLESPACE, parse_number(db)?)),
        [spcs, spc, version, db]
            if (*spcs == "pg_tblspc" || *spcs == SERVED_TABLESPACES_DIR)
                && *version == TABLESPACE_VERSION_DIR =>
        {
            Some((parse_number(spc)?, parse_number(db)?))
        }
        _ => None,
    }
}

/// The fork and segment of `path` (relative to the data directory) if it names a relation file.
pub fn rel_file_of_path(path: &Path) -> Option<(RelTag, u32)> {
    let (spc, db) = rel_dir_tag(path.parent()?)?;
    let name = parse_rel_file_name(path.file_name()?.to_str()?)?;
    let tag = RelTag {
        spc,
        db,
        rel: name.rel,
        fork: name.fork,
    };
    Some((tag, name.segment))
}

/// The directory (relative to the data directory) holding the files of a tablespace and
/// database; other tablespaces than the default and shared ones are under `tablespaces`.
fn rel_dir(tablespaces: &str, spc: u32, db: u32) -> PathBuf {
    match spc {
        GLOBAL_TABLESPACE => PathBuf::from("global"),
        DEFAULT_TABLESPACE => PathBuf::from("base").join(db.to_string()),
        _ => PathBuf::from(tablespaces)
            .join(spc.to_string())
            .join(TABLESPACE_VERSION_DIR)
            .join(db.to_string()),
    }
}

/// The path (relative to the data directory) of segment `segment` of a relation fork, as
/// Postgres names it (`pg_tblspc/...` for a tablespace).
pub fn rel_file_path(tag: RelTag, segment: u32) -> PathBuf {
    rel_dir("pg_tblspc", tag.spc, tag.db).join(rel_file_name(tag, segment))
}

/// Where the mount serves segment `segment` of a relation fork: as [`rel_file_path`], but a
/// tablespace's under [`SERVED_TABLESPACES_DIR`] (which its `pg_tblspc` link points to).
pub fn served_rel_file_path(tag: RelTag, segment: u32) -> PathBuf {
    rel_dir(SERVED_TABLESPACES_DIR, tag.spc, tag.db).join(rel_file_name(tag, segment))
}

fn rel_file_name(tag: RelTag, segment: u32) -> String {
    let fork = match tag.fork {
        1 => "_fsm",
        2 => "_vm",
        3 => "_init",
        _ => "",
    };
    let mut name = format!("{}{fork}", tag.rel);
    if segment > 0 {
        name.push_str(&format!(".{segment}"));
    }
    name
}

/// The segment files of a fork of `nblocks` blocks: (segment, blocks in it). An empty fork
/// still has its first file.
pub fn segments(nblocks: u32) -> Vec<(u32, u32)> {
    let full = nblocks / BLOCKS_PER_SEGMENT;
    let rest = nblocks % BLOCKS_PER_SEGMENT;
    let mut out: Vec<(u32, u32)> = (0..full).map(|s| (s, BLOCKS_PER_SEGMENT)).collect();
    if rest > 0 || out.is_empty() {
        out.push((full, rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        let n = |rel, fork, segment| Some(RelFileName { rel, fork, segment });
        assert_eq!(parse_rel_file_name("16384"), n(16384, 0, 0));
        assert_eq!(parse_rel_file_name("16384_fsm"), n(16384, 1, 0));
        assert_eq!(parse_rel_file_name("16384_vm.2"), n(16384, 2, 2));
        assert_eq!(parse_rel_file_name("16384_init"), n(16384, 3, 0));
        for other in [
            "PG_VERSION",
            "pg_filenode.map",
            "pg_internal.init",
            "t3_16384",
            "16384.0",
            "016384",
            "16384_x",
            "16384.",
            "",
        ] {
            assert_eq!(parse_rel_file_name(other), None, "{other}");
        }
        assert!(rel_file_of_path(Path::new("base/5/16384.1")).is_some());
        assert!(rel_file_of_path(Path::new("global/1262")).is_some());
        assert!(rel_file_of_path(Path::new("pg_tblspc/16400/PG_15_202209061/5/16401")).is_some());
        let served = Path::new("strata_tablespaces/16400/PG_15_202209061/5/16401_fsm");
        let (tag, 0) = rel_file_of_path(served).unwrap() else {
            panic!("segment 0")
        };
        assert_eq!((tag.spc, tag.db, tag.rel, tag.fork), (16400, 5, 16401, 1));
        assert_eq!(served_rel_file_path(tag, 0), served);
        assert_eq!(
            rel_file_path(tag, 1),
            Path::new("pg_tblspc/16400/PG_15_202209061/5/16401_fsm.1")
        );
        assert!(rel_file_of_path(Path::new("pg_xact/0000")).is_none());
        assert!(rel_file_of_path(Path::new("base/5/pgsql_tmp/16384")).is_none());
    }

    #[test]
    fn paths_and_segments() {
        let tag = RelTag {
            spc: DEFAULT_TABLESPACE,
            db: 5,
            rel: 16384,
            fork: 2,
        };
        assert_eq!(rel_file_path(tag, 3), PathBuf::from("base/5/16384_vm.3"));
        assert_eq!(rel_file_of_path(&rel_file_path(tag, 3)), Some((tag, 3)));
        assert_eq!(segments(0), vec![(0, 0)]);
        assert_eq!(
            segments(BLOCKS_PER_SEGMENT + 1),
            vec![(0, BLOCKS_PER_SEGMENT), (1, 1)]
        );
        assert_eq!(segments(BLOCKS_PER_SEGMENT), vec![(0, BLOCKS_PER_SEGMENT)]);
    }
}
