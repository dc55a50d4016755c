//! The layer map: which layer files a read of key K at LSN L visits, and in which order,
//! without looking at every layer.
//!
//! Layers are grouped in *runs*: layers of the same kind that share one LSN range and have
//! disjoint key ranges (an import's image layers; the output of one compaction; a single L0
//! delta layer, which covers every key, is a run of one). Runs never partly overlap in LSN, so
//! ordering them by LSN (newest first) is the order a read needs. Inside a run the layer that
//! holds K is found by binary search on key ranges. A read therefore costs
//! O(runs × log(layers per run)); compaction keeps the number of runs small.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use layer_format::{DeltaLayerReader, ImageLayerReader, Key, LayerDesc, LayerKind, Lsn};

use super::error::{Result, TimelineError};

/// An open layer file.
pub enum LayerFile {
    Delta(DeltaLayerReader),
    Image(ImageLayerReader),
}

/// One layer file and what it covers.
pub struct Layer {
    pub desc: LayerDesc,
    pub file: LayerFile,
}

impl Layer {
    /// Opens `dir/<desc>` and checks that the file is what its name says.
    pub fn open(dir: &Path, desc: &LayerDesc) -> Result<Layer> {
        let path = dir.join(desc.file_name());
        let file = match desc.kind {
            LayerKind::Delta => LayerFile::Delta(DeltaLayerReader::open(&path)?),
            LayerKind::Image => LayerFile::Image(ImageLayerReader::open(&path)?),
        };
        Ok(Layer {
            desc: desc.clone(),
            file,
        })
    }

    pub fn file_size(&self) -> u64 {
        match &self.file {
            LayerFile::Delta(d) => d.file_size(),
            LayerFile::Image(i) => i.file_size(),
        }
    }
}

/// Layers sharing one kind and LSN range, with disjoint key ranges sorted by start.
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

/// Every layer file of a timeline, grouped in runs.
#[derive(Default)]
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
