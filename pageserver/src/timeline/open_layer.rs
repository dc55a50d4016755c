//! The in-memory layers: where ingest puts new values until they are written as an L0 delta
//! layer.
//!
//! The **open layer** keeps encoded values in an append-only arena of 1 MiB chunks (a value
//! never spans two chunks, so reads and the flush see contiguous bytes), one flat vector of
//! version entries each linked to the key's previous version, and a hash index from key to
//! its newest version: a put costs one hash probe and no allocation of its own. Nothing is written to disk: after a crash the open layer
//! is worthless anyway — the WAL is replayed from the durable LSN, which the safekeepers
//! keep — so a file would only cost a write and, at flush, a read back.
//!
//! At the freeze size the open layer becomes a **frozen layer** (immutable, shared with the
//! flush thread through an `Arc`), which keeps serving reads until its L0 file is durable and
//! listed in the metadata. [`InMemoryLayers`] is what reads see: the frozen layers, oldest
//! first, then the open layer.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use layer_format::{Key, Lsn, Value};

use super::error::{Result, TimelineError};

/// Arena chunk size; a value larger than this gets a chunk of its own.
const CHUNK: usize = 1024 * 1024;

/// No previous version.
const NONE: u32 = u32::MAX;

/// One version of a key in an in-memory layer.
#[derive(Clone, Copy, Debug)]
pub struct OpenEntry {
    pub lsn: Lsn,
    pub will_init: bool,
    chunk: u32,
    off: u32,
    len: u32,
    /// The key's previous version in `OpenLayer::entries`, or `NONE`.
    prev: u32,
}

/// A fast hash for the 18-byte keys (the index is private memory, so no DoS concern):
/// multiply-rotate over 8-byte words.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown uses the top 7 bits and the low bits.
        self.0 ^ (self.0 >> 29)
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// Encoded values in memory plus their index.
#[derive(Default)]
pub struct OpenLayer {
    chunks: Vec<Vec<u8>>,
    entries: Vec<OpenEntry>,
    /// Key → its newest version in `entries`.
    index: KeyMap<u32>,
    /// Bytes of encoded values.
    size: u64,
    /// Lowest and highest LSN of any value.
    lsn_bounds: Option<(Lsn, Lsn)>,
}

impl OpenLayer {
    pub fn new() -> OpenLayer {
        OpenLayer::default()
    }

    /// An open layer expected to hold about `keys` keys and `entries` versions (the previous
    /// layer's counts), so that the index is not rehashed as it grows.
    pub fn with_capacity(keys: usize, entries: usize) -> OpenLayer {
        OpenLayer {
            chunks: Vec::new(),
            entries: Vec::with_capacity(entries),
            index: KeyMap::with_capacity_and_hasher(keys, Default::default()),
            size: 0,
            lsn_bounds: None,
        }
    }

    /// Bytes of values stored.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    pub fn lsn_bounds(&self) -> Option<(Lsn, Lsn)> {
        self.lsn_bounds
    }

    /// Room for `len` more bytes at the end of the arena.
    fn chunk_for(&mut self, len: usize) -> usize {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= len);
        if !fits {
            let recycled = (len <= CHUNK).then(take_pooled_chunk).flatten();
            self.chunks
                .push(recycled.unwrap_or_else(|| Vec::with_capacity(len.max(CHUNK))));
        }
        self.chunks.len() - 1
    }

    /// Appends a version. Its LSN must be above every version of `key` already here.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        let len = value.encoded_len();
        if len > u32::MAX as usize || self.entries.len() >= NONE as usize {
            return Err(TimelineError::Invalid(format!(
                "value of key {key} at {lsn}: {len} bytes do not fit the open layer"
            )));
        }
        let chunk = self.chunk_for(len);
        let new = self.entries.len() as u32;
        let head = self.index.entry(key).or_insert(NONE);
        let prev = *head;
        if let Some(last) = self.entries.get(prev as usize) {
            if last.lsn >= lsn {
                return Err(TimelineError::Invalid(format!(
                    "key {key}: version at {lsn} is not newer than the stored {}",
                    last.lsn
                )));
            }
        }
        *head = new;
        let buf = &mut self.chunks[chunk];
        let off = buf.len();
        value.encode(buf);
        debug_assert_eq!(buf.len() - off, len);
        self.entries.push(OpenEntry {
            lsn,
            will_init: value.will_init(),
            chunk: chunk as u32,
            off: off as u32,
            len: len as u32,
            prev,
        });
        self.size += len as u64;
        self.lsn_bounds = Some(match self.lsn_bounds {
            None => (lsn, lsn),
            Some((lo, hi)) => (lo.min(lsn), hi.max(lsn)),
        });
        Ok(())
    }

    /// Appends `key`'s versions with LSN ≤ `lsn` to `out`, newest first.
    pub fn versions_newest_first(&self, key: Key, lsn: Lsn, out: &mut Vec<OpenEntry>) {
        let Some(&head) = self.index.get(&key) else {
            return;
        };
        self.chain(head, lsn, out);
    }

    /// Appends the versions from entry `at` back, skipping those above `lsn`.
    fn chain(&self, mut at: u32, lsn: Lsn, out: &mut Vec<OpenEntry>) {
        while let Some(e) = self.entries.get(at as usize) {
            if e.lsn <= lsn {
                out.push(*e);
            }
            at = e.prev;
        }
    }

    /// `key`'s versions with LSN ≤ `lsn`, oldest first.
    pub fn versions(&self, key: Key, lsn: Lsn) -> Vec<OpenEntry> {
        let mut out = Vec::new();
        self.versions_newest_first(key, lsn, &mut out);
        out.reverse();
        out
    }

    /// The encoded bytes of one version ([`Value::encode`]'s output).
    pub fn encoded(&self, e: &OpenEntry) -> &[u8] {
        let at = e.off as usize;
        &self.chunks[e.chunk as usize][at..at + e.len as usize]
    }

    /// Reads and decodes one version.
    pub fn read(&self, key: Key, e: &OpenEntry) -> Result<Value> {
        Value::decode(self.encoded(e)).map_err(|source| TimelineError::Value {
            key,
            lsn: e.lsn,
            place: "the in-memory layer".into(),
            source,
        })
    }

    /// The keys in order.
    pub fn sorted_keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.index.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Calls `f` with every key in order and its versions oldest first: what an L0 delta layer
    /// is written from.
    pub fn for_each_sorted<E>(
        &self,
        mut f: impl FnMut(Key, &[OpenEntry]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut heads: Vec<(Key, u32)> = self.index.iter().map(|(k, h)| (*k, *h)).collect();
        heads.sort_unstable_by_key(|(k, _)| *k);
        let mut buf = Vec::new();
        for (key, head) in heads {
            buf.clear();
            self.chain(head, Lsn::MAX, &mut buf);
            buf.reverse();
            f(key, &buf)?;
        }
        Ok(())
    }
}

/// Arena chunks of dropped layers kept for the next ones (at most this many, process-wide):
/// a fresh chunk costs page faults and zeroing on first touch, about a tenth of ingest's
/// time, while a recycled one is already mapped. Bounded to two default-size frozen layers.
const POOL_CHUNKS: usize = 128;

static CHUNK_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_pooled_chunk() -> Option<Vec<u8>> {
    CHUNK_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop()
}

impl Drop for OpenLayer {
    /// Hands the standard-size chunks to the pool (up to [`POOL_CHUNKS`]).
    fn drop(&mut self) {
        let mut pool = CHUNK_POOL.lock().unwrap_or_else(|p| p.into_inner());
        for mut c in self.chunks.drain(..) {
            if pool.len() >= POOL_CHUNKS {
                break;
            }
            if c.capacity() == CHUNK {
                c.clear();
                pool.push(c);
            }
        }
    }
}

/// An open layer that takes no more values, with the ingest position at its freeze: once its
/// L0 file is durable, that position is durable.
pub struct FrozenLayer {
    pub layer: OpenLayer,
    /// Start and end of the last record whose values it holds.
    pub last_record_lsn: Lsn,
    pub last_record_end: Lsn,
}

/// A version in one of the in-memory layers (see [`InMemoryLayers::versions`]).
#[derive(Clone, Copy, Debug)]
pub struct MemEntry {
    pub lsn: Lsn,
    pub will_init: bool,
    /// Index in the frozen layers, or their count for the open layer.
    layer: usize,
    entry: OpenEntry,
}

/// What reads see of the values not yet in layer files: frozen layers waiting for (or in)
/// their flush, oldest first, then the open layer.
#[derive(Default)]
pub struct InMemoryLayers {
    pub(super) frozen: VecDeque<Arc<FrozenLayer>>,
    pub(super) open: OpenLayer,
}

impl InMemoryLayers {
    fn layer(&self, i: usize) -> &OpenLayer {
        match self.frozen.get(i) {
            Some(f) => &f.layer,
            None => &self.open,
        }
    }

    /// `key`'s versions with LSN ≤ `lsn` in every in-memory layer, oldest first.
    pub fn versions(&self, key: Key, lsn: Lsn) -> Vec<MemEntry> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        // Newest first, then reversed.
        for i in (0..=self.frozen.len()).rev() {
            buf.clear();
            self.layer(i).versions_newest_first(key, lsn, &mut buf);
            out.extend(buf.iter().map(|e| MemEntry {
                lsn: e.lsn,
                will_init: e.will_init,
                layer: i,
                entry: *e,
            }));
        }
        out.reverse();
        out
    }

    /// Reads and decodes one version found by [`InMemoryLayers::versions`].
    pub fn read(&self, key: Key, e: &MemEntry) -> Result<Value> {
        self.layer(e.layer).read(key, &e.entry)
    }

    /// Bytes of values in the open layer.
    pub fn size(&self) -> u64 {
        self.open.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_versions() {
        let mut l = OpenLayer::new();
        let k = Key::checkpoint();
        // Enough values to fill several arena chunks.
        for i in 1..=300u64 {
            let v = Value::image(vec![i as u8; 8192]);
            l.put(k, Lsn(i * 8), &v).unwrap();
        }
        assert!(l.put(k, Lsn(8), &Value::image(vec![])).is_err());
        let vs = l.versions(k, Lsn(400));
        assert_eq!(vs.len(), 50);
        for e in l.versions(k, Lsn::MAX) {
            let Value::Image(b) = l.read(k, &e).unwrap() else {
                panic!()
            };
            assert_eq!(b.len(), 8192);
            assert_eq!(b[0], (e.lsn.0 / 8) as u8);
        }
        let mut n = 0;
        l.for_each_sorted(|_, vs| {
            assert!(vs.windows(2).all(|w| w[0].lsn < w[1].lsn));
            n += vs.len();
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(n, 300);
        assert!(l.versions(Key::control_file(), Lsn::MAX).is_empty());
        // A value bigger than a chunk.
        let big = Value::image(vec![3u8; 3 * CHUNK]);
        l.put(Key::control_file(), Lsn(9), &big).unwrap();
        let e = l.versions(Key::control_file(), Lsn::MAX)[0];
        assert_eq!(l.read(Key::control_file(), &e).unwrap(), big);
    }

    #[test]
    fn iter_is_sorted_and_in_memory_layers_merge() {
        let mut a = OpenLayer::new();
        let keys = [Key::control_file(), Key::checkpoint(), Key::db_dir()];
        for (i, k) in keys.iter().enumerate() {
            a.put(*k, Lsn(10 + i as u64), &Value::image(vec![1]))
                .unwrap();
        }
        let mut order = Vec::new();
        a.for_each_sorted(|k, _| {
            order.push(k);
            Ok::<_, ()>(())
        })
        .unwrap();
        let mut sorted = keys.to_vec();
        sorted.sort();
        assert_eq!(order, sorted);

        let mut mem = InMemoryLayers::default();
        mem.frozen.push_back(Arc::new(FrozenLayer {
            layer: a,
            last_record_lsn: Lsn(12),
            last_record_end: Lsn(13),
        }));
        mem.open
            .put(Key::db_dir(), Lsn(20), &Value::image(vec![2]))
            .unwrap();
        let vs = mem.versions(Key::db_dir(), Lsn::MAX);
        assert_eq!(
            vs.iter().map(|e| e.lsn).collect::<Vec<_>>(),
            [Lsn(12), Lsn(20)]
        );
        assert_eq!(
            mem.read(Key::db_dir(), &vs[1]).unwrap(),
            Value::image(vec![2])
        );
        assert_eq!(mem.versions(Key::db_dir(), Lsn(15)).len(), 1);
    }
}
