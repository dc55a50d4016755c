//! GetPage@LSN: collect a key's versions newest-first through the open layer and the layer
//! map, down to an image, a `will_init` record, or a page already materialized in the page
//! cache; then apply the records oldest-first with the native redo.
//!
//! On a branch, a key whose history does not begin in the branch's own layers continues in the
//! ancestor as of the branch point ([`super::ancestor`]).
//!
//! Postgres records are stored raw, once per page they change; which of the record's block
//! references (or visibility-map pages changed outside them, [`crate::redo::extra_targets`])
//! apply is found again by the key's (relation, fork, block).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use layer_format::{Key, KeyKind, LayerDesc, Lsn, RecordPayload, Value};
use walproto::consts::BLCKSZ;
use walproto::record::decode_record_body;

use super::ancestor::Ancestor;
use super::error::{Result, TimelineError};
use super::layer_map::{Layer, LayerFile, LayerMap, Residence};
use super::open_layer::InMemoryLayers;
use super::Timeline;
use crate::redo::{self, Page};

/// What a key's versions start from.
enum Base {
    /// Nothing: the key did not exist below the collected records.
    Absent,
    Image(Lsn, Bytes),
    Cached(CachedPage),
}

/// A key's versions needed for one read.
struct Chain {
    /// Newest first.
    records: Vec<(Lsn, Value)>,
    base: Base,
    layers_visited: usize,
}

/// A reconstructed page version.
#[derive(Clone, Debug)]
pub struct PageVersion {
    pub page: Box<Page>,
    /// LSN of the newest version applied.
    pub lsn: Lsn,
    /// Resource manager of the newest record applied; `None` if the newest version is an image.
    pub writer: Option<u8>,
}

/// A page materialized by an earlier read: history at or below `lsn` is in it.
#[derive(Clone)]
struct CachedPage {
    lsn: Lsn,
    writer: Option<u8>,
    page: Box<Page>,
}

/// Materialized pages, so that reading a page again at a newer LSN only applies the newer
/// records (ingest checks and GetPage at the tip read the same pages again and again).
/// Bounded; evicts arbitrary entries when full.
pub(super) struct PageCache {
    capacity: usize,
    pages: HashMap<Key, CachedPage>,
}

impl PageCache {
    pub(super) fn new(capacity: usize) -> PageCache {
        PageCache {
            capacity,
            pages: HashMap::new(),
        }
    }

    fn get(&self, key: &Key, lsn: Lsn) -> Option<CachedPage> {
        self.pages.get(key).filter(|c| c.lsn <= lsn).cloned()
    }

    fn put(&mut self, key: Key, c: CachedPage) {
        if self.capacity == 0 {
            return;
        }
        if self.pages.len() >= self.capacity && !self.pages.contains_key(&key) {
            let victims: Vec<Key> = self
                .pages
                .keys()
                .take(self.capacity / 8 + 1)
                .copied()
                .collect();
            for k in victims {
                self.pages.remove(&k);
            }
        }
        match self.pages.get(&key) {
            Some(old) if old.lsn >= c.lsn => {}
            _ => {
                self.pages.insert(key, c);
            }
        }
    }
}

/// Counts of layer files visited per read: read amplification.
#[derive(Clone, Debug, Default)]
pub struct ReadStats {
    /// `hist[n]`: reads that visited `n` layer files.
    pub hist: Vec<u64>,
}

impl ReadStats {
    fn record(&mut self, n: usize) {
        if self.hist.len() <= n {
            self.hist.resize(n + 1, 0);
        }
        self.hist[n] += 1;
    }

    pub fn reads(&self) -> u64 {
        self.hist.iter().sum()
    }

    /// The smallest n such that at least `q` of the reads visited ≤ n layers.
    pub fn quantile(&self, q: f64) -> usize {
        let total = self.reads();
        let want = (total as f64 * q).ceil() as u64;
        let mut acc = 0;
        for (n, c) in self.hist.iter().enumerate() {
            acc += c;
            if acc >= want.max(1) {
                return n;
            }
        }
        0
    }

    /// `reads N, layers visited p50 A p99 B max C`.
    pub fn summary(&self) -> String {
        format!(
            "reads {}, layer files visited per read: p50 {} p99 {} max {}",
            self.reads(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.hist.len().saturating_sub(1)
        )
    }
}

/// Where a collect step ended.
enum Step {
    Continue,
    Done(Base),
}

/// What a read looks through: a timeline's in-memory layers (none in a snapshot of its
/// durable layers, which compaction reads on its own thread), its layer map, and its
/// ancestor (`Err`: a branch whose ancestor is not attached, and why).
pub(super) struct Sources<'a> {
    pub(super) open: Option<&'a InMemoryLayers>,
    pub(super) layers: &'a LayerMap,
    pub(super) ancestor: std::result::Result<Option<&'a Ancestor>, String>,
}

/// Pushes one version onto the chain; says whether the chain is complete.
fn take(chain: &mut Vec<(Lsn, Value)>, lsn: Lsn, v: Value) -> Step {
    match v {
        Value::Image(b) => Step::Done(Base::Image(lsn, b)),
        Value::WalRecord(r) => {
            let init = r.will_init;
            chain.push((lsn, Value::WalRecord(r)));
            if init {
                Step::Done(Base::Absent)
            } else {
                Step::Continue
            }
        }
    }
}

impl Sources<'_> {
    fn collect(&self, key: Key, lsn: Lsn, cached: Option<CachedPage>) -> Result<Chain> {
        let stop = cached.as_ref().map(|c| c.lsn);
        let mut records = Vec::new();
        let done = |base: Base, records, n| {
            Ok(Chain {
                records,
                base,
                layers_visited: n,
            })
        };
        let cached_base = |c: &Option<CachedPage>| match c {
            Some(c) => Base::Cached(c.clone()),
            None => Base::Absent,
        };
        // The in-memory layers.
        if let Some(open) = self.open {
            for e in open.versions(key, lsn).iter().rev() {
                if stop.is_some_and(|s| e.lsn <= s) {
                    return done(cached_base(&cached), records, 0);
                }
                let v = open.read(key, e)?;
                if let Step::Done(base) = take(&mut records, e.lsn, v) {
                    return done(base, records, 0);
                }
            }
        }
        // Layer files, newest first.
        let mut visited = 0;
        for layer in self.layers.search(key, lsn) {
            visited += 1;
            match layer.file()? {
                LayerFile::Delta(d) => {
                    for e in d.versions(key, lsn)? {
                        let e = e?;
                        if stop.is_some_and(|s| e.lsn <= s) {
                            return done(cached_base(&cached), records, visited);
                        }
                        let v = d.read_value(&e.handle)?;
                        if let Step::Done(base) = take(&mut records, e.lsn, v) {
                            return done(base, records, visited);
                        }
                    }
                }
                LayerFile::Image(img) => {
                    if stop.is_some_and(|s| img.lsn() <= s) {
                        return done(cached_base(&cached), records, visited);
                    }
                    // A key the image layer lacks does not exist at its LSN.
                    let base = match img.get(key)? {
                        Some(b) => Base::Image(img.lsn(), b),
                        None => Base::Absent,
                    };
                    return done(base, records, visited);
                }
            }
        }
        if cached.is_some() {
            return done(cached_base(&cached), records, visited);
        }
        // A branch: the history below its own continues in the ancestor as of the branch
        // point (see `ancestor`). The child's records are newer, so they come first.
        let ancestor = self
            .ancestor
            .as_ref()
            .map_err(|reason| TimelineError::Reconstruct {
                key,
                lsn,
                reason: reason.clone(),
            })?;
        match ancestor {
            Some(a) => {
                let below = a.read(|t| t.collect(key, lsn.min(a.lsn), None))?;
                records.extend(below.records);
                done(below.base, records, visited + below.layers_visited)
            }
            None => done(Base::Absent, records, visited),
        }
    }

    /// The value of any key at `lsn` as an image layer stores it: a rebuilt page, a stored
    /// image of a non-page key, or `None` if the key does not exist then. No page cache.
    pub(super) fn reconstruct_value(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>> {
        let chain = self.collect(key, lsn, None)?;
        if chain.records.is_empty() {
            return Ok(match chain.base {
                Base::Image(_, b) => Some(b),
                Base::Absent => None,
                Base::Cached(c) => Some(Bytes::copy_from_slice(&c.page[..])),
            });
        }
        let rebuilt = apply_chain(key, chain)?;
        Ok(rebuilt.page.map(|p| Bytes::copy_from_slice(&p[..])))
    }
}

impl Timeline {
    /// Where reads of this timeline look.
    pub(super) fn sources(&self) -> Sources<'_> {
        Sources {
            open: Some(&self.open),
            layers: &self.layers,
            ancestor: match (&self.ancestor, self.ancestor_link()) {
                (Some(a), _) => Ok(Some(a)),
                (None, None) => Ok(None),
                (None, Some((id, at))) => Err(format!(
                    "the branch's ancestor {id} (branch point {at}) is not attached"
                )),
            },
        }
    }

    fn collect(&self, key: Key, lsn: Lsn, cached: Option<CachedPage>) -> Result<Chain> {
        self.sources().collect(key, lsn, cached)
    }

    /// The page of relation-block key `key` as of `lsn`, or `None` if it does not exist then.
    pub fn get_page(&self, key: Key, lsn: Lsn) -> Result<Option<Box<Page>>> {
        Ok(self.get_page_version(key, lsn)?.map(|v| v.page))
    }

    /// Like [`Timeline::get_page`], with the LSN and writer of the newest version.
    pub fn get_page_version(&self, key: Key, lsn: Lsn) -> Result<Option<PageVersion>> {
        self.page_version(key, lsn, true)
    }

    /// GetPage; `user` reads count in the read statistics and metrics and fill the page cache.
    fn page_version(&self, key: Key, lsn: Lsn, user: bool) -> Result<Option<PageVersion>> {
        if !user {
            return self.page_version_inner(key, lsn, false, &mut (false, 0));
        }
        let timer = strata_metrics::Timer::start();
        let mut shape = (false, 0);
        let r = self.page_version_inner(key, lsn, true, &mut shape);
        match &r {
            Ok(_) => crate::metrics::page_read(timer, shape.0, shape.1),
            Err(_) => crate::metrics::page_read_failed(),
        }
        r
    }

    /// [`Timeline::page_version`]; sets `shape` to (redo needed, layer files visited).
    fn page_version_inner(
        &self,
        key: Key,
        lsn: Lsn,
        user: bool,
        shape: &mut (bool, usize),
    ) -> Result<Option<PageVersion>> {
        if lsn < self.meta.start_lsn {
            let reason = match self.ancestor_link() {
                Some((id, at)) => format!(
                    "below the branch's start {at}: older history is read on its ancestor {id}"
                ),
                None => format!("below the timeline's start {}", self.meta.start_lsn),
            };
            return Err(TimelineError::Reconstruct { key, lsn, reason });
        }
        if user {
            self.check_gc_cutoff(key, lsn)?;
        }
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key, lsn));
        let chain = self.collect(key, lsn, cached)?;
        if user {
            if let Ok(mut s) = self.stats.lock() {
                s.record(chain.layers_visited);
            }
        }
        let no_records = chain.records.is_empty();
        *shape = (!no_records, chain.layers_visited);
        let Rebuilt {
            page,
            newest,
            writer,
        } = apply_chain(key, chain)?;
        let Some(page) = page else {
            return Ok(None);
        };
        if !no_records && user {
            if let Ok(mut c) = self.cache.lock() {
                c.put(
                    key,
                    CachedPage {
                        lsn: newest,
                        writer,
                        page: page.clone(),
                    },
                );
            }
        }
        Ok(Some(PageVersion {
            page,
            lsn: newest,
            writer,
        }))
    }

    /// The newest image value of a non-page key (a relation size, a directory) at `lsn`.
    pub fn get_image_value(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>> {
        self.check_gc_cutoff(key, lsn)?;
        let chain = self.collect(key, lsn, None)?;
        if let Some((l, _)) = chain.records.first() {
            return Err(TimelineError::Reconstruct {
                key,
                lsn: *l,
                reason: "a record where only images are stored".into(),
            });
        }
        Ok(match chain.base {
            Base::Image(_, b) => Some(b),
            _ => None,
        })
    }

    /// Read amplification so far.
    pub fn read_stats(&self) -> ReadStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts the read amplification statistics over.
    pub fn reset_read_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            *s = ReadStats::default();
        }
    }

    /// Which layers are on the local disk and what was fetched on demand (a timeline restored
    /// from remote storage opens with its layers remote; see [`super::layer_map`]).
    pub fn residence(&self) -> Residence {
        let mut r = Residence::default();
        for l in self.layers.layers() {
            if l.is_resident() {
                r.resident += 1;
                r.resident_bytes += l.file_size();
            } else {
                r.remote += 1;
                r.remote_bytes += l.file_size();
            }
        }
        if let Some(f) = &self.fetch {
            r.fetched = f.stats();
        }
        r
    }

    /// The live layer `desc` (fetched at its first [`Layer::file`] if remote), or else the
    /// file `desc` in the timeline's directory, opened.
    pub fn layer(&self, desc: &LayerDesc) -> Result<Arc<Layer>> {
        match self.layers.layers().find(|l| l.desc == *desc) {
            Some(l) => Ok(l.clone()),
            None => Layer::open(&self.dir, desc).map(Arc::new),
        }
    }

    /// The layers whose files are open (resident), oldest run first.
    pub fn resident_layers(&self) -> Vec<LayerDesc> {
        self.layers
            .layers()
            .filter(|l| l.is_resident())
            .map(|l| l.desc.clone())
            .collect()
    }

    /// Descriptions of the layers a read of `key` at `lsn` would visit (for tests and tools).
    pub fn layers_for(&self, key: Key, lsn: Lsn) -> Vec<LayerDesc> {
        self.layers
            .search(key, lsn)
            .map(|l| l.desc.clone())
            .collect()
    }
}

/// A page rebuilt from a chain.
struct Rebuilt {
    page: Option<Box<Page>>,
    /// LSN of the newest version applied.
    newest: Lsn,
    writer: Option<u8>,
}

/// Applies a chain's records, oldest first, to its base.
fn apply_chain(key: Key, chain: Chain) -> Result<Rebuilt> {
    let (mut page, mut newest, mut writer) = match chain.base {
        Base::Absent => (None, Lsn::INVALID, None),
        Base::Image(l, b) => {
            let p: Box<Page> =
                Box::new(
                    b.as_ref()
                        .try_into()
                        .map_err(|_| TimelineError::Reconstruct {
                            key,
                            lsn: l,
                            reason: format!("image of {} bytes, not a page", b.len()),
                        })?,
                );
            (Some(p), l, None)
        }
        Base::Cached(c) => (Some(c.page), c.lsn, c.writer),
    };
    for (l, v) in chain.records.into_iter().rev() {
        let raw = match v {
            Value::WalRecord(r) => match r.payload {
                RecordPayload::Postgres(raw) => raw,
                // Strata's own records: SLRU page changes (CLOG status, multixact).
                RecordPayload::Strata { kind, data } => {
                    redo::slru::apply(kind, &data, &mut page).map_err(|e| {
                        TimelineError::Reconstruct {
                            key,
                            lsn: l,
                            reason: e.to_string(),
                        }
                    })?;
                    (newest, writer) = (l, None);
                    continue;
                }
            },
            Value::Image(_) => unreachable!("images end a chain"),
        };
        writer = raw.get(17).copied();
        apply_pg_record(key, l, raw, &mut page)?;
        newest = l;
    }
    Ok(Rebuilt {
        page,
        newest,
        writer,
    })
}

/// Applies the raw Postgres record stored at `lsn` (its end LSN) to the page of `key`:
/// every block reference naming that page, then every visibility-map change the record makes
/// to it outside its block references.
fn apply_pg_record(key: Key, lsn: Lsn, raw: Bytes, page: &mut Option<Box<Page>>) -> Result<()> {
    let Some(KeyKind::RelBlock { rel, fork, blkno }) = key.kind() else {
        return Err(TimelineError::Reconstruct {
            key,
            lsn,
            reason: "a Postgres record stored under a key that is not a relation block".into(),
        });
    };
    let fail = |reason: String| TimelineError::Reconstruct { key, lsn, reason };
    // The start LSN is not stored; redo uses only the end LSN (pd_lsn), messages show it.
    let rec = decode_record_body(lsn, lsn, raw).map_err(|e| fail(format!("stored record: {e}")))?;
    let mut touched = false;
    for blk in rec
        .blocks
        .iter()
        .filter(|b| b.rel == rel && b.fork == fork && b.blkno == blkno)
    {
        touched = true;
        let mut p = match page.take() {
            Some(p) if !blk.will_init() => p,
            Some(_) => Box::new([0u8; BLCKSZ]),
            None if redo::may_create(&rec, blk) => Box::new([0u8; BLCKSZ]),
            None => {
                return Err(fail(format!(
                    "{} needs block {} but the page does not exist",
                    redo::record_name(&rec),
                    blk.id
                )))
            }
        };
        redo::redo_block(&rec, blk.id, &mut p).map_err(|source| TimelineError::Redo {
            key,
            lsn,
            source,
        })?;
        *page = Some(p);
    }
    let extras =
        redo::extra_targets(&rec).map_err(|source| TimelineError::Redo { key, lsn, source })?;
    for t in extras
        .iter()
        .filter(|t| t.rel == rel && t.fork == fork && t.blkno == blkno)
    {
        touched = true;
        if let Some(p) = redo::redo_extra(t, page.as_deref()) {
            *page = Some(p);
        }
    }
    if !touched {
        return Err(fail(format!(
            "stored {} does not change this page",
            redo::record_name(&rec)
        )));
    }
    Ok(())
}
