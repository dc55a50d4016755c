//! Where a basebackup goes: a tar stream ([`TarSink`], ustar, what `tar -x` and Postgres's
//! own tooling read) or a directory ([`DirSink`], files fsynced, then their directories).
//!
//! Entries arrive parents first. A file's length is announced before its bytes (a tar header
//! needs it); a sink refuses a file whose bytes do not add up to it.

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

    /// A whole file at once.
    fn file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.begin_file(path, data.len() as u64)?;
        self.write(data)?;
        self.end_file()
    }
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

    fn header(&mut self, path: &str, len: u64, dir: bool) -> io::Result<()> {
        let mut h = [0u8; 512];
        let (prefix, name) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}", w = width - 1);
            h[at..at + width - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, if dir { 0o700 } else { 0o600 });
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        if len >= 0o77777777777 {
            return Err(bad(format!("{path}: {len} bytes is too large for ustar")));
        }
        octal(&mut h, 124, 12, len);
        octal(&mut h, 136, 12, self.mtime);
        h[156] = if dir { b'5' } else { b'0' };
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
        self.header(&format!("{path}/"), 0, true)
    }

    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()> {
        if let Some(c) = &self.cur {
            return Err(bad(format!("{path}: {} is still open", c.path)));
        }
        self.header(path, len, false)?;
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
}
