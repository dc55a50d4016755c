//! Inode numbers of the mount's paths, and the relation files (virtual: not in the local
//! directory) by path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::relfile::RelFile;

pub const ROOT_INO: u64 = 1;

pub struct Tree {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Ordered by path: a directory's descendants follow it.
    pub rels: BTreeMap<PathBuf, Arc<RelFile>>,
}

impl Tree {
    pub fn new(rels: BTreeMap<PathBuf, Arc<RelFile>>) -> Tree {
        let mut tree = Tree {
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: ROOT_INO + 1,
            rels,
        };
        tree.paths.insert(ROOT_INO, PathBuf::new());
        tree.inos.insert(PathBuf::new(), ROOT_INO);
        tree
    }

    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        self.paths.get(&ino).cloned()
    }

    /// The inode of `path`, a new one the first time. A path unlinked and created again gets a
    /// new inode: the kernel must not keep the old file's cached pages for it.
    pub fn ino(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.inos.get(path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(path.to_path_buf(), ino);
        self.paths.insert(ino, path.to_path_buf());
        ino
    }

    /// Forgets `path` and everything below it (unlinked, removed, or replaced by a rename).
    pub fn forget(&mut self, path: &Path) {
        for p in self.known_under(path) {
            if let Some(ino) = self.inos.remove(&p) {
                self.paths.remove(&ino);
            }
        }
        let rels: Vec<PathBuf> = self.rels_under(path).map(|(p, _)| p.clone()).collect();
        for p in rels {
            self.rels.remove(&p);
        }
    }

    /// Moves `from` and everything below it to `to` (whatever was at `to` is forgotten).
    pub fn rename(&mut self, from: &Path, to: &Path) {
        self.forget(to);
        for old in self.known_under(from) {
            let new = moved_path(&old, from, to);
            if let Some(ino) = self.inos.remove(&old) {
                self.inos.insert(new.clone(), ino);
                self.paths.insert(ino, new);
            }
        }
        let rels: Vec<PathBuf> = self.rels_under(from).map(|(p, _)| p.clone()).collect();
        for old in rels {
            if let Some(rel) = self.rels.remove(&old) {
                self.rels.insert(moved_path(&old, from, to), rel);
            }
        }
    }

    /// The paths with an inode at `path` or below it.
    fn known_under(&self, path: &Path) -> Vec<PathBuf> {
        self.inos
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect()
    }

    /// The relation files at `path` or below it.
    pub fn rels_under<'a>(
        &'a self,
        path: &'a Path,
    ) -> impl Iterator<Item = (&'a PathBuf, &'a Arc<RelFile>)> + 'a {
        self.rels
            .range(path.to_path_buf()..)
            .take_while(move |(p, _)| p.starts_with(path))
    }
}

fn moved_path(old: &Path, from: &Path, to: &Path) -> PathBuf {
    match old.strip_prefix(from) {
        Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
        Ok(rest) => to.join(rest),
        Err(_) => old.to_path_buf(),
    }
}
