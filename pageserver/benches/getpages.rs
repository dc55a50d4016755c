//! What a lazy compute asks of the pageserver, over a real gRPC connection to an in-process
//! pageserver service (localhost TCP, as the binary serves): the slim basebackup against the
//! full one, ListRelations, GetPages latency per page cold and hot, and GetPages throughput
//! of 256-block sequential requests with 1 and 4 requests in flight on one stream.
//!
//! Setup: a throw-away Postgres 15, `pgbench -i -s $STRATA_BENCH_SCALE` (default 10); its
//! cleanly stopped data directory is imported (image layers), then the WAL of a 10 s pgbench
//! run (4 clients) is ingested and flushed. Reads are at the last record end.
//!
//! - Basebackup: full and slim alternately, 3 rounds each: bytes and seconds.
//! - Latency: 1-block requests, one in flight, over every block of `pgbench_history` (every
//!   page rebuilt by redo of the run's inserts), `pgbench_tellers` and `pgbench_branches` (few
//!   pages, each updated by most transactions: long redo chains) and every 8th block of
//!   `pgbench_accounts` (mostly images);
//!   "cold" is each page's first read since the pageserver started (collect the versions,
//!   redo), "hot" the second (the page cache holds the materialized page: no redo).
//! - Throughput: every block of `pgbench_accounts` in 256-block requests, rounds alternating
//!   between 1 and 4 requests in flight.
//!
//! `cargo bench -p pageserver --bench getpages`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pageserver::service::PageserverService;
use pageserver::tenant::{TenantConf, TenantManager};
use strata_tests::{InitOptions, PgCluster, StopMode};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::walfiles::WalDirReader;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const TIMELINE: &str = "11111111111111111111111111111111";
const DEADLINE: Duration = Duration::from_secs(300);

struct Rel {
    name: &'static str,
    db: u32,
    rel: u32,
}

fn scale() -> u32 {
    std::env::var("STRATA_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// The timeline (in `dir`), its last record end and the pgbench relations to read.
fn setup(dir: &std::path::Path) -> Result<(PgCluster, Arc<TenantManager>, Vec<Rel>)> {
    let pg = PgCluster::init(&InitOptions::default().keep_all_wal())?;
    pg.start()?;
    let s = scale().to_string();
    let t0 = Instant::now();
    pg.pgbench(&["-i", "-s", &s, "-q"])?;
    println!("pgbench -i -s {s}: {:.1} s", t0.elapsed().as_secs_f64());
    pg.stop(StopMode::Fast)?;
    let base = pg.copy_data_dir("bench-base")?;
    let start = pageserver::import::read_control(&base)?.checkpoint;
    pg.start()?;
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "10"])?;
    // After the run: pgbench truncates pgbench_history first (a new relfilenode).
    let db: u32 = pg
        .psql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?
        .trim()
        .parse()?;
    let mut rels = Vec::new();
    for name in [
        "pgbench_accounts",
        "pgbench_history",
        "pgbench_tellers",
        "pgbench_branches",
    ] {
        let rel = pg
            .psql(&format!("SELECT pg_relation_filenode('{name}')"))?
            .trim()
            .parse()?;
        rels.push(Rel { name, db, rel });
    }
    pg.stop(StopMode::Fast)?;
    let m = Arc::new(TenantManager::load(dir)?);
    let t = m.create_tenant(Some(TENANT.parse()?), TenantConf::default())?;
    let h = t.import_timeline(Some(TIMELINE.parse()?), &base, None, vec![])?;
    let t0 = Instant::now();
    let mut reader = WalDirReader::open(&pg.wal_dir(), start, None, None)?;
    let mut records = 0u64;
    h.with_ingest(|ing| -> Result<()> {
        while let Some(rec) = reader.next_record()? {
            ing.ingest_record(&rec)?;
            records += 1;
        }
        ing.timeline_mut().flush()?;
        Ok(())
    })?;
    println!(
        "ingested {records} records in {:.1} s; {}",
        t0.elapsed().as_secs_f64(),
        h.read(|t| t.layer_stats().summary())
    );
    Ok((pg, m, rels))
}

/// Serves `manager` on a localhost port as the binary does; returns a connected client.
async fn serve(manager: Arc<TenantManager>) -> Result<PageserverClient<Channel>> {
    use tokio_stream::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = PageserverService::start(manager, None);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|c| {
        if let Ok(c) = &c {
            let _ = c.set_nodelay(true);
        }
        c
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming),
    );
    Ok(PageserverClient::connect(format!("http://{addr}")).await?)
}

async fn basebackup(c: &mut PageserverClient<Channel>, slim: bool) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let mut s = c
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            without_relation_files: slim,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = tokio::time::timeout(DEADLINE, s.message())
        .await
        .context("waiting for a basebackup chunk")??
    {
        bytes += chunk.data.len() as u64;
    }
    Ok((bytes, t0.elapsed().as_secs_f64()))
}

fn request(id: u64, rel: &Rel, blocks: std::ops::Range<u32>) -> pb::GetPagesRequest {
    pb::GetPagesRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        request_id: id,
        lsn: 0,
        blocks: blocks
            .map(|blkno| pb::RelBlock {
                spc: 1663,
                db: rel.db,
                rel: rel.rel,
                fork: 0,
                blkno,
            })
            .collect(),
    }
}

/// Runs `reqs` on one stream with at most `in_flight` unanswered: each request's latency and
/// the total time.
async fn run(
    c: &mut PageserverClient<Channel>,
    reqs: Vec<pb::GetPagesRequest>,
    in_flight: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let n = reqs.len();
    let window = Arc::new(Semaphore::new(in_flight));
    let sent = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
    let t0 = Instant::now();
    let sender = {
        let (window, sent) = (window.clone(), sent.clone());
        tokio::spawn(async move {
            for r in reqs {
                let Ok(p) = window.acquire().await else {
                    return;
                };
                p.forget();
                sent.lock()
                    .expect("lock")
                    .insert(r.request_id, Instant::now());
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut answers = c
        .get_pages(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut lat = Vec::with_capacity(n);
    while let Some(a) = tokio::time::timeout(DEADLINE, answers.message())
        .await
        .context("waiting for a GetPages answer")??
    {
        ensure!(
            a.error.is_none(),
            "request {} failed: {:?}",
            a.request_id,
            a.error
        );
        let at = sent.lock().expect("lock").remove(&a.request_id);
        lat.push(at.context("an answer to no request")?.elapsed());
        window.add_permits(1);
    }
    sender.await?;
    ensure!(lat.len() == n, "{} answers to {n} requests", lat.len());
    Ok((lat, t0.elapsed()))
}

fn q_us(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

/// ListRelations at the last record end.
async fn list_files(c: &mut PageserverClient<Channel>) -> Result<Vec<pb::RelationFile>> {
    Ok(c.list_relations(pb::ListRelationsRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        lsn: 0,
    })
    .await?
    .into_inner()
    .files)
}

async fn nblocks(c: &mut PageserverClient<Channel>, rel: &Rel) -> Result<u32> {
    list_files(c)
        .await?
        .iter()
        .find(|f| f.rel == rel.rel && f.fork == 0)
        .map(|f| f.nblocks)
        .with_context(|| format!("{} not listed", rel.name))
}

async fn bench(manager: Arc<TenantManager>, rels: &[Rel]) -> Result<()> {
    let mut c = serve(manager).await?;

    println!("\nbasebackup at the last record end (3 alternating rounds):");
    println!("{:<6} {:>14} {:>9}", "kind", "bytes", "seconds");
    for _ in 0..3 {
        for slim in [false, true] {
            let (bytes, secs) = basebackup(&mut c, slim).await?;
            let kind = if slim { "slim" } else { "full" };
            println!("{kind:<6} {bytes:>14} {secs:>9.3}");
        }
    }
    let t0 = Instant::now();
    let files = list_files(&mut c).await?;
    let pages: u64 = files.iter().map(|f| f.nblocks as u64).sum();
    println!(
        "ListRelations: {} files, {pages} pages, in {:.1} ms",
        files.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );

    println!("\nGetPages latency per page (1-block requests, 1 in flight):");
    println!(
        "{:<18} {:>6} {:<5} {:>9} {:>9} {:>9}",
        "relation", "pages", "pass", "p50 µs", "p99 µs", "mean µs"
    );
    let accounts = &rels[0];
    for (rel, step) in [(&rels[1], 1), (&rels[2], 1), (&rels[3], 1), (accounts, 8)] {
        let n = nblocks(&mut c, rel).await?;
        for pass in ["cold", "hot"] {
            let reqs: Vec<_> = (0..n)
                .step_by(step)
                .map(|b| request(b as u64, rel, b..b + 1))
                .collect();
            let count = reqs.len();
            let (mut lat, total) = run(&mut c, reqs, 1).await?;
            lat.sort_unstable();
            println!(
                "{:<18} {count:>6} {pass:<5} {:>9.1} {:>9.1} {:>9.1}",
                rel.name,
                q_us(&lat, 0.5),
                q_us(&lat, 0.99),
                total.as_secs_f64() * 1e6 / count as f64
            );
        }
    }

    let n = nblocks(&mut c, accounts).await?;
    println!(
        "\nGetPages throughput: {} ({n} pages) in 256-block requests, rounds alternating:",
        accounts.name
    );
    println!(
        "{:<6} {:>9} {:>9} {:>10} {:>8} {:>13}",
        "round", "in-flight", "seconds", "pages/s", "MB/s", "p50 req ms"
    );
    for round in 1..=4 {
        let in_flight = if round % 2 == 1 { 1 } else { 4 };
        let reqs: Vec<_> = (0..n)
            .step_by(256)
            .enumerate()
            .map(|(i, b)| request(i as u64, accounts, b..(b + 256).min(n)))
            .collect();
        let (mut lat, total) = run(&mut c, reqs, in_flight).await?;
        lat.sort_unstable();
        let secs = total.as_secs_f64();
        println!(
            "{round:<6} {in_flight:>9} {secs:>9.3} {:>10.0} {:>8.1} {:>13.1}",
            n as f64 / secs,
            n as f64 * 8192.0 / secs / 1e6,
            q_us(&lat, 0.5) / 1e3
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_pg, manager, rels) = setup(&dir.path().join("ps"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(manager, &rels))
}
