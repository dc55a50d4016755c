//! `strata check` (like pgBackRest's `verify`): reads the object store directly, so it works
//! with the cluster stopped. For every tenant and timeline there (or one tenant): the manifest
//! against the objects present (missing, orphaned, size mismatch), every layer's crc32c against
//! the manifest and its own checksums (header, index blocks, every value: `layer-format`), and
//! a retention report (GC cutoff, PITR window, leases, branch points, oldest readable LSN).
//! One progress line per timeline on stderr; exit code 3 when anything is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use layer_format::{DeltaLayerReader, ImageLayerReader, LayerKind};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use pageserver::remote::{list_remote_tenants, list_remote_timelines, Manifest, RemoteStorage};
use pageserver::tenant::gc::{now_unix_ms, Leases};
use pageserver::tenant::layout::{tenant_dir, timeline_dir, timelines_dir};
use pageserver::tenant::TenantConf;
use serde_json::json;
use walproto::ids::{TenantId, TimelineId};

use strata::cluster::ClusterConfig;
use strata::names::Names;
use strata::output::Output;

/// Exit code when the check found a problem (1 stays "the check could not run").
const PROBLEMS_FOUND: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Check one tenant (a name, or a tenant id); default: every tenant in the object store.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only compare the manifests with the objects present (no layer is downloaded).
    #[arg(long)]
    pub no_checksums: bool,
}

/// What is wrong with one timeline's objects.
#[derive(Default)]
struct Findings {
    missing: Vec<String>,
    orphaned: Vec<String>,
    size_mismatch: Vec<String>,
    checksum: Vec<String>,
}

impl Findings {
    fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(self.missing.iter().map(|m| format!("missing: {m}")));
        v.extend(self.orphaned.iter().map(|m| format!("orphaned: {m}")));
        v.extend(
            self.size_mismatch
                .iter()
                .map(|m| format!("size mismatch: {m}")),
        );
        v.extend(self.checksum.iter().map(|m| format!("checksum: {m}")));
        v
    }
}

/// The store's objects under a prefix, by key, with their sizes.
async fn list_objects(
    remote: &RemoteStorage,
    prefix: &ObjectPath,
) -> Result<BTreeMap<String, u64>> {
    let mut found = BTreeMap::new();
    let mut listing = remote.store().list(Some(prefix));
    while let Some(obj) = listing.next().await {
        let obj = obj.with_context(|| format!("listing {prefix} in {remote}"))?;
        found.insert(obj.location.to_string(), obj.size);
    }
    Ok(found)
}

/// Checks a layer's bytes with the layer format's own checksums (header, footer, fences, index
/// blocks, every value): the reader needs a file named like the layer.
fn verify_layer_bytes(bytes: &[u8], file_name: &str, kind: LayerKind) -> Result<u64> {
    let dir = tempfile::tempdir().context("a scratch directory for a layer")?;
    let path = dir.path().join(file_name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    let n = match kind {
        LayerKind::Delta => DeltaLayerReader::open(&path)?.verify()?,
        LayerKind::Image => ImageLayerReader::open(&path)?.verify()?,
    };
    Ok(n)
}

/// Compares timeline `m`'s manifest with `objects` (everything under its prefix; the ones
/// accounted for are removed) and checks each layer's checksums.
async fn check_timeline(
    remote: &RemoteStorage,
    m: &Manifest,
    objects: &mut BTreeMap<String, u64>,
    checksums: bool,
) -> Result<Findings> {
    let mut f = Findings::default();
    for known in [
        remote.manifest_path(m.tenant, m.timeline),
        remote.timeline_config_path(m.tenant, m.timeline),
    ] {
        objects.remove(known.as_ref());
    }
    let layers = remote.layers_path(m.tenant, m.timeline);
    for l in &m.layers {
        let obj = layers.clone().join(l.key.as_str());
        let what = format!("layer {} ({obj})", l.file_name());
        let Some(size) = objects.remove(obj.as_ref()) else {
            f.missing.push(what);
            continue;
        };
        if size != l.size {
            f.size_mismatch.push(format!(
                "{what}: {size} bytes stored, the manifest says {}",
                l.size
            ));
            continue;
        }
        if !checksums {
            continue;
        }
        let bytes = remote
            .store()
            .get(&obj)
            .await
            .with_context(|| format!("reading {obj}"))?
            .bytes()
            .await
            .with_context(|| format!("reading {obj}"))?;
        let crc = crc32c::crc32c(&bytes);
        if crc != l.crc32c {
            f.checksum.push(format!(
                "{what}: crc32c {crc:08x}, the manifest says {:08x}",
                l.crc32c
            ));
            continue;
        }
        if let Err(e) = verify_layer_bytes(&bytes, &l.file_name(), l.desc.kind) {
            f.checksum.push(format!("{what}: {e:#}"));
        }
    }
    Ok(f)
}

/// The leases in the pageserver's data directory (`None`: no such directory here).
fn local_leases(
    dir: &Path,
    tenant: TenantId,
    timeline: TimelineId,
) -> Option<Result<Vec<(u64, u64)>>> {
    let tl_dir = timeline_dir(
        &timelines_dir(&tenant_dir(&dir.join("pageserver"), tenant)),
        timeline,
    );
    if !tl_dir.is_dir() {
        return None;
    }
    let now = now_unix_ms();
    Some(Leases::load(&tl_dir).map_err(anyhow::Error::from).map(|l| {
        l.lease
            .iter()
            .filter(|x| x.expires_unix_ms > now)
            .filter_map(|x| x.lsn().map(|lsn| (lsn.0, x.expires_unix_ms)))
            .collect()
    }))
}

/// The tenant's configuration as stored (the default if none is).
async fn stored_conf(remote: &RemoteStorage, tenant: TenantId) -> Result<(TenantConf, bool)> {
    let Some(bytes) = remote.get_tenant_config(tenant).await? else {
        return Ok((TenantConf::default(), false));
    };
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("tenant {tenant}'s config in {remote} is not UTF-8"))?;
    Ok((
        TenantConf::parse(text, &format!("tenant {tenant}'s config"))?,
        true,
    ))
}

struct Checked {
    rows: Vec<serde_json::Value>,
    lines: Vec<String>,
    problems: usize,
}

async fn check_tenant(
    dir: &Path,
    remote: &RemoteStorage,
    names: Option<&Names>,
    tenant: TenantId,
    checksums: bool,
    out: &Output,
    done: &mut Checked,
) -> Result<()> {
    let tenant_id = tenant.to_string();
    let tenant_name = names
        .and_then(|n| n.tenants.iter().find(|(_, id)| **id == tenant_id))
        .map(|(n, _)| n.clone());
    let shown = tenant_name.clone().unwrap_or_else(|| tenant_id.clone());
    let mut objects = list_objects(remote, &remote.tenant_path(tenant)).await?;
    objects.remove(remote.tenant_config_path(tenant).as_ref());
    let (conf, conf_stored) = stored_conf(remote, tenant).await?;
    let manifests = list_remote_timelines(remote, tenant).await?;
    let ids: BTreeSet<String> = manifests.iter().map(|m| m.timeline.to_string()).collect();
    for m in &manifests {
        let timeline_id = m.timeline.to_string();
        let branch = tenant_name
            .as_ref()
            .and_then(|t| names?.branch_of(t, &timeline_id).map(str::to_string));
        let label = branch.clone().unwrap_or_else(|| timeline_id.clone());
        out.step(&format!(
            "checking tenant {shown} branch {label}: {} layer(s), {:.1} MiB",
            m.layers.len(),
            m.total_bytes() as f64 / (1 << 20) as f64
        ));
        let mut findings = check_timeline(remote, m, &mut objects, checksums).await?;
        if let Some(parent) = m.ancestor.as_ref().map(|(a, _)| a) {
            if !ids.contains(parent) {
                findings
                    .missing
                    .push(format!("the manifest of its ancestor {parent}"));
            }
        }
        // Other objects under this timeline's prefix are no one's.
        let prefix = format!("{}/", remote.timeline_path(tenant, m.timeline));
        let stray: Vec<String> = objects
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in stray {
            objects.remove(&k);
            findings.orphaned.push(k);
        }
        let branch_points: Vec<String> = manifests
            .iter()
            .filter_map(|c| c.ancestor.as_ref().filter(|(a, _)| *a == timeline_id))
            .map(|(_, lsn)| lsn.to_string())
            .collect();
        let leases = local_leases(dir, tenant, m.timeline);
        let oldest_readable = m.start_lsn.max(m.gc_cutoff_lsn);
        let lease_text = match &leases {
            None => "unknown (no pageserver data directory here)".to_string(),
            Some(Err(e)) => format!("unreadable: {e:#}"),
            Some(Ok(l)) if l.is_empty() => "none".into(),
            Some(Ok(l)) => l
                .iter()
                .map(|(lsn, _)| walproto::Lsn(*lsn).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let problems = findings.lines();
        done.problems += problems.len();
        let verdict = if problems.is_empty() {
            "ok"
        } else {
            "PROBLEMS"
        };
        done.lines.push(format!(
            "tenant {shown} branch {label} ({}): {verdict}; {} layer(s); readable from {} \
             (start {}, GC cutoff {}), remote up to {}; PITR window {}{}; leases: {lease_text}; \
             branch points: {}",
            m.timeline,
            m.layers.len(),
            oldest_readable,
            m.start_lsn,
            m.gc_cutoff_lsn,
            m.remote_consistent_lsn,
            conf.pitr_interval,
            if conf_stored {
                ""
            } else {
                " (no stored config: the default)"
            },
            if branch_points.is_empty() {
                "none".into()
            } else {
                branch_points.join(", ")
            }
        ));
        done.lines.extend(problems.iter().map(|p| format!("  {p}")));
        done.rows.push(json!({
            "tenant": shown, "tenant_id": tenant_id, "branch": branch, "timeline_id": timeline_id,
            "ok": problems.is_empty(), "layers": m.layers.len(), "bytes": m.total_bytes(),
            "missing": findings.missing, "orphaned": findings.orphaned,
            "size_mismatch": findings.size_mismatch, "checksum_errors": findings.checksum,
            "retention": {
                "start_lsn": m.start_lsn.to_string(),
                "gc_cutoff_lsn": m.gc_cutoff_lsn.to_string(),
                "oldest_readable_lsn": oldest_readable.to_string(),
                "remote_consistent_lsn": m.remote_consistent_lsn.to_string(),
                "last_record_lsn": m.last_record_lsn.to_string(),
                "pitr_interval": conf.pitr_interval,
                "branch_points": branch_points,
                "leases": match &leases {
                    Some(Ok(l)) => json!(l.iter().map(|(lsn, exp)| json!({
                        "lsn": walproto::Lsn(*lsn).to_string(), "expires_unix_ms": exp,
                    })).collect::<Vec<_>>()),
                    _ => serde_json::Value::Null,
                },
            },
        }));
    }
    // What is left under the tenant belongs to no timeline with a manifest.
    if !objects.is_empty() {
        let orphaned: Vec<String> = objects.into_keys().collect();
        done.problems += orphaned.len();
        done.lines.push(format!(
            "tenant {shown}: {} object(s) of no timeline with a manifest",
            orphaned.len()
        ));
        done.lines
            .extend(orphaned.iter().map(|o| format!("  orphaned: {o}")));
        done.rows.push(json!({
            "tenant": shown, "tenant_id": tenant_id, "branch": null, "timeline_id": null,
            "ok": false, "orphaned": orphaned,
        }));
    }
    // Branches the names know of that the store does not hold.
    if let (Some(n), Some(t)) = (names, &tenant_name) {
        for (branch, id) in n.branches.get(t).into_iter().flatten() {
            if !ids.contains(id) {
                done.problems += 1;
                done.lines.push(format!(
                    "tenant {shown} branch {branch} ({id}): PROBLEMS; no manifest in the object \
                     store (not uploaded yet, or lost)"
                ));
                done.rows.push(json!({
                    "tenant": shown, "tenant_id": tenant_id, "branch": branch, "timeline_id": id,
                    "ok": false, "missing": ["manifest"],
                }));
            }
        }
    }
    Ok(())
}

pub fn run(dir: &Path, a: CheckArgs, out: &Output) -> Result<ExitCode> {
    let cfg = ClusterConfig::load(dir)?;
    let remote = RemoteStorage::from_url(&cfg.remote_storage)
        .with_context(|| format!("the object store {}", cfg.remote_storage))?;
    let names = Names::load(dir).ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut done = Checked {
        rows: Vec::new(),
        lines: Vec::new(),
        problems: 0,
    };
    rt.block_on(async {
        let tenants = match &a.tenant {
            Some(t) => {
                let by_name = names.as_ref().and_then(|n| n.tenants.get(t).cloned());
                let id = by_name.as_deref().unwrap_or(t);
                vec![id.parse::<TenantId>().with_context(|| {
                    format!("--tenant {t:?}: not a tenant name of this cluster")
                })?]
            }
            None => list_remote_tenants(&remote)
                .await
                .with_context(|| format!("listing the tenants in {remote}"))?,
        };
        for &t in &tenants {
            check_tenant(
                dir,
                &remote,
                names.as_ref(),
                t,
                !a.no_checksums,
                out,
                &mut done,
            )
            .await?;
        }
        anyhow::Ok(())
    })?;
    if done.lines.is_empty() {
        done.lines.push(format!("nothing stored in {remote}"));
    }
    let verdict = if done.problems == 0 {
        "no problems found".to_string()
    } else {
        format!("{} problem(s) found", done.problems)
    };
    done.lines.push(verdict);
    out.result(
        &done.lines.join("\n"),
        json!({"store": remote.to_string(), "problems": done.problems, "timelines": done.rows}),
    );
    Ok(if done.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(PROBLEMS_FOUND)
    })
}
