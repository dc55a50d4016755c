//! Durable small-file writes shared by the pageserver's state files (tenant configuration,
//! timeline metadata, the on-demand layer manifest, downloads): write a temporary file, fsync
//! it, rename it over the old one, fsync the directory. A crash leaves either the old file or
//! the new one, never a mix; the temporary file of an interrupted write is ignored by readers.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed step: what was being done, to which path, and the OS error. Each caller maps it
/// into its own error type.
#[derive(Debug)]
pub struct IoFailure {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for IoFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn fail(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IoFailure {
    let path = path.to_path_buf();
    move |source| IoFailure { op, path, source }
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IoFailure> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("fsync directory", dir))
}

/// Replaces `path` with `data` atomically and durably, through `<path>.tmp`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), IoFailure> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp).map_err(fail("create", &tmp))?;
    f.write_all(data).map_err(fail("write", &tmp))?;
    f.sync_all().map_err(fail("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail("rename", path))?;
    fsync_dir(parent(path))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
        let e = write_atomic(&dir.path().join("missing/state"), b"x").unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.path.ends_with("missing/state.tmp"), "{e:?}");
    }
}
