//! The layer map: which layer files a read of key K at LSN L visits, and in which order,
//! without looking at every layer.
//!
//! Layers are grouped in *runs*: layers of the same kind that share one LSN range and have
//! disjoint key ranges (an import's image layers; the output of one compaction; a single L0
//! delta layer, which covers every key, is a run of one). Runs never partly overlap in LSN, so
//! ordering them by LSN (newest first) is the order a read needs. Inside a run the layer that
//! holds K is found by binary search on key ranges. A read therefore costs
//! O(runs × log(layers per run)); compaction keeps the number of runs small.
//!
//! A [`Layer`] is *resident* (its file open) or *remote* (listed in the metadata, its file not
//! on the local disk yet, as after a restore from the object store): the map only looks at
//! descriptions, so reads plan the same either way, and [`Layer::file`] fetches a remote
//! layer through its timeline's [`LayerFetch`] when a read (or compaction, GC) first needs
//! its content.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use layer_format::{DeltaLayerReader, ImageLayerReader, Key, LayerDesc, LayerKind, Lsn};

use super::error::{Result, TimelineError};

/// An open layer file.
pub enum LayerFile {
    Delta(DeltaLayerReader),
    Image(ImageLayerReader),
}

impl LayerFile {
    fn open(path: &Path, kind: LayerKind) -> Result<LayerFile> {
        Ok(match kind {
            LayerKind::Delta => LayerFile::Delta(DeltaLayerReader::open(path)?),
            LayerKind::Image => LayerFile::Image(ImageLayerReader::open(path)?),
        })
    }

    fn size(&self) -> u64 {
        match self {
            LayerFile::Delta(d) => d.file_size(),
            LayerFile::Image(i) => i.file_size(),
        }
    }
}

/// Where the layers of a timeline that are listed but not on the local disk come from (the
/// object store: `crate::remote::ondemand`). One per timeline, shared by its layers.
pub trait LayerFetch: Send + Sync {
    /// The size of `desc` where it is fetched from; `None` if it does not hold that layer.
    fn size(&self, desc: &LayerDesc) -> Option<u64>;
    /// Makes `path` hold layer `desc`, complete, verified and durable (never a partial file
    /// under that name); returns the bytes fetched. Blocks; callable from any thread that is
    /// not driving async tasks.
    fn fetch(&self, desc: &LayerDesc, path: &Path) -> Result<u64>;
    /// Fetches so far.
    fn stats(&self) -> FetchStats;
}

/// Counts of a [`LayerFetch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Layers downloaded (each at most once per process unless its file is removed).
    pub downloads: u64,
    pub bytes: u64,
    /// Downloads that failed (the read failed; a later read tries again).
    pub failures: u64,
}

/// Which of a timeline's layers are on the local disk, and what was fetched on demand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Residence {
    /// Layers with an open local file.
    pub resident: usize,
    /// Bytes of the resident layers' files.
    pub resident_bytes: u64,
    /// Layers listed but not fetched yet.
    pub remote: usize,
    /// Bytes of the layers not fetched yet.
    pub remote_bytes: u64,
    pub fetched: FetchStats,
}

/// A layer that is not resident: what fetches it.
struct RemoteSource {
    fetch: Arc<dyn LayerFetch>,
    /// Serializes fetches of this layer: concurrent readers wait for one download.
    lock: Mutex<()>,
}

/// One layer file and what it covers. Either *resident* (its file is open) or *remote*:
/// listed, with its size known, and fetched by the first read that needs its content
/// ([`Layer::file`]); a layer map is built from descriptions alone either way.
pub struct Layer {
    pub desc: LayerDesc,
    path: PathBuf,
    size: u64,
    file: OnceLock<LayerFile>,
    remote: Option<RemoteSource>,
}

impl Layer {
    /// Opens `dir/<desc>` and checks that the file is what its name says.
    pub fn open(dir: &Path, desc: &LayerDesc) -> Result<Layer> {
        let path = dir.join(desc.file_name());
        let file = LayerFile::open(&path, desc.kind)?;
        Ok(Layer {
            desc: desc.clone(),
            size: file.size(),
            path,
            file: OnceLock::from(file),
            remote: None,
        })
    }

    /// A layer listed for `dir` whose file is not there: `fetch` brings it at first use.
    pub fn remote(dir: &Path, desc: &LayerDesc, fetch: Arc<dyn LayerFetch>) -> Result<Layer> {
        let size = fetch.size(desc).ok_or_else(|| {
            TimelineError::Invalid(format!(
                "layer {} is neither in {} nor in the remote layer list",
                desc.file_name(),
                dir.display()
            ))
        })?;
        Ok(Layer {
            desc: desc.clone(),
            path: dir.join(desc.file_name()),
            size,
            file: OnceLock::new(),
            remote: Some(RemoteSource {
                fetch,
                lock: Mutex::new(()),
            }),
        })
    }

    /// The open file, fetched first if the layer is not resident (one fetch for concurrent
    /// callers; a failed fetch is returned, and the next call tries again).
    pub fn file(&self) -> Result<&LayerFile> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let Some(src) = &self.remote else {
            // Unreachable: a layer without a source is opened at construction.
            return Err(TimelineError::Invalid(format!(
                "layer {} is not open",
                self.path.display()
            )));
        };
        let _one = src.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        // A file in place is complete: fetches rename verified files into place.
        if !self.path.exists() {
            src.fetch.fetch(&self.desc, &self.path)?;
        }
        let file = LayerFile::open(&self.path, self.desc.kind)?;
        Ok(self.file.get_or_init(|| file))
    }

    /// Whether the file is open (a remote layer becomes resident at its first read).
    pub fn is_resident(&self) -> bool {
        self.file.get().is_some()
    }

    /// The file's size (a remote layer's as recorded remotely).
    pub fn file_size(&self) -> u64 {
        self.file.get().map_or(self.size, LayerFile::size)
    }
}

/// Layers sharing one kind and LSN range, with disjoint key ranges sorted by start.
#[derive(Clone)]
pub struct Run {
    pub kind: LayerKind,
    pub lsn_range: Range<Lsn>,
    pub layers: Vec<Arc<Layer>>,
}

impl Run {
    /// The layer whose key range holds `key`.
    fn find(&self, key: Key) -> Option<&Arc<Layer>> {
        let i = self
            .layers
            .partition_point(|l| l.desc.key_range.start <= key);
        let l = self.layers.get(i.checked_sub(1)?)?;
        l.desc.key_range.contains(&key).then_some(l)
    }
}

/// Every layer file of a timeline, grouped in runs. A clone shares the layers: compaction
/// reads a snapshot of the map on its own thread.
#[derive(Clone, Default)]
pub struct LayerMap {
    /// Newest first (descending LSN range).
    runs: Vec<Run>,
}

impl LayerMap {
    /// Adds layers; layers with the same kind and LSN range join one run. Errors if a run
    /// would get overlapping key ranges or partly overlap another run's LSN range.
    pub fn insert(&mut self, layers: Vec<Arc<Layer>>) -> Result<()> {
        for layer in layers {
            let d = &layer.desc;
            let pos = self
                .runs
                .iter()
                .position(|r| r.kind == d.kind && r.lsn_range == d.lsn_range);
            match pos {
                Some(i) => {
                    let run = &mut self.runs[i];
                    let at = run
                        .layers
                        .partition_point(|l| l.desc.key_range.start < d.key_range.start);
                    let overlaps_prev =
                        at > 0 && run.layers[at - 1].desc.key_range.end > d.key_range.start;
                    let overlaps_next = run
                        .layers
                        .get(at)
                        .is_some_and(|n| n.desc.key_range.start < d.key_range.end);
                    if overlaps_prev || overlaps_next {
                        return Err(TimelineError::Invalid(format!(
                            "layer {} overlaps another layer of its run",
                            d.file_name()
                        )));
                    }
                    run.layers.insert(at, layer);
                }
                None => {
                    for r in &self.runs {
                        let (a, b) = (&r.lsn_range, &d.lsn_range);
                        if a.start < b.end
                            && b.start < a.end
                            && !(r.kind == LayerKind::Image || d.kind == LayerKind::Image)
                        {
                            return Err(TimelineError::Invalid(format!(
                                "layer {} overlaps the LSN range {}..{} of another run",
                                d.file_name(),
                                a.start,
                                a.end
                            )));
                        }
                    }
                    let run = Run {
                        kind: d.kind,
                        lsn_range: d.lsn_range.clone(),
                        layers: vec![layer],
                    };
                    let at = self.runs.partition_point(|r| newer(r, &run));
                    self.runs.insert(at, run);
                }
            }
        }
        Ok(())
    }

    /// Removes the layers with these descriptions (after compaction replaced them).
    pub fn remove(&mut self, descs: &[LayerDesc]) {
        for r in &mut self.runs {
            r.layers.retain(|l| !descs.contains(&l.desc));
        }
        self.runs.retain(|r| !r.layers.is_empty());
    }

    /// The layers to visit for `key` at `lsn`, newest first: per run at most one layer.
    pub fn search(&self, key: Key, lsn: Lsn) -> impl Iterator<Item = &Arc<Layer>> + '_ {
        self.runs
            .iter()
            .filter(move |r| r.lsn_range.start <= lsn)
            .filter_map(move |r| r.find(key))
    }

    /// Every layer, oldest run first.
    pub fn layers(&self) -> impl Iterator<Item = &Arc<Layer>> + '_ {
        self.runs.iter().rev().flat_map(|r| r.layers.iter())
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// Run order for reads: by LSN range end, then an image before a delta that ends at the same
/// point (the image at L holds everything up to L).
fn newer(a: &Run, b: &Run) -> bool {
    let ka = (a.lsn_range.end, a.kind == LayerKind::Image);
    let kb = (b.lsn_range.end, b.kind == LayerKind::Image);
    ka > kb
}
