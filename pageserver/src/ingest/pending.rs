//! What one record will store, gathered before anything is stored (so a refused record
//! leaves nothing behind), and the store step that writes it.

use layer_format::{Key, Lsn, Value};
use walproto::record::RelFileNode;

use super::reldir::RelDirectory;
use super::ImageCheck;
use crate::timeline::{Timeline, TimelineError};

/// A value of the record being ingested.
pub(super) enum Pending {
    /// The record itself (`Value::pg_record(will_init, <the stored record bytes>)`), written
    /// from the decoded record's bytes without a copy or a reference count per key.
    Record {
        will_init: bool,
    },
    Value(Value),
}

impl Pending {
    pub(super) fn will_init(&self) -> bool {
        match self {
            Pending::Record { will_init } => *will_init,
            Pending::Value(v) => v.will_init(),
        }
    }
}

impl From<Value> for Pending {
    fn from(v: Value) -> Pending {
        Pending::Value(v)
    }
}

/// A map as a vector searched linearly: the values and sizes of one record (a handful, or a
/// few thousand for a CREATE DATABASE copy, once).
pub(super) struct SmallMap<K, V>(pub(super) Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: PartialEq + Copy, V> SmallMap<K, V> {
    pub(super) fn get(&self, k: &K) -> Option<&V> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    /// Inserts or replaces.
    pub(super) fn insert(&mut self, k: K, v: impl Into<V>) {
        let v = v.into();
        match self.0.iter_mut().find(|(x, _)| *x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }

    /// Inserts unless the key is there already (the first value wins).
    pub(super) fn insert_if_absent(&mut self, k: K, v: impl FnOnce() -> V) {
        if self.get(&k).is_none() {
            self.0.push((k, v()));
        }
    }
}

/// Everything one record changes, before it is stored.
#[derive(Default)]
pub(super) struct PendingRecord {
    pub(super) values: SmallMap<Key, Pending>,
    /// Fork sizes the record sets (extensions, creations, truncations).
    pub(super) sizes: SmallMap<(RelFileNode, u8), u32>,
    pub(super) checks: Vec<ImageCheck>,
    /// Blocks without redo or image, counted instead of refused (`count_unsupported`).
    pub(super) unsupported: Vec<String>,
}

impl PendingRecord {
    /// A fork's size as of this record so far: what it set, else the directory's.
    pub(super) fn size(&self, dir: &RelDirectory, rel: RelFileNode, fork: u8) -> Option<u32> {
        self.sizes
            .get(&(rel, fork))
            .copied()
            .or_else(|| dir.size(rel, fork))
    }

    /// Stores the values in key order at the record's end LSN `lsn`; `raw` is the record as
    /// stored for its pages. An error is an I/O error (the values were checked before): the
    /// open layer may hold part of the record, and the timeline must be reopened from its
    /// durable state.
    pub(super) fn store(
        &mut self,
        tl: &mut Timeline,
        lsn: Lsn,
        raw: &[u8],
    ) -> Result<(), TimelineError> {
        self.values.0.sort_unstable_by_key(|(k, _)| *k);
        for (key, value) in &self.values.0 {
            match value {
                Pending::Record { will_init } => tl.put_pg_record(*key, lsn, *will_init, raw)?,
                Pending::Value(v) => tl.put(*key, lsn, v)?,
            }
        }
        Ok(())
    }
}
