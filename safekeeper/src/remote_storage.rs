//! Where offloaded WAL lives: the shared object store ([`remote_store::Store`]: a local
//! directory, fsynced on every write, or S3), parsed from one `--remote-storage` setting, and
//! the safekeeper's layout of WAL objects in it.
//!
//! WAL objects: `<prefix>/wal/<tenant>/<timeline>/<segment name>[.partial]`, each a checked
//! object (with a side object `<name>.crc32c` holding `<crc32c hex> <size>`): a download is
//! checked against it, so a damaged or half-written object is never taken for WAL. Keys are
//! kept short: the longest, `wal/<32 hex>/<32 hex>/<24 hex>.partial.crc32c`, is 109 bytes plus
//! the prefix (some S3 servers, like `s3s-fs`, turn keys into file names and fail on long
//! ones).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use remote_store::Store;

pub use remote_store::{S3Options, StoreError as RemoteError};

use crate::ids::TenantTimeline;

/// The object store and the WAL layout in it.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    store: Store,
}

impl RemoteStorage {
    /// Parses a `--remote-storage` value (see [`remote_store`]).
    pub fn parse(url: &str, s3: &S3Options) -> Result<Self, RemoteError> {
        Store::from_url(url, s3).map(|store| RemoteStorage { store })
    }

    /// The URL this was parsed from (for logs).
    pub fn url(&self) -> &str {
        self.store.url()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        self.store.store()
    }

    /// `<prefix>/wal/<tenant>/<timeline>`: every WAL object of the timeline is under it.
    pub fn wal_prefix(&self, id: &TenantTimeline) -> ObjectPath {
        self.store
            .key(&["wal", &id.tenant.to_string(), &id.timeline.to_string()])
    }

    /// Removes every offloaded WAL object of the timeline; how many there were.
    pub async fn delete_timeline_wal(&self, id: &TenantTimeline) -> Result<u64, RemoteError> {
        self.store.delete_prefix(&self.wal_prefix(id)).await
    }

    /// `<prefix>/wal/<tenant>/<timeline>/<name>`.
    pub fn wal_object(&self, id: &TenantTimeline, name: &str) -> ObjectPath {
        self.store.key(&[
            "wal",
            &id.tenant.to_string(),
            &id.timeline.to_string(),
            name,
        ])
    }

    /// Uploads `data` as WAL object `name` with its checksum; durable once this returns.
    /// Uploading the same bytes again is harmless, so a retried upload is idempotent.
    pub async fn put_wal(
        &self,
        id: &TenantTimeline,
        name: &str,
        data: Bytes,
    ) -> Result<(), RemoteError> {
        self.store
            .put_checked(&self.wal_object(id, name), data)
            .await
    }

    /// Downloads WAL object `name` and checks it against its checksum; `None` if it or its
    /// checksum is missing (the upload did not finish).
    pub async fn get_wal(
        &self,
        id: &TenantTimeline,
        name: &str,
    ) -> Result<Option<Bytes>, RemoteError> {
        self.store.get_checked(&self.wal_object(id, name)).await
    }

    /// Removes WAL object `name` and its checksum; missing objects are fine.
    pub async fn delete_wal(&self, id: &TenantTimeline, name: &str) -> Result<(), RemoteError> {
        self.store.delete_checked(&self.wal_object(id, name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TenantTimeline {
        TenantTimeline {
            tenant: "00112233445566778899aabbccddeeff".parse().unwrap(),
            timeline: "ffeeddccbbaa99887766554433221100".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn local_round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let rs = RemoteStorage::parse(&url, &S3Options::default()).unwrap();
        let name = "000000010000000000000002";
        assert!(rs.get_wal(&id(), name).await.unwrap().is_none());
        let data = Bytes::from(vec![7u8; 1000]);
        rs.put_wal(&id(), name, data.clone()).await.unwrap();
        rs.put_wal(&id(), name, data.clone()).await.unwrap();
        assert_eq!(rs.get_wal(&id(), name).await.unwrap().unwrap(), data);
        let file = dir
            .path()
            .join("store/wal/00112233445566778899aabbccddeeff/ffeeddccbbaa99887766554433221100")
            .join(name);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let e = rs.get_wal(&id(), name).await.unwrap_err().to_string();
        assert!(e.contains("crc32c") && e.contains(name), "{e}");
        std::fs::write(&file, &bytes[..999]).unwrap();
        let e = rs.get_wal(&id(), name).await.unwrap_err().to_string();
        assert!(e.contains("999 bytes"), "{e}");
        rs.delete_wal(&id(), name).await.unwrap();
        assert!(rs.get_wal(&id(), name).await.unwrap().is_none());
    }

    #[test]
    fn bad_urls_are_named() {
        for bad in ["s3://", "gs://bucket/x", ""] {
            let e = RemoteStorage::parse(bad, &S3Options::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let rs = RemoteStorage::parse(
            "s3://bucket/some/prefix",
            &S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                ..S3Options::default()
            },
        )
        .unwrap();
        assert_eq!(
            rs.wal_object(&id(), "x").to_string(),
            "some/prefix/wal/00112233445566778899aabbccddeeff/ffeeddccbbaa99887766554433221100/x"
        );
        // The longest key stays well below what s3s-fs can turn into a file name.
        let longest = rs
            .wal_object(&id(), "000000010000000000000002.partial.crc32c")
            .to_string();
        assert_eq!(longest.len(), "some/prefix/".len() + 109, "{longest}");
    }
}
