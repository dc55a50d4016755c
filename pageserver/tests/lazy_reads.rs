//! A lazy compute's reads against the real `pageserver` binary and real Postgres 15 WAL: a
//! slim basebackup plus ListRelations plus GetPages of every block rebuilds the full
//! basebackup byte for byte.
//!
//! A workload with an index, TOAST, an unlogged table, a table dropped later, a second
//! database and a tablespace runs on one Postgres (data checksums on); its WAL is ingested
//! in-process and the binary serves it. At a record boundary in the middle and at the end:
//!
//! - the slim basebackup holds every file, directory and link of the full one but the
//!   relation files, and no relation file (it is much smaller: sizes printed);
//! - ListRelations names exactly the full basebackup's relation files with their sizes (the
//!   unlogged table's main fork from its init fork, the dropped table only before the drop);
//! - the slim files plus every listed file's pages from GetPages (many requests in flight on
//!   one stream, answered by request_id) equal the full basebackup's files.
//!
//! Then the errors, each on one stream that goes on after it: too many blocks, an unknown
//! timeline, an LSN beyond the last record end and (after GC) below the cutoff, a block past
//! the fork's end, a relation that does not exist, a bad fork.

mod service_support;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pageserver::basebackup::record_ending_at;
use pageserver::tenant::{TenantConf, TenantManager};
use service_support::{feed_wal, query_i64, Pageserver};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use tonic::transport::Channel;
use tonic::Code;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::Lsn;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const MAIN: &str = "11111111111111111111111111111111";
const BLCKSZ: usize = 8192;
const RELSEG_BLOCKS: u32 = 131072;
/// Blocks per GetPages request, as the proto allows at most.
const MAX_BLOCKS: usize = 256;
/// Deadline of every RPC and stream of the test.
const DEADLINE: Duration = Duration::from_secs(60);

struct Workload {
    pg: PgCluster,
    base: std::path::PathBuf,
    start: Lsn,
    /// A record boundary after the first step, and the record ending there.
    mid: Lsn,
    mid_prev: Lsn,
    end: Lsn,
    postgres_db: u32,
    db2: u32,
    tablespace: u32,
    unlogged: u32,
    dropped: u32,
    big: u32,
    big_blocks: u32,
}

fn workload() -> Result<Workload> {
    let opts = InitOptions::default().keep_all_wal().set("fsync", "off");
    ensure!(
        opts.data_checksums,
        "the test needs a cluster with checksums"
    );
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    let ts_dir = pg.make_postgres_dir("ts1")?;
    pg.start()?;
    pg.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}';
         CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE INDEX big_v ON big (v);
         CREATE TABLE toasty (id int, doc text);
         INSERT INTO toasty SELECT g, (SELECT string_agg(md5(g::text || x::text), '')
                                      FROM generate_series(1, 400) x)
           FROM generate_series(1, 40) g;
         CREATE UNLOGGED TABLE ul (id int PRIMARY KEY, v text);
         INSERT INTO ul SELECT g, 'u' || g FROM generate_series(1, 3000) g;
         CREATE TABLE gone (id int);
         INSERT INTO gone SELECT generate_series(1, 5000);
         CREATE TABLE in_ts (id int, v text) TABLESPACE ts1;
         INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         CREATE DATABASE db2;",
        ts_dir.display()
    ))?;
    pg.psql_db(
        "db2",
        "CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 1000);",
    )?;
    let mid_insert: Lsn = pg
        .psql("SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .parse()?;
    let num = |sql: &str| -> Result<u32> { Ok(query_i64(&pg, sql)? as u32) };
    let postgres_db = num("SELECT oid FROM pg_database WHERE datname = 'postgres'")?;
    let db2 = num("SELECT oid FROM pg_database WHERE datname = 'db2'")?;
    let tablespace = num("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")?;
    let unlogged = num("SELECT pg_relation_filenode('ul')")?;
    let dropped = num("SELECT pg_relation_filenode('gone')")?;
    let big = num("SELECT pg_relation_filenode('big')")?;
    let big_blocks = num("SELECT pg_relation_size('big') / 8192")?;
    // More than the tenant's 1 s PITR window between the steps, so GC has history to cut.
    std::thread::sleep(Duration::from_millis(1500));
    pg.psql(
        "DROP TABLE gone;
         UPDATE big SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM big WHERE id > 18000;
         VACUUM big;
         UPDATE toasty SET doc = doc || 'more' WHERE id <= 10;
         INSERT INTO ul SELECT g, 'v' || g FROM generate_series(3001, 4000) g;",
    )?;
    pg.psql_db("db2", "INSERT INTO t2 SELECT generate_series(1001, 3000);")?;
    pg.stop(StopMode::Fast)?;
    let end = wal_end_after_clean_stop(&pg)?;
    let (mid, mid_prev) = boundary_before(&pg.wal_dir(), start, mid_insert)?;
    Ok(Workload {
        pg,
        base,
        start,
        mid,
        mid_prev,
        end,
        postgres_db,
        db2,
        tablespace,
        unlogged,
        dropped,
        big,
        big_blocks,
    })
}

/// The end of the last record ending at or before `p`, and that record's start.
fn boundary_before(wal_dir: &Path, from: Lsn, p: Lsn) -> Result<(Lsn, Lsn)> {
    let mut r = walproto::walfiles::WalDirReader::open(wal_dir, from, Some(p), None)?;
    let mut last = None;
    while let Some(rec) = r.next_record()? {
        if rec.end_lsn <= p {
            last = Some((rec.end_lsn, rec.lsn));
        }
    }
    let (end, start) = last.context("no record before the middle of the workload")?;
    ensure!(record_ending_at(wal_dir, end)? == start);
    Ok((end, start))
}

/// One tar entry, as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(String),
}

type Tree = BTreeMap<String, Entry>;

fn untar(data: &[u8]) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let entry = match e.header().entry_type() {
            tar::EntryType::Directory => Entry::Dir,
            tar::EntryType::Symlink => Entry::Link(
                e.link_name()?
                    .context("a link without a target")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Regular => {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)?;
                Entry::File(buf)
            }
            other => bail!("{path}: unexpected tar entry type {other:?}"),
        };
        ensure!(tree.insert(path.clone(), entry).is_none(), "{path} twice");
    }
    Ok(tree)
}

fn tree_bytes(t: &Tree) -> usize {
    t.values()
        .map(|e| match e {
            Entry::File(b) => b.len(),
            _ => 0,
        })
        .sum()
}

async fn basebackup(
    c: &mut PageserverClient<Channel>,
    lsn: Lsn,
    prev: Lsn,
    slim: bool,
) -> Result<(Vec<u8>, Duration)> {
    let t0 = std::time::Instant::now();
    let mut s = c
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: lsn.0,
            read_only: false,
            prev_lsn: prev.0,
            without_relation_files: slim,
        })
        .await?
        .into_inner();
    let mut tar = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, s.message())
        .await
        .context("waiting for a basebackup chunk")??
    {
        tar.extend_from_slice(&chunk.data);
    }
    Ok((tar, t0.elapsed()))
}

/// A full and a slim basebackup at the same LSN and second: the generated checkpoint (in
/// `pg_control` and `pg_wal`) carries the time in seconds. The slim one (fast) is taken right
/// before the full one, again until both name the same second.
async fn full_and_slim(
    c: &mut PageserverClient<Channel>,
    lsn: Lsn,
    prev: Lsn,
) -> Result<(Tree, Tree)> {
    for _ in 0..10 {
        let (slim, t_slim) = basebackup(c, lsn, prev, true).await?;
        let (full, t_full) = basebackup(c, lsn, prev, false).await?;
        println!(
            "basebackup at {lsn}: full {} bytes in {t_full:?}, slim {} bytes in {t_slim:?}",
            full.len(),
            slim.len()
        );
        // Tar headers carry the time too: the files are compared.
        let (full, slim) = (untar(&full)?, untar(&slim)?);
        if full.get("global/pg_control") == slim.get("global/pg_control") {
            return Ok((full, slim));
        }
        println!("the checkpoint times differ: again");
    }
    bail!("ten slim and full basebackups at {lsn} named different checkpoints")
}

/// Runs `reqs` on one GetPages stream, all sent before any answer is read (the server takes
/// them as its in-flight bound allows), the stream half-closed after the last one. Returns
/// the answers by request_id; the stream must end cleanly.
async fn get_pages(
    c: &mut PageserverClient<Channel>,
    reqs: Vec<pb::GetPagesRequest>,
) -> Result<HashMap<u64, pb::GetPagesResponse>> {
    let n = reqs.len();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sender = tokio::spawn(async move {
        for r in reqs {
            if tx.send(r).await.is_err() {
                return;
            }
        }
    });
    let mut answers = c
        .get_pages(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = HashMap::new();
    while let Some(a) = tokio::time::timeout(DEADLINE, answers.message())
        .await
        .context("waiting for a GetPages answer")??
    {
        ensure!(
            out.insert(a.request_id, a).is_none(),
            "a request answered twice"
        );
    }
    sender.await?;
    ensure!(out.len() == n, "{} answers to {n} requests", out.len());
    Ok(out)
}

fn blocks_req(id: u64, lsn: Lsn, blocks: Vec<pb::RelBlock>) -> pb::GetPagesRequest {
    pb::GetPagesRequest {
        tenant_id: TENANT.into(),
        timeline_id: MAIN.into(),
        request_id: id,
        lsn: lsn.0,
        blocks,
    }
}

fn rel_block(f: &pb::RelationFile, blkno: u32) -> pb::RelBlock {
    pb::RelBlock {
        spc: f.spc,
        db: f.db,
        rel: f.rel,
        fork: f.source_fork,
        blkno,
    }
}

/// Where a relation file's segments go, as in a data directory (the tablespace's
/// `PG_15_<catversion>` directory is taken from the slim basebackup).
fn file_path(slim: &Tree, f: &pb::RelationFile, seg: u32) -> Result<String> {
    let dir = match f.spc {
        1664 => "global".to_string(),
        1663 => format!("base/{}", f.db),
        spc => {
            let prefix = format!("pg_tblspc/{spc}/");
            let version_dir = slim
                .keys()
                .find(|k| k.starts_with(&prefix) && k[prefix.len()..].starts_with("PG_15_"))
                .with_context(|| format!("the slim basebackup has no {prefix}PG_15_*"))?;
            let version = version_dir[prefix.len()..].split('/').next().unwrap_or("");
            format!("{prefix}{version}/{}", f.db)
        }
    };
    let suffix = match f.fork {
        0 => "",
        1 => "_fsm",
        2 => "_vm",
        3 => "_init",
        other => bail!("fork {other} in ListRelations"),
    };
    Ok(match seg {
        0 => format!("{dir}/{}{suffix}", f.rel),
        s => format!("{dir}/{}{suffix}.{s}", f.rel),
    })
}

fn is_relation_file(path: &str, e: &Entry) -> bool {
    if !matches!(e, Entry::File(_)) {
        return false;
    }
    let in_rel_dir =
        path.starts_with("global/") || path.starts_with("base/") || path.starts_with("pg_tblspc/");
    let name = path.rsplit('/').next().unwrap_or("");
    let stem = name.split('.').next().unwrap_or("");
    let node = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    in_rel_dir && !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())
}

/// The slim basebackup plus every listed relation file read with GetPages.
async fn rebuild(
    c: &mut PageserverClient<Channel>,
    lsn: Lsn,
    slim: &Tree,
    files: &[pb::RelationFile],
) -> Result<(Tree, usize)> {
    let mut reqs = Vec::new();
    // request_id → (file index, first block).
    let mut origin = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for first in (0..f.nblocks).step_by(MAX_BLOCKS) {
            let last = (first + MAX_BLOCKS as u32).min(f.nblocks);
            let id = reqs.len() as u64 + 1000;
            origin.insert(id, (i, first));
            reqs.push(blocks_req(
                id,
                lsn,
                (first..last).map(|b| rel_block(f, b)).collect(),
            ));
        }
    }
    let nreq = reqs.len();
    let answers = get_pages(c, reqs).await?;
    let mut contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| vec![0u8; f.nblocks as usize * BLCKSZ])
        .collect();
    for (id, a) in answers {
        ensure!(a.error.is_none(), "request {id} failed: {:?}", a.error);
        ensure!(
            Lsn(a.lsn) == lsn,
            "request {id} read at {} not {lsn}",
            a.lsn
        );
        let (i, first) = origin[&id];
        for (k, p) in a.pages.iter().enumerate() {
            ensure!(p.len() == BLCKSZ, "a page of {} bytes", p.len());
            let at = (first as usize + k) * BLCKSZ;
            contents[i][at..at + BLCKSZ].copy_from_slice(p);
        }
    }
    let mut tree = slim.clone();
    for (f, data) in files.iter().zip(contents) {
        let segs = f.nblocks.div_ceil(RELSEG_BLOCKS).max(1);
        for seg in 0..segs {
            let from = (seg * RELSEG_BLOCKS) as usize * BLCKSZ;
            let to = data.len().min(from + RELSEG_BLOCKS as usize * BLCKSZ);
            let path = file_path(slim, f, seg)?;
            let old = tree.insert(path.clone(), Entry::File(data[from..to].to_vec()));
            ensure!(
                old.is_none(),
                "{path} is in the slim basebackup or listed twice"
            );
        }
    }
    Ok((tree, nreq))
}

fn has_file(files: &[pb::RelationFile], db: u32, rel: u32, fork: u32) -> Option<&pb::RelationFile> {
    files
        .iter()
        .find(|f| f.db == db && f.rel == rel && f.fork == fork)
}

async fn list(c: &mut PageserverClient<Channel>, lsn: Lsn) -> Result<Vec<pb::RelationFile>> {
    let r = c
        .list_relations(pb::ListRelationsRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: lsn.0,
        })
        .await?
        .into_inner();
    ensure!(
        Lsn(r.lsn) == lsn,
        "ListRelations read at {} not {lsn}",
        r.lsn
    );
    Ok(r.files)
}

/// The comparison at one LSN; returns the listed files.
async fn rebuilds_full(
    c: &mut PageserverClient<Channel>,
    lsn: Lsn,
    prev: Lsn,
) -> Result<Vec<pb::RelationFile>> {
    let (full, slim) = full_and_slim(c, lsn, prev).await?;
    let files = list(c, lsn).await?;
    // The slim basebackup is the full one without its relation files.
    let rel_files = |t: &Tree| -> Vec<String> {
        t.iter()
            .filter(|(p, e)| is_relation_file(p, e))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let (full_rel, slim_rel) = (rel_files(&full), rel_files(&slim));
    ensure!(
        slim_rel.is_empty(),
        "relation files in the slim basebackup: {slim_rel:?}"
    );
    let full_rest: Tree = full
        .iter()
        .filter(|(p, e)| !is_relation_file(p, e))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    ensure!(
        full_rest == slim,
        "the slim basebackup differs from the full one's other files: {:?}",
        diff(&full_rest, &slim)
    );
    println!(
        "at {lsn}: full {} files {} bytes of content; slim {} files {} bytes; {} relation files listed",
        full.len(),
        tree_bytes(&full),
        slim.len(),
        tree_bytes(&slim),
        files.len()
    );
    let t0 = std::time::Instant::now();
    let (rebuilt, nreq) = rebuild(c, lsn, &slim, &files).await?;
    let pages: u32 = files.iter().map(|f| f.nblocks).sum();
    println!(
        "GetPages: {pages} pages in {nreq} requests on one stream in {:?}",
        t0.elapsed()
    );
    ensure!(
        rebuilt == full,
        "slim + GetPages differs from the full basebackup at {lsn}: {:?}",
        diff(&full, &rebuilt)
    );
    ensure!(
        full_rel.len() >= files.len(),
        "fewer relation files than listed"
    );
    Ok(files)
}

/// Paths that differ (missing on either side or with other content), the first few.
fn diff(a: &Tree, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            None => out.push(format!("only in the first: {p}")),
            Some(x) if x != e => out.push(format!("differs: {p}")),
            _ => {}
        }
    }
    out.extend(
        b.keys()
            .filter(|p| !a.contains_key(*p))
            .map(|p| format!("only in the second: {p}")),
    );
    out.truncate(20);
    out
}

/// The error of the one failing request, checked for its code and words.
fn expect_error(answers: &HashMap<u64, pb::GetPagesResponse>, id: u64, code: Code, words: &[&str]) {
    let a = &answers[&id];
    let e = a
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("request {id} did not fail"));
    assert!(a.pages.is_empty(), "request {id}: pages with an error");
    assert_eq!(Code::from_i32(e.code), code, "request {id}: {}", e.message);
    for w in words {
        assert!(
            e.message.contains(w),
            "request {id}: {:?} lacks {w:?}",
            e.message
        );
    }
    println!("request {id}: {code:?}: {}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slim_basebackup_and_pages_rebuild_the_full_one() -> Result<()> {
    let w = workload()?;
    println!(
        "workload: start {} mid {} end {}; unlogged {} dropped {} tablespace {}",
        w.start, w.mid, w.end, w.unlogged, w.dropped, w.tablespace
    );
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("ps");
    {
        let m = TenantManager::load(&data)?;
        let conf = TenantConf {
            pitr_interval: "1s".into(),
            ..TenantConf::default()
        };
        let t = m.create_tenant(Some(TENANT.parse()?), conf)?;
        let h = t.import_timeline(Some(MAIN.parse()?), &w.base, None, vec![])?;
        let n = feed_wal(&h, &w.pg.wal_dir(), w.start, w.end, 64 << 10)?;
        println!("ingested {n} records");
        assert!(m.flush_all().is_empty());
    }
    let ps = Pageserver::start_with(&data, &["--gc-interval", "0"])?;
    let mut c = ps.client().await?;

    let at_mid = rebuilds_full(&mut c, w.mid, w.mid_prev).await?;
    let at_end = rebuilds_full(&mut c, w.end, Lsn(0)).await?;
    for (files, when) in [(&at_mid, "mid"), (&at_end, "end")] {
        // The unlogged table: its init fork, and a main fork made of it; no FSM or VM.
        let init = has_file(files, w.postgres_db, w.unlogged, 3).context("ul init fork")?;
        let main = has_file(files, w.postgres_db, w.unlogged, 0).context("ul main fork")?;
        assert_eq!(
            (main.source_fork, main.nblocks),
            (3, init.nblocks),
            "{when}"
        );
        assert!(
            has_file(files, w.postgres_db, w.unlogged, 1).is_none(),
            "{when}"
        );
        assert!(
            files.iter().any(|f| f.spc == w.tablespace),
            "{when}: no file in ts1"
        );
        assert!(
            files.iter().any(|f| f.db == w.db2),
            "{when}: no file of db2"
        );
        assert!(
            files.iter().any(|f| f.spc == 1664),
            "{when}: no shared catalog"
        );
    }
    assert!(has_file(&at_mid, w.postgres_db, w.dropped, 0).is_some());
    assert!(has_file(&at_end, w.postgres_db, w.dropped, 0).is_none());
    let big_mid = has_file(&at_mid, w.postgres_db, w.big, 0).context("big")?;
    assert_eq!(
        big_mid.nblocks, w.big_blocks,
        "big's size at mid as Postgres said"
    );

    // Errors: each request fails alone; those around it are answered.
    let big = |blkno| pb::RelBlock {
        spc: 1663,
        db: w.postgres_db,
        rel: w.big,
        fork: 0,
        blkno,
    };
    let big_end = has_file(&at_end, w.postgres_db, w.big, 0)
        .context("big")?
        .nblocks;
    let mut reqs = vec![
        blocks_req(1, w.end, (0..4).map(big).collect()),
        blocks_req(2, w.end, (0..257).map(|_| big(0)).collect()),
        pb::GetPagesRequest {
            timeline_id: "99999999999999999999999999999999".into(),
            ..blocks_req(3, w.end, vec![big(0)])
        },
        blocks_req(4, Lsn(w.end.0 + 0x10000), vec![big(0)]),
        blocks_req(5, w.end, vec![big(0), big(big_end)]),
        blocks_req(
            6,
            w.end,
            vec![pb::RelBlock {
                rel: 999_999,
                ..big(0)
            }],
        ),
        blocks_req(7, w.end, vec![pb::RelBlock { fork: 7, ..big(0) }]),
        blocks_req(8, w.end, (0..4).map(big).collect()),
        // LSN 0: the last record end.
        blocks_req(9, Lsn(0), (0..4).map(big).collect()),
    ];
    reqs.push(blocks_req(10, w.end, Vec::new()));
    let answers = get_pages(&mut c, reqs).await?;
    let end = w.end.to_string();
    expect_error(
        &answers,
        2,
        Code::InvalidArgument,
        &["257 blocks", "256", MAIN],
    );
    expect_error(&answers, 3, Code::NotFound, &["9999999999"]);
    expect_error(
        &answers,
        4,
        Code::OutOfRange,
        &["last record end", &end, MAIN],
    );
    expect_error(
        &answers,
        5,
        Code::OutOfRange,
        &[&format!("block {big_end}"), "past", &end, MAIN],
    );
    expect_error(&answers, 6, Code::NotFound, &["999999", &end, MAIN]);
    expect_error(&answers, 7, Code::InvalidArgument, &["fork 7"]);
    for id in [1, 8, 9] {
        let a = &answers[&id];
        assert!(a.error.is_none(), "request {id}: {:?}", a.error);
        assert_eq!(a.pages.len(), 4);
        assert_eq!(Lsn(a.lsn), w.end);
        assert_eq!(a.pages, answers[&1].pages);
    }
    assert!(answers[&10].error.is_none() && answers[&10].pages.is_empty());

    // After GC (a 1 s window), an LSN below the cutoff fails and the stream goes on.
    let g = c
        .gc(pb::GcRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
        })
        .await?
        .into_inner();
    let cutoff = Lsn(g.timelines[0].cutoff_lsn);
    assert!(
        cutoff > w.start,
        "the 1 s window should move the cutoff: {cutoff}"
    );
    let answers = get_pages(
        &mut c,
        vec![
            blocks_req(1, w.start, vec![big(0)]),
            blocks_req(2, w.end, (0..4).map(big).collect()),
        ],
    )
    .await?;
    expect_error(
        &answers,
        1,
        Code::OutOfRange,
        &["GC cutoff", &cutoff.to_string(), MAIN],
    );
    assert_eq!(answers[&2].pages.len(), 4);
    assert!(answers[&2].error.is_none());
    let r = c
        .list_relations(pb::ListRelationsRequest {
            tenant_id: TENANT.into(),
            timeline_id: MAIN.into(),
            lsn: w.start.0,
        })
        .await;
    assert_eq!(r.expect_err("below the cutoff").code(), Code::OutOfRange);
    Ok(())
}
