//! The open layer's index: key → the key's newest version, an open-addressing hash table.
//!
//! Why not `HashMap`: on pgbench WAL most puts go to a page that is not in the CPU's caches,
//! and the probe's loads (the control bytes, the bucket, the head) were about 70% of a put's
//! own time (`perf annotate`). Ingest knows the keys of the next records before it stores
//! them, so it can start those loads early ([`KeyIndex::prefetch`]); that needs to know
//! where a key's slot is, which only a table of our own tells.
//!
//! Linear probing over a power-of-two array of slots, at most 70% full. A slot is in use iff
//! its generation is the table's: [`KeyIndex::clear`] (done when a dropped layer's index is
//! reused) bumps the generation instead of rewriting every slot. Keys are never removed.

use layer_format::{Key, Lsn};

/// What the index keeps per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The newest version in the layer's entries.
    pub newest: u32,
    /// That version's LSN (kept here so that a put checks the order without reading the
    /// entry: one cache miss fewer).
    pub lsn: Lsn,
    /// The key's number in the layer's key table.
    pub key_id: u32,
}

/// One slot: 40 bytes.
#[derive(Clone, Copy)]
struct Slot {
    lsn: Lsn,
    newest: u32,
    key_id: u32,
    /// In use iff equal to the table's generation.
    generation: u32,
    key: Key,
}

impl Slot {
    fn head(&self) -> Head {
        Head {
            newest: self.newest,
            lsn: self.lsn,
            key_id: self.key_id,
        }
    }
}

const EMPTY: Slot = Slot {
    lsn: Lsn(0),
    newest: 0,
    key_id: 0,
    generation: 0,
    key: Key::MIN,
};

/// What [`KeyIndex::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The key is new.
    Inserted,
    /// The key's head moved; this was the previous one.
    Updated(Head),
    /// Nothing changed: the key already has a version at this LSN (given) or above.
    NotNewer(Lsn),
}

/// Fill limit: at most `MAX_LOAD_NUM / MAX_LOAD_DEN` of the slots are used.
const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 10;

/// Key → [`Head`]; see the module documentation.
pub struct KeyIndex {
    slots: Vec<Slot>,
    /// 64 − log2(slot count): a key's home slot is the top bits of its hash.
    shift: u32,
    generation: u32,
    len: usize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::with_capacity(0)
    }
}

/// A multiply-rotate hash over the key's bytes as two words; its top bits pick the slot.
#[inline]
fn hash(key: &Key) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let (hi, lo) = key.ordinal();
    let a = (hi >> 64) as u64;
    let b = hi as u64;
    let mut h = a.wrapping_mul(K);
    h = (h.rotate_left(23) ^ b).wrapping_mul(K);
    h = (h.rotate_left(23) ^ lo as u64).wrapping_mul(K);
    h ^ (h >> 32)
}

impl KeyIndex {
    /// A table that holds `keys` keys without growing.
    pub fn with_capacity(keys: usize) -> KeyIndex {
        let slots = (keys * MAX_LOAD_DEN / MAX_LOAD_NUM + 1)
            .next_power_of_two()
            .max(16);
        KeyIndex {
            slots: vec![EMPTY; slots],
            shift: 64 - slots.trailing_zeros(),
            generation: 1,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keys it holds without growing.
    pub fn capacity(&self) -> usize {
        self.slots.len() * MAX_LOAD_NUM / MAX_LOAD_DEN
    }

    /// Forgets every key, keeping the memory.
    pub fn clear(&mut self) {
        self.len = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Every 4 billion clears: old slots could look in use again.
            self.slots.fill(EMPTY);
            self.generation = 1;
        }
    }

    #[inline]
    fn home(&self, key: &Key) -> usize {
        (hash(key) >> self.shift) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: &Key) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if s.generation != self.generation {
                return (i, false);
            }
            if s.key == *key {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading `key`'s home slot into the cache (a hint: no effect on results), so that
    /// a put a little later does not wait for memory.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        let slot: *const Slot = &self.slots[self.home(key)];
        super::open_layer::prefetch_line(slot.cast());
        // A slot may straddle two cache lines.
        super::open_layer::prefetch_line(slot.cast::<u8>().wrapping_add(size_of::<Slot>() - 1));
    }

    pub fn get(&self, key: &Key) -> Option<Head> {
        let (i, found) = self.find(key);
        found.then(|| self.slots[i].head())
    }

    /// Makes the version `newest` at `lsn` the newest of `key`, unless the key has one at
    /// `lsn` or above. A new key gets the number `new_key_id`.
    #[inline]
    pub fn put(&mut self, key: Key, newest: u32, lsn: Lsn, new_key_id: u32) -> Put {
        let (i, found) = self.find(&key);
        if found {
            let s = &mut self.slots[i];
            let prev = s.head();
            if prev.lsn >= lsn {
                return Put::NotNewer(prev.lsn);
            }
            s.newest = newest;
            s.lsn = lsn;
            return Put::Updated(prev);
        }
        let head = Head {
            newest,
            lsn,
            key_id: new_key_id,
        };
        if (self.len + 1) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
            self.grow();
            let (j, _) = self.find(&key);
            self.fill(j, key, head);
        } else {
            self.fill(i, key, head);
        }
        Put::Inserted
    }

    fn fill(&mut self, i: usize, key: Key, h: Head) {
        self.slots[i] = Slot {
            lsn: h.lsn,
            newest: h.newest,
            key_id: h.key_id,
            generation: self.generation,
            key,
        };
        self.len += 1;
    }

    /// Doubles the slots and re-inserts every key.
    fn grow(&mut self) {
        let mut bigger = KeyIndex::with_capacity(self.capacity() * 2);
        for s in &self.slots {
            if s.generation == self.generation {
                let (i, _) = bigger.find(&s.key);
                bigger.fill(i, s.key, s.head());
            }
        }
        *self = bigger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(i: u32) -> Key {
        let rel = walproto::RelFileNode {
            spc: 1663,
            db: 5,
            rel: 16384 + i % 3,
        };
        Key::rel_block(rel, (i % 2) as u8, i / 6)
    }

    #[test]
    fn agrees_with_a_hash_map_through_growth_and_clears() {
        let mut idx = KeyIndex::with_capacity(4);
        for round in 0..3u32 {
            let mut want: HashMap<Key, Head> = HashMap::new();
            for i in 0..20_000u32 {
                // Some keys repeat, so both the insert and the update path run.
                let k = key(i.wrapping_mul(2_654_435_761) % 15_000);
                let lsn = Lsn(i as u64 + 1 + round as u64);
                let new_id = want.len() as u32;
                match (idx.put(k, i, lsn, new_id), want.get_mut(&k)) {
                    (Put::Inserted, None) => {
                        want.insert(
                            k,
                            Head {
                                newest: i,
                                lsn,
                                key_id: new_id,
                            },
                        );
                    }
                    (Put::Updated(prev), Some(w)) => {
                        assert_eq!(prev, *w);
                        w.newest = i;
                        w.lsn = lsn;
                        // Not newer: refused, nothing changes.
                        assert_eq!(idx.put(k, i + 1, lsn, 0), Put::NotNewer(lsn));
                    }
                    (got, w) => panic!("key {k}: index did {got:?}, map has {w:?}"),
                }
                assert_eq!(idx.len(), want.len());
            }
            for (k, h) in &want {
                assert_eq!(idx.get(k), Some(*h));
            }
            assert!(idx.capacity() >= want.len());
            assert_eq!(idx.get(&Key::checkpoint()), None);
            // A cleared table keeps its memory and holds nothing.
            let cap = idx.capacity();
            idx.clear();
            assert_eq!(idx.len(), 0);
            assert_eq!(idx.capacity(), cap);
            assert!(want.keys().all(|k| idx.get(k).is_none()));
        }
    }

    #[test]
    fn generation_wrap_rewrites_the_slots() {
        let mut idx = KeyIndex::with_capacity(8);
        let h = Head {
            newest: 1,
            lsn: Lsn(8),
            key_id: 0,
        };
        assert_eq!(idx.put(key(1), h.newest, h.lsn, h.key_id), Put::Inserted);
        idx.generation = u32::MAX;
        idx.slots.iter_mut().for_each(|s| s.generation = u32::MAX);
        assert_eq!(idx.get(&key(1)), Some(h));
        idx.clear();
        assert_eq!(idx.generation, 1);
        assert_eq!(idx.get(&key(1)), None);
    }
}
