//! The in-memory layers: where ingest puts new values until they are written as an L0 delta
//! layer.
//!
//! The **open layer** keeps encoded values in an append-only arena of 1 MiB chunks (a value
//! never spans two chunks, so reads and the flush see contiguous bytes), one flat vector of
//! version entries each linked to the key's previous version, and a hash index from key to
//! its newest version ([`super::key_index`], whose probe ingest can prefetch): a put costs one
//! hash probe and no allocation of its own. Nothing is written to disk: after a crash the open
//! layer is worthless anyway — the WAL is replayed from the durable LSN, which the safekeepers
//! keep — so a file would only cost a write and, at flush, a read back.
//!
//! At the freeze size the open layer becomes a **frozen layer** (immutable, shared with the
//! flush thread through an `Arc`), which keeps serving reads until its L0 file is durable and
//! listed in the metadata. [`InMemoryLayers`] is what reads see: the frozen layers, oldest
//! first, then the open layer.

use std::collections::VecDeque;
use std::sync::Arc;

use layer_format::{Key, Lsn, Value};

use super::error::{Result, TimelineError};
use super::key_index::{KeyIndex, Put};

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
    /// The key's number in `OpenLayer::keys`.
    key_id: u32,
}

/// Encoded values in memory plus their index.
#[derive(Default)]
pub struct OpenLayer {
    chunks: Vec<Vec<u8>>,
    entries: Entries,
    /// Key → its newest version in `entries`, that version's LSN (kept here so a put checks
    /// the order without touching the old entry: one cache miss fewer), and the key's number.
    index: KeyIndex,
    /// The keys by number, in order of first appearance.
    keys: Vec<Key>,
    /// Bytes of encoded values.
    size: u64,
    /// Lowest and highest LSN of any value.
    lsn_bounds: Option<(Lsn, Lsn)>,
}

impl OpenLayer {
    pub fn new() -> OpenLayer {
        OpenLayer::default()
    }

    /// An open layer expected to hold about `keys` keys (the previous layer's count), so that
    /// the index is not rehashed as it grows. A dropped layer's index is reused when it is big
    /// enough: a fresh one of several MiB costs page faults and zeroing on first touch.
    pub fn with_capacity(keys: usize) -> OpenLayer {
        // A quarter more than expected: growing the index mid-layer rehashes every key, and a
        // pooled index a little too small would be thrown away.
        let keys = keys + keys / 4;
        let reused = INDEX_POOL
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .filter(|r| r.index.capacity() >= keys);
        let r = reused.unwrap_or_else(|| IndexParts {
            index: KeyIndex::with_capacity(keys),
            keys: Vec::with_capacity(keys),
        });
        OpenLayer {
            chunks: Vec::new(),
            entries: Entries::default(),
            index: r.index,
            keys: r.keys,
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

    /// Starts loading what a put of `key` reads first, so that a put a few records later does
    /// not wait for memory (a hint: no effect on results).
    #[inline]
    pub fn prefetch_key(&self, key: &Key) {
        self.index.prefetch(key);
    }

    /// Appends a version. Its LSN must be above every version of `key` already here.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        self.put_with(key, lsn, value.encoded_len(), value.will_init(), |buf| {
            value.encode(buf)
        })
    }

    /// Like [`OpenLayer::put`] for `Value::pg_record(will_init, rec)`, without the value.
    pub fn put_pg_record(&mut self, key: Key, lsn: Lsn, will_init: bool, rec: &[u8]) -> Result<()> {
        let len = Value::pg_record_encoded_len(rec.len());
        self.put_with(key, lsn, len, will_init, |buf| {
            Value::encode_pg_record(will_init, rec, buf)
        })
    }

    /// Appends a version whose encoding `encode` writes (`len` bytes).
    fn put_with(
        &mut self,
        key: Key,
        lsn: Lsn,
        len: usize,
        will_init: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        if len > u32::MAX as usize || self.entries.len() >= NONE as usize {
            return Err(TimelineError::Invalid(format!(
                "value of key {key} at {lsn}: {len} bytes do not fit the open layer"
            )));
        }
        let chunk = self.chunk_for(len);
        let new = self.entries.len() as u32;
        let next_id = self.keys.len() as u32;
        let (prev, key_id) = match self.index.put(key, new, lsn, next_id) {
            Put::Inserted => {
                self.keys.push(key);
                (NONE, next_id)
            }
            Put::Updated(head) => (head.newest, head.key_id),
            Put::NotNewer(stored) => {
                return Err(TimelineError::Invalid(format!(
                    "key {key}: version at {lsn} is not newer than the stored {stored}"
                )))
            }
        };
        let buf = &mut self.chunks[chunk];
        let off = buf.len();
        encode(buf);
        debug_assert_eq!(buf.len() - off, len);
        self.entries.push(OpenEntry {
            lsn,
            will_init,
            chunk: chunk as u32,
            off: off as u32,
            len: len as u32,
            prev,
            key_id,
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
        let Some(head) = self.index.get(&key) else {
            return;
        };
        self.chain(head.newest, lsn, out);
    }

    /// Appends the versions from entry `at` back, skipping those above `lsn`.
    fn chain(&self, mut at: u32, lsn: Lsn, out: &mut Vec<OpenEntry>) {
        while let Some(e) = self.entries.get(at) {
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
        let mut keys = self.keys.clone();
        keys.sort_unstable();
        keys
    }

    /// Calls `f` with every version in (key, LSN) order and its encoded bytes: what an L0
    /// delta layer is written from.
    ///
    /// The arena and the entries are in arrival order, so key order visits them at random:
    /// each first touch would be a cache miss, paid one after the other. So the order is
    /// computed from sequential passes ([`OpenLayer::sorted_order`]), and each entry and then
    /// its value is prefetched a few steps before `f` reads it, so the misses overlap.
    pub fn for_each_sorted<E>(
        &self,
        mut f: impl FnMut(Key, Lsn, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        const AHEAD: usize = 8;
        let order = self.sorted_order();
        for (i, &at) in order.iter().enumerate() {
            if let Some(&far) = order.get(i + 2 * AHEAD) {
                prefetch_entry(self.entries.at(far));
            }
            if let Some(&near) = order.get(i + AHEAD) {
                prefetch(self.encoded(self.entries.at(near)));
            }
            let e = self.entries.at(at);
            f(self.keys[e.key_id as usize], e.lsn, self.encoded(e))?;
        }
        Ok(())
    }

    /// Every version's index in `entries`, in (key, LSN) order: a counting sort of the
    /// entries by their key's rank, which keeps each key's versions in arrival (LSN) order.
    fn sorted_order(&self) -> Vec<u32> {
        // Key numbers in key order. The sort runs over (ordinal, number) values in one
        // contiguous vector: comparing through `keys[id]` was a random read per comparison.
        let mut sorted: Vec<(u128, u16, u32)> = self
            .keys
            .iter()
            .enumerate()
            .map(|(id, k)| {
                let (hi, lo) = k.ordinal();
                (hi, lo, id as u32)
            })
            .collect();
        sorted.sort_unstable();
        let by_key = sorted.iter().map(|&(_, _, id)| id);
        // start[rank] = where that key's versions begin in the output.
        let mut count = vec![0u32; self.keys.len()];
        for e in self.entries.iter() {
            count[e.key_id as usize] += 1;
        }
        let mut start = vec![0u32; self.keys.len()];
        let mut at = 0u32;
        for id in by_key {
            start[id as usize] = at;
            at += count[id as usize];
        }
        let mut order = vec![0u32; self.entries.len()];
        for (i, e) in self.entries.iter().enumerate() {
            let slot = &mut start[e.key_id as usize];
            order[*slot as usize] = i as u32;
            *slot += 1;
        }
        order
    }
}

/// Asks the CPU to start loading the first cache lines of `bytes` (a hint: no effect on
/// results).
#[inline]
fn prefetch(bytes: &[u8]) {
    prefetch_line(bytes.as_ptr());
    if bytes.len() > 64 {
        prefetch_line(bytes[64..].as_ptr());
    }
}

#[inline]
fn prefetch_entry(e: &OpenEntry) {
    prefetch_line((e as *const OpenEntry).cast());
}

#[inline]
pub(super) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and never changes memory, whatever the
    // address (here always one inside a live allocation).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Entries per chunk of [`Entries`]: 2 MiB, one huge page.
const ENTRY_CHUNK: usize = 1 << 16;

/// Entry chunks kept for the next layers (process-wide; 64 MiB).
const POOL_ENTRY_CHUNKS: usize = 32;

static ENTRY_POOL: std::sync::Mutex<Vec<Vec<OpenEntry>>> = std::sync::Mutex::new(Vec::new());

/// The version entries of a layer, numbered in arrival order, in fixed-size chunks: growing
/// never copies, and the chunks of dropped layers are reused (a fresh one costs page faults
/// and zeroing, which was a fifth of a put).
#[derive(Default)]
struct Entries {
    chunks: Vec<Vec<OpenEntry>>,
    len: usize,
}

impl Entries {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, e: OpenEntry) {
        if self.len == self.chunks.len() * ENTRY_CHUNK {
            let reused = ENTRY_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
            self.chunks
                .push(reused.unwrap_or_else(|| Vec::with_capacity(ENTRY_CHUNK)));
        }
        self.chunks[self.len / ENTRY_CHUNK].push(e);
        self.len += 1;
    }

    fn get(&self, i: u32) -> Option<&OpenEntry> {
        let i = i as usize;
        self.chunks.get(i / ENTRY_CHUNK)?.get(i % ENTRY_CHUNK)
    }

    /// Entry `i`, which must exist.
    fn at(&self, i: u32) -> &OpenEntry {
        let i = i as usize;
        &self.chunks[i / ENTRY_CHUNK][i % ENTRY_CHUNK]
    }

    fn iter(&self) -> impl Iterator<Item = &OpenEntry> {
        self.chunks.iter().flatten()
    }

    /// Hands the chunks to the pool (up to [`POOL_ENTRY_CHUNKS`]).
    fn recycle(&mut self) {
        let mut pool = ENTRY_POOL.lock().unwrap_or_else(|p| p.into_inner());
        for mut c in self.chunks.drain(..) {
            if pool.len() >= POOL_ENTRY_CHUNKS {
                break;
            }
            c.clear();
            pool.push(c);
        }
        self.len = 0;
    }
}

/// Arena chunks of dropped layers kept for the next ones (at most this many, process-wide):
/// a fresh chunk costs page faults and zeroing on first touch, about a tenth of ingest's
/// time, while a recycled one is already mapped. Bounded to 128 MiB process-wide (half of one
/// layer at the default `freeze_mib` of 256; it was four layers at the old 32): the memory a
/// pageserver keeps idle stays the same whatever the freeze size.
const POOL_CHUNKS: usize = 128;

static CHUNK_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_pooled_chunk() -> Option<Vec<u8>> {
    CHUNK_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop()
}

/// The emptied index structures of a dropped layer, for the next one.
struct IndexParts {
    index: KeyIndex,
    keys: Vec<Key>,
}

/// At most this many sets of index structures are kept (process-wide).
const POOL_INDEXES: usize = 2;

static INDEX_POOL: std::sync::Mutex<Vec<IndexParts>> = std::sync::Mutex::new(Vec::new());

impl Drop for OpenLayer {
    /// Hands the standard-size chunks (up to [`POOL_CHUNKS`]) and the index structures (up to
    /// [`POOL_INDEXES`]) to the pools.
    fn drop(&mut self) {
        {
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
        self.entries.recycle();
        if self.keys.capacity() == 0 {
            return;
        }
        let mut parts = IndexParts {
            index: std::mem::take(&mut self.index),
            keys: std::mem::take(&mut self.keys),
        };
        parts.index.clear();
        parts.keys.clear();
        let mut pool = INDEX_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_INDEXES {
            pool.push(parts);
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
        let mut lsns = Vec::new();
        l.for_each_sorted(|_, lsn, encoded| {
            assert_eq!(encoded.len(), Value::image(vec![0; 8192]).encoded_len());
            lsns.push(lsn);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(lsns, (1..=300).map(|i| Lsn(i * 8)).collect::<Vec<_>>());
        assert!(l.versions(Key::control_file(), Lsn::MAX).is_empty());
        // A value bigger than a chunk.
        let big = Value::image(vec![3u8; 3 * CHUNK]);
        l.put(Key::control_file(), Lsn(9), &big).unwrap();
        let e = l.versions(Key::control_file(), Lsn::MAX)[0];
        assert_eq!(l.read(Key::control_file(), &e).unwrap(), big);
    }

    #[test]
    fn many_entries_span_chunks_and_sort_by_key_then_lsn() {
        // More versions than one entry chunk holds, keys arriving interleaved; twice, so the
        // second layer runs on the first one's recycled chunks and index.
        for _ in 0..2 {
            let mut l = OpenLayer::with_capacity(16);
            let keys: Vec<Key> = (0..997u32)
                .map(|b| {
                    let rel = walproto::RelFileNode {
                        spc: 1663,
                        db: 5,
                        rel: 7,
                    };
                    Key::rel_block(rel, 0, b * 31 % 997)
                })
                .collect();
            let n = 2 * ENTRY_CHUNK + 123;
            for i in 0..n {
                let v = Value::image(vec![(i % 251) as u8; 3]);
                l.put(keys[i % keys.len()], Lsn(16 + i as u64), &v).unwrap();
            }
            assert_eq!(l.entry_count(), n);
            let mut seen = Vec::with_capacity(n);
            l.for_each_sorted(|k, lsn, encoded| {
                let i = (lsn.0 - 16) as usize;
                assert_eq!(k, keys[i % keys.len()]);
                let mut want = Vec::new();
                Value::image(vec![(i % 251) as u8; 3]).encode(&mut want);
                assert_eq!(encoded, &want[..]);
                seen.push((k, lsn));
                Ok::<_, ()>(())
            })
            .unwrap();
            assert_eq!(seen.len(), n);
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "not in (key, LSN) order"
            );
            let k = keys[5];
            let vs = l.versions(k, Lsn::MAX);
            assert_eq!(vs.len(), (0..n).filter(|i| i % keys.len() == 5).count());
            assert!(vs.windows(2).all(|w| w[0].lsn < w[1].lsn));
        }
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
        a.for_each_sorted(|k, _, _| {
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
