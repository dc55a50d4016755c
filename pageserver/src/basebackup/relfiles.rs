//! Which relation files a data directory at an LSN holds: the one rule the full basebackup
//! writes by, the slim basebackup leaves out, and ListRelations lists for a lazy compute.
//!
//! Every fork of the relation directory is a file (`<rel>[_fsm|_vm|_init]` and its `.N`
//! segments), except that an unlogged relation (one with an init fork) is as after a crash
//! (`ResetUnloggedRelations`): only its init fork and a main fork holding a copy of it.

use std::collections::BTreeSet;

use layer_format::Lsn;
use walproto::consts::{INIT_FORKNUM, MAIN_FORKNUM};
use walproto::record::RelFileNode;

use crate::ingest::reldir::RelDirectory;
use crate::timeline::{Timeline, TimelineError};

/// One relation fork file (with its segments) of a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationFile {
    pub rel: RelFileNode,
    /// The fork the file is named after.
    pub fork: u8,
    pub nblocks: u32,
    /// The fork whose pages the file holds: `fork`, but the init fork for the main fork of
    /// an unlogged relation.
    pub source_fork: u8,
}

/// The relation files of a data directory whose relation directory is `dir`, in the order
/// the basebackup writes them.
pub fn relation_files(dir: &RelDirectory) -> Vec<RelationFile> {
    let mut files = Vec::new();
    for (rel, fork, nblocks) in dir.all_forks() {
        let unlogged = dir.size(rel, INIT_FORKNUM).is_some();
        if unlogged && fork != INIT_FORKNUM {
            continue;
        }
        files.push(RelationFile {
            rel,
            fork,
            nblocks,
            source_fork: fork,
        });
        if unlogged {
            files.push(RelationFile {
                rel,
                fork: MAIN_FORKNUM,
                nblocks,
                source_fork: INIT_FORKNUM,
            });
        }
    }
    files
}

/// The relation files of the timeline's data directory at `lsn` (reads the relation
/// directory only, no page).
pub fn relation_files_at(tl: &Timeline, lsn: Lsn) -> Result<Vec<RelationFile>, TimelineError> {
    Ok(relation_files(&RelDirectory::load(tl, lsn)?))
}

/// The (tablespace, database) directories that hold relation files.
pub fn database_dirs(files: &[RelationFile]) -> BTreeSet<(u32, u32)> {
    files.iter().map(|f| (f.rel.spc, f.rel.db)).collect()
}
