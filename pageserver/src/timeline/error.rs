//! Errors of timeline storage. Every variant names what it was about: a file, a key, an LSN.

use std::path::PathBuf;

use layer_format::{Key, LayerError, Lsn, ValueError};

use crate::redo::RedoError;

/// Something went wrong storing or reading a timeline's data.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("timeline metadata {path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("value of key {key} at {lsn} in {place}: {source}")]
    Value {
        key: Key,
        lsn: Lsn,
        place: String,
        source: ValueError,
    },
    /// A page cannot be rebuilt from its stored versions.
    #[error("reconstructing key {key} at {lsn}: {reason}")]
    Reconstruct { key: Key, lsn: Lsn, reason: String },
    #[error("redo of key {key} at {lsn}: {source}")]
    Redo {
        key: Key,
        lsn: Lsn,
        source: RedoError,
    },
    /// The caller broke an ordering rule (a value not newer than the last one, ...).
    #[error("{0}")]
    Invalid(String),
}

impl TimelineError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TimelineError::Io { op, path, source }
    }
}

pub type Result<T, E = TimelineError> = std::result::Result<T, E>;
