//! Compaction: keeps the number of layer files a GetPage visits (read amplification) small,
//! while rewriting the WAL's bytes as few times as possible (write amplification).
//!
//! # What a read costs
//!
//! A read of key K at LSN L visits, newest first, at most one layer per *run* (see
//! [`super::layer_map`]) whose LSN range starts at or below L, until it meets an image or a
//! `will_init` record. An L0 delta layer covers the whole key space, so every read visits
//! every L0 layer above its base: without compaction a read of a cold page visits every L0
//! layer ever written (76 on the pgbench fixture of `tests/timeline_ingest.rs`). The cost of a
//! read is therefore
//!
//! ```text
//! layers visited ≤ (L0 layers not yet compacted)
//!                + (delta runs with a layer over K, above the newest image of K at or below L)
//!                + 1 (that image)
//! ```
//!
//! # The design: L0 → one sorted L1 run, images placed by read cost, no further levels
//!
//! 1. **L0 → L1.** Once there are `l0_threshold` (2) L0 layers, all of them are merged
//!    (k-way, by (key, LSN)) into *one run*: key-partitioned delta layers of about
//!    `target_file_bytes` (128 MiB) sharing the LSN range of the inputs, split only between
//!    two keys (all versions of a key stay in one file). Each output file's key range is
//!    *tight* — from its first key to just past its last — so a run costs a read only where it
//!    holds data: a read of a key the run never changed does not visit it. The merge reads the
//!    inputs once, holding one index block per input in memory; an output file is opened at
//!    its first key and gets its end (header and name) when it is cut.
//! 2. **Images by measured read cost.** After an L0 merge, the key space (every key of every
//!    durable layer, kept in memory and extended at each flush) is cut into partitions of at
//!    most `image_partition_pages` keys that never mix key kinds. For each partition we count
//!    the delta runs that have a layer overlapping it above the newest image run that covers
//!    it — exactly the runs a read in that partition may cross. When that count reaches
//!    `image_threshold` (3), the partition is materialized as an image layer at the
//!    disk-consistent LSN, every page rebuilt through the normal read path (so an image is
//!    correct by the same proof as GetPage). Cold partitions get no new image; their reads do
//!    not cross the new runs either, thanks to the tight key ranges.
//! 3. **No L2 / tiering of L1 runs.** Merging L1 runs again would cost one more rewrite of
//!    every delta byte (+1× write amplification per level); bounding run counts with images
//!    costs the partition's compressed page size once per `l0_threshold × image_threshold`
//!    flushes (every 384 MiB of WAL with the defaults), which for a database that is not far
//!    larger than that is much cheaper. A time- or size-tiered L1 merge is the natural next
//!    step for databases far larger than their write rate (it trades a delta rewrite for an
//!    image rewrite where the deltas of a partition are smaller than its pages).
//!
//! Bounds with the defaults: a read visits at most `l0_threshold − 1 = 1` L0 layer, at most
//! `image_threshold − 1 = 2` delta runs above its image, and the image: **≤ 4 layers for
//! every read**, at the tip and historically (a historic read's base is the newest image
//! below its LSN, and between two images of a partition there are at most `image_threshold`
//! runs). Neon's two-level LSM bounds only the L1 layers above an image (and lets L0 layers
//! pile up under load), reaching p99 ≈ 20. Write amplification: every delta byte is written
//! exactly twice, to an L0 and to an L1 layer (stored values are smaller than the WAL: no
//! record headers, lz4), plus the images.
//!
//! Measured (`cargo bench -p pageserver --bench compaction`, release, 64 MiB L0 layers,
//! `STRATA_BENCH_SCALE=50 STRATA_BENCH_SECONDS=120`: pgbench -i -s 50 and a 120 s run with 4
//! clients, 718.5 MB of WAL; reads of every 7th block of every fork at the latest, a halfway
//! and an early LSN, page cache off):
//!
//! | | layers visited p50 / p99 / max | write amplification | GetPage latest / halfway p50 |
//! | --- | --- | --- | --- |
//! | no compaction (12 L0) | 5 / 13 / 13 | 0.43× | 6.6 µs / 3.5 µs |
//! | one explicit compaction | 1 / 2 / 2 | 0.86× | 5.8 µs / 3.6 µs |
//! | automatic (defaults) | 2 / 4 / 4 | 1.11× (L0 0.43, L1 0.43, images 0.24) | 2.5 µs / 3.5 µs |
//!
//! With 1 MiB L0 layers (`tests/compaction.rs`, 32 MB of WAL, 34 L0 layers: p99 35 without
//! compaction) automatic compaction gives p99 3 and write amplification 1.5–1.8×: images
//! cost more relative to the WAL when layers are small, since one is made per 6 flushes.
//!
//! Not yet: SLRU pages stored as Strata records cannot be rebuilt by this read path, so
//! their partition gets no image (counted as skipped) and SLRU reads are not bounded; once
//! [`Timeline::get_page_version`] applies Strata records, those partitions get images too.
//!
//! # Rules that keep reads correct
//!
//! - Images are made at an LSN X below which every delta is in an L1 run: an explicit
//!   compaction makes them once no L0 layer is left, at the disk-consistent LSN; an automatic
//!   one at the end of the run it just merged (X = its last LSN), below every L0 layer written
//!   since. Every delta run ends at or below X + 1 and every later value is above X, so no
//!   delta run (now or after a later merge, which only merges L0 layers newer than X) ever
//!   spans an image. A run spanning an image would make a read apply records below the image
//!   on top of it. The L0 merge still checks this and splits its input at any image it would
//!   span.
//! - A partition whose pages cannot all be rebuilt (a key with records the read path cannot
//!   apply) gets no image; it is counted in [`CompactionReport::image_partitions_skipped`].
//!
//! # Automatic compaction and `verify-redo`
//!
//! [`CompactionConf::auto`] (on by default) compacts after a flush once the L0 threshold is
//! reached: during ingest the L0 → L1 merge ([`merge_l0`]) *and* the images after it run on
//! a background thread of the timeline's own ([`compact_in_background`], [`super::flush`]:
//! beside the L0 flush thread, so a long compaction holds up no flush), off the ingest path; the ingest thread only installs the finished files. [`Timeline::flush`] and
//! explicit compactions wait for it and compact synchronously. So `verify-redo` checks
//! consistency images against GetPage through L0 layers, L1 runs and compaction images alike.
//! Its `--final` comparison takes the masking of a page whose newest version is an image from
//! the page's layout (heap, b-tree, VM).
//!
//! # Why compaction off the ingest path is safe
//!
//! - **What it reads.** When the merge is submitted, the ingest thread hands the thread an
//!   [`ImageSnapshot`]: a clone of the layer map (the layers are shared, `Arc`), the
//!   ancestor link and the key space (shared, `Arc`). On the thread the merge's L1 files
//!   replace its L0 inputs in that map, and the images are rebuilt at X (above) through the
//!   normal read path over it ([`super::read::Sources`] without in-memory layers). Everything
//!   ingest adds meanwhile is above X (newer L0 layers, in-memory layers), so the snapshot
//!   gives the same pages at X as the timeline would. Layer files are immutable, and nothing
//!   removes a layer while the job runs: GC, explicit compaction, imports and `flush` first
//!   wait for the job ([`Timeline::drain_background`]).
//! - **What it writes.** Only new files (fsynced, renamed, directory fsynced), under names
//!   no live layer has. It touches no timeline state.
//! - **Publishing.** The ingest thread installs the result once it is ready, between two
//!   records (or when `flush` waits for it): the merge, then the images, each exactly as a synchronous compaction does it
//!   (new layer set checked, metadata replaced atomically, layer map swapped, replaced files
//!   deleted), so the durable manifest order and the crash points are unchanged. A job that
//!   fails leaves unlisted files, which the next open deletes, and fails the timeline's next
//!   write like a failed flush.
//! - **The key space** is shared while the job runs; keys of layers installed meanwhile wait
//!   in a backlog added once the job has let go of it (no copy under steady ingest).
//!
//! # Crash safety
//!
//! New layer files are written under temporary names, fsynced, renamed and the directory
//! fsynced (the layer writers do this); then the new layer set is checked by building a
//! layer map from it; then the metadata listing the new set is replaced atomically; only then
//! are the replaced files deleted. A crash before the metadata is replaced leaves unlisted new
//! files, a crash after leaves unlisted old files: [`Timeline::open`] deletes unlisted files
//! either way, so the timeline is the old or the new set, both complete. `tests/compaction.rs`
//! stops a compaction after each step ([`FailPoint`]) and reopens.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use layer_format::{
    DeltaEntry, DeltaLayerReader, DeltaLayerWriter, ImageLayerWriter, Key, LayerDesc, LayerKind,
    Lsn, WrittenLayer,
};

use super::ancestor::Ancestor;
use super::error::{Result, TimelineError};
use super::layer_map::{Layer, LayerFile, LayerMap};
use super::read::Sources;
use super::{metadata, Timeline};

/// Threads that rebuild image partitions at once (at most the machine's cores).
const IMAGE_THREADS: usize = 4;

/// Threads a merge that is waited for splits its key space between (at most the machine's
/// cores).
const MERGE_THREADS: usize = 4;

/// The machine's cores, at most `limit` (at least 1).
fn cores_up_to(limit: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(limit)
}

/// Bytes of an index entry in a layer file (for sizing output files).
const INDEX_ENTRY_BYTES: u64 = 43;

/// Tunables of compaction.
#[derive(Clone, Debug)]
pub struct CompactionConf {
    /// Compact after a flush when the thresholds are reached (the default).
    pub auto: bool,
    /// Merge the L0 layers into an L1 run once there are this many.
    pub l0_threshold: usize,
    /// Materialize a partition once reads there may cross this many delta runs.
    pub image_threshold: usize,
    /// Target size of an L1 delta layer file.
    pub target_file_bytes: u64,
    /// Keys per image partition (8 KiB pages: 16384 is 128 MiB before compression).
    pub image_partition_pages: usize,
}

impl Default for CompactionConf {
    fn default() -> Self {
        CompactionConf {
            auto: true,
            l0_threshold: 2,
            image_threshold: 3,
            target_file_bytes: 128 * 1024 * 1024,
            image_partition_pages: 16384,
        }
    }
}

/// Where a compaction stops early, simulating a crash (for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// Run to the end.
    None,
    /// After the new layer files are durable, before the metadata lists them.
    AfterNewFiles,
    /// After the metadata lists the new set, before the replaced files are deleted.
    AfterMetadata,
}

/// What one compaction did.
#[derive(Clone, Debug, Default)]
pub struct CompactionReport {
    /// L0 layers merged into L1 runs.
    pub l0_merged: usize,
    /// L1 runs written.
    pub l1_runs_written: usize,
    pub l1_layers_written: usize,
    pub l1_bytes: u64,
    pub image_layers_written: usize,
    pub image_bytes: u64,
    /// Partitions that needed an image but had a page that could not be rebuilt.
    pub image_partitions_skipped: usize,
}

impl CompactionReport {
    fn add(&mut self, o: &CompactionReport) {
        self.l0_merged += o.l0_merged;
        self.l1_runs_written += o.l1_runs_written;
        self.l1_layers_written += o.l1_layers_written;
        self.l1_bytes += o.l1_bytes;
        self.image_layers_written += o.image_layers_written;
        self.image_bytes += o.image_bytes;
        self.image_partitions_skipped += o.image_partitions_skipped;
    }
}

/// Layers and runs per level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub l0_layers: usize,
    pub l0_bytes: u64,
    pub l1_runs: usize,
    pub l1_layers: usize,
    pub l1_bytes: u64,
    pub image_runs: usize,
    pub image_layers: usize,
    pub image_bytes: u64,
}

impl LayerStats {
    pub fn summary(&self) -> String {
        format!(
            "L0: {} layers {} bytes; L1: {} runs, {} layers, {} bytes; images: {} runs, {} layers, {} bytes",
            self.l0_layers,
            self.l0_bytes,
            self.l1_runs,
            self.l1_layers,
            self.l1_bytes,
            self.image_runs,
            self.image_layers,
            self.image_bytes
        )
    }
}

/// An L0 layer covers every key.
pub fn is_l0(d: &LayerDesc) -> bool {
    d.kind == LayerKind::Delta && d.key_range == (Key::MIN..Key::MAX)
}

fn overlaps(a: &Range<Key>, b: &Range<Key>) -> bool {
    a.start < b.end && b.start < a.end
}

/// K-way merge of delta layers' index entries in (key, LSN) order.
struct Merge<'a> {
    iters: Vec<Box<dyn Iterator<Item = layer_format::Result<DeltaEntry>> + 'a>>,
    heads: Vec<Option<DeltaEntry>>,
    heap: BinaryHeap<Reverse<(Key, Lsn, usize)>>,
}

impl<'a> Merge<'a> {
    /// Merges the entries of `layers` whose key lies in `keys`.
    fn new(layers: &'a [Arc<Layer>], keys: &Range<Key>) -> Result<Merge<'a>> {
        let mut m = Merge {
            iters: Vec::new(),
            heads: Vec::new(),
            heap: BinaryHeap::new(),
        };
        for (i, l) in layers.iter().enumerate() {
            let LayerFile::Delta(d) = l.file()? else {
                return Err(TimelineError::Invalid(format!(
                    "{} is not a delta layer",
                    l.desc.file_name()
                )));
            };
            m.iters.push(Box::new(d.entries_in(keys.clone())));
            m.heads.push(None);
            m.advance(i)?;
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> Result<()> {
        self.heads[i] = self.iters[i].next().transpose()?;
        if let Some(e) = &self.heads[i] {
            self.heap.push(Reverse((e.key, e.lsn, i)));
        }
        Ok(())
    }

    /// The next entry and the index of the layer it comes from.
    fn next_entry(&mut self) -> Result<Option<(usize, DeltaEntry)>> {
        let Some(Reverse((_, _, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let e = self.heads[i].take().expect("a head for every heap entry");
        self.advance(i)?;
        Ok(Some((i, e)))
    }
}

/// The files of an L0 → L1 merge, written and durable but not yet listed anywhere.
pub struct L0Merge {
    /// The L0 layers the runs replace.
    pub removed: Vec<LayerDesc>,
    pub written: Vec<WrittenLayer>,
    pub report: CompactionReport,
}

/// Writes each group of L0 layers as one L1 run (does not touch the timeline's state, so it
/// can run on the background thread while ingest goes on). A group's key space is cut into
/// slices merged on up to `threads` threads.
pub fn merge_l0(
    dir: &Path,
    target_file_bytes: u64,
    groups: &[Vec<Arc<Layer>>],
    threads: usize,
) -> Result<L0Merge> {
    let mut rep = CompactionReport::default();
    let mut removed = Vec::new();
    let mut written = Vec::new();
    for g in groups {
        let slices = key_slices(g, threads)?;
        let merged: Vec<Result<Vec<WrittenLayer>>> = if slices.len() == 1 {
            vec![merge_slice(dir, target_file_bytes, g, &slices[0])]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = slices
                    .iter()
                    .map(|keys| scope.spawn(|| merge_slice(dir, target_file_bytes, g, keys)))
                    .collect();
                handles
                    .into_iter()
                    // A panicking merge is a bug; propagate it.
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        // Slices are in key order, so the run's files are too.
        for files in merged {
            written.extend(files?);
        }
        rep.l0_merged += g.len();
        rep.l1_runs_written += 1;
        removed.extend(g.iter().map(|l| l.desc.clone()));
    }
    rep.l1_layers_written = written.len();
    rep.l1_bytes = written.iter().map(|w| w.file_size).sum();
    Ok(L0Merge {
        removed,
        written,
        report: rep,
    })
}

/// The key space of a group of L0 layers cut into up to `parts` slices of about equal entry
/// counts (by the largest layer's index).
fn key_slices(g: &[Arc<Layer>], parts: usize) -> Result<Vec<Range<Key>>> {
    let mut largest: Option<(u64, &DeltaLayerReader)> = None;
    for l in g {
        if let LayerFile::Delta(d) = l.file()? {
            if largest.is_none_or(|(n, _)| d.entry_count() > n) {
                largest = Some((d.entry_count(), d));
            }
        }
    }
    let cuts = largest.map_or_else(Vec::new, |(_, d)| d.split_keys(parts));
    let mut slices = Vec::with_capacity(cuts.len() + 1);
    let mut start = Key::MIN;
    for cut in cuts {
        slices.push(start..cut);
        start = cut;
    }
    slices.push(start..Key::MAX);
    Ok(slices)
}

/// Merges the entries of `g` in `keys` into L1 files, cut between two keys once a file holds
/// `target_file_bytes` (all versions of a key stay in one file); each file's key range runs
/// from its first key to just past its last.
fn merge_slice(
    dir: &Path,
    target_file_bytes: u64,
    g: &[Arc<Layer>],
    keys: &Range<Key>,
) -> Result<Vec<WrittenLayer>> {
    let lsn_range = g[0].desc.lsn_range.start..g[g.len() - 1].desc.lsn_range.end;
    let target = target_file_bytes.max(1);
    let mut written = Vec::new();
    let mut merge = Merge::new(g, keys)?;
    // The file being written, its last key and its bytes so far.
    let mut out: Option<(DeltaLayerWriter, Key, u64)> = None;
    while let Some((i, e)) = merge.next_entry()? {
        if let Some((_, last, bytes)) = &out {
            if e.key != *last && *bytes >= target {
                let (w, last, _) = out.take().expect("checked above");
                written.push(w.finish_at_key_end(last.next())?);
            }
        }
        let (w, last, bytes) = match &mut out {
            Some(o) => o,
            None => out.insert((
                DeltaLayerWriter::new(dir, e.key..Key::MAX, lsn_range.clone())?,
                e.key,
                0,
            )),
        };
        let LayerFile::Delta(d) = g[i].file()? else {
            unreachable!("Merge::new checked the kinds")
        };
        // Compressed values (L0 page images) are copied as they are stored; records
        // are compressed on the way (L0 keeps them raw).
        let stored = d.read_stored(&e.handle)?;
        w.put_stored(e.key, e.lsn, &e.handle, stored)?;
        *last = e.key;
        *bytes += e.handle.stored_len() as u64 + INDEX_ENTRY_BYTES;
    }
    if let Some((w, last, _)) = out {
        written.push(w.finish_at_key_end(last.next())?);
    }
    Ok(written)
}

impl Timeline {
    /// Compacts now, whatever the thresholds say about L0 layers: merges every L0 layer into
    /// an L1 run, then materializes the partitions whose reads cross `image_threshold` delta
    /// runs. Works on durable layers only (call [`Timeline::flush`] first to include the
    /// open layer).
    pub fn compact(&mut self) -> Result<CompactionReport> {
        self.compact_with(true, FailPoint::None)
    }

    /// Compaction with a failpoint (tests): `force` merges L0 layers below the threshold.
    /// With a failpoint other than [`FailPoint::None`], stops there with an error, leaving the
    /// directory as a crash would; the timeline must then be dropped and reopened.
    #[doc(hidden)]
    pub fn compact_with(&mut self, force: bool, fp: FailPoint) -> Result<CompactionReport> {
        let timer = strata_metrics::Timer::start();
        let r = self.compact_now(force, fp);
        crate::metrics::compaction_run(timer);
        r
    }

    fn compact_now(&mut self, force: bool, fp: FailPoint) -> Result<CompactionReport> {
        // Never alongside a background merge of the same L0 layers.
        self.drain_background()?;
        let mut rep = CompactionReport::default();
        let l0 = self.l0_layers();
        let want = if force {
            1
        } else {
            self.conf.compaction.l0_threshold.max(1)
        };
        if l0.len() >= want {
            let r = self.compact_l0(l0, fp)?;
            rep.add(&r);
        }
        if self.l0_layers().is_empty() {
            let r = self.create_images(fp)?;
            rep.add(&r);
        }
        self.count_compaction(&rep);
        Ok(rep)
    }

    fn count_compaction(&mut self, rep: &CompactionReport) {
        self.writes.compactions += 1;
        crate::metrics::compacted();
        self.writes.compaction_bytes += rep.l1_bytes;
        self.writes.image_bytes += rep.image_bytes;
        self.writes.layer_bytes += rep.l1_bytes + rep.image_bytes;
    }

    /// The L0 layers to merge on the background thread, if automatic compaction is due.
    pub(super) fn due_l0_merge(&self) -> Option<Vec<Vec<Arc<Layer>>>> {
        let c = &self.conf.compaction;
        let l0 = self.l0_layers();
        (c.auto && l0.len() >= c.l0_threshold.max(1)).then(|| self.l0_groups(l0))
    }

    /// Installs a background compaction: the L0 merge, then the images the background thread
    /// placed after it (each step stored in the metadata as a compaction stores it).
    pub(super) fn finish_background_compaction(
        &mut self,
        done: BackgroundCompaction,
    ) -> Result<()> {
        let mut rep = self.install_l0_merge(done.merge, FailPoint::None)?;
        rep.add(&done.images.report());
        if !done.images.written.is_empty() {
            self.replace_layers(&[], &done.images.written, FailPoint::None)?;
        }
        self.count_compaction(&rep);
        Ok(())
    }

    /// What a background compaction submitted now reads besides its L0 layers.
    pub(super) fn image_snapshot(&mut self) -> Result<ImageSnapshot> {
        let keyspace = self.keyspace_arc()?;
        let ancestor = self.sources().ancestor.map(|a| a.cloned());
        Ok(ImageSnapshot {
            layers: self.layers.clone(),
            ancestor,
            keyspace,
            conf: self.conf.compaction.clone(),
        })
    }

    /// Called after a flush: compacts if enabled and the L0 layers reached the threshold.
    pub(super) fn maybe_compact(&mut self) -> Result<()> {
        let c = &self.conf.compaction;
        if c.auto && self.l0_layers().len() >= c.l0_threshold.max(1) {
            self.compact_with(false, FailPoint::None)?;
        }
        Ok(())
    }

    /// Runs and layers per level.
    pub fn layer_stats(&self) -> LayerStats {
        let mut s = LayerStats::default();
        for r in self.layers.runs() {
            let bytes: u64 = r.layers.iter().map(|l| l.file_size()).sum();
            match r.kind {
                LayerKind::Image => {
                    s.image_runs += 1;
                    s.image_layers += r.layers.len();
                    s.image_bytes += bytes;
                }
                LayerKind::Delta => {
                    let n0 = r.layers.iter().filter(|l| is_l0(&l.desc)).count();
                    s.l0_layers += n0;
                    if n0 < r.layers.len() {
                        s.l1_runs += 1;
                        s.l1_layers += r.layers.len() - n0;
                    }
                    for l in &r.layers {
                        if is_l0(&l.desc) {
                            s.l0_bytes += l.file_size();
                        } else {
                            s.l1_bytes += l.file_size();
                        }
                    }
                }
            }
        }
        s
    }

    /// L0 layers, oldest first.
    fn l0_layers(&self) -> Vec<Arc<Layer>> {
        let mut v: Vec<Arc<Layer>> = self
            .layers
            .layers()
            .filter(|l| is_l0(&l.desc))
            .cloned()
            .collect();
        v.sort_by_key(|l| l.desc.lsn_range.start);
        v
    }

    /// LSNs of every image run.
    fn image_lsns(&self) -> Vec<Lsn> {
        self.layers
            .runs()
            .iter()
            .filter(|r| r.kind == LayerKind::Image)
            .map(|r| r.lsn_range.start)
            .collect()
    }

    /// Merges L0 layers (oldest first) into L1 runs: one run per group of consecutive layers
    /// that no image lies inside.
    fn compact_l0(&mut self, l0: Vec<Arc<Layer>>, fp: FailPoint) -> Result<CompactionReport> {
        let groups = self.l0_groups(l0);
        // Someone waits for this merge (a flush, an explicit compaction): use every core.
        let merged = merge_l0(
            &self.dir,
            self.conf.compaction.target_file_bytes,
            &groups,
            cores_up_to(MERGE_THREADS),
        )?;
        self.install_l0_merge(merged, fp)
    }

    /// Groups L0 layers (oldest first) for [`merge_l0`]: consecutive layers that no image
    /// lies inside.
    pub(super) fn l0_groups(&self, l0: Vec<Arc<Layer>>) -> Vec<Vec<Arc<Layer>>> {
        let images = self.image_lsns();
        let mut groups: Vec<Vec<Arc<Layer>>> = Vec::new();
        for l in l0 {
            let split = match groups.last().and_then(|g| g.first()) {
                None => true,
                Some(first) => {
                    let (s, e) = (first.desc.lsn_range.start, l.desc.lsn_range.end);
                    images.iter().any(|&x| s <= x && x.0 + 1 < e.0)
                }
            };
            if split {
                groups.push(vec![l]);
            } else {
                groups.last_mut().expect("a group").push(l);
            }
        }
        groups
    }

    /// Replaces the merged L0 layers with their L1 runs (see [`merge_l0`]).
    pub(super) fn install_l0_merge(
        &mut self,
        merged: L0Merge,
        fp: FailPoint,
    ) -> Result<CompactionReport> {
        if !merged.removed.is_empty() {
            self.replace_layers(&merged.removed, &merged.written, fp)?;
        }
        Ok(merged.report)
    }

    /// Every key of every durable layer (built on first use, extended at each flush).
    pub(super) fn keyspace(&mut self) -> Result<&BTreeSet<Key>> {
        Ok(self.keyspace_arc_ref()?)
    }

    /// The key space, shared (a background compaction reads it while ingest goes on).
    fn keyspace_arc(&mut self) -> Result<Arc<BTreeSet<Key>>> {
        Ok(self.keyspace_arc_ref()?.clone())
    }

    fn keyspace_arc_ref(&mut self) -> Result<&Arc<BTreeSet<Key>>> {
        if self.keyspace.is_none() {
            let mut keys = BTreeSet::new();
            for l in self.layers.layers() {
                match l.file()? {
                    LayerFile::Delta(d) => {
                        let mut last = None;
                        for e in d.entries() {
                            let k = e?.key;
                            if last != Some(k) {
                                keys.insert(k);
                                last = Some(k);
                            }
                        }
                    }
                    LayerFile::Image(img) => {
                        for k in img.keys() {
                            keys.insert(k?);
                        }
                    }
                }
            }
            // A branch's images must also hold the keys it inherits (see `ancestor`).
            keys.extend(self.ancestor_keys()?);
            self.keyspace = Some(Arc::new(keys));
            self.keyspace_backlog.clear();
        }
        let ks = self.keyspace.as_mut().expect("just built");
        if !self.keyspace_backlog.is_empty() {
            // Only a clone if a background compaction still reads the set.
            Arc::make_mut(ks).extend(self.keyspace_backlog.drain(..));
        }
        Ok(ks)
    }

    /// Adds keys of a layer just installed to the key space (if it is built): in place, or,
    /// while a background compaction reads the set, to a backlog added later.
    pub(super) fn add_keys(&mut self, keys: impl IntoIterator<Item = Key>) {
        let Some(ks) = self.keyspace.as_mut() else {
            return;
        };
        match Arc::get_mut(ks) {
            Some(set) => {
                set.extend(self.keyspace_backlog.drain(..));
                set.extend(keys);
            }
            None => self.keyspace_backlog.extend(keys),
        }
    }

    /// The key space cut into partitions of at most `image_partition_pages` keys of one kind;
    /// together they cover from the first key to just past the last.
    pub(super) fn partitions(&mut self) -> Result<Vec<Range<Key>>> {
        let max = self.conf.compaction.image_partition_pages;
        Ok(partitions(self.keyspace()?, max))
    }

    /// Image layers, at the disk-consistent LSN, for the partitions whose reads cross
    /// `image_threshold` delta runs.
    fn create_images(&mut self, fp: FailPoint) -> Result<CompactionReport> {
        self.create_images_at(self.meta.disk_consistent_lsn, fp)
    }

    /// Image layers at `lsn` for the partitions whose reads at `lsn` cross `image_threshold`
    /// delta runs. Every delta at or below `lsn` must be in an L1 run already.
    fn create_images_at(&mut self, lsn: Lsn, fp: FailPoint) -> Result<CompactionReport> {
        let keyspace = self.keyspace_arc()?;
        let images = build_images(
            &self.dir,
            &self.layers,
            &self.sources(),
            &keyspace,
            &self.conf.compaction,
            lsn,
        )?;
        if !images.written.is_empty() {
            self.replace_layers(&[], &images.written, fp)?;
        }
        Ok(images.report())
    }

    /// Materializes every key of `range` at `lsn` through the read path.
    pub(super) fn write_image(&mut self, range: &Range<Key>, lsn: Lsn) -> Result<WrittenLayer> {
        let keys: Vec<Key> = self.keyspace()?.range(range.clone()).copied().collect();
        write_image_keys(&self.dir, &self.sources(), range, &keys, lsn)
    }

    /// Replaces the layers `remove` with the durable files `add`: checks the new set, stores
    /// the metadata, then deletes the replaced files.
    pub(super) fn replace_layers(
        &mut self,
        remove: &[LayerDesc],
        add: &[WrittenLayer],
        fp: FailPoint,
    ) -> Result<()> {
        if fp == FailPoint::AfterNewFiles {
            return Err(TimelineError::Invalid(
                "failpoint: stopped after writing the new layer files".into(),
            ));
        }
        let mut kept: Vec<Arc<Layer>> = self
            .layers
            .layers()
            .filter(|l| !remove.contains(&l.desc))
            .cloned()
            .collect();
        for w in add {
            if kept.iter().any(|l| l.desc == w.desc) {
                return Err(TimelineError::Invalid(format!(
                    "compaction output {} is already a live layer",
                    w.desc.file_name()
                )));
            }
            kept.push(Arc::new(Layer::open(&self.dir, &w.desc)?));
        }
        let mut map = LayerMap::default();
        map.insert(kept)?;
        let mut meta = self.meta.clone();
        meta.layers.retain(|d| !remove.contains(d));
        meta.layers.extend(add.iter().map(|w| w.desc.clone()));
        meta.store(&self.dir)?;
        self.meta = meta;
        self.layers = map;
        if fp == FailPoint::AfterMetadata {
            return Err(TimelineError::Invalid(
                "failpoint: stopped after storing the metadata".into(),
            ));
        }
        for d in remove {
            let path = self.dir.join(d.file_name());
            match std::fs::remove_file(&path) {
                // A layer never fetched from remote storage has no local file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.map_err(TimelineError::io("remove", &path))?,
            }
        }
        metadata::fsync_dir(&self.dir)
    }
}

/// What a background compaction reads besides its L0 layers, taken when it is submitted:
/// the layer map then (on the thread, the merge's output replaces its inputs in it), the
/// ancestor, the key space and the tunables. Newer L0 layers installed meanwhile are above
/// every LSN it reads at, so the snapshot reads what the timeline would.
pub struct ImageSnapshot {
    layers: LayerMap,
    ancestor: std::result::Result<Option<Ancestor>, String>,
    keyspace: Arc<BTreeSet<Key>>,
    conf: CompactionConf,
}

/// Image layers written and durable, not yet listed.
#[derive(Default)]
pub struct Images {
    pub written: Vec<WrittenLayer>,
    /// Partitions that needed an image but had a page that could not be rebuilt.
    pub skipped: usize,
}

impl Images {
    fn report(&self) -> CompactionReport {
        CompactionReport {
            image_layers_written: self.written.len(),
            image_bytes: self.written.iter().map(|w| w.file_size).sum(),
            image_partitions_skipped: self.skipped,
            ..CompactionReport::default()
        }
    }
}

/// An L0 merge and the images placed after it, written on the background thread.
pub struct BackgroundCompaction {
    pub merge: L0Merge,
    pub images: Images,
}

/// Merges `groups` into L1 runs, then writes images where reads of the merged layer set would
/// cross `image_threshold` delta runs, at the merged run's last LSN: below every L0 layer
/// newer than the merge, so no later merge makes a delta run that spans them. (Waiting for a
/// moment with no L0 layer left would starve image creation under steady ingest, and historic
/// reads would cross ever more runs.) Reads only `snapshot` and files: ingest goes on.
pub fn compact_in_background(
    dir: &Path,
    target_file_bytes: u64,
    groups: &[Vec<Arc<Layer>>],
    snapshot: ImageSnapshot,
) -> Result<BackgroundCompaction> {
    // One thread: ingest goes on beside it and needs the other cores (two threads here slowed
    // the served ingest more than they sped the merge).
    let merge = merge_l0(dir, target_file_bytes, groups, 1)?;
    let Some(end) = merge.written.iter().map(|w| w.desc.lsn_range.end).max() else {
        return Ok(BackgroundCompaction {
            merge,
            images: Images::default(),
        });
    };
    let mut layers = snapshot.layers;
    layers.remove(&merge.removed);
    let merged = merge
        .written
        .iter()
        .map(|w| Layer::open(dir, &w.desc).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    layers.insert(merged)?;
    let sources = Sources {
        open: None,
        layers: &layers,
        ancestor: snapshot
            .ancestor
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone),
    };
    let lsn = Lsn(end
        .0
        .checked_sub(1)
        .ok_or_else(|| TimelineError::Invalid("an L1 run ending at LSN 0".into()))?);
    let images = build_images(
        dir,
        &layers,
        &sources,
        &snapshot.keyspace,
        &snapshot.conf,
        lsn,
    )?;
    Ok(BackgroundCompaction { merge, images })
}

/// `keys` cut into partitions of at most `max_keys` keys of one kind; together they cover
/// from the first key to just past the last.
fn partitions(keys: &BTreeSet<Key>, max_keys: usize) -> Vec<Range<Key>> {
    let max = max_keys.max(1);
    let mut starts: Vec<Key> = Vec::new();
    let mut n = 0;
    let mut last: Option<Key> = None;
    for &k in keys {
        let new_kind = starts
            .last()
            .is_none_or(|s| s.as_bytes()[0] != k.as_bytes()[0]);
        if new_kind || n >= max {
            starts.push(k);
            n = 0;
        }
        n += 1;
        last = Some(k);
    }
    let Some(last) = last else {
        return Vec::new();
    };
    let mut out: Vec<Range<Key>> = starts.windows(2).map(|w| w[0]..w[1]).collect();
    out.push(starts[starts.len() - 1]..last.next());
    out
}

/// Delta runs with a layer over `range` above the newest image run covering all of it, at or
/// below `lsn`: the runs a read in `range` may cross.
fn delta_runs_above_image(layers: &LayerMap, range: &Range<Key>, lsn: Lsn) -> usize {
    let mut n = 0;
    for run in layers.runs() {
        if run.lsn_range.start > lsn {
            continue;
        }
        match run.kind {
            LayerKind::Image => {
                // Covered if the run's layers tile `range` without a gap.
                let mut at = range.start;
                for l in &run.layers {
                    let kr = &l.desc.key_range;
                    if kr.start <= at && at < kr.end {
                        at = kr.end;
                    }
                }
                if at >= range.end {
                    return n;
                }
            }
            LayerKind::Delta => {
                if run
                    .layers
                    .iter()
                    .any(|l| overlaps(&l.desc.key_range, range))
                {
                    n += 1;
                }
            }
        }
    }
    n
}

/// The partitions (and their keys) that need an image at `lsn`: reads there cross
/// `image_threshold` delta runs, and no image run at `lsn` covers them yet.
fn plan_images(
    layers: &LayerMap,
    keyspace: &BTreeSet<Key>,
    conf: &CompactionConf,
    lsn: Lsn,
) -> Vec<(Range<Key>, Vec<Key>)> {
    let threshold = conf.image_threshold.max(1);
    let delta_runs = layers
        .runs()
        .iter()
        .filter(|r| r.kind == LayerKind::Delta)
        .count();
    if delta_runs < threshold {
        return Vec::new();
    }
    partitions(keyspace, conf.image_partition_pages)
        .into_iter()
        .filter(|p| delta_runs_above_image(layers, p, lsn) >= threshold)
        .filter(|p| {
            !layers.layers().any(|l| {
                l.desc.kind == LayerKind::Image
                    && l.desc.image_lsn() == lsn
                    && overlaps(&l.desc.key_range, p)
            })
        })
        .map(|p| {
            let keys = keyspace.range(p.clone()).copied().collect();
            (p, keys)
        })
        .collect()
}

/// Writes the images [`plan_images`] asks for, reading through `sources`. A partition with a
/// page that cannot be rebuilt is skipped (counted); any other error fails the whole.
fn build_images(
    dir: &Path,
    layers: &LayerMap,
    sources: &Sources,
    keyspace: &BTreeSet<Key>,
    conf: &CompactionConf,
    lsn: Lsn,
) -> Result<Images> {
    let jobs = plan_images(layers, keyspace, conf, lsn);
    let mut images = Images::default();
    for res in write_images_parallel(dir, sources, jobs, lsn) {
        match res {
            Ok(w) => images.written.push(w),
            Err(
                TimelineError::Reconstruct { .. }
                | TimelineError::Redo { .. }
                | TimelineError::Value { .. },
            ) => images.skipped += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(images)
}

/// Writes the image layer of `range` at `lsn` holding `keys` (those of `range`).
fn write_image_keys(
    dir: &Path,
    sources: &Sources,
    range: &Range<Key>,
    keys: &[Key],
    lsn: Lsn,
) -> Result<WrittenLayer> {
    let mut w = ImageLayerWriter::new(dir, range.clone(), lsn)?;
    for &k in keys {
        if let Some(v) = sources.reconstruct_value(k, lsn)? {
            w.put(k, &v)?;
        }
    }
    Ok(w.finish()?)
}

/// Writes the image layers of `jobs` at `lsn`, on up to [`IMAGE_THREADS`] threads (a page's
/// rebuild is independent of every other's, and reads only share `sources`). One result per
/// partition, in order.
fn write_images_parallel(
    dir: &Path,
    sources: &Sources,
    jobs: Vec<(Range<Key>, Vec<Key>)>,
    lsn: Lsn,
) -> Vec<Result<WrittenLayer>> {
    let threads = cores_up_to(IMAGE_THREADS).min(jobs.len());
    if threads <= 1 {
        return jobs
            .iter()
            .map(|(p, keys)| write_image_keys(dir, sources, p, keys, lsn))
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<WrittenLayer>>> = (0..jobs.len()).map(|_| None).collect();
    let done: Vec<Vec<(usize, Result<WrittenLayer>)>> = std::thread::scope(|scope| {
        let work = || {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((p, keys)) = jobs.get(i) else {
                    return out;
                };
                out.push((i, write_image_keys(dir, sources, p, keys, lsn)));
            }
        };
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = vec![work()];
        for h in helpers {
            // A panicking image writer is a bug; propagate it.
            all.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every partition was written"))
        .collect()
}
