//! Getting source pages for reads: the read-ahead cache first, then the page source in
//! requests of up to 256 blocks sent in parallel, retried until the read deadline; then EIO,
//! never a zeroed page.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::PageCache;
use super::names::RelTag;
use super::names::BLOCK_SIZE;
use super::relfile::SourceRun;
use super::source::{retry_until, PageSource, SourceError, MAX_BLOCKS_PER_REQUEST};

/// Read-ahead starts at this many blocks (128 KiB) once reads are sequential...
const READ_AHEAD_MIN_BLOCKS: u32 = 16;
/// ...and doubles with every sequential read up to this (4 MiB).
const READ_AHEAD_MAX_BLOCKS: u32 = 512;

/// Sequential-read detection for one open relation file.
#[derive(Default)]
pub struct ReadPattern {
    next_offset: u64,
    ahead_blocks: u32,
    /// File block up to which read-ahead was already asked for.
    prefetched_to: u32,
}

/// Blocks of a file to fetch ahead, in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ahead {
    pub first_block: u32,
    pub count: u32,
}

impl ReadPattern {
    /// Records a read; when reads are sequential, says which blocks to fetch ahead (keeping
    /// at least half a window ahead of the reader, the window doubling up to 4 MiB).
    pub fn on_read(&mut self, offset: u64, size: u32) -> Option<Ahead> {
        let end = offset.saturating_add(u64::from(size));
        let sequential = offset == self.next_offset && offset > 0;
        self.next_offset = end;
        if !sequential {
            self.ahead_blocks = 0;
            return None;
        }
        self.ahead_blocks =
            (self.ahead_blocks * 2).clamp(READ_AHEAD_MIN_BLOCKS, READ_AHEAD_MAX_BLOCKS);
        let end_block = u32::try_from(end.div_ceil(BLOCK_SIZE)).ok()?;
        let from = self.prefetched_to.max(end_block);
        let to = end_block.saturating_add(self.ahead_blocks);
        if from.saturating_sub(end_block) > self.ahead_blocks / 2 || from >= to {
            return None; // far enough ahead already
        }
        self.prefetched_to = to;
        Some(Ahead {
            first_block: from,
            count: to - from,
        })
    }
}

pub struct Fetcher {
    source: Arc<dyn PageSource>,
    cache: Arc<PageCache>,
    read_deadline: Duration,
    /// Background read-ahead fetches running (bounded).
    prefetching: Arc<AtomicUsize>,
}

/// Most background read-ahead fetches at once.
const MAX_PREFETCHES: usize = 8;

impl Fetcher {
    pub fn new(
        source: Arc<dyn PageSource>,
        cache_pages: usize,
        read_deadline: Duration,
    ) -> Fetcher {
        Fetcher {
            source,
            cache: Arc::new(PageCache::new(cache_pages)),
            read_deadline,
            prefetching: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The pages of `run` (from the cache where read-ahead put them).
    pub fn fetch(&self, run: &SourceRun) -> io::Result<Vec<Vec<u8>>> {
        let mut pages: Vec<Option<Vec<u8>>> = (0..run.count)
            .map(|i| {
                let page = self.cache.take(run.tag, run.first_block.saturating_add(i));
                page.map(Arc::unwrap_or_clone)
            })
            .collect();
        let Some(first_missing) = pages.iter().position(Option::is_none) else {
            return Ok(pages.into_iter().flatten().collect());
        };
        let from = run.first_block.saturating_add(first_missing as u32);
        let end = run.first_block.saturating_add(run.count);
        let fetched =
            fetch_range(&*self.source, self.read_deadline, run.tag, from, end).map_err(|e| {
                tracing::error!("{e}: answering EIO");
                io::Error::from_raw_os_error(libc::EIO)
            })?;
        for (i, page) in fetched.into_iter().enumerate() {
            let block = from.saturating_add(i as u32);
            let index = (block - run.first_block) as usize;
            if let Some(slot @ None) = pages.get_mut(index) {
                *slot = Some(page);
            }
        }
        pages
            .into_iter()
            .map(|p| p.ok_or_else(|| io::Error::other("the page source returned too few pages")))
            .collect()
    }

    /// Fetches `count` fork blocks from `first` of `tag` into the cache in the background,
    /// unless enough read-ahead is running already. Failures are left to the reads.
    pub fn prefetch(&self, tag: RelTag, first: u32, count: u32) {
        if count == 0 || self.prefetching.fetch_add(1, Ordering::SeqCst) >= MAX_PREFETCHES {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let (source, cache, deadline) =
            (self.source.clone(), self.cache.clone(), self.read_deadline);
        let running = self.prefetching.clone();
        let end = first.saturating_add(count);
        let spawned = std::thread::Builder::new()
            .name("pagefs-ahead".into())
            .spawn(move || {
                match fetch_range(&*source, deadline, tag, first, end) {
                    Ok(pages) => {
                        for (i, page) in pages.into_iter().enumerate() {
                            cache.insert(tag, first.saturating_add(i as u32), Arc::new(page));
                        }
                    }
                    Err(e) => tracing::warn!("read-ahead: {e}"),
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Blocks `from..end` of fork `tag`: one request per 256 blocks, all in flight at once, each
/// retried until the read deadline.
fn fetch_range(
    source: &dyn PageSource,
    read_deadline: Duration,
    tag: RelTag,
    from: u32,
    end: u32,
) -> Result<Vec<Vec<u8>>, SourceError> {
    let deadline = Instant::now() + read_deadline;
    let chunks: Vec<(u32, u32)> = (from..end)
        .step_by(MAX_BLOCKS_PER_REQUEST as usize)
        .map(|start| (start, (end - start).min(MAX_BLOCKS_PER_REQUEST)))
        .collect();
    let get = |(start, count): (u32, u32)| {
        let what = format!("reading blocks {start}..{} of {tag:?}", start + count);
        let pages = retry_until(deadline, &what, || {
            source.get_pages(tag, start, count, deadline)
        })?;
        let complete =
            pages.len() == count as usize && pages.iter().all(|p| p.len() == BLOCK_SIZE as usize);
        if !complete {
            return Err(SourceError::Refused(format!(
                "{what}: the source returned a wrong number or size of pages"
            )));
        }
        Ok(pages)
    };
    let results: Vec<_> = if chunks.len() == 1 {
        vec![get(chunks[0])]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|c| s.spawn(move || get(*c))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SourceError::Refused("a fetch thread panicked".into()))
                    })
                })
                .collect()
        })
    };
    let mut out = Vec::with_capacity((end - from) as usize);
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
