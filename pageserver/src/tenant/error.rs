//! Errors of the tenant manager. Each says what was wrong and, where there is one, what is
//! allowed instead (the valid LSN range, the existing names).

use std::path::PathBuf;

use crate::import::ImportError;
use crate::ingest::IngestError;
use crate::timeline::TimelineError;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// An unknown tenant, timeline or restore point.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Malformed input (an id, a config value, an unaligned LSN).
    #[error("{0}")]
    InvalidArgument(String),
    /// Well-formed but outside what exists (an LSN beyond the end, a time before the first
    /// commit).
    #[error("{0}")]
    OutOfRange(String),
    /// The operation conflicts with the current state (deleting a timeline with branches).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    // Boxed: the storage errors are large, and every result of the manager carries them.
    #[error("{context}: {source}")]
    Timeline {
        context: String,
        source: Box<TimelineError>,
    },
    #[error("{context}: {source}")]
    Ingest {
        context: String,
        source: Box<IngestError>,
    },
    #[error("import of {datadir}: {source}")]
    Import {
        datadir: PathBuf,
        source: Box<ImportError>,
    },
}

impl TenantError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TenantError::Io { op, path, source }
    }

    pub(crate) fn timeline(context: impl Into<String>) -> impl FnOnce(TimelineError) -> Self {
        let context = context.into();
        move |source| TenantError::Timeline {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn ingest(context: impl Into<String>) -> impl FnOnce(IngestError) -> Self {
        let context = context.into();
        move |source| TenantError::Ingest {
            context,
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = TenantError> = std::result::Result<T, E>;
