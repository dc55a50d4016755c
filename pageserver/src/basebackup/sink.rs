//! Where a basebackup goes: a tar stream ([`TarSink`], ustar, what `tar -x` and Postgres's
//! own tooling read) or a directory ([`DirSink`], files fsynced, then their directories).
//!
//! Entries arrive parents first. A file's length is announced before its bytes (a tar header
//! needs it); a sink refuses a file whose bytes do not add up to it.
//!
//! A tablespace is a symbolic link `pg_tblspc/<oid>` to a directory outside the data
//! directory, as in a `pg_basebackup` tar; entries below the link go through it. The link's
//! target is relative to the link ([`tablespace_link_target`]): `tar -x` into `D` and the
//! [`DirSink`] put tablespace `<oid>` in `D/../tablespaces/<oid>`, beside `D`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A destination for the entries of a data directory.
pub trait Sink {
    /// A directory (relative path, `/`-separated).
    fn dir(&mut self, path: &str) -> io::Result<()>;
    /// Starts a file of exactly `len` bytes.
    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()>;
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    fn end_file(&mut self) -> io::Result<()>;
    /// Ends the output (the tar trailer; the directories' fsync).
    fn finish(&mut self) -> io::Result<()>;
    /// A symbolic link at `path` to the directory `target` (relative to the link's
    /// directory): a tablespace's `pg_tblspc/<oid>`.
    fn dir_link(&mut self, path: &str, target: &str) -> io::Result<()>;

    /// A whole file at once.
    fn file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.begin_file(path, data.len() as u64)?;
        self.write(data)?;
        self.end_file()
    }
}

/// Where a basebackup's `pg_tblspc/<oid>` link points: `tablespaces/<oid>` beside the data
/// directory (a compute's unpacker puts it in its own directory there).
pub fn tablespace_link_target(oid: u32) -> String {
    format!("../../tablespaces/{oid}")
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The file being written: its path, announced length and bytes so far.
struct Current {
    path: String,
    len: u64,
    written: u64,
}

impl Current {
    fn add(&mut self, n: usize) -> io::Result<()> {
        self.written += n as u64;
        if self.written > self.len {
            return Err(bad(format!(
                "{}: more than the announced {} bytes",
                self.path, self.len
            )));
        }
        Ok(())
    }

    fn check_complete(&self) -> io::Result<()> {
        if self.written != self.len {
            return Err(bad(format!(
                "{}: {} bytes written, {} announced",
                self.path, self.written, self.len
            )));
        }
        Ok(())
    }
}

/// A ustar archive written to `W`.
pub struct TarSink<W: Write> {
    out: W,
    cur: Option<Current>,
    mtime: u64,
}

impl<W: Write> TarSink<W> {
    pub fn new(out: W) -> Self {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        TarSink {
            out,
            cur: None,
            mtime,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn header(&mut self, path: &str, len: u64, kind: TarKind) -> io::Result<()> {
        let mut h = [0u8; 512];
        let (prefix, name) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}", w = width - 1);
            h[at..at + width - 1].copy_from_slice(s.as_bytes());
        };
        let (mode, flag) = match kind {
            TarKind::File => (0o600, b'0'),
            TarKind::Dir => (0o700, b'5'),
            TarKind::Link(target) => {
                if target.len() > 100 {
                    return Err(bad(format!(
                        "{path}: link target {target} is too long for ustar"
                    )));
                }
                h[157..157 + target.len()].copy_from_slice(target.as_bytes());
                (0o777, b'2')
            }
        };
        octal(&mut h, 100, 8, mode);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        if len >= 0o77777777777 {
            return Err(bad(format!("{path}: {len} bytes is too large for ustar")));
        }
        octal(&mut h, 124, 12, len);
        octal(&mut h, 136, 12, self.mtime);
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.write_all(&h)
    }
}

/// What a tar header announces.
enum TarKind<'a> {
    File,
    Dir,
    /// A symbolic link to this target.
    Link(&'a str),
}

/// Splits a path into ustar's prefix (up to 155 bytes) and name (up to 100 bytes).
fn split_name(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    for (i, c) in path.char_indices() {
        if c == '/' && i <= 155 && path.len() - i - 1 <= 100 {
            return Ok((&path[..i], &path[i + 1..]));
        }
    }
    Err(bad(format!("{path}: too long for a ustar name")))
}

impl<W: Write> Sink for TarSink<W> {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.header(&format!("{path}/"), 0, TarKind::Dir)
    }

    fn dir_link(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.header(path, 0, TarKind::Link(target))
    }

    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()> {
        if let Some(c) = &self.cur {
            return Err(bad(format!("{path}: {} is still open", c.path)));
        }
        self.header(path, len, TarKind::File)?;
        self.cur = Some(Current {
            path: path.to_string(),
            len,
            written: 0,
        });
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let c = self
            .cur
            .as_mut()
            .ok_or_else(|| bad("write outside a file".into()))?;
        c.add(data.len())?;
        self.out.write_all(data)
    }

    fn end_file(&mut self) -> io::Result<()> {
        let c = self
            .cur
            .take()
            .ok_or_else(|| bad("end_file outside a file".into()))?;
        c.check_complete()?;
        let pad = (512 - c.len % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

/// Writes into a directory (which must be empty or not exist): directories 0700, files 0600,
/// every file and directory fsynced.
pub struct DirSink {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    cur: Option<(File, Current)>,
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl DirSink {
    pub fn new(root: &Path) -> io::Result<DirSink> {
        if root.exists() && std::fs::read_dir(root)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty", root.display()),
            ));
        }
        std::fs::create_dir_all(root)?;
        set_mode(root, 0o700)?;
        Ok(DirSink {
            root: root.to_path_buf(),
            dirs: vec![root.to_path_buf()],
            cur: None,
        })
    }

    fn path(&self, rel: &str) -> io::Result<PathBuf> {
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(format!("{rel}: not a plain relative path")));
        }
        Ok(self.root.join(rel))
    }
}

impl Sink for DirSink {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        let p = self.path(path)?;
        std::fs::create_dir(&p)?;
        set_mode(&p, 0o700)?;
        self.dirs.push(p);
        Ok(())
    }

    /// Creates the target directory (which must be missing or empty: no other data
    /// directory's tablespace) and the link.
    fn dir_link(&mut self, path: &str, target: &str) -> io::Result<()> {
        let p = self.path(path)?;
        let parent = p
            .parent()
            .ok_or_else(|| bad(format!("{path}: no parent directory")))?;
        let real = parent.join(target);
        if real.exists() && std::fs::read_dir(&real)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("tablespace directory {} is not empty", real.display()),
            ));
        }
        std::fs::create_dir_all(&real)?;
        set_mode(&real, 0o700)?;
        std::os::unix::fs::symlink(target, &p)?;
        if let Some(up) = real.parent() {
            self.dirs.push(up.to_path_buf());
        }
        self.dirs.push(real);
        self.dirs.push(parent.to_path_buf());
        Ok(())
    }

    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()> {
        if let Some((_, c)) = &self.cur {
            return Err(bad(format!("{path}: {} is still open", c.path)));
        }
        let p = self.path(path)?;
        let f = File::create(&p)?;
        set_mode(&p, 0o600)?;
        let c = Current {
            path: path.to_string(),
            len,
            written: 0,
        };
        self.cur = Some((f, c));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let (f, c) = self
            .cur
            .as_mut()
            .ok_or_else(|| bad("write outside a file".into()))?;
        c.add(data.len())?;
        f.write_all(data)
    }

    fn end_file(&mut self) -> io::Result<()> {
        let (f, c) = self
            .cur
            .take()
            .ok_or_else(|| bad("end_file outside a file".into()))?;
        c.check_complete()?;
        f.sync_all()
    }

    fn finish(&mut self) -> io::Result<()> {
        // Children before parents: a directory's entries are durable before the directory's.
        for d in self.dirs.iter().rev() {
            File::open(d)?.sync_all()?;
        }
        if let Some(parent) = self.root.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_entries_are_blocks() {
        let mut t = TarSink::new(Vec::new());
        t.dir("base").unwrap();
        t.file("base/PG_VERSION", b"15\n").unwrap();
        assert!(t.begin_file("x", 2).is_ok());
        assert!(t.write(b"abc").is_err(), "more than announced");
        t.finish().unwrap();
        let out = t.into_inner();
        assert_eq!(out.len() % 512, 0);
        assert_eq!(&out[257..262], b"ustar");
        assert!(split_name(&"a/".repeat(200)).is_err());
        let long = format!("{}/{}", "p".repeat(120), "n".repeat(90));
        assert_eq!(split_name(&long).unwrap().1.len(), 90);
    }

    #[test]
    fn tablespace_links_are_tar_symlinks_and_real_directories() {
        let mut t = TarSink::new(Vec::new());
        t.dir("pg_tblspc").unwrap();
        t.dir_link("pg_tblspc/16384", &tablespace_link_target(16384))
            .unwrap();
        t.finish().unwrap();
        let out = t.into_inner();
        let h = &out[512..1024];
        assert_eq!(&h[..15], b"pg_tblspc/16384");
        assert_eq!(h[156], b'2');
        assert_eq!(&h[157..180], b"../../tablespaces/16384");

        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let mut s = DirSink::new(&root).unwrap();
        s.dir("pg_tblspc").unwrap();
        s.dir_link("pg_tblspc/16384", &tablespace_link_target(16384))
            .unwrap();
        s.dir("pg_tblspc/16384/PG_15_1").unwrap();
        s.file("pg_tblspc/16384/PG_15_1/x", b"x").unwrap();
        s.finish().unwrap();
        assert!(root.join("pg_tblspc/16384").is_symlink());
        assert_eq!(
            std::fs::read(d.path().join("tablespaces/16384/PG_15_1/x")).unwrap(),
            b"x"
        );
        // A second data directory beside it must not share the tablespace.
        let mut s = DirSink::new(&d.path().join("data2")).unwrap();
        s.dir("pg_tblspc").unwrap();
        assert!(s
            .dir_link("pg_tblspc/16384", &tablespace_link_target(16384))
            .is_err());
    }
}
