//! Remote storage: a timeline's layer files and a manifest in an object store, so a pageserver
//! that lost its disk (or a new one) restores the timeline from there.
//!
//! Object layout under the storage's prefix:
//!
//! ```text
//! <prefix>/t/<tenant>/config                 tenant config (`tenant.toml`, opaque bytes)
//! <prefix>/t/<tenant>/<timeline>/manifest    see `manifest`
//! <prefix>/t/<tenant>/<timeline>/conf        the timeline's safekeepers (`timeline.toml`)
//! <prefix>/t/<tenant>/<timeline>/l/<key>     immutable layer files; the manifest maps each
//!                                            layer file name to its key
//! ```
//!
//! A wiped pageserver restores lazily: at start ([`restore_missing`]) each missing timeline
//! gets its metadata from the manifest and a list of its remote layers, and opens without
//! downloading anything; a read fetches each layer it visits the first time
//! ([`ondemand`]), checked against the manifest's size and crc32c. Ingest resumes at the
//! manifest's `remote_consistent_lsn`.
//!
//! Keys are kept short (at most [`storage::MAX_KEY_BYTES`]) because some S3-compatible stores
//! (s3s-fs) keep them in file names.
//!
//! - [`storage`]: `--remote-storage <path | file://… | s3://bucket/prefix>` → an object store.
//! - [`manifest`]: the timeline's durable remote state: LSNs and every live layer with its size
//!   and crc32c. A layer the manifest does not list does not exist.
//! - [`upload`]: [`sync_timeline`]: uploads the layers the local metadata lists and the remote
//!   manifest lacks, then the manifest, then deletes what it no longer lists.
//! - [`uploader`]: [`spawn_uploader`]: the same in the background, publishing
//!   `remote_consistent_lsn`.
//! - [`restore`]: [`restore_timeline_on_demand`] (downloads nothing) or [`restore_timeline`]
//!   (downloads every layer) into an empty directory, and listings of what is stored.
//! - [`ondemand`]: the remote layer list of a restored timeline, and the download of a layer
//!   at its first read (one per layer, verified, durable), with counters: a
//!   [`RemoteLayerSource`] makes each restored timeline's fetcher, given to `Timeline::open`.
//! - [`download`]: one layer downloaded and verified into place.
//! - [`startup`]: [`restore_missing`]: at start, everything the data directory lacks.

pub mod download;
pub mod error;
pub mod manifest;
pub mod ondemand;
pub mod restore;
pub mod startup;
pub mod storage;
pub mod upload;
pub mod uploader;

pub use error::{RemoteError, Result};
pub use manifest::{Manifest, RemoteLayer};
pub use ondemand::RemoteLayerSource;
pub use restore::{
    download_manifest, list_remote_tenants, list_remote_timelines, restore_timeline,
    restore_timeline_on_demand, RestoreReport,
};
pub use startup::{restore_missing, StartupRestoreReport};
pub use storage::{RemoteStorage, S3Options};
pub use upload::{
    delete_remote_timeline, sync_timeline, sync_timeline_with, upload_file, SyncFailPoint,
    SyncReport,
};
pub use uploader::{spawn_uploader, UploaderConf, UploaderHandle, UploaderStats};
