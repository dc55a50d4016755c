//! One relation file of the mount: its pages at the compute's LSN from the page source, and
//! what the compute wrote since in a local overlay (a sparse anonymous file plus a bitmap of
//! the blocks written, in memory: the overlay need not outlive the daemon).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::names::{RelTag, BLOCK_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;

/// Where this file's never-written blocks come from: a fork of the source and the fork block
/// of the file's block 0 (segment × 131072).
#[derive(Clone, Copy, Debug)]
pub struct SourceRange {
    pub tag: RelTag,
    pub first_block: u32,
}

/// Consecutive blocks a read needs from the page source.
#[derive(Clone, Copy, Debug)]
pub struct SourceRun {
    /// Index of the run's first block in the read.
    pub index: usize,
    pub tag: RelTag,
    pub first_block: u32,
    pub count: u32,
}

/// Fetches source blocks (from a cache, the page source, with retries): `count` pages of
/// 8192 bytes from `first_block` of `tag`.
pub type FetchFn<'a> = dyn Fn(&SourceRun) -> io::Result<Vec<Vec<u8>>> + 'a;

pub struct RelFile {
    source: Option<SourceRange>,
    /// Where the anonymous overlay file is created.
    overlay_dir: std::path::PathBuf,
    state: Mutex<State>,
}

struct State {
    size: u64,
    /// Blocks below this that were never written read from the source; blocks at or above
    /// it never written read as zeros (past the size at the LSN, or truncated away since).
    source_blocks: u32,
    written: Vec<u64>,
    overlay: Option<File>,
}

impl State {
    fn is_written(&self, block: u32) -> bool {
        let (word, bit) = (block as usize / 64, block % 64);
        self.written.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn mark_written(&mut self, block: u32) {
        let (word, bit) = (block as usize / 64, block % 64);
        if self.written.len() <= word {
            self.written.resize(word + 1, 0);
        }
        self.written[word] |= 1 << bit;
    }

    /// Forgets the written blocks from `block` on.
    fn forget_from(&mut self, block: u32) {
        let (word, bit) = (block as usize / 64, block % 64);
        if word < self.written.len() {
            self.written[word] &= (1u64 << bit) - 1;
            self.written.truncate(word + 1);
        }
    }
}

/// Block number of a byte offset, or EFBIG past what a u32 block number addresses.
fn block_of(offset: u64) -> io::Result<u32> {
    u32::try_from(offset / BLOCK_SIZE).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

impl RelFile {
    /// A file of `nblocks` blocks read from `source`, or a new empty file (`source` None).
    pub fn new(source: Option<SourceRange>, nblocks: u32, overlay_dir: &Path) -> RelFile {
        RelFile {
            source,
            overlay_dir: overlay_dir.to_path_buf(),
            state: Mutex::new(State {
                size: u64::from(nblocks) * BLOCK_SIZE,
                source_blocks: if source.is_some() { nblocks } else { 0 },
                written: Vec::new(),
                overlay: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.lock().size
    }

    /// The current content of `block` (for a partial write or a truncation inside a block).
    fn block_content(&self, st: &State, block: u32, fetch: &FetchFn<'_>) -> io::Result<Vec<u8>> {
        let mut page = vec![0u8; BLOCK];
        if st.is_written(block) {
            read_overlay(st, block, &mut page)?;
        } else if let (Some(src), true) = (self.source, block < st.source_blocks) {
            let run = self.run(src, 0, block, 1);
            page = fetch(&run)?.pop().unwrap_or(page);
        }
        Ok(page)
    }

    fn run(&self, src: SourceRange, index: usize, block: u32, count: u32) -> SourceRun {
        SourceRun {
            index,
            tag: src.tag,
            first_block: src.first_block.saturating_add(block),
            count,
        }
    }

    /// The source fork blocks behind file blocks `ahead` that may be read from the source
    /// (below the size at the LSN and never truncated away): what read-ahead may fetch.
    pub fn source_span(&self, ahead: super::fetch::Ahead) -> Option<(RelTag, u32, u32)> {
        let src = self.source?;
        let st = self.lock();
        let end = ahead
            .first_block
            .saturating_add(ahead.count)
            .min(st.source_blocks);
        (end > ahead.first_block).then(|| {
            (
                src.tag,
                src.first_block.saturating_add(ahead.first_block),
                end - ahead.first_block,
            )
        })
    }

    /// Reads up to `size` bytes at `offset` (short at the end of the file).
    pub fn read(&self, offset: u64, size: u32, fetch: &FetchFn<'_>) -> io::Result<Vec<u8>> {
        let mut runs = Vec::new();
        let (first, mut buf, end) = {
            let st = self.lock();
            let end = st.size.min(offset.saturating_add(u64::from(size)));
            if offset >= end {
                return Ok(Vec::new());
            }
            let first = block_of(offset)?;
            let last = block_of(end - 1)?;
            let mut buf = vec![0u8; (last - first + 1) as usize * BLOCK];
            for block in first..=last {
                let index = (block - first) as usize;
                if st.is_written(block) {
                    read_overlay(&st, block, &mut buf[index * BLOCK..(index + 1) * BLOCK])?;
                } else if let (Some(src), true) = (self.source, block < st.source_blocks) {
                    match runs.last_mut() {
                        Some(SourceRun {
                            index: i, count, ..
                        }) if *i + *count as usize == index => *count += 1,
                        _ => runs.push(self.run(src, index, block, 1)),
                    }
                }
            }
            (first, buf, end)
        };
        // Fetch without the lock: concurrent reads of one file overlap.
        for run in &runs {
            for (i, page) in fetch(run)?.into_iter().enumerate() {
                let at = (run.index + i) * BLOCK;
                let n = page.len().min(BLOCK);
                buf[at..at + n].copy_from_slice(&page[..n]);
            }
        }
        let skip = (offset - u64::from(first) * BLOCK_SIZE) as usize;
        buf.truncate(skip + (end - offset) as usize);
        buf.drain(..skip);
        Ok(buf)
    }

    /// Writes `data` at `offset` into the overlay; extends the file if it ends past the size.
    pub fn write(&self, offset: u64, data: &[u8], fetch: &FetchFn<'_>) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        if data.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        let (first, last) = (block_of(offset)?, block_of(end - 1)?);
        for block in first..=last {
            let block_start = u64::from(block) * BLOCK_SIZE;
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK_SIZE);
            let piece = &data[(from - offset) as usize..(to - offset) as usize];
            let page = if piece.len() == BLOCK {
                piece.to_vec()
            } else {
                let mut page = self.block_content(&st, block, fetch)?;
                let at = (from - block_start) as usize;
                page[at..at + piece.len()].copy_from_slice(piece);
                page
            };
            self.overlay(&mut st)?.write_all_at(&page, block_start)?;
            st.mark_written(block);
        }
        st.size = st.size.max(end);
        Ok(())
    }

    /// Sets the size: blocks cut away are forgotten (read as zeros if the file grows again).
    pub fn set_size(&self, new_size: u64, fetch: &FetchFn<'_>) -> io::Result<()> {
        let mut st = self.lock();
        if new_size < st.size {
            let keep_blocks = block_of(new_size)?;
            let tail = (new_size % BLOCK_SIZE) as usize;
            if tail > 0 {
                // The block cut in the middle keeps its head; its tail must read as zeros.
                let mut page = self.block_content(&st, keep_blocks, fetch)?;
                page[tail..].fill(0);
                self.overlay(&mut st)?
                    .write_all_at(&page, u64::from(keep_blocks) * BLOCK_SIZE)?;
                st.mark_written(keep_blocks);
                st.forget_from(keep_blocks + 1);
            } else {
                st.forget_from(keep_blocks);
            }
            st.source_blocks = st.source_blocks.min(keep_blocks);
            if let Some(f) = &st.overlay {
                // Frees the overlay's space for the blocks cut away.
                f.set_len(u64::from(keep_blocks) * BLOCK_SIZE + BLOCK_SIZE)?;
            }
        }
        st.size = new_size;
        Ok(())
    }

    fn overlay<'s>(&self, st: &'s mut State) -> io::Result<&'s File> {
        if st.overlay.is_none() {
            st.overlay = Some(tempfile::tempfile_in(&self.overlay_dir)?);
        }
        Ok(st.overlay.as_ref().expect("just set"))
    }
}

fn read_overlay(st: &State, block: u32, page: &mut [u8]) -> io::Result<()> {
    let file = st
        .overlay
        .as_ref()
        .ok_or_else(|| io::Error::other("a written block without an overlay file"))?;
    let mut done = 0;
    while done < page.len() {
        let n = file.read_at(
            &mut page[done..],
            u64::from(block) * BLOCK_SIZE + done as u64,
        )?;
        if n == 0 {
            page[done..].fill(0); // a sparse hole at the end: zeros
            break;
        }
        done += n;
    }
    Ok(())
}
