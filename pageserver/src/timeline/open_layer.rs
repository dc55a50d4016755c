//! The open layer: where ingest puts new values until they are written as an L0 delta layer.
//!
//! Values are appended to an ephemeral file (never fsynced: after a crash it is worthless, the
//! WAL is replayed from the durable LSN instead) through an in-memory tail buffer; an
//! in-memory index maps each key to its versions (LSN, offset, length, `will_init`) in LSN
//! order. Memory is the index plus at most one tail buffer, so an open layer of 64 MiB of
//! values costs a few MiB of RAM. When frozen, the same structure serves reads until its L0
//! file is written, then it is dropped and its file deleted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use layer_format::{Key, Lsn, Value};

use super::error::{Result, TimelineError};

/// Tail bytes kept in memory before they are written to the file.
const TAIL_MAX: usize = 256 * 1024;

/// One version of a key in the open layer.
#[derive(Clone, Copy, Debug)]
pub struct OpenEntry {
    pub lsn: Lsn,
    off: u64,
    len: u32,
    pub will_init: bool,
}

/// An append-only ephemeral file of encoded values plus its index.
pub struct OpenLayer {
    path: PathBuf,
    file: File,
    /// Bytes already in the file; the tail buffer starts there.
    written: u64,
    tail: Vec<u8>,
    index: BTreeMap<Key, Vec<OpenEntry>>,
    /// Lowest and highest LSN of any value.
    lsn_bounds: Option<(Lsn, Lsn)>,
    entries: u64,
}

impl OpenLayer {
    /// Creates `dir/ephemeral-<n>` (the directory is wiped when the timeline opens).
    pub fn create(dir: &Path, n: u64) -> Result<OpenLayer> {
        let path = dir.join(format!("ephemeral-{n}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(TimelineError::io("create", &path))?;
        Ok(OpenLayer {
            path,
            file,
            written: 0,
            tail: Vec::with_capacity(TAIL_MAX),
            index: BTreeMap::new(),
            lsn_bounds: None,
            entries: 0,
        })
    }

    /// Bytes of values stored.
    pub fn size(&self) -> u64 {
        self.written + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn entry_count(&self) -> u64 {
        self.entries
    }

    pub fn lsn_bounds(&self) -> Option<(Lsn, Lsn)> {
        self.lsn_bounds
    }

    /// Appends a version. Its LSN must be above every version of `key` already here.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        let versions = self.index.entry(key).or_default();
        if let Some(last) = versions.last() {
            if last.lsn >= lsn {
                return Err(TimelineError::Invalid(format!(
                    "key {key}: version at {lsn} is not newer than the stored {}",
                    last.lsn
                )));
            }
        }
        let off = self.written + self.tail.len() as u64;
        value.encode(&mut self.tail);
        let len = (self.written + self.tail.len() as u64 - off) as u32;
        versions.push(OpenEntry {
            lsn,
            off,
            len,
            will_init: value.will_init(),
        });
        self.entries += 1;
        self.lsn_bounds = Some(match self.lsn_bounds {
            None => (lsn, lsn),
            Some((lo, hi)) => (lo.min(lsn), hi.max(lsn)),
        });
        if self.tail.len() >= TAIL_MAX {
            self.file
                .write_all(&self.tail)
                .map_err(TimelineError::io("write", &self.path))?;
            self.written += self.tail.len() as u64;
            self.tail.clear();
        }
        Ok(())
    }

    /// `key`'s versions with LSN ≤ `lsn`, oldest first.
    pub fn versions(&self, key: Key, lsn: Lsn) -> &[OpenEntry] {
        match self.index.get(&key) {
            None => &[],
            Some(v) => &v[..v.partition_point(|e| e.lsn <= lsn)],
        }
    }

    /// Reads and decodes one version.
    pub fn read(&self, key: Key, e: &OpenEntry) -> Result<Value> {
        let mut buf = vec![0u8; e.len as usize];
        if e.off >= self.written {
            let at = (e.off - self.written) as usize;
            buf.copy_from_slice(&self.tail[at..at + e.len as usize]);
        } else {
            self.file
                .read_exact_at(&mut buf, e.off)
                .map_err(TimelineError::io("read", &self.path))?;
        }
        Value::decode(&buf).map_err(|source| TimelineError::Value {
            key,
            lsn: e.lsn,
            place: self.path.display().to_string(),
            source,
        })
    }

    /// Every (key, version) in (key, LSN) order: what an L0 delta layer is written from.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &OpenEntry)> + '_ {
        self.index
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |e| (*k, e)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OpenLayer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = OpenLayer::create(dir.path(), 0).unwrap();
        let k = Key::checkpoint();
        // Enough values to spill the tail to the file several times.
        for i in 1..=100u64 {
            let v = Value::image(vec![i as u8; 8192]);
            l.put(k, Lsn(i * 8), &v).unwrap();
        }
        assert!(l.put(k, Lsn(8), &Value::image(vec![])).is_err());
        let vs = l.versions(k, Lsn(400));
        assert_eq!(vs.len(), 50);
        for e in vs {
            let Value::Image(b) = l.read(k, e).unwrap() else {
                panic!()
            };
            assert_eq!(b[0] as u64 * 8, e.lsn.0);
        }
        assert_eq!(l.iter().count(), 100);
        assert!(l.versions(Key::control_file(), Lsn::MAX).is_empty());
    }
}
