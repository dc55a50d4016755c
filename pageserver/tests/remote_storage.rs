//! Remote storage against real Postgres 15 WAL (pgbench) and two real object stores: a local
//! directory and s3s-fs, an S3 server started on loopback. For each store, in order:
//!
//! - sync a timeline halfway through the WAL; a second sync changes nothing;
//! - a crash between the layer uploads and the manifest (failpoint): the old manifest stays
//!   valid: a restore from it reads the halfway pages, and ingest resumes there and reaches
//!   the same pages as the original;
//! - compaction between syncs: the next sync deletes every remote layer the manifest no longer
//!   lists (and the orphans of the crash);
//! - the local directory wiped and restored: every sampled page at three LSNs equal;
//! - a flipped byte in a remote layer: restore fails naming the layer; a damaged manifest:
//!   an error naming the manifest.
//!
//! Then the background uploader follows an ingest with automatic compaction (layers deleted
//! under it) and publishes the final LSN.
//!
//! s3s-fs must be installed (`STRATA_SETUP_S3=1 scripts/setup.sh`); without it the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use layer_format::Key;
use object_store::{ObjectStoreExt, PutPayload};
use pageserver::import::{import_datadir, read_control};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::remote::{
    list_remote_tenants, list_remote_timelines, restore_timeline, spawn_uploader, sync_timeline,
    sync_timeline_with, Manifest, RemoteError, RemoteStorage, S3Options, SyncFailPoint,
    UploaderConf,
};
use pageserver::timeline::{CompactionConf, Timeline, TimelineConf};
use strata_tests::procs::{find_s3s_fs, S3Server, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::ids::{TenantId, TimelineId};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

const TENANT: TenantId = TenantId([0x7e; 16]);
const TIMELINE: TimelineId = TimelineId([0x11; 16]);

struct Workload {
    _pg: PgCluster,
    base: PathBuf,
    wal: PathBuf,
    start: Lsn,
    end: Lsn,
}

fn workload() -> anyhow::Result<Workload> {
    let pg = PgCluster::init(&InitOptions::default().keep_all_wal())?;
    let base = pg.copy_data_dir("remote-base")?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "2", "-q"])?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "4"])?;
    let end = pg.current_wal_lsn()?;
    pg.stop(StopMode::Fast)?;
    let start = read_control(&base)?.checkpoint;
    Ok(Workload {
        wal: pg.wal_dir(),
        _pg: pg,
        base,
        start,
        end,
    })
}

/// Small L0 layers (many uploads), L1 layers above the multipart threshold, no page cache.
fn conf(auto: bool) -> TimelineConf {
    TimelineConf {
        freeze_bytes: 1024 * 1024,
        page_cache_pages: 0,
        compaction: CompactionConf {
            auto,
            target_file_bytes: 12 * 1024 * 1024,
            image_partition_pages: 1024,
            ..CompactionConf::default()
        },
    }
}

/// Ingests records from the timeline's position while their LSN is below `until`; flushes.
fn ingest_until(ing: &mut WalIngest, wal: &Path, until: Lsn) -> anyhow::Result<()> {
    let tl = ing.timeline();
    let from = if tl.last_record_lsn() == Lsn::INVALID {
        tl.start_lsn()
    } else {
        tl.last_record_end()
    };
    let mut reader = WalDirReader::open(wal, from, None, None)?;
    while let Some(rec) = reader.next_record()? {
        if rec.lsn >= until {
            break;
        }
        ing.ingest_record(&rec)?;
    }
    ing.timeline_mut().flush()?;
    Ok(())
}

type Page = (Key, Lsn, Option<Vec<u8>>);
type Pages = Vec<Page>;

fn read_pages(tl: &Timeline, keys: &[Key], lsns: &[Lsn]) -> anyhow::Result<Pages> {
    let mut out = Vec::new();
    for &lsn in lsns {
        for &k in keys {
            out.push((k, lsn, tl.get_page(k, lsn)?.map(|p| p.to_vec())));
        }
    }
    Ok(out)
}

fn assert_same(what: &str, a: &[Page], b: &[Page]) {
    assert_eq!(a.len(), b.len(), "{what}");
    let differing: Vec<_> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| (x.0, x.1))
        .take(5)
        .collect();
    assert!(differing.is_empty(), "{what}: pages differ: {differing:?}");
}

/// Every 3rd block of every fork the ingest knows.
fn sample_keys(ing: &WalIngest) -> Vec<Key> {
    let mut keys = Vec::new();
    for (rel, fork, n) in ing.directory().all_forks() {
        let step = if n > 30 { 3 } else { 1 };
        keys.extend((0..n).step_by(step).map(|b| Key::rel_block(rel, fork, b)));
    }
    keys
}

/// The names of the objects under the timeline's `layers/`.
async fn remote_layer_names(remote: &RemoteStorage) -> anyhow::Result<Vec<String>> {
    use futures_util::TryStreamExt;
    let prefix = remote.layers_path(TENANT, TIMELINE);
    let objs: Vec<_> = remote.store().list(Some(&prefix)).try_collect().await?;
    let mut names: Vec<String> = objs
        .iter()
        .map(|o| o.location.filename().unwrap_or_default().to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// The object keys the manifest lists.
fn manifest_names(m: &Manifest) -> Vec<String> {
    let mut v: Vec<String> = m.layers.iter().map(|l| l.key.clone()).collect();
    v.sort();
    v
}

async fn manifest(remote: &RemoteStorage) -> anyhow::Result<Manifest> {
    pageserver::remote::download_manifest(remote, TENANT, TIMELINE)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no manifest"))
}

#[test]
fn remote_storage_against_postgres() -> anyhow::Result<()> {
    find_s3s_fs()?; // fail before any work
    let w = workload()?;
    let tmp = tempfile::tempdir()?;
    let (_tmp, scratch) = if std::env::var_os("STRATA_KEEP_TMP").is_some() {
        let p = tmp.keep();
        eprintln!("STRATA_KEEP_TMP: keeping {}", p.display());
        (None, p)
    } else {
        let p = tmp.path().to_path_buf();
        (Some(tmp), p)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let local = RemoteStorage::from_url(&format!("file://{}", scratch.join("store").display()))?
        .with_part_bytes(1024 * 1024);
    let child = ChildSpec {
        url: format!("file://{}", scratch.join("store").display()),
        env: Vec::new(),
        part_bytes: local.part_bytes(),
    };
    exercise(
        "local",
        &rt,
        &w,
        &local,
        &scratch.join("local"),
        true,
        &child,
    )?;

    // s3s-fs keeps per-object files named by the base64 of bucket and key, so it fails
    // (ENAMETOOLONG) on a multipart upload of a key of over ~130 bytes; layer keys are short
    // (`longest_key_fits_s3s_fs`), but the ids here are short too: layers go up in single
    // PUTs, and multipart is checked on its own.
    let server = S3Server::start(&scratch.join("s3s"), "strata")?;
    let s3 = RemoteStorage::from_url_with("s3://strata/ps1", &s3_options(&server))?
        .with_part_bytes(256 * 1024 * 1024);
    let child = ChildSpec {
        url: "s3://strata/ps1".into(),
        env: server.env(),
        part_bytes: s3.part_bytes(),
    };
    exercise("s3s-fs", &rt, &w, &s3, &scratch.join("s3"), false, &child)?;
    multipart_on_s3(&rt, &s3.with_part_bytes(5 * 1024 * 1024), &scratch)?;
    drop(server);

    background_uploader(&rt, &w, &scratch.join("bg"))?;
    Ok(())
}

fn exercise(
    name: &str,
    rt: &tokio::runtime::Runtime,
    w: &Workload,
    remote: &RemoteStorage,
    scratch: &Path,
    multipart: bool,
    child: &ChildSpec,
) -> anyhow::Result<()> {
    println!("== {name}: {remote}");
    let src = scratch.join("source");
    let (tl, _) = import_datadir(&w.base, &src, conf(false), None)?;
    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let span = w.end.0 - w.start.0;
    let (quarter, half) = (Lsn(w.start.0 + span / 4), Lsn(w.start.0 + span / 2));
    ingest_until(&mut ing, &w.wal, half)?;
    let mid = ing.timeline().disk_consistent_lsn();

    // The first sync uploads every layer; a second one nothing.
    let t0 = Instant::now();
    let rep = rt.block_on(sync_timeline(remote, TENANT, TIMELINE, &src))?;
    println!("first sync in {:?}: {rep:?}", t0.elapsed());
    assert!(rep.manifest_written);
    assert_eq!(rep.remote_consistent_lsn, mid);
    assert_eq!(rep.layers_uploaded, ing.timeline().layer_descs().len());
    assert!(rep.layers_uploaded >= 5, "{rep:?}");
    let again = rt.block_on(sync_timeline(remote, TENANT, TIMELINE, &src))?;
    assert!(
        !again.manifest_written && again.layers_uploaded == 0,
        "{again:?}"
    );
    assert_eq!(again.remote_consistent_lsn, mid);
    let m_mid = rt.block_on(manifest(remote))?;
    assert_eq!(
        rt.block_on(remote_layer_names(remote))?,
        manifest_names(&m_mid)
    );
    assert_eq!(rt.block_on(list_remote_tenants(remote))?, vec![TENANT]);
    let listed = rt.block_on(list_remote_timelines(remote, TENANT))?;
    assert_eq!(listed, vec![m_mid.clone()]);

    // The rest of the WAL, then a crash after the new layers are up, before the manifest.
    ingest_until(&mut ing, &w.wal, Lsn(u64::MAX))?;
    let last = ing.timeline().disk_consistent_lsn();
    assert!(last > mid);
    let err = rt
        .block_on(sync_timeline_with(
            remote,
            TENANT,
            TIMELINE,
            &src,
            SyncFailPoint::AfterLayers,
        ))
        .unwrap_err();
    assert!(matches!(err, RemoteError::FailPoint(_)), "{err}");
    assert_eq!(rt.block_on(manifest(remote))?, m_mid, "the manifest moved");
    assert!(rt.block_on(remote_layer_names(remote))?.len() > m_mid.layers.len());

    // The reference pages, read from the original.
    let keys = sample_keys(&ing);
    assert!(keys.len() > 1000, "only {} keys", keys.len());
    let lsns = [last, mid, quarter];
    let reference = read_pages(ing.timeline(), &keys, &lsns)?;
    assert!(reference.iter().filter(|p| p.2.is_some()).count() > 1000);

    // The old manifest restores the halfway state, and ingest resumes there.
    let crashed = scratch.join("restored-after-crash");
    let r = rt.block_on(restore_timeline(remote, TENANT, TIMELINE, &crashed))?;
    assert_eq!(r.manifest.remote_consistent_lsn, mid);
    let tl = Timeline::open(&crashed, conf(false), None)?;
    assert_eq!(tl.disk_consistent_lsn(), mid);
    assert_same(
        "restored at halfway",
        &reference[keys.len()..],
        &read_pages(&tl, &keys, &lsns[1..])?,
    );
    let mut resumed = WalIngest::new(tl, IngestConf::default())?;
    ingest_until(&mut resumed, &w.wal, Lsn(u64::MAX))?;
    assert_eq!(resumed.timeline().last_record_end(), last);
    assert_same(
        "resumed after restore",
        &reference,
        &read_pages(resumed.timeline(), &keys, &lsns)?,
    );
    drop(resumed);

    // Real crashes: a process syncing the same state, SIGKILLed after a growing delay until
    // one finishes; after each kill the manifest is the old or the new one, and restores.
    kill_syncs(rt, remote, child, &src, &m_mid, last, scratch)?;

    // Compaction between syncs: remote layers no longer listed are deleted.
    let comp = ing.timeline_mut().compact()?;
    println!("compaction: {comp:?}");
    let rep = rt.block_on(sync_timeline(remote, TENANT, TIMELINE, &src))?;
    println!("sync after compaction: {rep:?}");
    assert!(rep.manifest_written && rep.remote_consistent_lsn == last);
    let m_last = rt.block_on(manifest(remote))?;
    let gone = m_mid
        .layers
        .iter()
        .filter(|l| m_last.layer(&l.desc).is_none())
        .count();
    assert!(gone > 0, "compaction replaced no uploaded layer");
    assert!(rep.layers_deleted >= gone, "{rep:?}, {gone} replaced");
    assert_eq!(
        rt.block_on(remote_layer_names(remote))?,
        manifest_names(&m_last)
    );
    println!(
        "manifest: {} layers, {} bytes, largest {}; parts of {} bytes",
        m_last.layers.len(),
        m_last.total_bytes(),
        m_last.layers.iter().map(|l| l.size).max().unwrap_or(0),
        remote.part_bytes()
    );
    if multipart {
        assert!(
            rep.multipart_uploads > 0,
            "no layer took the multipart path"
        );
    }
    let after_compaction = read_pages(ing.timeline(), &keys, &lsns)?;
    assert_same("compacted", &reference, &after_compaction);
    drop(ing);

    // Wipe and restore.
    std::fs::remove_dir_all(&src)?;
    let t0 = Instant::now();
    let r = rt.block_on(restore_timeline(remote, TENANT, TIMELINE, &src))?;
    println!(
        "restore in {:?}: {} layers, {} bytes",
        t0.elapsed(),
        r.layers_downloaded,
        r.bytes_downloaded
    );
    assert_eq!(r.layers_downloaded, m_last.layers.len());
    let tl = Timeline::open(&src, conf(false), None)?;
    assert_eq!(tl.disk_consistent_lsn(), last);
    assert_same(
        "wiped and restored",
        &reference,
        &read_pages(&tl, &keys, &lsns)?,
    );
    drop(tl);
    // Restoring over a live timeline is refused.
    let e = rt
        .block_on(restore_timeline(remote, TENANT, TIMELINE, &src))
        .unwrap_err();
    assert!(e.to_string().contains("already holds a timeline"), "{e}");

    corruption(rt, remote, &m_last, scratch)?;
    Ok(())
}

/// A flipped byte in a layer and in the manifest: clear errors naming them.
fn corruption(
    rt: &tokio::runtime::Runtime,
    remote: &RemoteStorage,
    m: &Manifest,
    scratch: &Path,
) -> anyhow::Result<()> {
    let victim = &m.layers[m.layers.len() / 2];
    let obj = remote
        .layers_path(TENANT, TIMELINE)
        .join(victim.key.as_str());
    let flip = |obj: &object_store::path::Path, at: usize| -> anyhow::Result<Bytes> {
        rt.block_on(async {
            let orig = remote.store().get(obj).await?.bytes().await?;
            let mut damaged = orig.to_vec();
            damaged[at] ^= 0x20;
            remote.store().put(obj, PutPayload::from(damaged)).await?;
            anyhow::Ok(orig)
        })
    };
    let orig = flip(&obj, victim.size as usize / 2)?;
    let e = rt
        .block_on(restore_timeline(
            remote,
            TENANT,
            TIMELINE,
            &scratch.join("corrupt"),
        ))
        .unwrap_err();
    println!("damaged layer: {e}");
    assert!(matches!(e, RemoteError::LayerCorrupt { .. }), "{e}");
    assert!(e.to_string().contains(&victim.file_name()), "{e}");
    assert!(e.to_string().contains("crc32c"), "{e}");
    rt.block_on(remote.store().put(&obj, PutPayload::from(orig)))?;

    let mpath = remote.manifest_path(TENANT, TIMELINE);
    let orig = flip(&mpath, 40)?;
    let e = rt
        .block_on(restore_timeline(
            remote,
            TENANT,
            TIMELINE,
            &scratch.join("corrupt2"),
        ))
        .unwrap_err();
    println!("damaged manifest: {e}");
    assert!(matches!(e, RemoteError::Manifest { .. }), "{e}");
    assert!(e.to_string().contains(mpath.as_ref()), "{e}");
    rt.block_on(remote.store().put(&mpath, PutPayload::from(orig)))?;

    // Repaired, the interrupted restore finishes, reusing the layers already verified.
    let r = rt.block_on(restore_timeline(
        remote,
        TENANT,
        TIMELINE,
        &scratch.join("corrupt"),
    ))?;
    println!(
        "restore after repair: {} downloaded, {} reused",
        r.layers_downloaded, r.layers_reused
    );
    assert_eq!(r.layers_downloaded + r.layers_reused, m.layers.len());
    Ok(())
}

/// How a child process reaches the same object store (its S3 settings from `AWS_*`).
struct ChildSpec {
    url: String,
    env: Vec<(String, String)>,
    part_bytes: usize,
}

const CHILD_ENV: &str = "STRATA_REMOTE_SYNC_CHILD";

/// Not a test: the process [`kill_syncs`] starts and kills. Syncs the timeline directory in
/// `STRATA_REMOTE_SYNC_CHILD=<dir>|<url>|<part bytes>` and exits.
#[test]
#[ignore]
fn sync_child() -> anyhow::Result<()> {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let spec = spec.to_string_lossy().into_owned();
    let v: Vec<&str> = spec.split('|').collect();
    let remote = RemoteStorage::from_url(v[1])?.with_part_bytes(v[2].parse()?);
    let rt = tokio::runtime::Runtime::new()?;
    println!("syncing");
    let rep = rt.block_on(sync_timeline(&remote, TENANT, TIMELINE, Path::new(v[0])))?;
    println!("synced {rep:?}");
    Ok(())
}

fn kill_syncs(
    rt: &tokio::runtime::Runtime,
    remote: &RemoteStorage,
    child: &ChildSpec,
    src: &Path,
    old: &Manifest,
    last: Lsn,
    scratch: &Path,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut delay = Duration::from_millis(2);
    let (mut killed_old, mut killed) = (0, 0);
    for round in 0..40 {
        let mut c = Command::new(&exe)
            .args(["sync_child", "--exact", "--ignored", "--nocapture"])
            .env(
                CHILD_ENV,
                format!("{}|{}|{}", src.display(), child.url, child.part_bytes),
            )
            .envs(child.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut out = std::io::BufReader::new(c.stdout.take().expect("piped"));
        let mut line = String::new();
        while !line.contains("syncing") {
            line.clear();
            anyhow::ensure!(out.read_line(&mut line)? > 0, "sync child died at start");
        }
        std::thread::sleep(delay);
        let finished = c.try_wait()?.is_some_and(|st| st.success());
        if !finished {
            c.kill()?; // SIGKILL
            c.wait()?;
            killed += 1;
        }
        let now = rt.block_on(manifest(remote))?;
        if now == *old {
            killed_old += usize::from(!finished);
        } else {
            assert_eq!(now.remote_consistent_lsn, last, "round {round}");
        }
        // Whatever the kill left, the manifest restores.
        let dir = scratch.join(format!("killed-{round}"));
        let r = rt.block_on(restore_timeline(remote, TENANT, TIMELINE, &dir))?;
        let tl = Timeline::open(&dir, conf(false), None)?;
        assert_eq!(tl.disk_consistent_lsn(), r.manifest.remote_consistent_lsn);
        drop(tl);
        std::fs::remove_dir_all(&dir)?;
        if finished || now.remote_consistent_lsn == last {
            println!(
                "{killed} sync processes SIGKILLed ({killed_old} before their manifest); \
                 round {round} (after {delay:?}) ended with the new manifest"
            );
            break;
        }
        delay = delay.mul_f64(1.5);
    }
    assert!(killed_old > 0, "no kill landed before the manifest write");
    // A complete sync leaves exactly the listed layers.
    let rep = rt.block_on(sync_timeline(remote, TENANT, TIMELINE, src))?;
    assert_eq!(rep.remote_consistent_lsn, last);
    let m = rt.block_on(manifest(remote))?;
    assert_eq!(rt.block_on(remote_layer_names(remote))?, manifest_names(&m));
    Ok(())
}

/// A 13 MiB file through the multipart path (three 5 MiB parts) and back, byte for byte.
fn multipart_on_s3(
    rt: &tokio::runtime::Runtime,
    remote: &RemoteStorage,
    scratch: &Path,
) -> anyhow::Result<()> {
    let path = scratch.join("big");
    let data: Vec<u8> = (0..13 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data)?;
    let obj = object_store::path::Path::from("ps1/big");
    let (size, crc) = rt.block_on(pageserver::remote::upload_file(remote, &obj, &path))?;
    assert_eq!((size, crc), (data.len() as u64, crc32c::crc32c(&data)));
    let back = rt.block_on(async { remote.store().get(&obj).await?.bytes().await })?;
    assert!(
        back[..] == data[..],
        "the multipart upload came back different"
    );
    rt.block_on(remote.store().delete(&obj))?;
    Ok(())
}

/// The background uploader follows an ingest with automatic compaction.
fn background_uploader(
    rt: &tokio::runtime::Runtime,
    w: &Workload,
    scratch: &Path,
) -> anyhow::Result<()> {
    println!("== background uploader");
    let remote = RemoteStorage::local(&scratch.join("store"))?;
    let dir = scratch.join("timeline");
    let (tl, _) = import_datadir(&w.base, &dir, conf(true), None)?;
    let conf_up = UploaderConf {
        poll_interval: Duration::from_millis(20),
        ..UploaderConf::default()
    };
    let handle = {
        let _g = rt.enter();
        spawn_uploader(remote.clone(), TENANT, TIMELINE, dir.clone(), conf_up)
    };
    let mut watch = handle.subscribe();
    let (wal, end) = (w.wal.clone(), w.end);
    let ingest = std::thread::spawn(move || -> anyhow::Result<(Vec<Key>, Lsn, Pages)> {
        let mut ing = WalIngest::new(tl, IngestConf::default())?;
        ingest_until(&mut ing, &wal, end)?;
        let keys = sample_keys(&ing);
        let last = ing.timeline().disk_consistent_lsn();
        let pages = read_pages(ing.timeline(), &keys, &[last])?;
        Ok((keys, last, pages))
    });
    // The published LSN advances while the ingest runs.
    let mut seen = Vec::new();
    while !ingest.is_finished() {
        if rt
            .block_on(async {
                tokio::time::timeout(Duration::from_millis(200), watch.changed()).await
            })
            .is_ok()
        {
            seen.push(*watch.borrow_and_update());
        }
    }
    let (keys, last, reference) = ingest.join().expect("ingest thread")?;
    let rep = rt.block_on(handle.sync_now())?;
    println!(
        "uploader published {} LSNs during the ingest; final sync {rep:?}",
        seen.len()
    );
    assert_eq!(rep.remote_consistent_lsn, last);
    assert_eq!(handle.remote_consistent_lsn(), last);
    assert!(
        seen.len() >= 2,
        "the LSN advanced only {} times",
        seen.len()
    );
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
    // Automatic compaction replaced uploaded layers; the uploader deleted them remotely.
    let st = handle.stats();
    println!("uploader: {st:?}");
    assert!(st.layers_deleted > 0 && st.manifests_written >= 2, "{st:?}");
    assert_eq!(st.failed_syncs, 0, "{st:?}");
    rt.block_on(handle.shutdown())?;

    let m = rt.block_on(manifest(&remote))?;
    assert_eq!(
        rt.block_on(remote_layer_names(&remote))?,
        manifest_names(&m)
    );
    let restored = scratch.join("restored");
    rt.block_on(restore_timeline(&remote, TENANT, TIMELINE, &restored))?;
    let tl = Timeline::open(&restored, conf(false), None)?;
    assert_same(
        "restored from the background uploader",
        &reference,
        &read_pages(&tl, &keys, &[last])?,
    );
    Ok(())
}

/// The longest key Strata writes, with real 32-hex ids and the longest prefix it accepts, goes
/// up to s3s-fs in a multipart upload (the path that keeps per-upload files named by the key)
/// and comes back byte for byte; a prefix one byte longer is refused with a clear error.
#[test]
fn longest_key_fits_s3s_fs() -> anyhow::Result<()> {
    use pageserver::remote::storage::MAX_KEY_BYTES;
    find_s3s_fs()?; // fail before any work
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = S3Server::start(&tmp.path().join("s3s"), "strata")?;
    // Find the longest prefix accepted.
    let mut prefix = String::new();
    while RemoteStorage::from_url_with(&format!("s3://strata/{prefix}x"), &s3_options(&server))
        .is_ok()
    {
        prefix.push('x');
        anyhow::ensure!(prefix.len() < 1000, "no prefix is too long");
    }
    let e = RemoteStorage::from_url_with(&format!("s3://strata/{prefix}x"), &s3_options(&server))
        .unwrap_err();
    println!("a prefix of {} bytes: {e}", prefix.len() + 1);
    assert!(e.to_string().contains("too long"), "{e}");
    let s3 = RemoteStorage::from_url_with(&format!("s3://strata/{prefix}"), &s3_options(&server))?
        .with_part_bytes(5 * 1024 * 1024);
    assert_eq!(s3.longest_key_len(), MAX_KEY_BYTES);
    let (t, tl) = (TENANT, TIMELINE);
    let key = format!("{}-{}", "f".repeat(8), u32::MAX);
    let obj = s3.layers_path(t, tl).join(key.as_str());
    assert_eq!(obj.as_ref().len(), MAX_KEY_BYTES, "{obj}");
    println!("longest key ({} bytes): {obj}", obj.as_ref().len());
    let path = tmp.path().join("big");
    let data: Vec<u8> = (0..11 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&path, &data)?;
    let (size, crc) = rt.block_on(pageserver::remote::upload_file(&s3, &obj, &path))?;
    assert_eq!((size, crc), (data.len() as u64, crc32c::crc32c(&data)));
    let back = rt.block_on(async { s3.store().get(&obj).await?.bytes().await })?;
    assert!(back[..] == data[..], "the object came back different");
    // The manifest and config keys are shorter and work too.
    let m = s3.manifest_path(t, tl);
    rt.block_on(
        s3.store()
            .put(&m, PutPayload::from(Bytes::from_static(b"x"))),
    )?;
    rt.block_on(s3.put_timeline_config(t, tl, Bytes::from_static(b"safekeepers = []\n")))?;
    assert!(rt.block_on(s3.get_timeline_config(t, tl))?.is_some());
    Ok(())
}

/// What the pageserver's S3 client needs to reach `server` (s3s-fs, from the harness).
fn s3_options(server: &S3Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint.clone()),
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
        region: Some(S3_REGION.into()),
        allow_http: false,
    }
}
