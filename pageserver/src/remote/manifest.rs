//! The remote manifest: what of a timeline is durable in the object store. Written (one atomic
//! PUT) only after every layer it lists is uploaded; a layer it does not list does not exist.
//! Each layer carries its size and crc32c as uploaded, so a download is verified end to end.
//!
//! Text, like the local metadata file, so an operator can read it:
//!
//! ```text
//! strata-remote-manifest 2
//! tenant <id>
//! timeline <id>
//! start_lsn 0/2000028
//! ancestor none                     (or: ancestor <timeline id> <branch LSN>)
//! remote_consistent_lsn 0/3A41F10
//! last_record_lsn 0/3A41EB8
//! gc_cutoff_lsn 0/3000000           (only once GC ran, as in the local metadata)
//! layer <file name> <object key> <size in bytes> <crc32c, 8 hex digits>
//! ...
//! crc32c 1A2B3C4D
//! ```
//!
//! A layer is stored under `l/<object key>`, not under its file name: layer file names
//! run to ~90 bytes, and with the ids in the path that is too long for some S3-compatible
//! stores (see [`super::storage::MAX_KEY_BYTES`]). The object key is the crc32c of the file
//! name in 8 hex digits, with `-<n>` added when another layer of the manifest (or of the one
//! it replaces) has that key already: an upload never overwrites an object the current
//! manifest lists. The manifest maps file names to keys; nothing derives one from the other.
//!
//! Version 1 (layers stored under their file names) is refused: nothing was deployed with it.
//!
//! `remote_consistent_lsn` is the local metadata's `disk_consistent_lsn` at the time of the
//! upload: a timeline restored from this manifest resumes ingest with the record starting
//! there.

use std::collections::HashSet;

use layer_format::{LayerDesc, Lsn};
use walproto::ids::{TenantId, TimelineId};

use super::error::{RemoteError, Result};
use crate::timeline::TimelineMetadata;

const HEADER: &str = "strata-remote-manifest 2";
const HEADER_V1: &str = "strata-remote-manifest 1";

/// The longest object key [`layer_key`] makes: 8 hex digits, `-` and a u32.
pub const LONGEST_LAYER_KEY: usize = 8 + 1 + 10;

/// The object key of layer `file_name`, avoiding the keys in `taken`.
pub fn layer_key(file_name: &str, taken: &HashSet<String>) -> String {
    let base = format!("{:08x}", crc32c::crc32c(file_name.as_bytes()));
    if !taken.contains(&base) {
        return base;
    }
    (1..=u32::MAX)
        .map(|n| format!("{base}-{n}"))
        .find(|k| !taken.contains(k))
        .unwrap_or(base)
}

/// Whether `key` is a key [`layer_key`] could have made (no path separators, bounded length).
fn valid_layer_key(key: &str) -> bool {
    let (hex, n) = key.split_once('-').unwrap_or((key, ""));
    hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && key.len() <= LONGEST_LAYER_KEY
        && (key.len() == 8 || (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// One uploaded layer file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteLayer {
    pub desc: LayerDesc,
    /// The object's name under the timeline's `l/`.
    pub key: String,
    pub size: u64,
    pub crc32c: u32,
}

impl RemoteLayer {
    pub fn file_name(&self) -> String {
        self.desc.file_name()
    }
}

/// A timeline's durable state in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub tenant: TenantId,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub ancestor: Option<(String, Lsn)>,
    pub remote_consistent_lsn: Lsn,
    pub last_record_lsn: Lsn,
    /// The local metadata's `gc_cutoff_lsn` (`0/0`: no GC yet).
    pub gc_cutoff_lsn: Lsn,
    pub layers: Vec<RemoteLayer>,
}

impl Manifest {
    /// The manifest of `meta`, whose layers are `layers` (in the metadata's order).
    pub fn new(
        tenant: TenantId,
        timeline: TimelineId,
        meta: &TimelineMetadata,
        layers: Vec<RemoteLayer>,
    ) -> Manifest {
        Manifest {
            tenant,
            timeline,
            start_lsn: meta.start_lsn,
            ancestor: meta.ancestor.clone(),
            remote_consistent_lsn: meta.disk_consistent_lsn,
            last_record_lsn: meta.last_record_lsn,
            gc_cutoff_lsn: meta.gc_cutoff_lsn,
            layers,
        }
    }

    /// The local metadata a restored timeline starts from.
    pub fn to_metadata(&self) -> TimelineMetadata {
        TimelineMetadata {
            start_lsn: self.start_lsn,
            ancestor: self.ancestor.clone(),
            disk_consistent_lsn: self.remote_consistent_lsn,
            last_record_lsn: self.last_record_lsn,
            gc_cutoff_lsn: self.gc_cutoff_lsn,
            layers: self.layers.iter().map(|l| l.desc.clone()).collect(),
        }
    }

    /// Whether this manifest describes exactly the durable state of `meta`.
    pub fn matches(&self, meta: &TimelineMetadata) -> bool {
        self.to_metadata() == *meta
    }

    pub fn layer(&self, desc: &LayerDesc) -> Option<&RemoteLayer> {
        self.layers.iter().find(|l| l.desc == *desc)
    }

    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    pub fn encode(&self) -> String {
        let mut s = format!(
            "{HEADER}\ntenant {}\ntimeline {}\nstart_lsn {}\n",
            self.tenant, self.timeline, self.start_lsn
        );
        match &self.ancestor {
            None => s.push_str("ancestor none\n"),
            Some((id, lsn)) => s.push_str(&format!("ancestor {id} {lsn}\n")),
        }
        s.push_str(&format!(
            "remote_consistent_lsn {}\nlast_record_lsn {}\n",
            self.remote_consistent_lsn, self.last_record_lsn
        ));
        if self.gc_cutoff_lsn != Lsn::INVALID {
            s.push_str(&format!("gc_cutoff_lsn {}\n", self.gc_cutoff_lsn));
        }
        for l in &self.layers {
            s.push_str(&format!(
                "layer {} {} {} {:08X}\n",
                l.file_name(),
                l.key,
                l.size,
                l.crc32c
            ));
        }
        let crc = crc32c::crc32c(s.as_bytes());
        s.push_str(&format!("crc32c {crc:08X}\n"));
        s
    }

    /// Parses and checks a manifest; `path` names it in errors.
    pub fn decode(bytes: &[u8], path: &str) -> Result<Manifest> {
        let bad = |reason: String| RemoteError::Manifest {
            path: path.to_string(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
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
        let header = lines.next();
        if header == Some(HEADER_V1) {
            return Err(bad(
                "format version 1 (layers stored under their file names) is no longer read; \
                 this pageserver reads version 2: delete the old remote data and upload again"
                    .into(),
            ));
        }
        if header != Some(HEADER) {
            return Err(bad("unknown header (written by another version?)".into()));
        }
        let mut field = |name: &str| -> Result<String> {
            let line = lines.next().ok_or_else(|| bad(format!("missing {name}")))?;
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(format!("expected {name}, found {line:?}")))
        };
        let lsn = |v: &str, what: &str| -> Result<Lsn> {
            v.parse().map_err(|_| bad(format!("bad {what} {v:?}")))
        };
        let tenant = field("tenant")?
            .parse::<TenantId>()
            .map_err(|e| bad(e.to_string()))?;
        let timeline = field("timeline")?
            .parse::<TimelineId>()
            .map_err(|e| bad(e.to_string()))?;
        let start_lsn = lsn(&field("start_lsn")?, "start_lsn")?;
        let anc = field("ancestor")?;
        let ancestor = if anc == "none" {
            None
        } else {
            let (id, l) = anc
                .split_once(' ')
                .ok_or_else(|| bad(format!("bad ancestor {anc:?}")))?;
            Some((id.to_string(), lsn(l, "ancestor LSN")?))
        };
        let remote_consistent_lsn = lsn(&field("remote_consistent_lsn")?, "remote_consistent_lsn")?;
        let last_record_lsn = lsn(&field("last_record_lsn")?, "last_record_lsn")?;
        let mut layers = Vec::new();
        let mut seen = HashSet::new();
        let mut keys = HashSet::new();
        let mut gc_cutoff_lsn = Lsn::INVALID;
        for line in lines {
            if let Some(v) = line.strip_prefix("gc_cutoff_lsn ") {
                if !layers.is_empty() || gc_cutoff_lsn != Lsn::INVALID {
                    return Err(bad(format!("misplaced line {line:?}")));
                }
                gc_cutoff_lsn = lsn(v, "gc_cutoff_lsn")?;
                continue;
            }
            let rest = line
                .strip_prefix("layer ")
                .ok_or_else(|| bad(format!("unexpected line {line:?}")))?;
            let parts: Vec<&str> = rest.split(' ').collect();
            let [name, key, size, crc] = parts[..] else {
                return Err(bad(format!("bad layer line {line:?}")));
            };
            let desc = LayerDesc::parse(name).map_err(|e| bad(format!("layer {name}: {e}")))?;
            let size = size
                .parse()
                .map_err(|_| bad(format!("layer {name}: bad size {size:?}")))?;
            let crc32c = u32::from_str_radix(crc, 16)
                .map_err(|_| bad(format!("layer {name}: bad crc32c {crc:?}")))?;
            if !seen.insert(name.to_string()) {
                return Err(bad(format!("layer {name} listed twice")));
            }
            if !valid_layer_key(key) {
                return Err(bad(format!("layer {name}: bad object key {key:?}")));
            }
            if !keys.insert(key.to_string()) {
                return Err(bad(format!("object key {key} listed twice")));
            }
            layers.push(RemoteLayer {
                desc,
                key: key.to_string(),
                size,
                crc32c,
            });
        }
        Ok(Manifest {
            tenant,
            timeline,
            start_lsn,
            ancestor,
            remote_consistent_lsn,
            last_record_lsn,
            gc_cutoff_lsn,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layer_format::Key;

    fn sample() -> Manifest {
        Manifest {
            tenant: "0123456789abcdef0123456789abcdef".parse().unwrap(),
            timeline: "11111111111111111111111111111111".parse().unwrap(),
            start_lsn: Lsn(0x0200_0028),
            ancestor: Some(("22222222222222222222222222222222".into(), Lsn(0x0200_0028))),
            remote_consistent_lsn: Lsn(0x0300_0000),
            last_record_lsn: Lsn(0x02FF_FFC8),
            gc_cutoff_lsn: Lsn(0x0280_0000),
            layers: vec![
                RemoteLayer {
                    desc: LayerDesc::image(Key::MIN..Key::MAX, Lsn(0x0200_0028)),
                    key: "0a1b2c3d".into(),
                    size: 123_456,
                    crc32c: 0xDEAD_BEEF,
                },
                RemoteLayer {
                    desc: LayerDesc::delta(Key::MIN..Key::MAX, Lsn(0x0200_0050)..Lsn(0x0300_0001)),
                    key: "0a1b2c3d-1".into(),
                    size: 7,
                    crc32c: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let m = sample();
        let text = m.encode();
        assert_eq!(Manifest::decode(text.as_bytes(), "m").unwrap(), m);
        assert_eq!(m.to_metadata().layers.len(), 2);
        assert!(m.matches(&m.to_metadata()));
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x01;
            assert!(Manifest::decode(&b, "m").is_err(), "byte {i}");
        }
        let e = Manifest::decode(&text.as_bytes()[..text.len() - 4], "x/manifest").unwrap_err();
        assert!(e.to_string().contains("x/manifest"), "{e}");
    }

    #[test]
    fn duplicate_layer_is_refused() {
        let mut m = sample();
        m.layers.push(m.layers[0].clone());
        let e = Manifest::decode(m.encode().as_bytes(), "m").unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let mut m = sample();
        m.layers[1].key = m.layers[0].key.clone();
        let e = Manifest::decode(m.encode().as_bytes(), "m").unwrap_err();
        assert!(
            e.to_string().contains("object key 0a1b2c3d listed twice"),
            "{e}"
        );
        for bad in ["../x", "0a1b2c3", "0a1b2c3d-", "0a1b2c3d-x", "0a1b2c3d/1"] {
            let mut m = sample();
            m.layers[0].key = bad.into();
            let e = Manifest::decode(m.encode().as_bytes(), "m").unwrap_err();
            assert!(e.to_string().contains("bad object key"), "{bad}: {e}");
        }
    }

    #[test]
    fn version_1_is_refused_clearly() {
        let body = "strata-remote-manifest 1\ntenant t\n";
        let text = format!("{body}crc32c {:08X}\n", crc32c::crc32c(body.as_bytes()));
        let e = Manifest::decode(text.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1") && e.contains("version 2"), "{e}");
    }

    #[test]
    fn layer_keys_are_short_and_distinct() {
        let name =
            LayerDesc::delta(Key::MIN..Key::MAX, Lsn(0x0200_0050)..Lsn(0x0300_0001)).file_name();
        let mut taken = HashSet::new();
        let a = layer_key(&name, &taken);
        assert_eq!(a.len(), 8);
        assert!(valid_layer_key(&a));
        taken.insert(a.clone());
        let b = layer_key(&name, &taken);
        assert_eq!(b, format!("{a}-1"));
        assert!(valid_layer_key(&b));
        taken.insert(b);
        assert_eq!(layer_key(&name, &taken), format!("{a}-2"));
        assert!(valid_layer_key(&format!("{a}-{}", u32::MAX)));
        assert_eq!(format!("{a}-{}", u32::MAX).len(), LONGEST_LAYER_KEY);
    }
}
