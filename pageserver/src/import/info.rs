//! What an import records about where the timeline came from, stored as an image at
//! `Key::control_file()` at the import LSN (ingest never writes that key):
//!
//! `version u8 = 1 | prev_lsn u64 | consistent_lsn u64 | pg_control (296 bytes)`, little-endian.
//!
//! - `prev_lsn`: the start of the record that ends at the import LSN (the first ingested
//!   record's `xl_prev`), `0/0` if unknown. A basebackup at the import LSN writes it as its
//!   checkpoint's `xl_prev`.
//! - `consistent_lsn`: the first LSN at which the timeline's pages are consistent: the import
//!   LSN for a cleanly shut down data directory, the backup's end for a `pg_basebackup` (its
//!   copied pages may be torn until the WAL's full-page images have replaced them).
//! - The control file: the system identifier, catalog version, checksum setting and the
//!   compile-time constants every generated `pg_control` must repeat.

use bytes::Bytes;
use layer_format::{Key, Lsn};

use super::control::{ControlFile, CONTROL_DATA_SIZE};
use crate::timeline::{Timeline, TimelineError};

const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 8 + 8 + CONTROL_DATA_SIZE;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportInfo {
    pub prev_lsn: Lsn,
    pub consistent_lsn: Lsn,
    pub control: ControlFile,
}

impl ImportInfo {
    pub fn key() -> Key {
        Key::control_file()
    }

    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(ENCODED_LEN);
        v.push(VERSION);
        v.extend_from_slice(&self.prev_lsn.0.to_le_bytes());
        v.extend_from_slice(&self.consistent_lsn.0.to_le_bytes());
        v.extend_from_slice(self.control.as_bytes());
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Result<ImportInfo, String> {
        if b.len() != ENCODED_LEN || b[0] != VERSION {
            return Err(format!(
                "import info of {} bytes, version {:?}: expected version {VERSION}, {ENCODED_LEN} bytes",
                b.len(),
                b.first()
            ));
        }
        let lsn = |at: usize| Lsn(u64::from_le_bytes(b[at..at + 8].try_into().unwrap()));
        Ok(ImportInfo {
            prev_lsn: lsn(1),
            consistent_lsn: lsn(9),
            control: ControlFile::parse(&b[17..])?,
        })
    }

    /// The import info visible at `lsn`; `None` for a timeline no import created.
    pub fn load(tl: &Timeline, lsn: Lsn) -> Result<Option<ImportInfo>, TimelineError> {
        let key = Self::key();
        tl.get_image_value(key, lsn)?
            .map(|b| {
                ImportInfo::decode(&b).map_err(|reason| TimelineError::Reconstruct {
                    key,
                    lsn,
                    reason,
                })
            })
            .transpose()
    }
}
