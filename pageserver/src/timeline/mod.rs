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
//!   ephemeral/ephemeral-<n>      the open layer's values; wiped at open
//! ```
//!
//! Writes are single-threaded (`&mut self`): ingest puts a record's values, then
//! [`Timeline::finish_record`] moves the ingest position and, when the open layer reached
//! [`TimelineConf::freeze_bytes`], freezes it and writes it out synchronously, then compacts
//! if [`CompactionConf::auto`] and the L0 layers reached their threshold. Reads take
//! `&self`. Crash safety: a layer file is durable (fsynced, renamed, directory fsynced) before
//! the metadata that lists it is replaced; at open, files the metadata does not list are
//! deleted, and ingest resumes with the record at `disk_consistent_lsn`.

pub mod compaction;
pub mod error;
pub mod layer_map;
pub mod metadata;
pub mod open_layer;
pub mod read;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use layer_format::{DeltaLayerWriter, Key, LayerDesc, Lsn, Value};

pub use compaction::{CompactionConf, CompactionReport, FailPoint, LayerStats};
pub use error::{Result, TimelineError};
use layer_map::{Layer, LayerMap};
pub use metadata::TimelineMetadata;
use open_layer::OpenLayer;
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
            freeze_bytes: 64 * 1024 * 1024,
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
    open: OpenLayer,
    next_ephemeral: u64,
    /// Start and end of the last record ingested (not necessarily durable yet).
    last_record_lsn: Lsn,
    last_record_end: Lsn,
    cache: Mutex<read::PageCache>,
    stats: Mutex<ReadStats>,
    writes: WriteStats,
    /// Every key of the durable layers, once compaction needed it (see [`compaction`]).
    keyspace: Option<BTreeSet<Key>>,
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
            layers: Vec::new(),
        };
        meta.store(dir)?;
        Self::open(dir, conf)
    }

    /// Opens the timeline in `dir` at its durable state: deletes layer files the metadata does
    /// not list (a crash between writing them and the metadata) and leftover temporary files.
    pub fn open(dir: &Path, conf: TimelineConf) -> Result<Timeline> {
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
        let eph = dir.join("ephemeral");
        if eph.exists() {
            std::fs::remove_dir_all(&eph).map_err(TimelineError::io("remove", &eph))?;
        }
        std::fs::create_dir_all(&eph).map_err(TimelineError::io("create directory", &eph))?;
        metadata::fsync_dir(dir)?;
        let mut layers = LayerMap::default();
        let opened = meta
            .layers
            .iter()
            .map(|d| Layer::open(dir, d).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        layers.insert(opened)?;
        Ok(Timeline {
            open: OpenLayer::create(&eph, 0)?,
            next_ephemeral: 1,
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
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        if lsn <= self.last_record_end && self.last_record_lsn != Lsn::INVALID
            || lsn <= self.meta.start_lsn
        {
            return Err(TimelineError::Invalid(format!(
                "value of key {key} at {lsn}: not above the last ingested LSN {}",
                self.last_record_end
            )));
        }
        self.open.put(key, lsn, value)
    }

    /// Ends a record: moves the ingest position and freezes and flushes the open layer if it
    /// reached its size (so a layer always ends at a record boundary).
    pub fn finish_record(&mut self, lsn: Lsn, end_lsn: Lsn) -> Result<()> {
        self.last_record_lsn = lsn;
        self.last_record_end = end_lsn;
        if self.open.size() >= self.conf.freeze_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Freezes the open layer, writes it as an L0 delta layer (if it holds anything) and makes
    /// everything ingested so far durable.
    pub fn flush(&mut self) -> Result<()> {
        let eph = self.dir.join("ephemeral");
        let fresh = OpenLayer::create(&eph, self.next_ephemeral)?;
        self.next_ephemeral += 1;
        let frozen = std::mem::replace(&mut self.open, fresh);
        let mut new_layers = Vec::new();
        if let Some((lo, hi)) = frozen.lsn_bounds() {
            let range = lo..Lsn(hi.0 + 1);
            let mut w = DeltaLayerWriter::new(&self.dir, Key::MIN..Key::MAX, range)?;
            let mut last = None;
            for (key, e) in frozen.iter() {
                let v = frozen.read(key, e)?;
                w.put(key, e.lsn, &v)?;
                if let Some(ks) = self.keyspace.as_mut().filter(|_| last != Some(key)) {
                    ks.insert(key);
                    last = Some(key);
                }
            }
            let written = w.finish()?;
            self.writes.l0_flushes += 1;
            self.writes.layer_bytes += written.file_size;
            self.writes.l0_bytes += written.file_size;
            new_layers.push(Arc::new(Layer::open(&self.dir, &written.desc)?));
        }
        self.add_layers(new_layers)?;
        self.maybe_compact()
    }

    /// Adds finished layer files (already durable in the directory) and stores the metadata
    /// with the current ingest position.
    pub fn add_layers(&mut self, layers: Vec<Arc<Layer>>) -> Result<()> {
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
        if let Some(ks) = self.keyspace.as_mut() {
            for l in &layers {
                if let layer_map::LayerFile::Image(img) = &l.file {
                    for k in img.keys() {
                        ks.insert(k?);
                    }
                }
            }
        }
        self.add_layers(layers)
    }
}
