//! Errors of layer writers and readers.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong writing or reading a layer file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file's bytes are not a valid layer: checksum mismatch, truncation, bad magic, ...
    #[error("{}: corrupt layer file at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The caller asked for something the format or this layer does not allow (out-of-order or
    /// out-of-range writer input, a key outside the reader's range, an oversized value, ...).
    #[error("{}: {reason}", path.display())]
    InvalidInput { path: PathBuf, reason: String },
}

impl LayerError {
    /// True if the error means the file's bytes are bad (as opposed to I/O or caller errors).
    pub fn is_corruption(&self) -> bool {
        matches!(self, LayerError::Corrupt { .. })
    }
}

/// `Result` with [`LayerError`].
pub type Result<T, E = LayerError> = std::result::Result<T, E>;
