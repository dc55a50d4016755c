//! Where remote data lives: `--remote-storage <URL or path>` parsed into the shared object
//! store ([`remote_store::Store`]: a local directory fsynced on every write, or S3; see that
//! crate for the URL forms and S3 settings), and the object layout of tenants and timelines
//! under its prefix.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use remote_store::Store;
use walproto::ids::{TenantId, TimelineId};

pub use remote_store::S3Options;

use super::error::{RemoteError, Result};

/// The object store and the prefix Strata's objects live under.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    inner: Store,
    part_bytes: usize,
}

/// Files up to this size are uploaded in one PUT; larger ones as a multipart upload of parts
/// this size (S3 wants at least 5 MiB per part but the last), never whole in memory.
pub const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;

impl std::fmt::Display for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.inner.url())
    }
}

impl RemoteStorage {
    fn with_layout(inner: Store) -> Result<RemoteStorage> {
        check_prefix(inner.prefix())?;
        Ok(RemoteStorage {
            inner,
            part_bytes: DEFAULT_PART_BYTES,
        })
    }

    /// Parses a `--remote-storage` value; S3 settings come from the environment.
    pub fn from_url(url: &str) -> Result<RemoteStorage> {
        Self::from_url_with(url, &S3Options::from_env())
    }

    /// Parses a `--remote-storage` value with explicit S3 settings.
    pub fn from_url_with(url: &str, s3: &S3Options) -> Result<RemoteStorage> {
        Self::with_layout(Store::from_url(url, s3)?)
    }

    /// A local directory as the object store (created if missing).
    pub fn local(root: &std::path::Path) -> Result<RemoteStorage> {
        Self::with_layout(Store::local(root)?)
    }

    /// Any object store (tests, other backends).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<RemoteStorage> {
        Self::with_layout(Store::new(store, prefix)?)
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
        self.inner.store()
    }

    /// Where the tenants are: `<prefix>/t`.
    pub fn tenants_path(&self) -> Path {
        self.inner.key(&["t"])
    }

    pub fn tenant_path(&self, tenant: TenantId) -> Path {
        self.tenants_path().join(tenant.to_string())
    }

    /// Removes every object under `prefix`; how many there were.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<u64> {
        Ok(self.inner.delete_prefix(prefix).await?)
    }

    /// Where a tenant's timelines are: the tenant's own directory (its `config` object is no
    /// directory, so a listing of directories finds the timelines only).
    pub fn timelines_path(&self, tenant: TenantId) -> Path {
        self.tenant_path(tenant)
    }

    pub fn timeline_path(&self, tenant: TenantId, timeline: TimelineId) -> Path {
        self.timelines_path(tenant).join(timeline.to_string())
    }

    pub fn manifest_path(&self, tenant: TenantId, timeline: TimelineId) -> Path {
        self.timeline_path(tenant, timeline).join("manifest")
    }

    /// The timeline's service config (`timeline.toml`: its safekeepers), opaque bytes.
    pub fn timeline_config_path(&self, tenant: TenantId, timeline: TimelineId) -> Path {
        self.timeline_path(tenant, timeline).join("conf")
    }

    pub fn layers_path(&self, tenant: TenantId, timeline: TimelineId) -> Path {
        self.timeline_path(tenant, timeline).join("l")
    }

    /// The tenant's config object (`tenant.toml`; its format belongs to the tenant manager).
    pub fn tenant_config_path(&self, tenant: TenantId) -> Path {
        self.tenant_path(tenant).join("config")
    }

    /// The longest object key this storage writes (a layer key with a collision suffix); see
    /// [`MAX_KEY_BYTES`].
    pub fn longest_key_len(&self) -> usize {
        let p = self.layers_path(TenantId::default(), TimelineId::default());
        p.as_ref().len() + 1 + super::manifest::LONGEST_LAYER_KEY
    }

    /// Stores a timeline's service config.
    pub async fn put_timeline_config(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        config: Bytes,
    ) -> Result<()> {
        let path = self.timeline_config_path(tenant, timeline);
        Ok(self.inner.put(&path, config).await?)
    }

    /// A timeline's service config, or `None` if none was stored.
    pub async fn get_timeline_config(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
    ) -> Result<Option<Bytes>> {
        self.get_optional(&self.timeline_config_path(tenant, timeline))
            .await
    }

    /// Stores the tenant's config.
    pub async fn put_tenant_config(&self, tenant: TenantId, config: Bytes) -> Result<()> {
        Ok(self
            .inner
            .put(&self.tenant_config_path(tenant), config)
            .await?)
    }

    /// The tenant's config, or `None` if none was stored.
    pub async fn get_tenant_config(&self, tenant: TenantId) -> Result<Option<Bytes>> {
        self.get_optional(&self.tenant_config_path(tenant)).await
    }

    /// The whole object, or `None` if it does not exist.
    pub(crate) async fn get_optional(&self, path: &Path) -> Result<Option<Bytes>> {
        Ok(self.inner.get_optional(path).await?)
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
    let id_len = TenantId::default().to_string().len();
    let longest = prefix.as_ref().len()
        + usize::from(!prefix.as_ref().is_empty())
        + "t//".len()
        + 2 * id_len
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";
    const TL: &str = "11111111111111111111111111111111";

    #[test]
    fn parse_locations() {
        let (t, tl): (TenantId, TimelineId) = (T.parse().unwrap(), TL.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let r = RemoteStorage::from_url(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir());
        assert_eq!(r.layers_path(t, tl).as_ref(), format!("t/{T}/{TL}/l"));
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
            r.manifest_path(t, tl).as_ref(),
            format!("some/prefix/t/{T}/{TL}/manifest")
        );
        assert_eq!(
            r.tenant_config_path(t).as_ref(),
            format!("some/prefix/t/{T}/config")
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
    }
}
