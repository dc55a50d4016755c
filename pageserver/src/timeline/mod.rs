//! One timeline's storage: new values go to an open layer, which is frozen at a size and
//! written as an L0 delta layer file; image layers come from imports and from [`compaction`],
//! which also merges L0 layers into key-partitioned L1 runs; a [`layer_map`] answers which
//! files a read visits; [`metadata`] says what is durable.
//!
//! On-disk layout of a timeline directory:
//!
//! ```text
//! <timeline dir>/
//!   metadata                     durable LSNs and the list of live layers (see `metadata`)
//!   <key range>__<lsn range>.delta / <key range>__<lsn>.image   layer files
//!   remote_layers                only in a timeline restored from the object store: where
//!                                its listed layers not yet downloaded are (see
//!                                `crate::remote::ondemand`, which makes the fetcher
//!                                `Timeline::open` is given); they are fetched at first read
//! ```
//!
//! Writes are single-threaded (`&mut self`): ingest puts a record's values into the in-memory
//! open layer ([`open_layer`]), then [`Timeline::finish_record`] moves the ingest position and,
//! when the open layer reached [`TimelineConf::freeze_bytes`], freezes it and hands it to the
//! background flush thread ([`flush`]), which writes the L0 file while ingest goes on. Finished
//! L0 files are installed by the ingest thread (layer map, metadata), which then submits an
//! automatic compaction to the same thread if [`CompactionConf::auto`] and the L0 layers
//! reached their threshold; its merged files and images are installed the same way.
//! [`Timeline::flush`]
//! freezes and waits for every pending flush. Reads take `&self` and see frozen layers until
//! their files are installed. Crash safety: a layer file is durable (fsynced, renamed,
//! directory fsynced) before the metadata that lists it is replaced, and the metadata's
//! `disk_consistent_lsn` is the end of the last record of the newest *installed* layer; at
//! open, files the metadata does not list are deleted, and ingest resumes with the record at
//! `disk_consistent_lsn`.

pub mod ancestor;
pub mod boundary;
pub mod compaction;
pub mod error;
pub mod flush;
pub mod gc;
mod key_index;
pub mod layer_map;
pub mod metadata;
pub mod open_layer;
pub mod read;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use layer_format::{Key, LayerDesc, Lsn, Value};

pub use compaction::{CompactionConf, CompactionReport, FailPoint, LayerStats};
pub use error::{Result, TimelineError};
pub use gc::GcReport;
use layer_map::{Layer, LayerMap};
pub use metadata::TimelineMetadata;
use open_layer::{FrozenLayer, InMemoryLayers, OpenLayer};
pub use read::{PageVersion, ReadStats};

/// Tunables of a timeline.
#[derive(Clone, Debug)]
pub struct TimelineConf {
    /// Freeze the open layer once its values take this many bytes.
    pub freeze_bytes: u64,
    /// Pages kept materialized for reads (8 KiB each).
    pub page_cache_pages: usize,
    /// When and how to compact (see [`compaction`]).
    pub compaction: CompactionConf,
}

impl Default for TimelineConf {
    fn default() -> Self {
        TimelineConf {
            freeze_bytes: 256 * 1024 * 1024,
            page_cache_pages: 8192,
            compaction: CompactionConf::default(),
        }
    }
}

/// Counters of what the timeline wrote.
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    /// L0 delta layers written by this process.
    pub l0_flushes: u64,
    /// Bytes of layer files written by this process (imports included).
    pub layer_bytes: u64,
    /// Of `layer_bytes`: image layers of imports.
    pub import_bytes: u64,
    /// Of `layer_bytes`: L0 delta layers.
    pub l0_bytes: u64,
    /// Of `layer_bytes`: L1 delta layers written by compaction.
    pub compaction_bytes: u64,
    /// Of `layer_bytes`: image layers written by compaction.
    pub image_bytes: u64,
    /// Compactions run.
    pub compactions: u64,
}

impl WriteStats {
    /// Write amplification: bytes written to layer files by ingest and compaction (imports
    /// excluded) per byte of WAL ingested.
    pub fn write_amplification(&self, wal_bytes: u64) -> f64 {
        if wal_bytes == 0 {
            return 0.0;
        }
        (self.layer_bytes - self.import_bytes) as f64 / wal_bytes as f64
    }
}

/// A timeline's layers and ingest position.
pub struct Timeline {
    dir: PathBuf,
    conf: TimelineConf,
    /// The durable state, as last stored.
    meta: TimelineMetadata,
    layers: LayerMap,
    /// The open layer and the frozen layers not yet installed as files.
    open: InMemoryLayers,
    flusher: flush::Flusher,
    /// Set when a flush failed: the in-memory state is no longer backed by what was written,
    /// so writes are refused until the timeline is reopened from its durable state.
    broken: Option<String>,
    /// Start and end of the last record ingested (not necessarily durable yet).
    last_record_lsn: Lsn,
    last_record_end: Lsn,
    cache: Mutex<read::PageCache>,
    stats: Mutex<ReadStats>,
    writes: WriteStats,
    /// Every key of the durable layers, once compaction needed it (see [`compaction`]);
    /// shared with a background compaction while it runs.
    keyspace: Option<Arc<BTreeSet<Key>>>,
    /// Keys of layers installed while a background compaction shared `keyspace`, not added
    /// to it yet.
    keyspace_backlog: Vec<Key>,
    /// A branch's parent, for reads that reach below the branch's own history
    /// (see [`ancestor`]); attached after open.
    ancestor: Option<ancestor::Ancestor>,
    /// Where listed layers missing from `dir` come from (a timeline restored from remote
    /// storage: `crate::remote::ondemand`), as given to [`Timeline::open`]; `None`: every
    /// layer is local.
    fetch: Option<Arc<dyn layer_map::LayerFetch>>,
}

impl Timeline {
    /// Creates an empty timeline whose history begins at `start_lsn`, in `dir` (created if
    /// missing; it must not hold a timeline already).
    pub fn create(dir: &Path, conf: TimelineConf, start_lsn: Lsn) -> Result<Timeline> {
        std::fs::create_dir_all(dir).map_err(TimelineError::io("create directory", dir))?;
        if TimelineMetadata::load(dir)?.is_some() {
            return Err(TimelineError::Invalid(format!(
                "{} already holds a timeline",
                dir.display()
            )));
        }
        let meta = TimelineMetadata {
            start_lsn,
            ancestor: None,
            disk_consistent_lsn: start_lsn,
            last_record_lsn: Lsn::INVALID,
            gc_cutoff_lsn: Lsn::INVALID,
            layers: Vec::new(),
        };
        meta.store(dir)?;
        Self::open(dir, conf, None)
    }

    /// Opens the timeline in `dir` at its durable state: deletes layer files the metadata does
    /// not list (a crash between writing them and the metadata) and leftover temporary files.
    /// `fetch` brings the listed layers `dir` lacks (a timeline restored from an object store;
    /// whoever knows the store makes it: `crate::remote::ondemand::RemoteLayerSource`); with
    /// `None` every listed layer must be in `dir`.
    pub fn open(
        dir: &Path,
        conf: TimelineConf,
        fetch: Option<Arc<dyn layer_map::LayerFetch>>,
    ) -> Result<Timeline> {
        let meta = TimelineMetadata::load(dir)?.ok_or_else(|| TimelineError::Metadata {
            path: dir.join(metadata::METADATA_FILE),
            reason: "no metadata file: not a timeline directory".into(),
        })?;
        let entries = std::fs::read_dir(dir).map_err(TimelineError::io("list", dir))?;
        for e in entries {
            let e = e.map_err(TimelineError::io("list", dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let listed = LayerDesc::parse(&name).map(|d| meta.layers.contains(&d));
            if matches!(listed, Ok(false)) || name.ends_with(".tmp") {
                std::fs::remove_file(e.path()).map_err(TimelineError::io("remove", e.path()))?;
            }
        }
        // Older versions kept the open layer in files there.
        let eph = dir.join("ephemeral");
        if eph.exists() {
            std::fs::remove_dir_all(&eph).map_err(TimelineError::io("remove", &eph))?;
        }
        metadata::fsync_dir(dir)?;
        let mut layers = LayerMap::default();
        let opened = meta
            .layers
            .iter()
            .map(|d| match &fetch {
                // Restored from remote storage: layers not here yet are fetched at first read.
                Some(f) if !dir.join(d.file_name()).exists() => {
                    Layer::remote(dir, d, f.clone()).map(Arc::new)
                }
                _ => Layer::open(dir, d).map(Arc::new),
            })
            .collect::<Result<Vec<_>>>()?;
        layers.insert(opened)?;
        Ok(Timeline {
            open: InMemoryLayers::default(),
            flusher: flush::Flusher::new(dir),
            broken: None,
            dir: dir.to_path_buf(),
            last_record_lsn: meta.last_record_lsn,
            last_record_end: meta.disk_consistent_lsn,
            cache: Mutex::new(read::PageCache::new(conf.page_cache_pages)),
            stats: Mutex::new(ReadStats::default()),
            conf,
            meta,
            layers,
            writes: WriteStats::default(),
            keyspace: None,
            keyspace_backlog: Vec::new(),
            ancestor: None,
            fetch,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tunables in effect from now on (a tenant's configuration changed while it runs):
    /// the next ingested record sees the new freeze size, the next compaction its settings.
    /// A new page cache size starts an empty cache.
    pub fn set_conf(&mut self, conf: TimelineConf) {
        if conf.page_cache_pages != self.conf.page_cache_pages {
            *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
                read::PageCache::new(conf.page_cache_pages);
        }
        self.conf = conf;
    }

    pub fn conf(&self) -> &TimelineConf {
        &self.conf
    }

    pub fn start_lsn(&self) -> Lsn {
        self.meta.start_lsn
    }

    /// End of the last record whose values are all in durable layers.
    pub fn disk_consistent_lsn(&self) -> Lsn {
        self.meta.disk_consistent_lsn
    }

    /// Start of the last record ingested (`0/0` before the first).
    pub fn last_record_lsn(&self) -> Lsn {
        self.last_record_lsn
    }

    /// End of the last record ingested (the start LSN before the first).
    pub fn last_record_end(&self) -> Lsn {
        self.last_record_end
    }

    pub fn write_stats(&self) -> WriteStats {
        self.writes.clone()
    }

    /// Every live layer.
    pub fn layer_descs(&self) -> Vec<LayerDesc> {
        self.layers.layers().map(|l| l.desc.clone()).collect()
    }

    /// Number of runs in the layer map (an L0 layer is a run of its own).
    pub fn run_count(&self) -> usize {
        self.layers.runs().len()
    }

    /// Stores one value of the record being ingested. `lsn` must be above the last record's
    /// end; values of one record share its end LSN.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        self.check_put(key, lsn)?;
        self.open.open.put(key, lsn, value)
    }

    /// Like [`Timeline::put`] for `Value::pg_record(will_init, rec)`, without building the
    /// value.
    pub fn put_pg_record(&mut self, key: Key, lsn: Lsn, will_init: bool, rec: &[u8]) -> Result<()> {
        self.check_put(key, lsn)?;
        self.open.open.put_pg_record(key, lsn, will_init, rec)
    }

    /// Starts loading what a put of `key` into the open layer reads first (a hint: no effect
    /// on results); see [`key_index`].
    #[inline]
    pub fn prefetch_put(&self, key: &Key) {
        self.open.open.prefetch_key(key);
    }

    fn check_put(&self, key: Key, lsn: Lsn) -> Result<()> {
        self.check_not_broken()?;
        if lsn <= self.last_record_end && self.last_record_lsn != Lsn::INVALID
            || lsn <= self.meta.start_lsn
        {
            return Err(TimelineError::Invalid(format!(
                "value of key {key} at {lsn}: not above the last ingested LSN {}",
                self.last_record_end
            )));
        }
        Ok(())
    }

    /// Ends a record: moves the ingest position, installs L0 layers the flush thread finished,
    /// and freezes the open layer if it reached its size (so a layer always ends at a record
    /// boundary).
    pub fn finish_record(&mut self, lsn: Lsn, end_lsn: Lsn) -> Result<()> {
        self.check_not_broken()?;
        // Which page starts the record covers: what an LSN there means (`boundary`).
        for (key, value) in boundary::crossing_values(lsn, end_lsn) {
            self.put(key, end_lsn, &value)?;
        }
        self.last_record_lsn = lsn;
        self.last_record_end = end_lsn;
        if self.flusher.has_ready() {
            self.install_background(false)?;
        }
        if self.open.size() >= self.conf.freeze_bytes {
            self.freeze()?;
        }
        Ok(())
    }

    /// Freezes the open layer, waits until every frozen layer is written as an L0 delta layer
    /// and installed, and makes everything ingested so far durable.
    pub fn flush(&mut self) -> Result<()> {
        self.check_not_broken()?;
        if let Some(frozen) = self.take_frozen() {
            if self.flusher.in_flight() == 0 {
                self.flusher.submit(frozen)?;
            } else {
                // The thread is still writing older layers: write this one here meanwhile
                // (installed after them, in order).
                let own = flush::write_l0(&self.dir, &frozen);
                drop(frozen);
                self.drain_background()?;
                self.install_done(flush::Done::Flushed(own))?;
            }
        }
        self.drain_background()?;
        if (self.meta.disk_consistent_lsn, self.meta.last_record_lsn)
            != (self.last_record_end, self.last_record_lsn)
        {
            // Records without values moved the position.
            self.meta.disk_consistent_lsn = self.last_record_end;
            self.meta.last_record_lsn = self.last_record_lsn;
            self.meta.store(&self.dir)?;
        }
        self.maybe_compact()
    }

    fn check_not_broken(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(TimelineError::Invalid(format!(
                "timeline {} refuses writes after a failed flush ({why}); reopen it",
                self.dir.display()
            ))),
        }
    }

    /// Hands the open layer (if it holds values) to the flush thread, first waiting for the
    /// oldest frozen layer if [`flush::MAX_FROZEN`] are in flight.
    fn freeze(&mut self) -> Result<()> {
        if self.open.open.is_empty() {
            return Ok(());
        }
        while self.open.frozen.len() >= flush::MAX_FROZEN {
            self.install_background(true)?;
        }
        match self.take_frozen() {
            Some(frozen) => self.flusher.submit(frozen),
            None => Ok(()),
        }
    }

    /// Turns the open layer (if it holds values) into the newest frozen layer, which reads see
    /// until it is installed as a file.
    fn take_frozen(&mut self) -> Option<Arc<FrozenLayer>> {
        if self.open.open.is_empty() {
            return None;
        }
        let fresh = OpenLayer::with_capacity(self.open.open.key_count());
        let frozen = Arc::new(FrozenLayer {
            layer: std::mem::replace(&mut self.open.open, fresh),
            last_record_lsn: self.last_record_lsn,
            last_record_end: self.last_record_end,
        });
        self.open.frozen.push_back(frozen.clone());
        Some(frozen)
    }

    /// Installs what the background thread finished, in submission order: an L0 layer joins
    /// the layer map, its frozen layer leaves memory, and the metadata moves to the frozen
    /// layer's ingest position; a merge replaces its L0 layers. With `wait`, waits for at
    /// least one result. Then starts a background L0 merge if one is due.
    fn install_background(&mut self, wait: bool) -> Result<()> {
        let mut wait = wait;
        while let Some(done) = self.flusher.take(wait) {
            wait = false;
            self.install_done(done)?;
        }
        if !self.flusher.merging() {
            if let Some(groups) = self.due_l0_merge() {
                let target = self.conf.compaction.target_file_bytes;
                let snapshot = self.image_snapshot()?;
                self.flusher.submit_compaction(groups, target, snapshot)?;
            }
        }
        Ok(())
    }

    /// Waits for every background job and installs its result (no new merge is started).
    pub(super) fn drain_background(&mut self) -> Result<()> {
        while let Some(done) = self.flusher.take(true) {
            self.install_done(done)?;
        }
        Ok(())
    }

    /// Installs one background result; an error (the thread's or the installation's) marks
    /// the timeline broken.
    fn install_done(&mut self, done: flush::Done) -> Result<()> {
        let res = match done {
            flush::Done::Flushed(r) => r.and_then(|f| self.install_one(f)),
            flush::Done::Compacted(r) => r.and_then(|c| self.finish_background_compaction(c)),
        };
        if let Err(e) = &res {
            self.broken = Some(e.to_string());
        }
        res
    }

    fn install_one(&mut self, flushed: Option<flush::FlushedLayer>) -> Result<()> {
        let frozen = self.open.frozen.pop_front().ok_or_else(|| {
            TimelineError::Invalid("a flushed layer without a frozen layer".into())
        })?;
        let mut meta = self.meta.clone();
        if let Some(f) = &flushed {
            meta.layers.push(f.layer.desc.clone());
            self.layers.insert(vec![f.layer.clone()])?;
            self.writes.l0_flushes += 1;
            self.writes.layer_bytes += f.file_size;
            self.writes.l0_bytes += f.file_size;
        }
        meta.disk_consistent_lsn = frozen.last_record_end;
        meta.last_record_lsn = frozen.last_record_lsn;
        meta.store(&self.dir)?;
        self.meta = meta;
        if self.keyspace.is_some() {
            self.add_keys(frozen.layer.sorted_keys());
        }
        Ok(())
    }

    /// Adds finished layer files (already durable in the directory) and stores the metadata
    /// with the current ingest position (after any pending flush; the open layer must hold
    /// nothing, as after an import).
    pub fn add_layers(&mut self, layers: Vec<Arc<Layer>>) -> Result<()> {
        self.check_not_broken()?;
        self.drain_background()?;
        if !self.open.open.is_empty() {
            return Err(TimelineError::Invalid(
                "add_layers: the open layer holds values that are not durable; flush first".into(),
            ));
        }
        for l in &layers {
            self.meta.layers.push(l.desc.clone());
        }
        self.layers.insert(layers)?;
        self.meta.disk_consistent_lsn = self.last_record_end;
        self.meta.last_record_lsn = self.last_record_lsn;
        self.meta.store(&self.dir)
    }

    /// Adds image layer files written into [`Timeline::dir`] (by an import).
    pub fn add_image_layers(&mut self, descs: &[LayerDesc], bytes: u64) -> Result<()> {
        let layers = descs
            .iter()
            .map(|d| Layer::open(&self.dir, d).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        self.writes.layer_bytes += bytes;
        self.writes.import_bytes += bytes;
        if self.keyspace.is_some() {
            let mut keys = Vec::new();
            for l in &layers {
                if let layer_map::LayerFile::Image(img) = l.file()? {
                    for k in img.keys() {
                        keys.push(k?);
                    }
                }
            }
            self.add_keys(keys);
        }
        self.add_layers(layers)
    }
}
