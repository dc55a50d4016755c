//! The import record, `<cluster dir>/imports/<tenant>.toml`: what Strata needs to stream an
//! imported source again (after `strata stop`/`start`, a crash) or to hand it back
//! (`strata tenant detach`). It is the cluster's state, not a compute's scratch data: only a
//! detach removes it, and it is written durably (its loss would leave the source's commits
//! waiting for a standby nobody starts).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pageserver::durable;
use serde::{Deserialize, Serialize};
use walproto::pgclient::ConnConfig;
use walproto::Lsn;

use crate::computes::ComputeRecord;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportRecord {
    pub tenant: String,
    pub tenant_id: String,
    pub timeline_id: String,
    /// The source, as given to `--from`.
    pub connstr: String,
    /// The source's physical replication slot that keeps the WAL Strata has yet to stream.
    pub slot: String,
    pub application_name: String,
    /// Where the safekeepers' history of the branch begins.
    pub backup_start: String,
    pub system_id: String,
}

fn imports_dir(dir: &Path) -> PathBuf {
    dir.join("imports")
}

fn record_path(dir: &Path, tenant: &str) -> PathBuf {
    imports_dir(dir).join(format!("{tenant}.toml"))
}

/// The compute record that shows the import's walproposer (status, `strata stop`, the
/// branch's one writer).
pub fn compute_name(tenant: &str) -> String {
    format!("import-{tenant}")
}

impl ImportRecord {
    pub fn compute_name(&self) -> String {
        compute_name(&self.tenant)
    }

    pub fn backup_start(&self) -> Result<Lsn> {
        self.backup_start.parse().map_err(|e| {
            anyhow::anyhow!(
                "import record of tenant {}: backup_start: {e:?}",
                self.tenant
            )
        })
    }

    /// The compute record of the import's walproposer.
    pub fn compute_record(&self) -> Result<ComputeRecord> {
        Ok(ComputeRecord {
            name: self.compute_name(),
            branch: "main".into(),
            tenant_id: self.tenant_id.clone(),
            timeline_id: self.timeline_id.clone(),
            port: ConnConfig::parse(&self.connstr)
                .with_context(|| format!("the source of tenant {}", self.tenant))?
                .port,
            read_only: false,
            lsn: self.backup_start.clone(),
            expires_at: None,
            lazy: false,
        })
    }

    /// The record of `tenant`, if it was imported and not detached.
    pub fn load(dir: &Path, tenant: &str) -> Result<Option<ImportRecord>> {
        let p = record_path(dir, tenant);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let rec = toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        Ok(Some(rec))
    }

    /// Every attached import, by tenant name.
    pub fn list(dir: &Path) -> Result<Vec<ImportRecord>> {
        let d = imports_dir(dir);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(tenant) = name.strip_suffix(".toml") {
                out.extend(ImportRecord::load(dir, tenant)?);
            }
        }
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        Ok(out)
    }

    /// Written to a temporary file, fsynced, renamed, and the directory fsynced.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let d = imports_dir(dir);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let p = record_path(dir, &self.tenant);
        let text = toml::to_string_pretty(self)?;
        durable::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("writing {} durably", p.display()))
    }

    /// Forgets the import (after a detach), durably.
    pub fn remove(dir: &Path, tenant: &str) -> Result<()> {
        let p = record_path(dir, tenant);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
        durable::fsync_dir(&imports_dir(dir)).map_err(anyhow::Error::from)
    }
}

/// The tenant whose import `compute` streams, if it is an import's walproposer.
pub fn tenant_of_compute(dir: &Path, compute: &str) -> Option<String> {
    let tenant = compute.strip_prefix("import-")?;
    record_path(dir, tenant)
        .exists()
        .then(|| tenant.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_records_load_list_and_go_away() {
        let d = tempfile::tempdir().unwrap();
        let rec = ImportRecord {
            tenant: "shop".into(),
            tenant_id: "t1".into(),
            timeline_id: "l1".into(),
            connstr: "host=/tmp port=5433 user=postgres".into(),
            slot: "strata_shop".into(),
            application_name: "strata".into(),
            backup_start: "0/2000028".into(),
            system_id: "42".into(),
        };
        assert_eq!(ImportRecord::load(d.path(), "shop").unwrap(), None);
        rec.store(d.path()).unwrap();
        assert_eq!(
            ImportRecord::load(d.path(), "shop").unwrap(),
            Some(rec.clone())
        );
        assert_eq!(ImportRecord::list(d.path()).unwrap(), vec![rec.clone()]);
        assert_eq!(
            tenant_of_compute(d.path(), "import-shop").as_deref(),
            Some("shop")
        );
        assert_eq!(tenant_of_compute(d.path(), "shop"), None);
        assert_eq!(rec.compute_record().unwrap().port, 5433);
        ImportRecord::remove(d.path(), "shop").unwrap();
        ImportRecord::remove(d.path(), "shop").unwrap();
        assert!(ImportRecord::list(d.path()).unwrap().is_empty());
    }
}
