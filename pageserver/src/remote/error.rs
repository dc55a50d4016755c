//! Errors of remote storage. Each names the object, file or layer it is about.

use std::path::PathBuf;

use walproto::ids::{TenantId, TimelineId};

use crate::timeline::TimelineError;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A `--remote-storage` value that cannot be used.
    #[error("remote storage config: {0}")]
    Config(String),
    #[error("object store {op} {path}: {source}")]
    Store {
        op: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("remote manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    /// A downloaded layer differs from what the manifest recorded at upload.
    #[error("remote layer {layer} is corrupt: {reason}")]
    LayerCorrupt { layer: String, reason: String },
    #[error("no remote manifest for tenant {tenant} timeline {timeline} (not uploaded yet?)")]
    NoManifest {
        tenant: TenantId,
        timeline: TimelineId,
    },
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    /// The local timeline kept changing under the uploader (compaction replaced the layers it
    /// was uploading) more times than it retries.
    #[error("{0}")]
    Busy(String),
    /// The caller asked for something that cannot be done (restore over a live timeline...).
    #[error("{0}")]
    Invalid(String),
    /// A test failpoint stopped a sync where a crash would.
    #[error("failpoint {0}: stopped as a crash would")]
    FailPoint(&'static str),
    #[error("the uploader task of {0} is gone")]
    UploaderGone(String),
}

impl RemoteError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RemoteError::Io { op, path, source }
    }

    pub(crate) fn store(
        op: &'static str,
        path: &object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> Self {
        let path = path.to_string();
        move |source| RemoteError::Store { op, path, source }
    }
}

impl From<remote_store::StoreError> for RemoteError {
    fn from(e: remote_store::StoreError) -> Self {
        use remote_store::StoreError as S;
        match e {
            S::Config { url, message } => RemoteError::Config(format!("{url:?}: {message}")),
            S::Store { op, path, source } => RemoteError::Store { op, path, source },
            S::Corrupt { path, check } => RemoteError::LayerCorrupt {
                layer: path,
                reason: check,
            },
        }
    }
}

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
