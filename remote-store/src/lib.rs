//! The object store both daemons write to: one `--remote-storage` setting parsed into a store
//! and a key prefix, and crc-checked objects. Each daemon keeps its own object layout on top
//! (the safekeeper's WAL segments, the pageserver's layers and manifests).
//!
//! - a plain path or `file:///path` → [`LocalFileSystem`] rooted there (created if missing),
//!   with fsync on every write: a file is written under a temporary name, fsynced, renamed
//!   into place and its directory fsynced before the write returns, so an acknowledged put
//!   survives power loss as it would in S3 (the safekeeper deletes its local WAL once the
//!   object store holds it);
//! - `s3://bucket[/prefix]` → [`AmazonS3`] configured from the `AWS_*` environment
//!   variables, overridden by [`S3Options`]. Plain `http` is allowed only for a loopback
//!   endpoint (a local test server) unless `AWS_ALLOW_HTTP=true`.
//!
//! [`Store::put_checked`] writes an object and then a side object `<key>.crc32c` holding
//! `<crc32c hex> <size>`; [`Store::get_checked`] verifies the object against it, so a damaged
//! or half-written object is never taken for data.
//!
//! [`LocalFileSystem`]: object_store::local::LocalFileSystem
//! [`AmazonS3`]: object_store::aws::AmazonS3

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Endpoint, credentials and region of an S3-compatible store; unset fields fall back to what
/// `object_store` finds in the environment itself.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `AWS_ENDPOINT_URL`, e.g. `http://127.0.0.1:9000`; unset means AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_REGION` (default `us-east-1`).
    pub region: Option<String>,
    /// `AWS_ALLOW_HTTP=true`: plain http to a non-loopback endpoint.
    pub allow_http: bool,
}

impl S3Options {
    /// The settings from the `AWS_*` environment variables.
    pub fn from_env() -> S3Options {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        S3Options {
            endpoint: var("AWS_ENDPOINT_URL"),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            allow_http: var("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `--remote-storage` value that cannot be used.
    #[error("remote storage {url:?}: {message}")]
    Config { url: String, message: String },
    #[error("object store {op} {path}: {source}")]
    Store {
        op: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("object {path} is damaged: {check}")]
    Corrupt { path: String, check: String },
}

impl StoreError {
    /// Wraps an object store error about `path`.
    pub fn store(op: &'static str, path: &Path) -> impl FnOnce(object_store::Error) -> Self {
        let path = path.to_string();
        move |source| StoreError::Store { op, path, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An object store and the prefix under which this cluster's objects live.
#[derive(Clone, Debug)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Store {
    /// Parses a `--remote-storage` value (see the crate docs).
    pub fn from_url(url: &str, s3: &S3Options) -> Result<Store> {
        let url = url.trim();
        let config = |message: String| StoreError::Config {
            url: url.to_string(),
            message,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Self::s3(bucket, prefix, s3).map_err(config);
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() || url.contains("://") && !url.starts_with("file://") {
            return Err(config(
                "expected a directory, file:///dir or s3://bucket/prefix".into(),
            ));
        }
        Self::local(std::path::Path::new(path))
    }

    /// A local directory as the object store (created if missing), every write fsynced.
    pub fn local(root: &std::path::Path) -> Result<Store> {
        let config = |message: String| StoreError::Config {
            url: root.display().to_string(),
            message,
        };
        let root = std::path::absolute(root).map_err(|e| config(format!("resolving: {e}")))?;
        std::fs::create_dir_all(&root).map_err(|e| config(format!("creating it: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| config(e.to_string()))?
            .with_fsync(true);
        Ok(Store {
            store: Arc::new(fs),
            prefix: Path::default(),
            url: format!("file://{}", root.display()),
        })
    }

    fn s3(bucket: &str, prefix: &str, o: &S3Options) -> Result<Store, String> {
        if bucket.is_empty() {
            return Err("no bucket name: expected s3://bucket/prefix".into());
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(o.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        if let Some(ep) = &o.endpoint {
            let http = ep.starts_with("http://");
            if http && !o.allow_http && !is_loopback_url(ep) {
                return Err(format!(
                    "endpoint {ep}: plain http is allowed for loopback only (set \
                     AWS_ALLOW_HTTP=true to force)"
                ));
            }
            b = b.with_endpoint(ep).with_allow_http(http);
        }
        if let Some(k) = &o.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &o.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b.build().map_err(|e| format!("s3://{bucket}: {e}"))?;
        let prefix = prefix.trim_matches('/');
        let prefix = Path::parse(prefix).map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        Ok(Store {
            store: Arc::new(store),
            url: format!("s3://{bucket}/{prefix}"),
            prefix,
        })
    }

    /// Any object store (tests, other backends) with a key prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Store> {
        let p = Path::parse(prefix.trim_matches('/')).map_err(|e| StoreError::Config {
            url: format!("{store}"),
            message: format!("prefix {prefix:?}: {e}"),
        })?;
        Ok(Store {
            url: format!("{store}/{p}"),
            store,
            prefix: p,
        })
    }

    /// The URL this was parsed from (for logs).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix every key of this store begins with (empty for a local directory).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `<prefix>/<part>/<part>/...`.
    pub fn key(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part))
    }

    pub async fn put(&self, path: &Path, data: Bytes) -> Result<()> {
        self.store
            .put(path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(StoreError::store("put", path))
    }

    /// The whole object, or `None` if it does not exist.
    pub async fn get_optional(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(StoreError::store("read", path)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::store("get", path)(e)),
        }
    }

    /// Removes the object; a missing one is fine.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::store("delete", path)(e)),
        }
    }

    /// The key of every object under `prefix`, in no particular order.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        use futures_util::StreamExt;
        let mut objects = Vec::new();
        let mut listing = self.store.list(Some(prefix));
        while let Some(obj) = listing.next().await {
            objects.push(obj.map_err(StoreError::store("list", prefix))?.location);
        }
        Ok(objects)
    }

    /// Removes every object under `prefix` (listed first, then deleted one by one; one that
    /// vanished meanwhile is fine); how many there were.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<u64> {
        let objects = self.list(prefix).await?;
        for obj in &objects {
            self.delete(obj).await?;
        }
        Ok(objects.len() as u64)
    }

    /// Stores `data` at `path`, then its checksum side object. Storing the same bytes again is
    /// harmless, so a retried or duplicated put is idempotent.
    pub async fn put_checked(&self, path: &Path, data: Bytes) -> Result<()> {
        let sum = format!("{:08x} {}\n", crc32c::crc32c(&data), data.len());
        self.put(path, data).await?;
        self.put(&side_object(path), Bytes::from(sum)).await
    }

    /// The object at `path`, verified against its side object; `None` if either is missing
    /// (the put did not finish).
    pub async fn get_checked(&self, path: &Path) -> Result<Option<Bytes>> {
        let side_path = side_object(path);
        let Some(side) = self.get_optional(&side_path).await? else {
            return Ok(None);
        };
        let Some(data) = self.get_optional(path).await? else {
            return Ok(None);
        };
        let corrupt = |check: String| StoreError::Corrupt {
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

    /// Removes a checked object and its side object (the side object first, so a half-done
    /// delete leaves an object that reads as missing, never one without its checksum).
    pub async fn delete_checked(&self, path: &Path) -> Result<()> {
        self.delete(&side_object(path)).await?;
        self.delete(path).await
    }
}

/// `<path>.crc32c`: the checksum of a checked object.
pub fn side_object(path: &Path) -> Path {
    Path::from(format!("{path}.crc32c"))
}

/// The URL names a loopback host (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let st = Store::from_url(&url, &S3Options::default()).unwrap();
        let key = st.key(&["a", "b", "obj"]);
        assert!(st.get_checked(&key).await.unwrap().is_none());
        let data = Bytes::from(vec![7u8; 1000]);
        st.put_checked(&key, data.clone()).await.unwrap();
        st.put_checked(&key, data.clone()).await.unwrap();
        assert_eq!(st.get_checked(&key).await.unwrap().unwrap(), data);
        // The put left no temporary file behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("store/a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let file = dir.path().join("store/a/b/obj");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let e = st.get_checked(&key).await.unwrap_err().to_string();
        assert!(e.contains("crc32c") && e.contains("a/b/obj"), "{e}");
        std::fs::write(&file, &bytes[..999]).unwrap();
        let e = st.get_checked(&key).await.unwrap_err().to_string();
        assert!(e.contains("999 bytes"), "{e}");
        st.delete_checked(&key).await.unwrap();
        assert!(st.get_checked(&key).await.unwrap().is_none());
        st.delete_checked(&key).await.unwrap();
    }

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        for bad in ["s3://", "gs://bucket/x", "", "s3:///x"] {
            let e = Store::from_url(bad, &S3Options::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let o = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("us-east-1".into()),
            ..S3Options::default()
        };
        let st = Store::from_url("s3://bucket/some/prefix/", &o).unwrap();
        assert_eq!(st.key(&["x", "y"]).as_ref(), "some/prefix/x/y");
        assert_eq!(st.url(), "s3://bucket/some/prefix");
        let far = S3Options {
            endpoint: Some("http://example.com:9000".into()),
            ..o.clone()
        };
        let e = Store::from_url("s3://bucket", &far).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(is_loopback_url("http://[::1]:80/"));
        assert!(is_loopback_url("http://localhost"));
        assert!(!is_loopback_url("http://10.0.0.1:80"));
    }
}
