//! The page filesystem of a lazy compute: a FUSE mount presenting a Postgres 15 data directory
//! at an LSN. Every file of a slim basebackup (no relation files) is passed through from a
//! local directory; relation files are virtual: listed by the page source and read from it on
//! first use. Writes, extensions, truncations, unlinks and new relation files go to a local
//! overlay, so the compute reads back what it wrote and otherwise the pages at the LSN (it is
//! the only writer since). Relation-file fsync is a no-op: the WAL on the safekeepers is what
//! makes a commit durable, and the overlay dies with the compute.

mod cache;
pub mod daemon;
mod fetch;
mod fs;
pub mod grpc;
pub mod names;
mod relfile;
pub mod source;
mod tree;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::relfile::{RelFile, SourceRange};
pub use self::source::{DataDirSource, PageSource, SourceError};

/// How the filesystem is mounted.
#[derive(Clone, Debug)]
pub struct Options {
    /// The slim data directory (every file but relation files).
    pub local: PathBuf,
    /// An empty directory to mount on.
    pub mount: PathBuf,
    /// How long a read retries an unavailable source before answering EIO.
    pub read_deadline: Duration,
    /// FUSE worker threads: concurrent backends' reads overlap.
    pub threads: usize,
    /// Read-ahead cache size in 8 KiB pages.
    pub cache_pages: usize,
    /// Use the kernel's writeback cache (batched writes).
    pub writeback_cache: bool,
}

impl Options {
    pub fn new(local: &Path, mount: &Path) -> Options {
        Options {
            local: local.to_path_buf(),
            mount: mount.to_path_buf(),
            read_deadline: Duration::from_secs(30),
            threads: 4,
            cache_pages: 8192,
            writeback_cache: true,
        }
    }
}

/// A mounted page filesystem; unmounts (lazily) when dropped.
pub struct MountedFs {
    mount: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl MountedFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// Whether the filesystem still serves (not unmounted from outside).
    pub fn is_serving(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Detaches the mount even with files open (`umount -l`), then waits up to `wait` for the
    /// kernel to end the session; files still open after that get errors once we are gone.
    pub fn unmount(mut self, wait: Duration) -> Result<()> {
        self.detach()?;
        let deadline = Instant::now() + wait;
        while self.is_serving() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_serving() {
            tracing::warn!(
                "{}: files still open {wait:?} after the lazy unmount; leaving them",
                self.mount.display()
            );
            // Dropping the session would join its threads, which wait for those files.
            std::mem::forget(self.session.take());
        }
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        if !self.is_serving() {
            return Ok(());
        }
        if unsafe { libc::geteuid() } == 0 {
            let path = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes())
                .context("mount path")?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = std::io::Error::last_os_error();
                bail!("unmounting {}: {e}", self.mount.display());
            }
        } else {
            let status = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mount)
                .status()
                .context("running fusermount3 -u -z")?;
            if !status.success() {
                bail!(
                    "fusermount3 -u -z {} failed: {status}",
                    self.mount.display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!("{e:#}");
        }
        if let Some(session) = self.session.take() {
            if session.guard.is_finished() {
                drop(session);
            } else {
                std::mem::forget(session);
            }
        }
    }
}

/// Lists the relation files, prepares the local directory and mounts; returns once the mount
/// answers.
pub fn mount(opts: &Options, source: Arc<dyn PageSource>) -> Result<MountedFs> {
    let local = std::fs::canonicalize(&opts.local)
        .with_context(|| format!("--local {}", opts.local.display()))?;
    if !local.join("PG_VERSION").is_file() {
        bail!(
            "{} holds no PG_VERSION: not a data directory",
            local.display()
        );
    }
    let deadline = Instant::now() + opts.read_deadline;
    let forks = source::retry_until(deadline, "listing relations", || {
        source.list_relations(deadline)
    })
    .context("listing the relation files")?;
    let mount_point = std::fs::canonicalize(&opts.mount)
        .with_context(|| format!("--mount {}", opts.mount.display()))?;
    if std::fs::read_dir(&mount_point)?.next().is_some() {
        bail!("{} is not empty", mount_point.display());
    }
    prepare_tablespaces(&local, &mount_point)?;
    let mut rels = BTreeMap::new();
    for fork in &forks {
        let src_tag = names::RelTag {
            fork: fork.source_fork,
            ..fork.tag
        };
        for (segment, nblocks) in names::segments(fork.nblocks) {
            let path = names::served_rel_file_path(fork.tag, segment);
            let dir = local.join(path.parent().unwrap_or(Path::new("")));
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                give_like_root(&local, &dir)?;
            }
            let range = SourceRange {
                tag: src_tag,
                first_block: segment * names::BLOCKS_PER_SEGMENT,
            };
            rels.insert(path, Arc::new(RelFile::new(Some(range), nblocks, &local)));
        }
    }
    let files = rels.len();
    let wal = local.join("pg_wal");
    let wal_link = wal.is_dir().then_some(wal);
    let fetcher = fetch::Fetcher::new(source, opts.cache_pages, opts.read_deadline);
    let tree = tree::Tree::new(rels);
    let fs = fs::PageFs::new(local.clone(), wal_link, tree, fetcher, opts.writeback_cache)
        .context("reading the local directory")?;
    let root = unsafe { libc::geteuid() } == 0;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("strata-pagefs".into()),
        fuser::MountOption::Subtype("pagefs".into()),
        fuser::MountOption::NoAtime,
    ];
    if root {
        // Postgres runs as another user: let it in, and let the kernel check permissions.
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, &mount_point, &config)
        .with_context(|| format!("mounting on {}", mount_point.display()))?
        .spawn()
        .context("starting the filesystem threads")?;
    let mounted = MountedFs {
        mount: mount_point.clone(),
        session: Some(session),
    };
    // The mount answers when its root lists PG_VERSION.
    std::fs::metadata(mount_point.join("PG_VERSION"))
        .with_context(|| format!("the new mount {} does not answer", mount_point.display()))?;
    raise_kernel_read_ahead(&mount_point);
    tracing::info!(
        "mounted {} ({} relation files virtual, local files from {})",
        mount_point.display(),
        files,
        local.display()
    );
    Ok(mounted)
}

/// The kernel reads ahead at most 128 KiB on a FUSE mount unless told otherwise (its
/// backing device's `read_ahead_kb`, writable by root): 4 MiB makes a Postgres sequential scan
/// a few large reads instead of many small ones.
fn raise_kernel_read_ahead(mount_point: &Path) {
    let Ok(meta) = std::fs::metadata(mount_point) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    if let Err(e) = std::fs::write(&knob, "4096") {
        tracing::info!(
            "kernel read-ahead left at its default ({}: {e})",
            knob.display()
        );
    }
}

/// The slim basebackup's `pg_tblspc/<oid>` links point outside the data directory, where the
/// mount cannot serve relation files. Each tablespace's directories move into the local
/// directory's `strata_tablespaces/<oid>` and its link points there through the mount
/// (`<mount>/strata_tablespaces/<oid>`): Postgres sees the symbolic link it requires (a hot
/// standby refuses in-place tablespace directories; `pg_tablespace_location` reads the link),
/// and the tablespace's relation files are served like all others. An in-place directory or
/// a link to nothing becomes such a link too.
fn prepare_tablespaces(local: &Path, mount_point: &Path) -> Result<()> {
    let links = local.join("pg_tblspc");
    let Ok(entries) = std::fs::read_dir(&links) else {
        return Ok(());
    };
    let served = local.join(names::SERVED_TABLESPACES_DIR);
    for entry in entries {
        let entry = entry?;
        let Some(oid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue; // not a tablespace: Postgres ignores it too
        };
        let link = entry.path();
        let through_mount = mount_point
            .join(names::SERVED_TABLESPACES_DIR)
            .join(oid.to_string());
        let dest = served.join(oid.to_string());
        let is_link = entry.file_type()?.is_symlink();
        if is_link && std::fs::read_link(&link)? == through_mount && dest.is_dir() {
            continue; // prepared before (the same local directory mounted again)
        }
        if !served.is_dir() {
            std::fs::create_dir(&served)
                .with_context(|| format!("creating {}", served.display()))?;
            give_like_root(local, &served)?;
        }
        if !dest.exists() {
            if link.is_dir() {
                copy_dirs_like_root(local, &link, &dest)?;
            } else {
                std::fs::create_dir(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                give_like_root(local, &dest)?;
            }
        }
        let version = dest.join(names::TABLESPACE_VERSION_DIR);
        if !version.is_dir() {
            std::fs::create_dir(&version)
                .with_context(|| format!("creating {}", version.display()))?;
            give_like_root(local, &version)?;
        }
        if is_link {
            std::fs::remove_file(&link)
        } else {
            std::fs::remove_dir_all(&link)
        }
        .with_context(|| format!("replacing {}", link.display()))?;
        std::os::unix::fs::symlink(&through_mount, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        own_like_root(local, &link)?;
    }
    Ok(())
}

/// Copies the directories (and any plain files) of `from` to the new `to`, owned like the
/// local root: a slim basebackup's tablespace holds only directories.
fn copy_dirs_like_root(local: &Path, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    give_like_root(local, to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dirs_like_root(local, &entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            own_like_root(local, &target)?;
        }
    }
    Ok(())
}

/// Gives a directory the daemon created to the owner of the local root (Postgres), mode 0700.
fn give_like_root(local: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    own_like_root(local, dir)
}

/// Gives what the daemon created to the owner of the local root (only root can; otherwise
/// the daemon is that owner).
fn own_like_root(local: &Path, path: &Path) -> Result<()> {
    if unsafe { libc::geteuid() } == 0 {
        let meta = std::fs::metadata(local)?;
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}
