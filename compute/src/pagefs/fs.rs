//! The FUSE filesystem: the local slim data directory passed through, relation files virtual.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::fetch::Fetcher;
use super::names;
use super::relfile::RelFile;
use super::tree::Tree;

/// How long the kernel may trust names and attributes: every change goes through this mount.
const TTL: Duration = Duration::from_secs(1);

pub struct PageFs {
    local: PathBuf,
    /// `pg_wal` is shown as a symbolic link to the local directory: WAL writes (the commit
    /// path) bypass FUSE.
    wal_link: Option<PathBuf>,
    tree: RwLock<Tree>,
    fetcher: Fetcher,
    /// Open files and directories by handle, with their inode.
    handles: Mutex<HashMap<u64, (u64, Arc<Handle>)>>,
    next_fh: AtomicU64,
    /// Chown what callers create to them (only root can).
    chown_created: bool,
    started: SystemTime,
    /// The kernel's writeback cache: writes are gathered in the page cache and sent in large
    /// batches (at fsync, close or memory pressure) instead of one request per 8 KiB page.
    writeback: bool,
}

enum Handle {
    Local(File),
    Rel(Arc<RelFile>, Mutex<super::fetch::ReadPattern>),
    Dir(Vec<(u64, FileType, std::ffi::OsString)>),
}

/// What a path of the mount is.
enum Node {
    Rel(Arc<RelFile>),
    Local(Metadata),
    WalLink(PathBuf),
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl PageFs {
    pub(super) fn new(
        local: PathBuf,
        wal_link: Option<PathBuf>,
        tree: Tree,
        fetcher: Fetcher,
        writeback: bool,
    ) -> io::Result<PageFs> {
        std::fs::metadata(&local)?;
        Ok(PageFs {
            local,
            wal_link,
            tree: RwLock::new(tree),
            fetcher,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            chown_created: unsafe { libc::geteuid() } == 0,
            started: SystemTime::now(),
            writeback,
        })
    }

    fn tree_read(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree_write(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.tree_read().path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    fn local_path(&self, path: &Path) -> PathBuf {
        self.local.join(path)
    }

    fn node(&self, path: &Path) -> Result<Node, Errno> {
        if let Some(rel) = self.tree_read().rels.get(path) {
            return Ok(Node::Rel(rel.clone()));
        }
        if path == Path::new("pg_wal") {
            if let Some(target) = &self.wal_link {
                return Ok(Node::WalLink(target.clone()));
            }
        }
        // Symbolic links as they are: a tablespace's `pg_tblspc` link points back into the
        // mount (`names::SERVED_TABLESPACES_DIR`), one the compute creates to its location.
        std::fs::symlink_metadata(self.local_path(path))
            .map(Node::Local)
            .map_err(errno)
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        match node {
            Node::Rel(rel) => {
                let size = rel.size();
                self.synthetic_attr(ino, FileType::RegularFile, size, 0o600)
            }
            Node::WalLink(target) => {
                let len = target.as_os_str().len() as u64;
                self.synthetic_attr(ino, FileType::Symlink, len, 0o777)
            }
            Node::Local(meta) => meta_attr(ino, meta),
        }
    }

    /// Relation files belong to the owner of the local root (Postgres; it may change when the
    /// harness chowns the new data directory).
    fn synthetic_attr(&self, ino: u64, kind: FileType, size: u64, perm: u16) -> FileAttr {
        let owner = std::fs::metadata(&self.local)
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or((0, 0));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: 1,
            uid: owner.0,
            gid: owner.1,
            rdev: 0,
            blksize: names::BLOCK_SIZE as u32,
            flags: 0,
        }
    }

    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let node = self.node(path)?;
        let ino = self.tree_write().ino(path);
        Ok(self.attr(ino, &node))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .get(&fh.0)
            .map(|(_, h)| h.clone())
            .ok_or(Errno::EBADF)
    }

    /// The open file behind `fh`, or, for an inode whose path is gone (unlinked while open:
    /// the kernel still asks for its attributes and sets its times), any open file of it.
    fn open_file(&self, ino: u64, fh: Option<FileHandle>) -> Option<Arc<Handle>> {
        let path_known = self.tree_read().path(ino).is_some();
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let is_file = |h: &Arc<Handle>| !matches!(**h, Handle::Dir(_));
        if let Some((_, h)) = fh.and_then(|fh| handles.get(&fh.0)) {
            if is_file(h) {
                return Some(h.clone());
            }
        }
        if path_known {
            return None;
        }
        handles
            .values()
            .find(|(i, h)| *i == ino && is_file(h))
            .map(|(_, h)| h.clone())
    }

    fn open_file_attr(&self, ino: u64, handle: &Handle) -> Result<FileAttr, Errno> {
        match handle {
            Handle::Rel(rel, _) => Ok(self.attr(ino, &Node::Rel(rel.clone()))),
            Handle::Local(f) => Ok(meta_attr(ino, &f.metadata().map_err(errno)?)),
            Handle::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn close(&self, fh: FileHandle) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.remove(&fh.0);
    }

    fn add_handle(&self, ino: u64, handle: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.insert(fh, (ino, Arc::new(handle)));
        FileHandle(fh)
    }

    /// Gives what the caller created to the caller (the daemon runs as root, Postgres not).
    fn give_to_caller(&self, req: &Request, local: &Path) -> io::Result<()> {
        if self.chown_created {
            std::os::unix::fs::lchown(local, Some(req.uid()), Some(req.gid()))?;
        }
        Ok(())
    }

    fn truncate(&self, ino: u64, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        let rel = match self.open_file(ino, fh).as_deref() {
            Some(Handle::Rel(rel, _)) => rel.clone(),
            Some(Handle::Local(f)) => return f.set_len(size).map_err(errno),
            _ => {
                let path = self.path_of(INodeNo(ino))?;
                match self.node(&path)? {
                    Node::Rel(rel) => rel,
                    _ => {
                        return OpenOptions::new()
                            .write(true)
                            .open(self.local_path(&path))
                            .and_then(|f| f.set_len(size))
                            .map_err(errno)
                    }
                }
            }
        };
        rel.set_size(size, &|run| self.fetcher.fetch(run))
            .map_err(errno)
    }

    fn dir_listing(&self, path: &Path) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for entry in std::fs::read_dir(self.local_path(path)).map_err(errno)? {
            names.push(entry.map_err(errno)?.file_name());
        }
        let mut tree = self.tree_write();
        let rels: Vec<std::ffi::OsString> = tree
            .rels_under(path)
            .filter(|(p, _)| p.parent() == Some(path))
            .filter_map(|(p, _)| p.file_name().map(|n| n.to_owned()))
            .collect();
        names.retain(|n| !rels.contains(n));
        names.extend(rels);
        let mut out = vec![
            (tree.ino(path), FileType::Directory, ".".into()),
            (
                tree.ino(path.parent().unwrap_or(Path::new(""))),
                FileType::Directory,
                "..".into(),
            ),
        ];
        drop(tree);
        for name in names {
            let child = path.join(&name);
            let Ok(node) = self.node(&child) else {
                continue; // gone meanwhile
            };
            let ino = self.tree_write().ino(&child);
            out.push((ino, self.attr(ino, &node).kind, name));
        }
        Ok(out)
    }

    fn create_rel(&self, path: &Path) -> Result<(u64, Arc<RelFile>), Errno> {
        let mut tree = self.tree_write();
        if tree.rels.contains_key(path) || self.local_path(path).symlink_metadata().is_ok() {
            return Err(Errno::EEXIST);
        }
        let rel = Arc::new(RelFile::new(None, 0, &self.local));
        tree.rels.insert(path.to_path_buf(), rel.clone());
        Ok((tree.ino(path), rel))
    }
}

fn meta_attr(ino: u64, meta: &Metadata) -> FileAttr {
    let kind = if meta.is_dir() {
        FileType::Directory
    } else if meta.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let time = |secs: i64, nsecs: i64| {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
        } else {
            UNIX_EPOCH
        }
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// How a local file is opened for an open(2) with `flags`. With the writeback cache the
/// kernel reads to fill partial pages even through write-only opens, and it places appends
/// itself (it knows the size), so those become read-write opens without O_APPEND.
fn open_options(flags: i32, writeback: bool) -> OpenOptions {
    let mut opts = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY if !writeback => opts.write(true),
        libc::O_WRONLY | libc::O_RDWR => opts.read(true).write(true),
        _ => opts.read(true),
    };
    let mut passed = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
    if !writeback {
        passed |= libc::O_APPEND;
    }
    opts.custom_flags(flags & passed);
    opts
}

impl fuser::Filesystem for PageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Large reads and read-ahead: a sequential scan becomes few large source requests.
        if let Err(kernel_max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(kernel_max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Symbolic links (pg_wal, pg_tblspc) cached; lookups in one directory in parallel.
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.writeback {
            if let Err(e) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::warn!("the kernel offers no writeback cache ({e:?}): writing through");
                self.writeback = false;
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child_path(parent, name).and_then(|p| self.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open file may be unlinked already: its handle still knows it.
        if let Some(handle) = self.open_file(ino.0, fh) {
            return match self.open_file_attr(ino.0, &handle) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            };
        }
        match self.path_of(ino).and_then(|p| self.node(&p)) {
            Ok(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            if let Some(size) = size {
                self.truncate(ino.0, fh, size)?;
            }
            // Relation files keep their fixed owner and mode (Postgres never changes them);
            // times are not kept (Postgres never reads them).
            if let Some(handle) = self.open_file(ino.0, fh) {
                if let Handle::Local(f) = &*handle {
                    if let Some(mode) = mode {
                        f.set_permissions(std::fs::Permissions::from_mode(mode))
                            .map_err(errno)?;
                    }
                    if uid.is_some() || gid.is_some() {
                        std::os::unix::fs::fchown(f, uid, gid).map_err(errno)?;
                    }
                }
                return self.open_file_attr(ino.0, &handle);
            }
            let path = self.path_of(ino)?;
            if let Node::Local(_) = self.node(&path)? {
                let local = self.local_path(&path);
                if let Some(mode) = mode {
                    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode))
                        .map_err(errno)?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(&local, uid, gid).map_err(errno)?;
                }
            }
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.path_of(ino).and_then(|p| match self.node(&p)? {
            Node::WalLink(target) => Ok(target),
            _ => std::fs::read_link(self.local_path(&p)).map_err(errno),
        });
        match result {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.child_path(parent, name).and_then(|path| {
            let local = self.local_path(&path);
            std::fs::create_dir(&local).map_err(errno)?;
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode & !umask))
                .map_err(errno)?;
            self.give_to_caller(req, &local).map_err(errno)?;
            self.entry(&path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child_path(parent, name).and_then(|path| {
            let mut tree = self.tree_write();
            if tree.rels.remove(&path).is_none() {
                std::fs::remove_file(self.local_path(&path)).map_err(errno)?;
            }
            tree.forget(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child_path(parent, name).and_then(|path| {
            let mut tree = self.tree_write();
            if tree.rels_under(&path).next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
            std::fs::remove_dir(self.local_path(&path)).map_err(errno)?;
            tree.forget(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.child_path(parent, link_name).and_then(|path| {
            let local = self.local_path(&path);
            std::os::unix::fs::symlink(target, &local).map_err(errno)?;
            self.give_to_caller(req, &local).map_err(errno)?;
            self.entry(&path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            if flags.bits() & !libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EINVAL);
            }
            let from = self.child_path(parent, name)?;
            let to = self.child_path(newparent, newname)?;
            let target_exists = self.node(&to).is_ok();
            if target_exists && flags.bits() & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            let mut tree = self.tree_write();
            let (from_local, to_local) = (self.local_path(&from), self.local_path(&to));
            if tree.rels.contains_key(&from) {
                if to_local.symlink_metadata().is_ok() {
                    std::fs::remove_file(&to_local).map_err(errno)?;
                }
            } else {
                if tree.rels.contains_key(&to) && to_local.symlink_metadata().is_err() {
                    tree.forget(&to);
                }
                std::fs::rename(&from_local, &to_local).map_err(errno)?;
            }
            tree.rename(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.path_of(ino).and_then(|path| match self.node(&path)? {
            Node::Rel(rel) => Ok((
                Handle::Rel(rel, Mutex::new(Default::default())),
                // Content at the LSN never changes and writes go through the kernel's cache.
                FopenFlags::FOPEN_KEEP_CACHE,
            )),
            Node::Local(_) => open_options(flags.0, self.writeback)
                .open(self.local_path(&path))
                .map(|f| (Handle::Local(f), FopenFlags::empty()))
                .map_err(errno),
            Node::WalLink(_) => Err(Errno::ELOOP),
        });
        match result {
            Ok((handle, open_flags)) => reply.opened(self.add_handle(ino.0, handle), open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.handle(fh).and_then(|handle| match &*handle {
            Handle::Rel(rel, pattern) => {
                let ahead = {
                    let mut p = pattern.lock().unwrap_or_else(|p| p.into_inner());
                    p.on_read(offset, size)
                };
                // Read-ahead runs in the background, overlapping this read.
                if let Some(ahead) = ahead {
                    if let Some((tag, first, count)) = rel.source_span(ahead) {
                        self.fetcher.prefetch(tag, first, count);
                    }
                }
                rel.read(offset, size, &|run| self.fetcher.fetch(run))
                    .map_err(errno)
            }
            Handle::Local(f) => {
                let mut buf = vec![0u8; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(errno(e)),
                    }
                }
                buf.truncate(done);
                Ok(buf)
            }
            Handle::Dir(_) => Err(Errno::EISDIR),
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.handle(fh).and_then(|handle| match &*handle {
            Handle::Rel(rel, _) => rel
                .write(offset, data, &|run| self.fetcher.fetch(run))
                .map_err(errno),
            Handle::Local(f) => f.write_all_at(data, offset).map_err(errno),
            Handle::Dir(_) => Err(Errno::EISDIR),
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                tracing::warn!(
                    "write of {} bytes at {offset} (fh {}): {e:?}",
                    data.len(),
                    fh.0
                );
                reply.error(e)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.close(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Relation files: a no-op; the WAL on a safekeeper majority makes commits durable.
        let result = self.handle(fh).and_then(|handle| match &*handle {
            Handle::Local(f) if datasync => f.sync_data().map_err(errno),
            Handle::Local(f) => f.sync_all().map_err(errno),
            Handle::Rel(..) | Handle::Dir(_) => Ok(()),
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.path_of(ino).and_then(|p| self.dir_listing(&p)) {
            Ok(listing) => {
                let fh = self.add_handle(ino.0, Handle::Dir(listing));
                reply.opened(fh, FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir(listing) = &*handle else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.close(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.path_of(ino).and_then(|p| {
            File::open(self.local_path(&p))
                .and_then(|d| d.sync_all())
                .map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Ok(path) = std::ffi::CString::new(self.local.as_os_str().as_encoded_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a statvfs to fill.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.child_path(parent, name).and_then(|path| {
            let exclusive = flags & libc::O_EXCL != 0;
            if names::rel_file_of_path(&path).is_some() {
                let (ino, rel) = match self.create_rel(&path) {
                    Err(e) if e == Errno::EEXIST && !exclusive => {
                        let node = self.node(&path)?;
                        let ino = self.tree_write().ino(&path);
                        let Node::Rel(rel) = node else {
                            return Err(Errno::EEXIST); // a local file under a relation name
                        };
                        (ino, rel)
                    }
                    other => other?,
                };
                if flags & libc::O_TRUNC != 0 {
                    rel.set_size(0, &|run| self.fetcher.fetch(run))
                        .map_err(errno)?;
                }
                let attr = self.attr(ino, &Node::Rel(rel.clone()));
                let handle = Handle::Rel(rel, Mutex::new(Default::default()));
                return Ok((attr, handle, FopenFlags::FOPEN_KEEP_CACHE));
            }
            let local = self.local_path(&path);
            let mut opts = open_options(flags, self.writeback);
            opts.mode(mode & !umask);
            if exclusive {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            if flags & libc::O_TRUNC != 0 {
                opts.truncate(true);
            }
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                opts.write(true); // create needs write access; the kernel checks the caller's
            }
            let file = opts.open(&local).map_err(errno)?;
            self.give_to_caller(req, &local).map_err(errno)?;
            let attr = self.entry(&path)?;
            Ok((attr, Handle::Local(file), FopenFlags::empty()))
        });
        match result {
            Ok((attr, handle, open_flags)) => {
                let fh = self.add_handle(attr.ino.0, handle);
                reply.created(&TTL, &attr, Generation(0), fh, open_flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            match &*self.handle(fh)? {
                Handle::Rel(rel, _) if mode == 0 => {
                    if end > rel.size() {
                        self.truncate(ino.0, Some(fh), end)?;
                    }
                    Ok(())
                }
                Handle::Local(f) => {
                    use std::os::fd::AsRawFd;
                    let (off, len) = (
                        i64::try_from(offset).map_err(|_| Errno::EFBIG)?,
                        i64::try_from(length).map_err(|_| Errno::EFBIG)?,
                    );
                    // SAFETY: an open file descriptor and plain integers.
                    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } != 0 {
                        return Err(errno(io::Error::last_os_error()));
                    }
                    Ok(())
                }
                _ => Err(Errno::EOPNOTSUPP),
            }
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
