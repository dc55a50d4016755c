//! A pageserver data directory restored from remote storage at start
//! (`pageserver::remote::restore_missing`), with real ids, a real Postgres 15 data directory,
//! a timeline and a branch of it:
//!
//! - a wiped data directory: the tenant (its config), the timeline (its safekeepers) and the
//!   branch come back, ancestors first; `TenantManager::load` loads them and every page
//!   equals the original's;
//! - a second start restores nothing;
//! - a partly wiped one (the branch's metadata and the tenant config gone): both restored in
//!   place;
//! - a tenant whose config was never uploaded gets the default config.

mod service_support;

use std::path::Path;

use anyhow::{ensure, Result};
use bytes::Bytes;
use pageserver::remote::{restore_missing, sync_timeline, RemoteStorage};
use pageserver::tenant::{BranchTarget, TenantConf, TenantManager};
use service_support::{all_pages, differing};
use strata_tests::{InitOptions, PgCluster, StopMode};

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const MAIN: &str = "11111111111111111111111111111111";
const BRANCH: &str = "22222222222222222222222222222222";
const SAFEKEEPER: &str = "127.0.0.1:5454";

type Pages = Vec<(layer_format::Key, Option<Vec<u8>>)>;

fn pages(m: &TenantManager, timeline: &str) -> Result<Pages> {
    let h = m.timeline(TENANT, timeline)?;
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
    let pg = PgCluster::init(&InitOptions::default().set("fsync", "off"))?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat('x', g % 100) FROM generate_series(1, 20000) g;",
    )?;
    pg.stop(StopMode::Fast)?;
    let base = pg.copy_data_dir("restart-base")?;
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let remote = RemoteStorage::local(&tmp.path().join("store"))?;

    // The original pageserver: a tenant, an imported timeline, a branch; all uploaded.
    let a = tmp.path().join("a");
    let conf = TenantConf {
        freeze_mib: 8,
        pitr_interval: "2h".into(),
        ..TenantConf::default()
    };
    let (want_main, want_branch) = {
        let m = TenantManager::load(&a)?;
        let t = m.create_tenant(Some(TENANT.into()), conf.clone())?;
        t.import_timeline(Some(MAIN.into()), &base, None, vec![SAFEKEEPER.into()])?;
        t.create_branch(MAIN, Some(BRANCH.into()), &BranchTarget::Tip, Vec::new())?;
        let tdir = a.join("tenants").join(TENANT);
        rt.block_on(remote.put_tenant_config(
            TENANT,
            Bytes::from(std::fs::read(tdir.join("tenant.toml"))?),
        ))?;
        for tl in [MAIN, BRANCH] {
            let dir = tdir.join("timelines").join(tl);
            rt.block_on(sync_timeline(&remote, TENANT, tl, &dir))?;
            rt.block_on(remote.put_timeline_config(
                TENANT,
                tl,
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
    assert!(rep.layers_downloaded >= 1 && rep.bytes_downloaded > 0);
    {
        let m = TenantManager::load(&b)?;
        let t = m.tenant(TENANT)?;
        assert!(
            t.broken_timelines().is_empty(),
            "{:?}",
            t.broken_timelines()
        );
        assert_eq!(t.conf(), &conf);
        assert_eq!(m.timeline(TENANT, MAIN)?.safekeepers(), vec![SAFEKEEPER]);
        let parent = m
            .timeline(TENANT, BRANCH)?
            .parent()
            .map(|p| p.timeline_id().to_string());
        assert_eq!(parent.as_deref(), Some(MAIN));
        check_same(&m, &want)?;
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
        let m = TenantManager::load(&b)?;
        assert_eq!(m.tenant(TENANT)?.conf(), &conf);
        check_same(&m, &want)?;
    }

    // A tenant whose config never made it: the default config, and its timeline.
    let c = tmp.path().join("c");
    let bare = RemoteStorage::local(&tmp.path().join("store2"))?;
    let src = a.join("tenants").join(TENANT).join("timelines").join(MAIN);
    rt.block_on(sync_timeline(&bare, TENANT, MAIN, &src))?;
    let rep = rt.block_on(restore_missing(&bare, &c))?;
    assert_eq!(rep.timelines_restored, vec![format!("{TENANT}/{MAIN}")]);
    let m = TenantManager::load(&c)?;
    assert_eq!(m.tenant(TENANT)?.conf(), &TenantConf::default());
    assert!(m.timeline(TENANT, MAIN)?.safekeepers().is_empty());
    check_same(&m, &want[..1])?;
    drop(m);
    ensure!(!Path::new(&c)
        .join("tenants")
        .join(format!("{TENANT}.tmp"))
        .exists());

    // A damaged layer: that timeline is not restored (reported, with the reason); the start
    // goes on, and the unfinished directory is removed at load.
    let man = rt
        .block_on(pageserver::remote::download_manifest(&bare, TENANT, MAIN))?
        .expect("uploaded");
    let obj = bare
        .layers_path(TENANT, MAIN)?
        .join(man.layers[0].key.as_str());
    rt.block_on(async {
        use object_store::{ObjectStoreExt, PutPayload};
        let mut data = bare.store().get(&obj).await?.bytes().await?.to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        bare.store().put(&obj, PutPayload::from(data)).await?;
        anyhow::Ok(())
    })?;
    let d = tmp.path().join("d");
    let rep = rt.block_on(restore_missing(&bare, &d))?;
    println!("damaged: {rep:?}");
    assert!(rep.timelines_restored.is_empty(), "{rep:?}");
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert_eq!(rep.failed[0].0, format!("{TENANT}/{MAIN}"));
    assert!(rep.failed[0].1.contains("crc32c"), "{rep:?}");
    let m = TenantManager::load(&d)?;
    assert!(m.tenant(TENANT)?.timelines().is_empty());
    assert!(m.timeline(TENANT, MAIN).is_err());
    Ok(())
}
