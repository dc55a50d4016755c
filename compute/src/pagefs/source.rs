//! Where the page filesystem gets relation files from: the list of relation forks at the
//! compute's LSN and their pages. Production reads the pageserver ([`super::grpc`]); tests and
//! benchmarks read a stopped Postgres's own data directory ([`DataDirSource`]).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::names::{self, RelTag, RelationFork, BLOCKS_PER_SEGMENT, BLOCK_SIZE};

/// Most blocks one `get_pages` call asks for (the pageserver's per-request limit).
pub const MAX_BLOCKS_PER_REQUEST: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Worth retrying: the source is unreachable, restarting or timed out.
    #[error("page source unavailable: {0}")]
    Unavailable(String),
    /// Retrying cannot help (bad request, LSN no longer readable, ...).
    #[error("page source refused the request: {0}")]
    Refused(String),
}

/// Relation forks and their pages at one LSN. Blocking: the filesystem's worker threads call it.
pub trait PageSource: Send + Sync + 'static {
    /// Every relation fork at the LSN with its size.
    fn list_relations(&self, deadline: Instant) -> Result<Vec<RelationFork>, SourceError>;
    /// Blocks `first .. first + count` (at most [`MAX_BLOCKS_PER_REQUEST`]) of `tag`, 8192 bytes
    /// each, all zeros for a block without history; waits no longer than `deadline`.
    fn get_pages(
        &self,
        tag: RelTag,
        first: u32,
        count: u32,
        deadline: Instant,
    ) -> Result<Vec<Vec<u8>>, SourceError>;
}

/// Calls `attempt` until it succeeds, fails for good, or `deadline` passes (then the last
/// error), backing off between tries.
pub fn retry_until<T>(
    deadline: Instant,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let mut backoff = Duration::from_millis(20);
    loop {
        match attempt() {
            Err(SourceError::Unavailable(msg)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(SourceError::Unavailable(format!(
                        "{what}: gave up at the read deadline: {msg}"
                    )));
                }
                tracing::warn!("{what}: {msg}; retrying");
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Serves the relation files of a stopped Postgres's data directory, as the pageserver would
/// serve them at the LSN of its shutdown checkpoint.
pub struct DataDirSource {
    data_dir: PathBuf,
    /// Every fork's first segment path (`.N` appended for later ones) and size.
    forks: HashMap<RelTag, (PathBuf, u32)>,
    files: Mutex<HashMap<PathBuf, Arc<File>>>,
    unavailable: AtomicBool,
    pages_served: AtomicU64,
    requests_served: AtomicU64,
}

impl DataDirSource {
    /// Lists the relation files of `data_dir` (Postgres must be stopped and stay stopped).
    pub fn new(data_dir: &Path) -> std::io::Result<DataDirSource> {
        let mut forks: HashMap<RelTag, (PathBuf, u32)> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            for entry in std::fs::read_dir(data_dir.join(&rel_dir))? {
                let entry = entry?;
                let rel_path = rel_dir.join(entry.file_name());
                // Follows pg_tblspc symlinks: a tablespace's files are in its location.
                let meta = std::fs::metadata(entry.path())?;
                if meta.is_dir() {
                    stack.push(rel_path);
                } else if let Some((tag, segment)) = names::rel_file_of_path(&rel_path) {
                    let seg_blocks = u32::try_from(meta.len() / BLOCK_SIZE).unwrap_or(u32::MAX);
                    let end = segment
                        .saturating_mul(BLOCKS_PER_SEGMENT)
                        .saturating_add(seg_blocks);
                    let first = data_dir.join(names::rel_file_path(tag, 0));
                    let slot = forks.entry(tag).or_insert((first, 0));
                    slot.1 = slot.1.max(end);
                }
            }
        }
        Ok(DataDirSource {
            data_dir: data_dir.to_path_buf(),
            forks,
            files: Mutex::new(HashMap::new()),
            unavailable: AtomicBool::new(false),
            pages_served: AtomicU64::new(0),
            requests_served: AtomicU64::new(0),
        })
    }

    /// The data directory served.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Makes every call fail as an unreachable pageserver would (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Pages served so far.
    pub fn pages_served(&self) -> u64 {
        self.pages_served.load(Ordering::Relaxed)
    }

    /// `get_pages` calls served so far.
    pub fn requests_served(&self) -> u64 {
        self.requests_served.load(Ordering::Relaxed)
    }

    fn check_available(&self) -> Result<(), SourceError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(SourceError::Unavailable(
                "the test source is switched off".into(),
            ));
        }
        Ok(())
    }

    fn read_block(&self, first_segment: &Path, blkno: u32) -> std::io::Result<Vec<u8>> {
        let segment = blkno / BLOCKS_PER_SEGMENT;
        let path = if segment == 0 {
            first_segment.to_path_buf()
        } else {
            let mut p = first_segment.as_os_str().to_owned();
            p.push(format!(".{segment}"));
            PathBuf::from(p)
        };
        let mut page = vec![0u8; BLOCK_SIZE as usize];
        let offset = u64::from(blkno % BLOCKS_PER_SEGMENT) * BLOCK_SIZE;
        // Read without the lock: concurrent requests overlap.
        let file = {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            match files.get(&path) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(&path)?);
                    files.insert(path.clone(), f.clone());
                    f
                }
            }
        };
        let mut done = 0;
        while done < page.len() {
            let n = file.read_at(&mut page[done..], offset + done as u64)?;
            if n == 0 {
                break; // past the end: zeros, as for a block without history
            }
            done += n;
        }
        Ok(page)
    }
}

impl PageSource for DataDirSource {
    fn list_relations(&self, _deadline: Instant) -> Result<Vec<RelationFork>, SourceError> {
        self.check_available()?;
        let mut out: Vec<RelationFork> = self
            .forks
            .iter()
            .map(|(tag, (_, nblocks))| RelationFork {
                tag: *tag,
                nblocks: *nblocks,
                source_fork: tag.fork,
            })
            .collect();
        out.sort_by_key(|f| f.tag);
        Ok(out)
    }

    fn get_pages(
        &self,
        tag: RelTag,
        first: u32,
        count: u32,
        _deadline: Instant,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        self.check_available()?;
        if count > MAX_BLOCKS_PER_REQUEST {
            return Err(SourceError::Refused(format!(
                "{count} blocks in one request"
            )));
        }
        let (path, _) = self
            .forks
            .get(&tag)
            .ok_or_else(|| SourceError::Refused(format!("no relation fork {tag:?}")))?;
        let end = first
            .checked_add(count)
            .ok_or_else(|| SourceError::Refused("block number overflow".into()))?;
        let pages = (first..end)
            .map(|blkno| self.read_block(path, blkno))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| SourceError::Refused(format!("reading {}: {e}", path.display())))?;
        self.pages_served
            .fetch_add(u64::from(count), Ordering::Relaxed);
        self.requests_served.fetch_add(1, Ordering::Relaxed);
        Ok(pages)
    }
}

/// Copies a stopped Postgres's data directory from `data` to `dest` (which must not exist),
/// symbolic links as links; without relation files unless `relation_files` (a slim copy is
/// what a page filesystem's local directory holds). For tests and benchmarks.
pub fn copy_data_dir(data: &Path, dest: &Path, relation_files: bool) -> std::io::Result<()> {
    std::fs::create_dir(dest)?;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(data.join(&dir))? {
            let entry = entry?;
            let rel_path = dir.join(entry.file_name());
            let kind = entry.file_type()?;
            let to = dest.join(&rel_path);
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
            } else if kind.is_dir() {
                std::fs::create_dir(&to)?;
                stack.push(rel_path);
            } else if entry.file_name() != "postmaster.pid"
                && (relation_files || names::rel_file_of_path(&rel_path).is_none())
            {
                std::fs::copy(entry.path(), &to)?;
            }
        }
    }
    Ok(())
}
