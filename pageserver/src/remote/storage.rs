//! Where remote data lives: `--remote-storage <URL or path>` parsed into an object store plus
//! a key prefix, and the object layout of tenants and timelines under that prefix.
//!
//! - a plain path or `file:///path` → [`LocalFileSystem`] rooted there (created if missing),
//!   with fsync of files and directories on every write, so an acknowledged upload survives
//!   power loss just as it would in S3;
//! - `s3://bucket[/prefix]` → [`AmazonS3`], endpoint and credentials from [`S3Options`]
//!   (by default the `AWS_*` environment variables). Plain `http` is allowed only for a
//!   loopback endpoint (a local test server) unless `AWS_ALLOW_HTTP=true`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::error::{RemoteError, Result};

/// Endpoint and credentials of an S3-compatible store. Unset fields fall back to what
/// `object_store` finds itself (instance credentials, `~/.aws` is not read).
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

/// An object store and the prefix Strata's objects live under.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    part_bytes: usize,
}

/// Files up to this size are uploaded in one PUT; larger ones as a multipart upload of parts
/// this size (S3 wants at least 5 MiB per part but the last), never whole in memory.
pub const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;

impl std::fmt::Display for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl RemoteStorage {
    /// Parses a `--remote-storage` value; S3 settings come from the environment.
    pub fn from_url(url: &str) -> Result<RemoteStorage> {
        Self::from_url_with(url, &S3Options::from_env())
    }

    /// Parses a `--remote-storage` value with explicit S3 settings.
    pub fn from_url_with(url: &str, s3: &S3Options) -> Result<RemoteStorage> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Self::s3(bucket, prefix, s3);
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(std::path::Path::new(path));
        }
        if url.contains("://") {
            return Err(RemoteError::Config(format!(
                "{url:?}: unsupported scheme (use a path, file:///path or s3://bucket/prefix)"
            )));
        }
        if url.is_empty() {
            return Err(RemoteError::Config("empty remote storage location".into()));
        }
        Self::local(std::path::Path::new(url))
    }

    /// A local directory as the object store (created if missing).
    pub fn local(root: &std::path::Path) -> Result<RemoteStorage> {
        let root = std::path::absolute(root).map_err(RemoteError::io("resolve", root))?;
        std::fs::create_dir_all(&root).map_err(RemoteError::io("create directory", &root))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| RemoteError::Config(format!("{}: {e}", root.display())))?
            .with_fsync(true);
        Ok(RemoteStorage {
            store: Arc::new(fs),
            prefix: Path::default(),
            url: format!("file://{}", root.display()),
            part_bytes: DEFAULT_PART_BYTES,
        })
    }

    fn s3(bucket: &str, prefix: &str, o: &S3Options) -> Result<RemoteStorage> {
        if bucket.is_empty() {
            return Err(RemoteError::Config(
                "s3:// URL without a bucket (s3://bucket/prefix)".into(),
            ));
        }
        let mut b = AmazonS3Builder::new()
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
                return Err(RemoteError::Config(format!(
                    "endpoint {ep}: plain http is allowed for loopback only (set AWS_ALLOW_HTTP=true to force)"
                )));
            }
            b = b.with_endpoint(ep).with_allow_http(http);
        }
        if let Some(k) = &o.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &o.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b
            .build()
            .map_err(|e| RemoteError::Config(format!("s3://{bucket}: {e}")))?;
        let prefix = prefix.trim_matches('/');
        let prefix = Path::parse(prefix)
            .map_err(|e| RemoteError::Config(format!("prefix {prefix:?}: {e}")))?;
        check_prefix(&prefix)?;
        Ok(RemoteStorage {
            store: Arc::new(store),
            url: format!("s3://{bucket}/{prefix}"),
            prefix,
            part_bytes: DEFAULT_PART_BYTES,
        })
    }

    /// Any object store (tests, other backends).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<RemoteStorage> {
        let p = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| RemoteError::Config(format!("prefix {prefix:?}: {e}")))?;
        check_prefix(&p)?;
        Ok(RemoteStorage {
            url: format!("{store}/{p}"),
            store,
            prefix: p,
            part_bytes: DEFAULT_PART_BYTES,
        })
    }

    /// Sets the multipart part size (and threshold); for S3 keep it at 5 MiB or more.
    pub fn with_part_bytes(mut self, bytes: usize) -> RemoteStorage {
        self.part_bytes = bytes.max(1);
        self
    }

    pub fn part_bytes(&self) -> usize {
        self.part_bytes
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the tenants are: `<prefix>/t`.
    pub fn tenants_path(&self) -> Path {
        self.prefix.clone().join("t")
    }

    pub fn tenant_path(&self, tenant: &str) -> Result<Path> {
        check_id("tenant", tenant)?;
        Ok(self.tenants_path().join(tenant))
    }

    /// Where a tenant's timelines are: the tenant's own directory (its `config` object is no
    /// directory, so a listing of directories finds the timelines only).
    pub fn timelines_path(&self, tenant: &str) -> Result<Path> {
        self.tenant_path(tenant)
    }

    pub fn timeline_path(&self, tenant: &str, timeline: &str) -> Result<Path> {
        check_id("timeline", timeline)?;
        Ok(self.timelines_path(tenant)?.join(timeline))
    }

    pub fn manifest_path(&self, tenant: &str, timeline: &str) -> Result<Path> {
        Ok(self.timeline_path(tenant, timeline)?.join("manifest"))
    }

    /// The timeline's service config (`timeline.toml`: its safekeepers), opaque bytes.
    pub fn timeline_config_path(&self, tenant: &str, timeline: &str) -> Result<Path> {
        Ok(self.timeline_path(tenant, timeline)?.join("conf"))
    }

    pub fn layers_path(&self, tenant: &str, timeline: &str) -> Result<Path> {
        Ok(self.timeline_path(tenant, timeline)?.join("l"))
    }

    /// The longest object key this storage writes for 32-character ids (a layer key with a
    /// collision suffix); see [`MAX_KEY_BYTES`].
    pub fn longest_key_len(&self) -> usize {
        let id = "0".repeat(32);
        let p = self.layers_path(&id, &id).expect("a valid id");
        p.as_ref().len() + 1 + super::manifest::LONGEST_LAYER_KEY
    }

    /// Stores a timeline's service config.
    pub async fn put_timeline_config(
        &self,
        tenant: &str,
        timeline: &str,
        config: Bytes,
    ) -> Result<()> {
        let path = self.timeline_config_path(tenant, timeline)?;
        self.store
            .put(&path, PutPayload::from(config))
            .await
            .map_err(RemoteError::store("put", &path))?;
        Ok(())
    }

    /// A timeline's service config, or `None` if none was stored.
    pub async fn get_timeline_config(&self, tenant: &str, timeline: &str) -> Result<Option<Bytes>> {
        let path = self.timeline_config_path(tenant, timeline)?;
        self.get_optional(&path).await
    }

    /// Stores the tenant's config (its format belongs to the tenant manager).
    pub async fn put_tenant_config(&self, tenant: &str, config: Bytes) -> Result<()> {
        let path = self.tenant_path(tenant)?.join("config");
        self.store
            .put(&path, PutPayload::from(config))
            .await
            .map_err(RemoteError::store("put", &path))?;
        Ok(())
    }

    /// The tenant's config, or `None` if none was stored.
    pub async fn get_tenant_config(&self, tenant: &str) -> Result<Option<Bytes>> {
        let path = self.tenant_path(tenant)?.join("config");
        self.get_optional(&path).await
    }

    /// The whole object, or `None` if it does not exist.
    pub(crate) async fn get_optional(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(RemoteError::store("read", path))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(RemoteError::store("get", path)(e)),
        }
    }
}

/// The longest object key Strata writes, in bytes. Some S3-compatible servers keep keys in
/// file names: s3s-fs names its bookkeeping files after the base64 of the key (4 bytes per
/// 3), and file names end at 255 bytes, so it fails on keys of roughly 130 bytes and more.
/// With 32-character ids the longest key (a layer's) is 84 bytes plus the prefix, so a
/// prefix may have up to 44 bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Refuses a prefix that would make keys longer than [`MAX_KEY_BYTES`].
fn check_prefix(prefix: &Path) -> Result<()> {
    let id = "0".repeat(32);
    let longest = prefix.as_ref().len()
        + usize::from(!prefix.as_ref().is_empty())
        + "t//".len()
        + 2 * id.len()
        + "/l/".len()
        + super::manifest::LONGEST_LAYER_KEY;
    if longest > MAX_KEY_BYTES {
        return Err(RemoteError::Config(format!(
            "prefix {:?} is too long: object keys would reach {longest} bytes, over the \
             {MAX_KEY_BYTES} Strata keeps them within (s3s-fs fails on longer ones); use a \
             prefix of at most {} bytes",
            prefix.as_ref(),
            prefix.as_ref().len() - (longest - MAX_KEY_BYTES)
        )));
    }
    Ok(())
}

/// Tenant and timeline ids become object path segments: letters, digits, `-` and `_` only.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RemoteError::Config(format!(
            "{what} id {id:?}: use 1 to 128 letters, digits, '-' or '_'"
        )))
    }
}

fn is_loopback_url(url: &str) -> bool {
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

    #[test]
    fn parse_locations() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let r = RemoteStorage::from_url(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir());
        assert_eq!(r.layers_path("t1", "tl1").unwrap().as_ref(), "t/t1/tl1/l");
        RemoteStorage::from_url(root.join("plain").to_str().unwrap()).unwrap();
        assert!(root.join("plain").is_dir());

        let o = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        };
        let r = RemoteStorage::from_url_with("s3://bucket/some/prefix/", &o).unwrap();
        assert_eq!(
            r.manifest_path("a", "b").unwrap().as_ref(),
            "some/prefix/t/a/b/manifest"
        );
        let far = S3Options {
            endpoint: Some("http://example.com:9000".into()),
            ..o.clone()
        };
        let e = RemoteStorage::from_url_with("s3://bucket", &far).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(RemoteStorage::from_url_with("s3:///x", &o).is_err());
        assert!(RemoteStorage::from_url("gs://x").is_err());
        assert!(RemoteStorage::from_url("").is_err());
        assert!(r.timeline_path("a", "../b").is_err());
        assert!(r.tenant_path("").is_err());
        assert!(is_loopback_url("http://[::1]:80/"));
        assert!(is_loopback_url("http://localhost"));
        assert!(!is_loopback_url("http://10.0.0.1:80"));
    }
}
