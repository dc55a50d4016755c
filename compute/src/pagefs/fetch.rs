//! Getting source pages for reads: the read-ahead cache first, then the page source in
//! requests of up to 256 blocks sent in parallel, retried until the read deadline; then EIO,
//! never a zeroed page.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::PageCache;
use super::names::BLOCK_SIZE;
use super::relfile::SourceRun;
use super::source::{retry_until, PageSource, MAX_BLOCKS_PER_REQUEST};

/// Read-ahead starts at this many blocks (128 KiB) once reads are sequential...
const READ_AHEAD_MIN_BLOCKS: u32 = 16;
/// ...and doubles with every sequential read up to this (4 MiB).
const READ_AHEAD_MAX_BLOCKS: u32 = 512;

/// Sequential-read detection for one open relation file.
#[derive(Default)]
pub struct ReadPattern {
    next_offset: u64,
    ahead_blocks: u32,
}

impl ReadPattern {
    /// Records a read and says how many blocks to fetch ahead of it.
    pub fn on_read(&mut self, offset: u64, size: u32) -> u32 {
        self.ahead_blocks = if offset == self.next_offset && offset > 0 {
            (self.ahead_blocks * 2).clamp(READ_AHEAD_MIN_BLOCKS, READ_AHEAD_MAX_BLOCKS)
        } else {
            0
        };
        self.next_offset = offset.saturating_add(u64::from(size));
        self.ahead_blocks
    }
}

pub struct Fetcher {
    source: Arc<dyn PageSource>,
    cache: PageCache,
    read_deadline: Duration,
}

impl Fetcher {
    pub fn new(
        source: Arc<dyn PageSource>,
        cache_pages: usize,
        read_deadline: Duration,
    ) -> Fetcher {
        Fetcher {
            source,
            cache: PageCache::new(cache_pages),
            read_deadline,
        }
    }

    /// The pages of `run`, fetching up to `ahead` more blocks into the cache.
    pub fn fetch(&self, run: &SourceRun, ahead: Option<u32>) -> io::Result<Vec<Vec<u8>>> {
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
        let end = run
            .first_block
            .saturating_add(run.count)
            .saturating_add(ahead.unwrap_or(0))
            .min(
                run.source_end
                    .max(run.first_block.saturating_add(run.count)),
            );
        let fetched = self.fetch_range(run, from, end)?;
        for (i, page) in fetched.into_iter().enumerate() {
            let block = from.saturating_add(i as u32);
            let index = (block - run.first_block) as usize;
            match pages.get_mut(index) {
                Some(slot) => {
                    if slot.is_none() {
                        *slot = Some(page);
                    }
                }
                None => self.cache.insert(run.tag, block, Arc::new(page)),
            }
        }
        pages
            .into_iter()
            .map(|p| p.ok_or_else(|| io::Error::other("the page source returned too few pages")))
            .collect()
    }

    /// Blocks `from..end` of the run's fork: one request per 256 blocks, all in flight at once.
    fn fetch_range(&self, run: &SourceRun, from: u32, end: u32) -> io::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + self.read_deadline;
        let chunks: Vec<(u32, u32)> = (from..end)
            .step_by(MAX_BLOCKS_PER_REQUEST as usize)
            .map(|start| (start, (end - start).min(MAX_BLOCKS_PER_REQUEST)))
            .collect();
        let get = |(start, count): (u32, u32)| {
            let what = format!("reading blocks {start}..{} of {:?}", start + count, run.tag);
            retry_until(deadline, &what, || {
                self.source.get_pages(run.tag, start, count, deadline)
            })
            .and_then(|pages| {
                let complete = pages.len() == count as usize
                    && pages.iter().all(|p| p.len() == BLOCK_SIZE as usize);
                if complete {
                    Ok(pages)
                } else {
                    Err(super::source::SourceError::Refused(format!(
                        "{what}: the source returned a wrong number or size of pages"
                    )))
                }
            })
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
                            Err(super::source::SourceError::Refused(
                                "a fetch thread panicked".into(),
                            ))
                        })
                    })
                    .collect()
            })
        };
        let mut out = Vec::with_capacity((end - from) as usize);
        for r in results {
            match r {
                Ok(pages) => out.extend(pages),
                Err(e) => {
                    tracing::error!("{e}: answering EIO");
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        Ok(out)
    }
}
