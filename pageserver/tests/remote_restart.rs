//! A pageserver data directory restored from remote storage at start
//! (`pageserver::remote::restore_missing`), with real ids, a real Postgres 15 data directory,
//! a timeline and a branch of it:
//!
//! - a wiped data directory: the tenant (its config), the timeline (its safekeepers) and the
//!   branch come back, ancestors first, without a layer downloaded: the timeline opens with
//!   every layer remote; a GetPage downloads exactly the layers its read visits (each once,
//!   also under concurrent readers); `TenantManager::load` loads them, every page equals the
//!   original's, and so does a full basebackup, file by file;
//! - a second start restores nothing;
//! - a partly wiped one (the branch's metadata and the tenant config gone): both restored in
//!   place;
//! - a tenant whose config was never uploaded gets the default config;
//! - a damaged remote layer: the restore succeeds (nothing is downloaded), the read that
//!   visits the layer fails with a crc32c error naming the layer and its object, leaving no
//!   file behind; once the object is repaired the next read downloads it and succeeds.

mod service_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use layer_format::{Key, LayerDesc, Lsn};
use pageserver::basebackup::{basebackup_to_dir, BasebackupOptions, Mode};
use pageserver::remote::{
    download_manifest, restore_missing, sync_timeline, Manifest, RemoteLayerSource, RemoteStorage,
};
use pageserver::tenant::{BranchTarget, TenantConf, TenantManager};
use pageserver::timeline::{Timeline, TimelineConf};
use service_support::{all_pages, differing, feed_wal};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::ids::{TenantId, TimelineId};

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const MAIN: &str = "11111111111111111111111111111111";
const BRANCH: &str = "22222222222222222222222222222222";
const SAFEKEEPER: &str = "127.0.0.1:5454";

/// `TENANT` as the tenant manager takes it.
fn tenant_id() -> TenantId {
    TENANT.parse().expect("TENANT is a tenant id")
}

/// `MAIN` or `BRANCH` as the tenant manager takes it.
fn timeline_id(id: &str) -> TimelineId {
    id.parse().expect("a timeline id")
}

type Pages = Vec<(layer_format::Key, Option<Vec<u8>>)>;

fn pages(m: &TenantManager, timeline: &str) -> Result<Pages> {
    let h = m.timeline(tenant_id(), timeline_id(timeline))?;
    let lsn = h.status().last_record_end;
    h.read(|t| all_pages(t, lsn))
}

fn check_same(m: &TenantManager, want: &[(&str, &Pages)]) -> Result<()> {
    for (tl, orig) in want {
        let got = pages(m, tl)?;
        let diff = differing(orig, &got);
        ensure!(diff.is_empty(), "{tl}: {} pages differ", diff.len());
        ensure!(got.len() > 100, "{tl}: only {} pages", got.len());
    }
    Ok(())
}

#[test]
fn wiped_data_dir_restored_at_start() -> Result<()> {
    let pg = PgCluster::init(
        &InitOptions::default()
            .keep_all_wal()
            .set("fsync", "off")
            .set("autovacuum", "off"),
    )?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat('x', g % 100) FROM generate_series(1, 20000) g;",
    )?;
    pg.stop(StopMode::Fast)?;
    let base = pg.copy_data_dir("restart-base")?;
    let start = pg.latest_checkpoint()?;
    // WAL after the base, ingested in small layers: a timeline of many layer files.
    pg.start()?;
    for i in 0..4 {
        pg.psql(&format!(
            "UPDATE t SET v = 'u{i}' || repeat('y', {}) WHERE id % 4 = {i};",
            10 + i * 7
        ))?;
    }
    pg.psql(
        "CREATE TABLE u AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 20000) g;",
    )?;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let remote = RemoteStorage::local(&tmp.path().join("store"))?;

    // The original pageserver: a tenant, an imported timeline, a branch; all uploaded.
    let a = tmp.path().join("a");
    let conf = TenantConf {
        freeze_mib: 1,
        pitr_interval: "2h".into(),
        ..TenantConf::default()
    };
    let (want_main, want_branch) = {
        let m = TenantManager::load(&a)?;
        let t = m.create_tenant(Some(tenant_id()), conf.clone())?;
        let h = t.import_timeline(
            Some(timeline_id(MAIN)),
            &base,
            None,
            vec![SAFEKEEPER.into()],
        )?;
        let n = feed_wal(&h, &pg.wal_dir(), start, end, 256 << 10)?;
        h.flush()?;
        // No L0 layer on top: one spans every key and would be the first layer of every read,
        // so after one GetPage no page would start in a remote layer (whether one is left
        // depends on the parity of the L0 count, that is on the WAL's exact size).
        h.compact()?;
        let layers = h.read(|t| t.layer_descs().len());
        println!("ingested {n} records: {layers} layers");
        ensure!(layers >= 4, "only {layers} layers");
        t.create_branch(
            timeline_id(MAIN),
            Some(timeline_id(BRANCH)),
            &BranchTarget::Tip,
            Vec::new(),
        )?;
        let tdir = a.join("tenants").join(TENANT);
        rt.block_on(remote.put_tenant_config(
            tenant_id(),
            Bytes::from(std::fs::read(tdir.join("tenant.toml"))?),
        ))?;
        for tl in [MAIN, BRANCH] {
            let dir = tdir.join("timelines").join(tl);
            rt.block_on(sync_timeline(&remote, tenant_id(), timeline_id(tl), &dir))?;
            rt.block_on(remote.put_timeline_config(
                tenant_id(),
                timeline_id(tl),
                Bytes::from(std::fs::read(dir.join("timeline.toml"))?),
            ))?;
        }
        (pages(&m, MAIN)?, pages(&m, BRANCH)?)
    };
    let want = [(MAIN, &want_main), (BRANCH, &want_branch)];

    // A wiped data directory.
    let b = tmp.path().join("b");
    let rep = rt.block_on(restore_missing(&remote, &b))?;
    println!("wiped: {rep:?}");
    assert_eq!(rep.tenants_created, 1);
    assert_eq!(
        rep.timelines_restored,
        vec![format!("{TENANT}/{MAIN}"), format!("{TENANT}/{BRANCH}")],
        "ancestors first"
    );
    let man_main = rt
        .block_on(download_manifest(&remote, tenant_id(), timeline_id(MAIN)))?
        .expect("uploaded");
    let man_branch = rt
        .block_on(download_manifest(&remote, tenant_id(), timeline_id(BRANCH)))?
        .expect("uploaded");
    assert_eq!(
        (rep.layers_downloaded, rep.bytes_downloaded),
        (0, 0),
        "{rep:?}"
    );
    assert_eq!(
        rep.layers_on_demand,
        man_main.layers.len() + man_branch.layers.len()
    );
    assert_eq!(
        rep.bytes_on_demand,
        man_main.total_bytes() + man_branch.total_bytes()
    );
    let tl_dir =
        |root: &Path, tl: &str| root.join("tenants").join(TENANT).join("timelines").join(tl);
    // The restarted pageserver's layer source: the store it was configured with.
    let layers = RemoteLayerSource::new(Some(&remote));
    on_demand_reads(&tl_dir(&b, MAIN), &layers, &man_main, &want_main)?;
    let opened_alone = layers.totals();
    {
        let m = TenantManager::load_with(&b, Arc::new(layers.clone()))?;
        let t = m.tenant(tenant_id())?;
        assert!(
            t.broken_timelines().is_empty(),
            "{:?}",
            t.broken_timelines()
        );
        assert_eq!(t.conf(), conf);
        assert_eq!(
            m.timeline(tenant_id(), timeline_id(MAIN))?.safekeepers(),
            vec![SAFEKEEPER]
        );
        let parent = m
            .timeline(tenant_id(), timeline_id(BRANCH))?
            .parent()
            .map(|p| p.timeline_id().to_string());
        assert_eq!(parent.as_deref(), Some(MAIN));
        check_same(&m, &want)?;
        let h = m.timeline(tenant_id(), timeline_id(MAIN))?;
        let r = h.read(|t| t.residence());
        println!("after reading every page of {MAIN} (reopened): {r:?}");
        // The source counts the downloads of every timeline it made a fetcher for.
        let per_timeline: Vec<_> = [MAIN, BRANCH]
            .iter()
            .map(|tl| {
                m.timeline(tenant_id(), timeline_id(tl))
                    .map(|h| h.read(|t| t.residence().fetched))
            })
            .collect::<Result<_, _>>()?;
        let totals = layers.totals();
        println!("source totals {totals:?}: {opened_alone:?} before, then {per_timeline:?}");
        // The branch has no layers of its own: its reads download the parent's.
        assert!(per_timeline[0].downloads > 0, "{per_timeline:?}");
        assert_eq!(
            totals.downloads,
            opened_alone.downloads + per_timeline.iter().map(|f| f.downloads).sum::<u64>()
        );
        assert_eq!(
            totals.bytes,
            opened_alone.bytes + per_timeline.iter().map(|f| f.bytes).sum::<u64>()
        );
        // A full basebackup, file by file, equals the original's.
        let lsn = h.status().last_record_end;
        let restored = h.read(|t| basebackup_dir(t, lsn, &tmp.path().join("bb-restored")))?;
        let orig = Timeline::open(&tl_dir(&a, MAIN), TimelineConf::default(), None)?;
        let original = basebackup_dir(&orig, lsn, &tmp.path().join("bb-original"))?;
        drop(orig);
        ensure!(
            restored.len() > 100,
            "basebackup of {} files",
            restored.len()
        );
        // pg_control and the checkpoint record in pg_wal carry the basebackup's time.
        let timed = |f: &str| f == "global/pg_control" || f.starts_with("pg_wal/");
        let differ: Vec<&String> = restored
            .iter()
            .zip(&original)
            .filter(|(x, y)| x.0 != y.0 || (x != y && !timed(&x.0)))
            .map(|(x, _)| &x.0)
            .collect();
        ensure!(
            restored.len() == original.len() && differ.is_empty(),
            "basebackups differ: {} vs {} files, differing {differ:?}",
            restored.len(),
            original.len()
        );
        println!("basebackup identical: {} files", restored.len());
    }

    // Nothing is missing any more: nothing restored.
    let rep = rt.block_on(restore_missing(&remote, &b))?;
    assert!(
        rep.timelines_restored.is_empty() && rep.tenants_created == 0,
        "{rep:?}"
    );
    assert_eq!(rep.timelines_present, 2);

    // Partly wiped: the branch's metadata and the tenant config gone.
    let tdir = b.join("tenants").join(TENANT);
    std::fs::remove_file(tdir.join("tenant.toml"))?;
    std::fs::remove_file(tdir.join("timelines").join(BRANCH).join("metadata"))?;
    let rep = rt.block_on(restore_missing(&remote, &b))?;
    println!("partly wiped: {rep:?}");
    assert_eq!(rep.tenants_created, 1);
    assert_eq!(rep.timelines_restored, vec![format!("{TENANT}/{BRANCH}")]);
    assert_eq!(rep.timelines_present, 1);
    {
        let m = TenantManager::load_with(&b, Arc::new(layers.clone()))?;
        assert_eq!(m.tenant(tenant_id())?.conf(), conf);
        check_same(&m, &want)?;
    }

    // A tenant whose config never made it: the default config, and its timeline.
    let c = tmp.path().join("c");
    let bare = RemoteStorage::local(&tmp.path().join("store2"))?;
    let src = a.join("tenants").join(TENANT).join("timelines").join(MAIN);
    rt.block_on(sync_timeline(&bare, tenant_id(), timeline_id(MAIN), &src))?;
    let rep = rt.block_on(restore_missing(&bare, &c))?;
    assert_eq!(rep.timelines_restored, vec![format!("{TENANT}/{MAIN}")]);
    let bare_layers = RemoteLayerSource::new(Some(&bare));
    let m = TenantManager::load_with(&c, Arc::new(bare_layers.clone()))?;
    assert_eq!(m.tenant(tenant_id())?.conf(), TenantConf::default());
    assert!(m
        .timeline(tenant_id(), timeline_id(MAIN))?
        .safekeepers()
        .is_empty());
    check_same(&m, &want[..1])?;
    drop(m);
    ensure!(!Path::new(&c)
        .join("tenants")
        .join(format!("{TENANT}.tmp"))
        .exists());

    // The uploader, GC and a restore again on a timeline whose layers are partly remote:
    // a sync uploads nothing (the remote layers are the uploaded ones); GC downloads what it
    // reads and drops layers that were never downloaded; the synced result restores.
    let dir_c = tl_dir(&c, MAIN);
    let again = rt.block_on(sync_timeline(&bare, tenant_id(), timeline_id(MAIN), &dir_c))?;
    assert!(
        !again.manifest_written && again.layers_uploaded == 0,
        "{again:?}"
    );
    let mut tl = Timeline::open(
        &dir_c,
        TimelineConf::default(),
        bare_layers.fetcher_for(&dir_c)?,
    )?;
    let lsn = tl.last_record_end();
    let before = tl.residence();
    ensure!(before.remote > 0, "every layer was downloaded: {before:?}");
    let g = tl.gc(lsn)?;
    println!("gc with {before:?}: {g:?}; {:?}", tl.residence());
    ensure!(differing(&want_main, &all_pages(&tl, lsn)?).is_empty());
    drop(tl);
    let synced = rt.block_on(sync_timeline(&bare, tenant_id(), timeline_id(MAIN), &dir_c))?;
    println!("sync after gc: {synced:?}");
    assert_eq!(synced.remote_consistent_lsn, lsn);
    let e = tmp.path().join("e");
    rt.block_on(restore_missing(&bare, &e))?;
    // No store configured: the fetcher builds one from the URL the restore left.
    let dir_e = tl_dir(&e, MAIN);
    let fetch = RemoteLayerSource::default().fetcher_for(&dir_e)?;
    ensure!(
        fetch.is_some(),
        "{} was not restored on demand",
        dir_e.display()
    );
    let tl = Timeline::open(&dir_e, TimelineConf::default(), fetch)?;
    ensure!(differing(&want_main, &all_pages(&tl, lsn)?).is_empty());
    drop(tl);

    // A damaged layer: the restore downloads nothing, so it succeeds; the read that visits
    // the layer fails naming it and its object; repaired, the next read succeeds.
    let d = tmp.path().join("d");
    let rep = rt.block_on(restore_missing(&bare, &d))?;
    assert_eq!(rep.timelines_restored, vec![format!("{TENANT}/{MAIN}")]);
    assert!(rep.failed.is_empty(), "{rep:?}");
    let man = rt
        .block_on(download_manifest(&bare, tenant_id(), timeline_id(MAIN)))?
        .expect("uploaded");
    let dir = tl_dir(&d, MAIN);
    let tl = Timeline::open(
        &dir,
        TimelineConf::default(),
        bare_layers.fetcher_for(&dir)?,
    )?;
    let lsn = tl.last_record_end();
    let (key, page) = some_page(&want_main, 3);
    let victim = man
        .layer(&tl.layers_for(key, lsn)[0])
        .context("the first layer of a read is in the manifest")?
        .clone();
    let obj = bare
        .layers_path(tenant_id(), timeline_id(MAIN))
        .join(victim.key.as_str());
    let orig = rt.block_on(async {
        use object_store::{ObjectStoreExt, PutPayload};
        let orig = bare.store().get(&obj).await?.bytes().await?;
        let mut data = orig.to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        bare.store().put(&obj, PutPayload::from(data)).await?;
        anyhow::Ok(orig)
    })?;
    let e = tl.get_page(key, lsn).unwrap_err().to_string();
    println!("damaged: {e}");
    for want in ["crc32c", &victim.file_name(), obj.as_ref()] {
        ensure!(e.contains(want), "the error does not name {want}: {e}");
    }
    let r = tl.residence();
    assert_eq!((r.fetched.failures, r.fetched.downloads), (1, 0), "{r:?}");
    assert!(
        !dir.join(victim.file_name()).exists(),
        "a damaged download left its file"
    );
    assert!(!std::fs::read_dir(&dir)?.any(|e| e
        .map(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .unwrap_or(false)));
    rt.block_on(async {
        use object_store::{ObjectStoreExt, PutPayload};
        bare.store().put(&obj, PutPayload::from(orig)).await?;
        anyhow::Ok(())
    })?;
    let got = tl.get_page(key, lsn)?.map(|p| p.to_vec());
    assert!(got == page, "the page read after the repair differs");
    assert!(tl.residence().fetched.downloads >= 1);
    Ok(())
}

/// A page (`Some`) of `want` a little past its middle (`nth` picks further ones).
fn some_page(want: &Pages, nth: usize) -> (Key, Option<Vec<u8>>) {
    want[want.len() / 2..]
        .iter()
        .filter(|p| p.1.is_some())
        .nth(nth * 37)
        .or_else(|| want.iter().find(|p| p.1.is_some()))
        .cloned()
        .expect("a page")
}

/// Layer files in `dir`.
fn local_layers(dir: &Path) -> Result<HashSet<LayerDesc>> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(dir)? {
        if let Ok(d) = LayerDesc::parse(&e?.file_name().to_string_lossy()) {
            out.insert(d);
        }
    }
    Ok(out)
}

/// A timeline restored on demand in `dir` opens with every layer remote; one GetPage
/// downloads exactly the layers its read visits; concurrent readers download each layer once.
fn on_demand_reads(
    dir: &Path,
    layers: &RemoteLayerSource,
    man: &Manifest,
    want: &Pages,
) -> Result<()> {
    // Without the fetcher the layers are missing.
    let e = Timeline::open(dir, TimelineConf::default(), None)
        .err()
        .context("a timeline restored on demand opened without its fetcher")?;
    let e = e.to_string();
    ensure!(
        man.layers.iter().any(|l| e.contains(&l.file_name())),
        "the error names no layer: {e}"
    );
    let tl = Timeline::open(dir, TimelineConf::default(), layers.fetcher_for(dir)?)?;
    let r = tl.residence();
    println!("opened: {r:?}");
    assert_eq!((r.resident, r.remote), (0, man.layers.len()), "{r:?}");
    assert_eq!(r.remote_bytes, man.total_bytes());
    assert_eq!(r.fetched.downloads, 0);
    assert!(local_layers(dir)?.is_empty(), "a layer file at open");

    // One page: the layers its read visits, and no other.
    let lsn = tl.last_record_end();
    // A page whose read may go through more than one layer.
    let (key, page) = want
        .iter()
        .filter(|p| p.1.is_some())
        .find(|p| tl.layers_for(p.0, lsn).len() >= 3)
        .cloned()
        .unwrap_or_else(|| some_page(want, 0));
    let plan = tl.layers_for(key, lsn);
    let got = tl.get_page(key, lsn)?.map(|p| p.to_vec());
    assert!(got == page, "page {key} differs from the original");
    let stats = tl.read_stats();
    assert_eq!(stats.reads(), 1);
    let visited = stats.hist.len() - 1;
    let r = tl.residence();
    println!(
        "one GetPage visited {visited} of {} planned layers: {r:?}",
        plan.len()
    );
    assert!(visited >= 1);
    assert_eq!(r.fetched.downloads as usize, visited);
    let want_resident: HashSet<LayerDesc> = plan[..visited].iter().cloned().collect();
    let resident: HashSet<LayerDesc> = tl.resident_layers().into_iter().collect();
    assert_eq!(resident, want_resident);
    assert_eq!(local_layers(dir)?, want_resident, "files on disk");
    let bytes: u64 = want_resident
        .iter()
        .map(|d| man.layer(d).map_or(0, |l| l.size))
        .sum();
    assert_eq!(r.fetched.bytes, bytes);
    assert_eq!(r.remote, man.layers.len() - visited);
    assert!(r.remote > 0, "one page needed every layer");

    // The same page again: nothing more.
    tl.get_page(key, lsn)?;
    assert_eq!(tl.residence().fetched.downloads as usize, visited);

    // Readers at once, over pages whose first layer is remote (the same one): each layer is
    // downloaded once.
    let resident = tl.resident_layers();
    let first = |k: Key| tl.layers_for(k, lsn).first().cloned();
    let target = want
        .iter()
        .filter(|p| p.1.is_some())
        .filter_map(|p| first(p.0))
        .find(|d| !resident.contains(d))
        .context("no page starts in a remote layer")?;
    let keys: Vec<(Key, Option<Vec<u8>>)> = want
        .iter()
        .filter(|p| first(p.0).as_ref() == Some(&target))
        .step_by(7)
        .take(8)
        .cloned()
        .collect();
    let before = tl.residence().fetched.downloads;
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (tl, keys, barrier) = (&tl, &keys, &barrier);
                s.spawn(move || -> Result<()> {
                    barrier.wait();
                    for (k, p) in keys.iter().cycle().skip(t).take(keys.len()) {
                        let got = tl.get_page(*k, lsn)?.map(|p| p.to_vec());
                        ensure!(got == *p, "page {k} differs under concurrent reads");
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("reader thread"))
    })?;
    let r = tl.residence();
    println!(
        "{} readers of {} pages starting in {target}: {r:?}",
        4,
        keys.len()
    );
    assert!(
        r.fetched.downloads > before,
        "the readers downloaded nothing"
    );
    assert!(tl.resident_layers().contains(&target));
    assert_eq!(
        r.fetched.downloads as usize, r.resident,
        "a layer downloaded twice"
    );
    assert_eq!(local_layers(dir)?.len(), r.resident);
    Ok(())
}

/// A read-only basebackup at `lsn` into `dir`: every file's path and contents, sorted.
fn basebackup_dir(tl: &Timeline, lsn: Lsn, dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    basebackup_to_dir(tl, &BasebackupOptions::new(lsn, Mode::ReadOnly), dir)?;
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}
