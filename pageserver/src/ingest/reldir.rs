//! Which relation forks exist and how many blocks each has: the ingest's view, kept in memory
//! and stored in the timeline as image values, so a restarted ingest reads it back:
//!
//! - `Key::db_dir()`: the (tablespace, database) pairs that hold relations, as
//!   `count u32 | (spc u32, db u32)*`, little-endian.
//! - `Key::rel_dir(spc, db)`: the forks of a database, `count u32 | (relfilenode u32, fork u8)*`.
//! - `Key::rel_size(rel, fork)`: the fork's size in blocks, `u32`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use layer_format::{Key, Lsn};
use walproto::record::RelFileNode;

use crate::timeline::{Timeline, TimelineError};

/// (tablespace, database).
pub type DbId = (u32, u32);

/// Relation forks and sizes, per database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelDirectory {
    dbs: BTreeMap<DbId, BTreeMap<(u32, u8), u32>>,
}

fn bad(key: Key, lsn: Lsn, what: &str) -> TimelineError {
    TimelineError::Reconstruct {
        key,
        lsn,
        reason: format!("malformed {what} value"),
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl RelDirectory {
    /// Reads the directory stored in `tl` as of `lsn`.
    pub fn load(tl: &Timeline, lsn: Lsn) -> Result<RelDirectory, TimelineError> {
        let mut dir = RelDirectory::default();
        let Some(dbs) = tl.get_image_value(Key::db_dir(), lsn)? else {
            return Ok(dir);
        };
        for db in decode_db_dir(&dbs).ok_or_else(|| bad(Key::db_dir(), lsn, "database list"))? {
            let key = Key::rel_dir(db.0, db.1);
            let forks = match tl.get_image_value(key, lsn)? {
                Some(v) => decode_rel_dir(&v).ok_or_else(|| bad(key, lsn, "relation list"))?,
                None => Vec::new(),
            };
            let mut sizes = BTreeMap::new();
            for (rel, fork) in forks {
                let rnode = RelFileNode {
                    spc: db.0,
                    db: db.1,
                    rel,
                };
                let k = Key::rel_size(rnode, fork);
                let n = tl
                    .get_image_value(k, lsn)?
                    .and_then(|v| u32_at(&v, 0))
                    .ok_or_else(|| bad(k, lsn, "relation size"))?;
                sizes.insert((rel, fork), n);
            }
            dir.dbs.insert(db, sizes);
        }
        Ok(dir)
    }

    /// The size of a fork, `None` if it does not exist.
    pub fn size(&self, rel: RelFileNode, fork: u8) -> Option<u32> {
        self.dbs
            .get(&(rel.spc, rel.db))?
            .get(&(rel.rel, fork))
            .copied()
    }

    /// Sets a fork's size (creating it). Returns true if the database's fork list changed.
    pub fn set_size(&mut self, rel: RelFileNode, fork: u8, n: u32) -> bool {
        let db = self.dbs.entry((rel.spc, rel.db)).or_default();
        db.insert((rel.rel, fork), n).is_none()
    }

    /// Forgets every fork of a relation (its files are dropped: a commit or abort record's
    /// dropped relations). Returns true if any fork existed.
    pub fn drop_rel(&mut self, rel: RelFileNode) -> bool {
        let Some(db) = self.dbs.get_mut(&(rel.spc, rel.db)) else {
            return false;
        };
        let before = db.len();
        db.retain(|&(r, _), _| r != rel.rel);
        db.len() != before
    }

    /// Forgets a database and everything in it. Returns true if it existed.
    pub fn drop_db(&mut self, db: DbId) -> bool {
        self.dbs.remove(&db).is_some()
    }

    pub fn has_db(&self, db: DbId) -> bool {
        self.dbs.contains_key(&db)
    }

    /// The forks of a database with their sizes.
    pub fn forks(&self, db: DbId) -> Vec<(RelFileNode, u8, u32)> {
        self.dbs.get(&db).map_or_else(Vec::new, |m| {
            m.iter()
                .map(|(&(rel, fork), &n)| {
                    (
                        RelFileNode {
                            spc: db.0,
                            db: db.1,
                            rel,
                        },
                        fork,
                        n,
                    )
                })
                .collect()
        })
    }

    /// Every fork of every database.
    pub fn all_forks(&self) -> Vec<(RelFileNode, u8, u32)> {
        self.dbs.keys().flat_map(|db| self.forks(*db)).collect()
    }

    pub fn db_dir_value(&self) -> Bytes {
        encode_db_dir(self.dbs.keys().copied())
    }

    pub fn rel_dir_value(&self, db: DbId) -> Bytes {
        encode_rel_dir(
            self.dbs
                .get(&db)
                .into_iter()
                .flat_map(|m| m.keys().copied()),
        )
    }
}

pub fn encode_db_dir(dbs: impl Iterator<Item = DbId>) -> Bytes {
    let v: Vec<DbId> = dbs.collect::<BTreeSet<_>>().into_iter().collect();
    let mut out = (v.len() as u32).to_le_bytes().to_vec();
    for (spc, db) in v {
        out.extend_from_slice(&spc.to_le_bytes());
        out.extend_from_slice(&db.to_le_bytes());
    }
    out.into()
}

pub fn decode_db_dir(b: &[u8]) -> Option<Vec<DbId>> {
    let n = u32_at(b, 0)? as usize;
    if b.len() != 4 + n * 8 {
        return None;
    }
    (0..n)
        .map(|i| Some((u32_at(b, 4 + i * 8)?, u32_at(b, 8 + i * 8)?)))
        .collect()
}

pub fn encode_rel_dir(forks: impl Iterator<Item = (u32, u8)>) -> Bytes {
    let v: Vec<(u32, u8)> = forks.collect();
    let mut out = (v.len() as u32).to_le_bytes().to_vec();
    for (rel, fork) in v {
        out.extend_from_slice(&rel.to_le_bytes());
        out.push(fork);
    }
    out.into()
}

pub fn decode_rel_dir(b: &[u8]) -> Option<Vec<(u32, u8)>> {
    let n = u32_at(b, 0)? as usize;
    if b.len() != 4 + n * 5 {
        return None;
    }
    (0..n)
        .map(|i| Some((u32_at(b, 4 + i * 5)?, *b.get(8 + i * 5)?)))
        .collect()
}

pub fn size_value(n: u32) -> Bytes {
    Bytes::copy_from_slice(&n.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let dbs = encode_db_dir([(1663, 5), (1664, 0)].into_iter());
        assert_eq!(decode_db_dir(&dbs), Some(vec![(1663, 5), (1664, 0)]));
        let rels = encode_rel_dir([(16384, 0), (16384, 2)].into_iter());
        assert_eq!(decode_rel_dir(&rels), Some(vec![(16384, 0), (16384, 2)]));
        assert_eq!(decode_rel_dir(&rels[..7]), None);
    }
}
