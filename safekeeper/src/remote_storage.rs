//! Where offloaded WAL lives: an `object_store` (a local directory by default, or S3) and a key
//! prefix, parsed from one `--remote-storage` setting.
//!
//! - a plain path or `file:///path` → [`LocalFileSystem`] rooted there (created if missing);
//! - `s3://bucket/prefix` → [`AmazonS3`], configured from the usual `AWS_*` environment
//!   variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`, ...) overridden by [`S3Options`]; an `http://` endpoint is allowed.
//!
//! WAL objects: `<prefix>/wal/<tenant>/<timeline>/<segment name>[.partial]`, each with a side
//! object `<name>.crc32c` holding `<crc32c hex> <size>`: a download is checked against it, so
//! a damaged or half-written object is never taken for WAL. Keys are kept short: the longest,
//! `wal/<32 hex>/<32 hex>/<24 hex>.partial.crc32c`, is 109 bytes plus the prefix (some S3
//! servers, like `s3s-fs`, turn keys into file names and fail on long ones).

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::ids::TenantTimeline;

/// Settings for `s3://` URLs that win over the `AWS_*` environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote storage {url:?}: {message}")]
    Config { url: String, message: String },
    #[error("object store, {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("object {path} is damaged: {check}")]
    Corrupt { path: String, check: String },
}

/// An object store and the prefix under which this cluster's objects live.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl RemoteStorage {
    /// Parses a `--remote-storage` value (see the module docs).
    pub fn parse(url: &str, s3: &S3Options) -> Result<Self, RemoteError> {
        let config = |message: String| RemoteError::Config {
            url: url.to_string(),
            message,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(config("no bucket name: expected s3://bucket/prefix".into()));
                }
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                }
                let endpoint = s3
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                if endpoint.is_some_and(|e| e.starts_with("http://")) {
                    b = b.with_allow_http(true);
                }
                let store = b.build().map_err(|e| config(e.to_string()))?;
                (Arc::new(store), prefix.to_string())
            } else {
                let path = url.strip_prefix("file://").unwrap_or(url);
                if path.is_empty() || url.contains("://") && !url.starts_with("file://") {
                    return Err(config(
                        "expected a directory, file:///dir or s3://bucket/prefix".into(),
                    ));
                }
                std::fs::create_dir_all(path)
                    .map_err(|e| config(format!("creating the directory: {e}")))?;
                let store =
                    LocalFileSystem::new_with_prefix(path).map_err(|e| config(e.to_string()))?;
                (Arc::new(store), String::new())
            };
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| config(format!("invalid prefix: {e}")))?;
        Ok(RemoteStorage {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// The URL this was parsed from (for logs).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `<prefix>/wal/<tenant>/<timeline>/<name>`.
    pub fn wal_object(&self, id: &TenantTimeline, name: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in [
            "wal",
            &id.tenant.to_string(),
            &id.timeline.to_string(),
            name,
        ] {
            p = p.clone().join(part);
        }
        p
    }

    /// Uploads `data` as WAL object `name`, then its checksum side object. Uploading the same
    /// bytes again is harmless, so a retried or duplicated upload is idempotent.
    pub async fn put_wal(
        &self,
        id: &TenantTimeline,
        name: &str,
        data: Bytes,
    ) -> Result<(), RemoteError> {
        let path = self.wal_object(id, name);
        let sum = format!("{:08x} {}\n", crc32c::crc32c(&data), data.len());
        self.put(&path, data).await?;
        let side = self.wal_object(id, &format!("{name}.crc32c"));
        self.put(&side, Bytes::from(sum)).await
    }

    async fn put(&self, path: &ObjectPath, data: Bytes) -> Result<(), RemoteError> {
        self.store
            .put(path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|source| RemoteError::Store {
                path: path.to_string(),
                source,
            })
    }

    async fn get(&self, path: &ObjectPath) -> Result<Option<Bytes>, RemoteError> {
        let err = |source| RemoteError::Store {
            path: path.to_string(),
            source,
        };
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(err),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Downloads WAL object `name` and checks it against its side object; `None` if either is
    /// missing (the upload did not finish).
    pub async fn get_wal(
        &self,
        id: &TenantTimeline,
        name: &str,
    ) -> Result<Option<Bytes>, RemoteError> {
        let side_path = self.wal_object(id, &format!("{name}.crc32c"));
        let Some(side) = self.get(&side_path).await? else {
            return Ok(None);
        };
        let path = self.wal_object(id, name);
        let Some(data) = self.get(&path).await? else {
            return Ok(None);
        };
        let corrupt = |check: String| RemoteError::Corrupt {
            path: path.to_string(),
            check,
        };
        let text = std::str::from_utf8(&side).unwrap_or("");
        let parsed = text.split_once(' ').and_then(|(crc, size)| {
            Some((
                u32::from_str_radix(crc, 16).ok()?,
                size.trim().parse::<usize>().ok()?,
            ))
        });
        let Some((crc, size)) = parsed else {
            return Err(corrupt(format!(
                "its checksum object {side_path} holds {text:?}, not \"<crc32c hex> <size>\""
            )));
        };
        if data.len() != size {
            return Err(corrupt(format!(
                "{} bytes, its checksum object says {size}",
                data.len()
            )));
        }
        let actual = crc32c::crc32c(&data);
        if actual != crc {
            return Err(corrupt(format!(
                "crc32c {actual:08x}, its checksum object says {crc:08x}"
            )));
        }
        Ok(Some(data))
    }

    /// Removes WAL object `name` and its side object; missing objects are fine.
    pub async fn delete_wal(&self, id: &TenantTimeline, name: &str) -> Result<(), RemoteError> {
        for n in [format!("{name}.crc32c"), name.to_string()] {
            let path = self.wal_object(id, &n);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(RemoteError::Store {
                        path: path.to_string(),
                        source,
                    })
                }
            }
        }
        Ok(())
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
