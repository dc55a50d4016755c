//! Remote storage: a timeline's layer files and a manifest in an object store, so a pageserver
//! that lost its disk (or a new one) restores the timeline from there.
//!
//! Object layout under the storage's prefix:
//!
//! ```text
//! <prefix>/tenants/<tenant>/config                                  tenant config (opaque bytes)
//! <prefix>/tenants/<tenant>/timelines/<timeline>/manifest           see `manifest`
//! <prefix>/tenants/<tenant>/timelines/<timeline>/layers/<file name> immutable layer files
//! ```
//!
//! - [`storage`]: `--remote-storage <path | file://… | s3://bucket/prefix>` → an object store.
//! - [`manifest`]: the timeline's durable remote state: LSNs and every live layer with its size
//!   and crc32c. A layer the manifest does not list does not exist.
//! - [`upload`]: [`sync_timeline`]: uploads the layers the local metadata lists and the remote
//!   manifest lacks, then the manifest, then deletes what it no longer lists.
//! - [`uploader`]: [`spawn_uploader`]: the same in the background, publishing
//!   `remote_consistent_lsn`.
//! - [`restore`]: [`restore_timeline`] into an empty directory, and listings of what is stored.

pub mod error;
pub mod manifest;
pub mod restore;
pub mod storage;
pub mod upload;
pub mod uploader;

pub use error::{RemoteError, Result};
pub use manifest::{Manifest, RemoteLayer};
pub use restore::{
    download_manifest, list_remote_tenants, list_remote_timelines, restore_timeline, RestoreReport,
};
pub use storage::{RemoteStorage, S3Options};
pub use upload::{
    delete_remote_timeline, sync_timeline, sync_timeline_with, upload_file, SyncFailPoint,
    SyncReport,
};
pub use uploader::{spawn_uploader, UploaderConf, UploaderHandle, UploaderStats};
