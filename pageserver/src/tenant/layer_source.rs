//! Where a tenant's timelines get the layers their metadata lists and their directory lacks
//! (a timeline restored from an object store fetches each one at its first read). Only the
//! pageserver knows its object store: it hands the [`TenantManager`](super::TenantManager) a
//! [`LayerSource`] (`crate::remote::ondemand::RemoteLayerSource`), and the tenants pass the
//! fetcher it makes for each timeline directory to `Timeline::open`.

use std::path::Path;
use std::sync::Arc;

use crate::timeline::layer_map::LayerFetch;

/// Makes the fetchers of timeline directories.
pub trait LayerSource: Send + Sync {
    /// The fetcher of the timeline in `dir` if some of its layers are elsewhere; `None` if
    /// every layer is local.
    fn fetcher_for(&self, dir: &Path) -> crate::timeline::Result<Option<Arc<dyn LayerFetch>>>;
}

/// Every layer is local: no timeline was restored on demand (tests, benchmarks). A timeline
/// that was fails to open, naming its first missing layer.
pub struct LocalLayers;

impl LayerSource for LocalLayers {
    fn fetcher_for(&self, _dir: &Path) -> crate::timeline::Result<Option<Arc<dyn LayerFetch>>> {
        Ok(None)
    }
}
