//! Layer file names: the key range and LSN range of a layer, readable without opening it.
//!
//! | kind  | file name                                                      |
//! |-------|----------------------------------------------------------------|
//! | delta | `<key start>-<key end>__<lsn start 016X>-<lsn end 016X>.delta` |
//! | image | `<key start>-<key end>__<lsn 016X>.image`                      |
//!
//! Keys are 36 upper-case hex digits, LSNs 16 upper-case hex digits; both ranges are half-open
//! (`end` excluded), and an image layer at LSN `L` covers the LSN range `L..L+1`. Parsing is
//! strict (one spelling per layer), so `parse(name).file_name() == name` always holds. Anything
//! else in a layer directory, such as a writer's `*.tmp` file, is not a layer name.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use walproto::Lsn;

use crate::key::{Key, KEY_SIZE};

/// Delta or image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    Delta,
    Image,
}

impl LayerKind {
    /// File name extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            LayerKind::Delta => "delta",
            LayerKind::Image => "image",
        }
    }
}

/// What a layer covers: its kind, key range and LSN range. Its `Display` is the file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerDesc {
    pub kind: LayerKind,
    pub key_range: Range<Key>,
    /// For an image layer at LSN `L`: `L..L+1`.
    pub lsn_range: Range<Lsn>,
}

/// Why a string is not a layer file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid layer file name {name:?}: {reason}")]
pub struct LayerNameError {
    pub name: String,
    pub reason: &'static str,
}

impl LayerDesc {
    /// A delta layer over `key_range` × `lsn_range`.
    pub fn delta(key_range: Range<Key>, lsn_range: Range<Lsn>) -> LayerDesc {
        LayerDesc {
            kind: LayerKind::Delta,
            key_range,
            lsn_range,
        }
    }

    /// An image layer over `key_range` at `lsn` (`lsn` must be below `Lsn::MAX`).
    pub fn image(key_range: Range<Key>, lsn: Lsn) -> LayerDesc {
        LayerDesc {
            kind: LayerKind::Image,
            key_range,
            lsn_range: lsn..Lsn(lsn.0.saturating_add(1)),
        }
    }

    /// The LSN of an image layer (the start of the LSN range).
    pub fn image_lsn(&self) -> Lsn {
        self.lsn_range.start
    }

    /// The file name: see the module documentation.
    pub fn file_name(&self) -> String {
        self.to_string()
    }

    /// Why these ranges cannot describe a layer, if they cannot.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.key_range.start >= self.key_range.end {
            return Err("empty key range");
        }
        if self.lsn_range.start >= self.lsn_range.end {
            return Err("empty LSN range");
        }
        if self.kind == LayerKind::Image && self.lsn_range.end.0 != self.lsn_range.start.0 + 1 {
            return Err("an image layer's LSN range must be exactly one LSN");
        }
        Ok(())
    }

    /// Parses a file name (no directory part).
    pub fn parse(name: &str) -> Result<LayerDesc, LayerNameError> {
        let fail = |reason| LayerNameError {
            name: name.chars().take(200).collect(),
            reason,
        };
        let (stem, kind) = if let Some(stem) = name.strip_suffix(".delta") {
            (stem, LayerKind::Delta)
        } else if let Some(stem) = name.strip_suffix(".image") {
            (stem, LayerKind::Image)
        } else {
            return Err(fail("extension is neither .delta nor .image"));
        };
        let (keys, lsns) = stem
            .split_once("__")
            .ok_or_else(|| fail("no \"__\" between key range and LSN range"))?;
        let (ks, ke) = keys
            .split_once('-')
            .ok_or_else(|| fail("no \"-\" in key range"))?;
        let key_start = parse_key(ks).ok_or_else(|| fail("bad key range start"))?;
        let key_end = parse_key(ke).ok_or_else(|| fail("bad key range end"))?;
        let lsn_range = match kind {
            LayerKind::Delta => {
                let (ls, le) = lsns
                    .split_once('-')
                    .ok_or_else(|| fail("no \"-\" in LSN range"))?;
                let start = parse_lsn(ls).ok_or_else(|| fail("bad LSN range start"))?;
                let end = parse_lsn(le).ok_or_else(|| fail("bad LSN range end"))?;
                start..end
            }
            LayerKind::Image => {
                let lsn = parse_lsn(lsns).ok_or_else(|| fail("bad image LSN"))?;
                if lsn == Lsn::MAX {
                    return Err(fail("image LSN is the maximum LSN"));
                }
                lsn..Lsn(lsn.0 + 1)
            }
        };
        let desc = LayerDesc {
            kind,
            key_range: key_start..key_end,
            lsn_range,
        };
        desc.check().map_err(fail)?;
        Ok(desc)
    }
}

fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'))
}

fn parse_key(s: &str) -> Option<Key> {
    if !is_upper_hex(s, KEY_SIZE * 2) {
        return None;
    }
    s.parse().ok()
}

fn parse_lsn(s: &str) -> Option<Lsn> {
    if !is_upper_hex(s, 16) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(Lsn)
}

impl fmt::Display for LayerDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Range { start, end } = &self.key_range;
        match self.kind {
            LayerKind::Delta => write!(
                f,
                "{start}-{end}__{:016X}-{:016X}.delta",
                self.lsn_range.start.0, self.lsn_range.end.0
            ),
            LayerKind::Image => write!(f, "{start}-{end}__{:016X}.image", self.lsn_range.start.0),
        }
    }
}

impl FromStr for LayerDesc {
    type Err = LayerNameError;

    fn from_str(s: &str) -> Result<LayerDesc, LayerNameError> {
        LayerDesc::parse(s)
    }
}
