//! The timeline's metadata file: what is durable. Written after every layer flush (and after
//! an import), replaced atomically (temporary file, fsync, rename, fsync of the directory), so
//! a crash leaves either the old or the new version, never a mix. Its crc32c catches a torn or
//! damaged file.
//!
//! Text, so an operator can read it:
//!
//! ```text
//! strata-timeline-metadata 1
//! start_lsn 0/2000028
//! ancestor none
//! disk_consistent_lsn 0/3A41F10
//! last_record_lsn 0/3A41EB8
//! gc_cutoff_lsn 0/03000000       (optional: only once GC ran)
//! layer <file name>
//! ...
//! crc32c 1A2B3C4D
//! ```
//!
//! - `start_lsn`: where the timeline's history begins (the import LSN, or the branch point).
//!   Nothing below it can be ingested or read.
//! - `ancestor`: `none`, or `<ancestor timeline id> <branch LSN>` for a branch, whose reads
//!   continue in the ancestor as of the branch LSN (equal to `start_lsn`).
//! - `disk_consistent_lsn`: the end LSN of the last record whose every value is in the listed
//!   layers; ingest resumes with the record that starts there.
//! - `last_record_lsn`: that record's start (the `xl_prev` the next record must carry), or
//!   `0/0` before the first record.
//! - `gc_cutoff_lsn`: reads below it are refused, GC may have removed their history
//!   (see `super::gc`); absent before the first GC.
//! - `layer`: every live layer file. A layer file in the directory that is not listed is left
//!   over from a crash between writing it and writing this file, and is deleted at open.

use std::fs;
use std::path::Path;

use layer_format::{LayerDesc, Lsn};

use super::error::{Result, TimelineError};

pub const METADATA_FILE: &str = "metadata";
const HEADER: &str = "strata-timeline-metadata 1";

/// The durable state of a timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineMetadata {
    pub start_lsn: Lsn,
    /// (ancestor timeline id, branch LSN) of a branch (see `super::ancestor`).
    pub ancestor: Option<(String, Lsn)>,
    pub disk_consistent_lsn: Lsn,
    pub last_record_lsn: Lsn,
    /// Reads below this LSN are refused: GC may have removed their history (`0/0`: no GC
    /// yet). Stored as an optional `gc_cutoff_lsn` line, so files without it still load.
    pub gc_cutoff_lsn: Lsn,
    pub layers: Vec<LayerDesc>,
}

impl TimelineMetadata {
    pub fn encode(&self) -> String {
        let mut s = format!("{HEADER}\nstart_lsn {}\n", self.start_lsn);
        match &self.ancestor {
            None => s.push_str("ancestor none\n"),
            Some((id, lsn)) => s.push_str(&format!("ancestor {id} {lsn}\n")),
        }
        s.push_str(&format!(
            "disk_consistent_lsn {}\nlast_record_lsn {}\n",
            self.disk_consistent_lsn, self.last_record_lsn
        ));
        if self.gc_cutoff_lsn != Lsn::INVALID {
            s.push_str(&format!("gc_cutoff_lsn {}\n", self.gc_cutoff_lsn));
        }
        for l in &self.layers {
            s.push_str(&format!("layer {}\n", l.file_name()));
        }
        let crc = crc32c::crc32c(s.as_bytes());
        s.push_str(&format!("crc32c {crc:08X}\n"));
        s
    }

    pub fn decode(text: &str, path: &Path) -> Result<TimelineMetadata> {
        let bad = |reason: String| TimelineError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let body_end = text
            .rfind("crc32c ")
            .ok_or_else(|| bad("no crc32c line (truncated?)".into()))?;
        let (body, crc_line) = text.split_at(body_end);
        let got = crc32c::crc32c(body.as_bytes());
        if crc_line != format!("crc32c {got:08X}\n") {
            return Err(bad(format!(
                "crc32c mismatch: stored {:?}, computed {got:08X}",
                crc_line.trim_end()
            )));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad("unknown header (written by another version?)".into()));
        }
        let mut field = |name: &str| -> Result<String> {
            let line = lines.next().ok_or_else(|| bad(format!("missing {name}")))?;
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(format!("expected {name}, found {line:?}")))
        };
        let lsn = |v: String, what: &str| -> Result<Lsn> {
            v.parse().map_err(|_| bad(format!("bad {what} {v:?}")))
        };
        let start_lsn = lsn(field("start_lsn")?, "start_lsn")?;
        let anc = field("ancestor")?;
        let ancestor = if anc == "none" {
            None
        } else {
            let (id, l) = anc
                .split_once(' ')
                .ok_or_else(|| bad(format!("bad ancestor {anc:?}")))?;
            Some((id.to_string(), lsn(l.to_string(), "ancestor LSN")?))
        };
        let disk_consistent_lsn = lsn(field("disk_consistent_lsn")?, "disk_consistent_lsn")?;
        let last_record_lsn = lsn(field("last_record_lsn")?, "last_record_lsn")?;
        let mut layers = Vec::new();
        let mut gc_cutoff_lsn = Lsn::INVALID;
        for line in lines {
            if let Some(v) = line.strip_prefix("gc_cutoff_lsn ") {
                gc_cutoff_lsn = lsn(v.to_string(), "gc_cutoff_lsn")?;
                continue;
            }
            let name = line
                .strip_prefix("layer ")
                .ok_or_else(|| bad(format!("unexpected line {line:?}")))?;
            layers.push(LayerDesc::parse(name).map_err(|e| bad(e.to_string()))?);
        }
        Ok(TimelineMetadata {
            start_lsn,
            ancestor,
            disk_consistent_lsn,
            last_record_lsn,
            gc_cutoff_lsn,
            layers,
        })
    }

    /// Reads `dir/metadata`; `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> Result<Option<TimelineMetadata>> {
        let path = dir.join(METADATA_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::decode(&text, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TimelineError::io("read", &path)(e)),
        }
    }

    /// Replaces `dir/metadata` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        crate::durable::write_atomic(&dir.join(METADATA_FILE), self.encode().as_bytes())
            .map_err(io_failure)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    crate::durable::fsync_dir(dir).map_err(io_failure)
}

fn io_failure(f: crate::durable::IoFailure) -> TimelineError {
    TimelineError::io(f.op, f.path)(f.source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layer_format::Key;

    fn sample() -> TimelineMetadata {
        TimelineMetadata {
            start_lsn: Lsn(0x0200_0028),
            ancestor: None,
            disk_consistent_lsn: Lsn(0x0300_0000),
            last_record_lsn: Lsn(0x02FF_FFC8),
            gc_cutoff_lsn: Lsn::INVALID,
            layers: vec![
                LayerDesc::image(Key::MIN..Key::MAX, Lsn(0x0200_0028)),
                LayerDesc::delta(Key::MIN..Key::MAX, Lsn(0x0200_0050)..Lsn(0x0300_0001)),
            ],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let m = sample();
        let text = m.encode();
        let p = Path::new("metadata");
        assert_eq!(TimelineMetadata::decode(&text, p).unwrap(), m);
        // Any single changed byte is caught.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(b) {
                assert!(TimelineMetadata::decode(&s, p).is_err(), "byte {i}");
            }
        }
        assert!(TimelineMetadata::decode(&text[..text.len() - 3], p).is_err());
    }

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TimelineMetadata::load(dir.path()).unwrap(), None);
        sample().store(dir.path()).unwrap();
        assert_eq!(TimelineMetadata::load(dir.path()).unwrap(), Some(sample()));
    }

    #[test]
    fn gc_cutoff_line_is_optional() {
        let p = Path::new("metadata");
        let old = sample();
        assert!(!old.encode().contains("gc_cutoff_lsn"));
        let mut m = sample();
        m.gc_cutoff_lsn = Lsn(0x0280_0000);
        let text = m.encode();
        assert!(
            text.contains(&format!("gc_cutoff_lsn {}\n", m.gc_cutoff_lsn)),
            "{text}"
        );
        assert_eq!(TimelineMetadata::decode(&text, p).unwrap(), m);
        assert_eq!(TimelineMetadata::decode(&old.encode(), p).unwrap(), old);
    }
}
