//! The walreceiver against real processes: Postgres 15, the `compute walproposer` binary and
//! three `safekeeper` binaries serving the replication protocol. Two walreceivers stream the
//! same timeline: one into a sink that decodes the WAL and keeps every byte (compared with
//! Postgres's pg_wal at the end), one into a real ingest (WalIngest over the imported initdb
//! directory), whose pages are compared with Postgres's after a CHECKPOINT.
//!
//! Faults, in order: the safekeeper streamed from is SIGSTOPped while pgbench runs (the
//! others move ahead: a lag-based switch), resumed, then the one streamed from next is
//! SIGKILLed mid-stream (a failover on the dead connection).
//!
//! Needs the binaries built first: `cargo build -p safekeeper -p compute --bins`.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use layer_format::{Key, RelFileNode};
use pageserver::import::import_datadir;
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::redo::mask::mask_for_rmgr;
use pageserver::timeline::TimelineConf;
use pageserver::walreceiver::{Feedback, ReceiverStatus, WalReceiver, WalReceiverConf, WalSink};
use strata_tests::procs::{read_wal, wait_for, Safekeeper, Walproposer, TENANT, TIMELINE};
use strata_tests::{InitOptions, PgCluster};
use tokio::sync::watch;
use walproto::consts::BLCKSZ;
use walproto::ids::{TenantId, TimelineId};
use walproto::rmgr::{RM_BTREE_ID, RM_HEAP_ID};
use walproto::{Decoded, Lsn, WalStreamDecoder};

// ---- processes ---------------------------------------------------------------------------

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The walproposer streaming `pg`'s WAL from `start` to `sks`.
fn start_walproposer(
    pg: &PgCluster,
    sks: &[Safekeeper],
    start: Lsn,
    log: &Path,
) -> Result<Walproposer> {
    Walproposer::start(pg, sks, log, &["--start-lsn", &start.to_string()])
}

/// Starts `pgbench <args>` in the background.
fn pgbench_in_background(pg: &PgCluster, args: &[&str]) -> Result<Killed> {
    let child = pg
        .command("pgbench")
        .args(["-h", &pg.socket_dir().display().to_string()])
        .args(["-p", &pg.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(Killed(child))
}

fn finish(mut p: Killed) -> Result<()> {
    let status = p.0.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = p.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("pgbench failed ({status}): {err}");
    }
    Ok(())
}

// ---- sinks -------------------------------------------------------------------------------

/// Keeps every byte and decodes it: the stream must be whole, valid records.
struct CheckSink {
    origin: Lsn,
    state: Mutex<CheckState>,
}

struct CheckState {
    bytes: Vec<u8>,
    decoder: WalStreamDecoder,
    last_record: Lsn,
    last_end: Lsn,
    records: u64,
    restarts: Vec<Lsn>,
}

impl CheckSink {
    fn new(origin: Lsn) -> CheckSink {
        CheckSink {
            origin,
            state: Mutex::new(CheckState {
                bytes: Vec::new(),
                decoder: WalStreamDecoder::new(origin),
                last_record: Lsn::INVALID,
                last_end: origin,
                records: 0,
                restarts: Vec::new(),
            }),
        }
    }
}

impl WalSink for CheckSink {
    fn start_lsn(&self) -> Lsn {
        self.state.lock().unwrap().last_end
    }

    fn restart(&self, at: Lsn) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap();
        ensure!(
            at == s.last_end,
            "restart at {at}, the last record ended at {}",
            s.last_end
        );
        s.bytes.truncate((at.0 - self.origin.0) as usize);
        let mut d = WalStreamDecoder::new(at);
        if s.last_record != Lsn::INVALID {
            d = d.expect_prev(s.last_record);
        }
        s.decoder = d;
        s.restarts.push(at);
        Ok(())
    }

    fn receive(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap();
        let have = Lsn(self.origin.0 + s.bytes.len() as u64);
        ensure!(
            start == have,
            "WAL at {start} does not continue the stream at {have}"
        );
        s.bytes.extend_from_slice(wal);
        s.decoder.feed(wal);
        loop {
            match s.decoder.next()? {
                Decoded::Record(r) => {
                    s.records += 1;
                    s.last_record = r.lsn;
                    s.last_end = r.end_lsn;
                }
                Decoded::NeedMore => return Ok(()),
                Decoded::EndOfWal { lsn, reason } => {
                    bail!("committed WAL ended at {lsn}: {reason}")
                }
            }
        }
    }

    fn feedback(&self) -> Feedback {
        let s = self.state.lock().unwrap();
        // A test sink: "durable" once decoded, so the safekeeper gets a non-zero apply.
        Feedback {
            received: Lsn(self.origin.0 + s.bytes.len() as u64),
            durable_local: s.last_end,
            durable_remote: s.last_end,
        }
    }
}

/// Ingests the WAL into a timeline, as the pageserver does.
struct IngestSink(Mutex<IngestState>);

struct IngestState {
    ingest: WalIngest,
    decoder: WalStreamDecoder,
    received: Lsn,
}

impl IngestSink {
    fn new(ingest: WalIngest) -> IngestSink {
        IngestSink(Mutex::new(IngestState {
            ingest,
            decoder: WalStreamDecoder::new(Lsn::INVALID),
            received: Lsn::INVALID,
        }))
    }
}

fn resume_point(ingest: &WalIngest) -> Lsn {
    let tl = ingest.timeline();
    if tl.last_record_lsn() == Lsn::INVALID {
        tl.start_lsn()
    } else {
        tl.last_record_end()
    }
}

impl WalSink for IngestSink {
    fn start_lsn(&self) -> Lsn {
        resume_point(&self.0.lock().unwrap().ingest)
    }

    fn restart(&self, at: Lsn) -> anyhow::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.decoder = WalStreamDecoder::new(at);
        s.received = at;
        Ok(())
    }

    fn receive(&self, start: Lsn, wal: &[u8]) -> anyhow::Result<()> {
        let s = &mut *self.0.lock().unwrap();
        ensure!(
            start == s.received,
            "WAL at {start}, expected {}",
            s.received
        );
        s.received = Lsn(start.0 + wal.len() as u64);
        s.decoder.feed(wal);
        loop {
            match s.decoder.next()? {
                Decoded::Record(r) => {
                    s.ingest.ingest_record(&r)?;
                }
                Decoded::NeedMore => return Ok(()),
                Decoded::EndOfWal { lsn, reason } => bail!("WAL ended at {lsn}: {reason}"),
            }
        }
    }

    fn feedback(&self) -> Feedback {
        let s = self.0.lock().unwrap();
        Feedback {
            received: s.received,
            durable_local: s.ingest.timeline().disk_consistent_lsn(),
            durable_remote: Lsn::INVALID,
        }
    }
}

// ---- checks ------------------------------------------------------------------------------

fn index_of(sks: &[Safekeeper], pg_addr: &str) -> Option<usize> {
    sks.iter().position(|s| s.pg_addr() == pg_addr)
}

/// `TENANT` as the walreceiver takes it.
fn tenant() -> TenantId {
    TENANT.parse().expect("TENANT is a tenant id")
}

/// `TIMELINE` as the walreceiver takes it.
fn timeline() -> TimelineId {
    TIMELINE.parse().expect("TIMELINE is a timeline id")
}

fn conf(sks: &[Safekeeper]) -> WalReceiverConf {
    WalReceiverConf {
        connect_timeout: Duration::from_secs(2),
        // Long: the switch away from a stopped safekeeper must come from the lag rule.
        stream_timeout: Duration::from_secs(60),
        status_interval: Duration::from_millis(200),
        probe_interval: Duration::from_millis(250),
        max_lag: 256 * 1024,
        lag_patience: Duration::from_secs(1),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        ..WalReceiverConf::new(
            sks.iter().map(|s| s.pg_addr()).collect(),
            tenant(),
            timeline(),
        )
    }
}

/// Every main-fork block of the pgbench tables, their primary keys and `filler`, read from
/// the data directory after a CHECKPOINT, against GetPage at `lsn`, masked as Postgres masks.
fn compare_pages(pg: &PgCluster, sink: &IngestSink, lsn: Lsn) -> Result<usize> {
    let s = sink.0.lock().unwrap();
    let tl = s.ingest.timeline();
    let mut compared = 0;
    let relations = [
        ("pgbench_accounts", RM_HEAP_ID),
        ("pgbench_accounts_pkey", RM_BTREE_ID),
        ("pgbench_branches", RM_HEAP_ID),
        ("pgbench_branches_pkey", RM_BTREE_ID),
        ("pgbench_tellers", RM_HEAP_ID),
        ("pgbench_tellers_pkey", RM_BTREE_ID),
        ("pgbench_history", RM_HEAP_ID),
        ("filler", RM_HEAP_ID),
    ];
    for (rel, rmid) in relations {
        let path = pg.psql(&format!("SELECT pg_relation_filepath('{rel}')"))?;
        let path = path.trim();
        let (db, node) = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["base", db, node] => (db.parse::<u32>()?, node.parse::<u32>()?),
            _ => bail!("{rel}: unexpected path {path:?}"),
        };
        let rnode = RelFileNode {
            spc: 1663,
            db,
            rel: node,
        };
        let file = std::fs::read(pg.data_dir().join(path))?;
        ensure!(
            !file.is_empty() && file.len() % BLCKSZ == 0,
            "{rel}: {} bytes",
            file.len()
        );
        for (blk, theirs) in file.chunks(BLCKSZ).enumerate() {
            let key = Key::rel_block(rnode, 0, blk as u32);
            let ours = tl
                .get_page(key, lsn)?
                .with_context(|| format!("{rel} block {blk}: no page at {lsn}"))?;
            let mut a = *ours;
            let mut b: [u8; BLCKSZ] = theirs.try_into()?;
            mask_for_rmgr(rmid, &mut a, blk as u32);
            mask_for_rmgr(rmid, &mut b, blk as u32);
            ensure!(a == b, "{rel} block {blk} differs from Postgres's at {lsn}");
            compared += 1;
        }
    }
    Ok(compared)
}

// ---- the test ----------------------------------------------------------------------------

#[test]
fn walreceiver_streams_fails_over_and_ingests() -> Result<()> {
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pg = PgCluster::init(
        &InitOptions::default()
            .set("synchronous_standby_names", "strata")
            .set("synchronous_commit", "on")
            .set("wal_keep_size", "1GB")
            .set("max_wal_senders", "10")
            .set("autovacuum", "off"),
    )?;
    // The initdb'd directory, imported: the ingest resumes at its checkpoint.
    let base = pg.copy_data_dir("base")?;
    let scratch = tempfile::tempdir()?;
    let (tl, _) = import_datadir(
        &base,
        &scratch.path().join("timeline"),
        TimelineConf::default(),
        None,
    )?;
    let ingest_sink = Arc::new(IngestSink::new(WalIngest::new(tl, IngestConf::default())?));
    let start = ingest_sink.start_lsn();
    let check_sink = Arc::new(CheckSink::new(start));
    pg.start()?;

    let mut sks = (1..=3)
        .map(|id| Safekeeper::started_with_replication(scratch.path(), id))
        .collect::<Result<Vec<_>>>()?;
    let _wp = start_walproposer(
        &pg,
        &sks,
        start.segment_start(),
        &scratch.path().join("wp.log"),
    )?;

    // The receivers may start before the safekeepers know the timeline: they wait and retry.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    let mut statuses: Vec<watch::Receiver<ReceiverStatus>> = Vec::new();
    for sink in [check_sink.clone() as Arc<dyn WalSink>, ingest_sink.clone()] {
        let r = WalReceiver::new(conf(&sks));
        statuses.push(r.status());
        receivers.push(rt.spawn(r.run(sink, stop_rx.clone())));
    }
    let received = |i: usize| statuses[i].borrow().received;
    let from = |i: usize| statuses[i].borrow().streaming_from.clone();

    pg.pgbench(&["-i", "-s", "1", "-q"])?;
    pg.psql("CREATE TABLE filler(id int, pad text)")?;
    let flushed = pg.current_wal_lsn()?;
    wait_for(
        "both receivers reach the end of pgbench -i",
        Duration::from_secs(60),
        || Ok((received(0) >= flushed && received(1) >= flushed).then_some(())),
    )?;
    println!("{:?}: pgbench -i streamed to {flushed}", t0.elapsed());

    // Lag: the streamed-from safekeeper stops answering while the others commit on.
    let stopped = from(0).context("not streaming")?;
    let stopped_idx = index_of(&sks, &stopped).context("unknown safekeeper")?;
    let streams_before = statuses[0].borrow().streams;
    sks[stopped_idx].signal("-STOP")?;
    // Writes (about 600 KiB of WAL each) until the receiver moves away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let switched = loop {
        if statuses[0].borrow().streams > streams_before && from(0).is_some_and(|a| a != stopped) {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("no lag-based switch within 30 s"));
        }
        if let Err(e) =
            pg.psql("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 500) g")
        {
            break Err(e);
        }
    };
    sks[stopped_idx].signal("-CONT")?;
    switched?;
    let reason = statuses[0]
        .borrow()
        .last_switch_reason
        .clone()
        .unwrap_or_default();
    println!("{:?}: switched away from {stopped}: {reason}", t0.elapsed());
    ensure!(reason.contains("ahead"), "not a lag-based switch: {reason}");

    // A SIGKILL of the safekeeper streamed from, mid-stream.
    let victim = from(0).context("not streaming")?;
    let victim_idx = index_of(&sks, &victim).context("unknown safekeeper")?;
    let streams_before = statuses[0].borrow().streams;
    let bench = pgbench_in_background(&pg, &["-c", "2", "-T", "5", "-n"])?;
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = received(0);
    sks[victim_idx].kill();
    wait_for(
        "a failover after the SIGKILL",
        Duration::from_secs(20),
        || {
            Ok((statuses[0].borrow().streams > streams_before
                && from(0).is_some_and(|a| a != victim))
            .then_some(()))
        },
    )?;
    finish(bench)?;
    let reason = statuses[0]
        .borrow()
        .last_switch_reason
        .clone()
        .unwrap_or_default();
    println!(
        "{:?}: killed {victim} at {before_kill}, now from {:?}: {reason}",
        t0.elapsed(),
        from(0)
    );

    pg.psql("CHECKPOINT")?;
    let end = pg.current_wal_lsn()?;
    wait_for(
        "both receivers reach the checkpoint",
        Duration::from_secs(60),
        || Ok((received(0) >= end && received(1) >= end).then_some(())),
    )?;

    // Feedback: the safekeeper streamed from now holds what the check sink reported applied.
    let now_idx =
        index_of(&sks, &from(0).context("not streaming")?).context("unknown safekeeper")?;
    let reported = check_sink.feedback().durable_remote;
    let sk_now = &sks[now_idx];
    let deadline = Instant::now() + Duration::from_secs(10);
    let consumer_durable = loop {
        let st = rt.block_on(sk_now.status())?;
        if Lsn(st.consumer_durable_lsn) >= reported || Instant::now() > deadline {
            break Lsn(st.consumer_durable_lsn);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        consumer_durable >= end && consumer_durable <= reported,
        "safekeeper {} reports consumer durable {consumer_durable}, the receiver sent {reported}\n{}",
        sk_now.id,
        sk_now.log_tail()
    );

    stop_tx.send(true)?;
    for r in receivers {
        rt.block_on(r)??;
    }

    // Every byte from the start to the end of what was received, as Postgres wrote it.
    let s = check_sink.state.lock().unwrap();
    let got_to = Lsn(start.0 + s.bytes.len() as u64);
    let theirs = read_wal(&pg.wal_dir(), start, got_to)?;
    if theirs != s.bytes {
        let at = theirs
            .iter()
            .zip(&s.bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        bail!(
            "received WAL differs from pg_wal at {}",
            Lsn(start.0 + at as u64)
        );
    }
    ensure!(
        s.last_end >= end,
        "decoded records end at {}, before {end}",
        s.last_end
    );
    ensure!(s.restarts.len() >= 3, "restarts: {:?}", s.restarts);
    println!(
        "{:?}: {} bytes ({start}..{got_to}) byte-identical, {} records, streams restarted at {:?}",
        t0.elapsed(),
        s.bytes.len(),
        s.records,
        s.restarts
    );
    let all = s.bytes.clone();
    drop(s);

    // A receiver starting late (one safekeeper dead) catches up from the start.
    let late = Arc::new(CheckSink::new(start));
    let (stop_tx, stop_rx) = watch::channel(false);
    let r = WalReceiver::new(conf(&sks));
    let status = r.status();
    let t1 = Instant::now();
    let task = rt.spawn(r.run(late.clone(), stop_rx));
    wait_for(
        "the late receiver catches up",
        Duration::from_secs(60),
        || Ok((status.borrow().received >= got_to).then_some(())),
    )?;
    let secs = t1.elapsed().as_secs_f64();
    stop_tx.send(true)?;
    rt.block_on(task)??;
    let l = late.state.lock().unwrap();
    ensure!(
        l.bytes.len() >= all.len() && l.bytes[..all.len()] == all[..],
        "the late receiver got other bytes"
    );
    println!(
        "{:?}: a late receiver caught up {} bytes in {secs:.2} s ({:.1} MiB/s, decoding included)",
        t0.elapsed(),
        l.bytes.len(),
        l.bytes.len() as f64 / secs / (1 << 20) as f64
    );
    drop(l);

    let n = compare_pages(&pg, &ingest_sink, end)?;
    ensure!(n > 1500, "only {n} pages compared");
    println!(
        "{:?}: {n} pages equal to Postgres's after CHECKPOINT",
        t0.elapsed()
    );
    Ok(())
}

/// No safekeeper holds the timeline, one address refuses connections: the receiver keeps
/// trying, says why in its status, and stops promptly when told. No safekeepers: an error.
#[test]
fn walreceiver_reports_why_it_cannot_stream() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir()?;
    let sk = Safekeeper::started_with_replication(scratch.path(), 1)?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut c = WalReceiverConf::new(vec![sk.pg_addr(), closed.clone()], tenant(), timeline());
    c.backoff_max = Duration::from_millis(200);
    let r = WalReceiver::new(c);
    let status = r.status();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sink = Arc::new(CheckSink::new(Lsn(0x100_0000)));
    let task = rt.spawn(r.run(sink, stop_rx));
    wait_for("an error in the status", Duration::from_secs(10), || {
        Ok(status.borrow().last_error.is_some().then_some(()))
    })?;
    let err = status.borrow().last_error.clone().unwrap_or_default();
    println!("{err}");
    ensure!(
        err.contains(&format!(
            "timeline {TENANT}/{TIMELINE} does not exist on this safekeeper"
        )) || err.contains("does not exist"),
        "{err}"
    );
    ensure!(
        err.contains(&closed) && err.contains("cannot connect"),
        "{err}"
    );
    ensure!(status.borrow().streams == 0);
    let t = Instant::now();
    stop_tx.send(true)?;
    rt.block_on(task)??;
    ensure!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t.elapsed()
    );

    let none = WalReceiverConf::new(vec![], tenant(), timeline());
    let (_tx, rx) = watch::channel(false);
    let e = rt
        .block_on(pageserver::walreceiver::run(
            none,
            Arc::new(CheckSink::new(Lsn(0))),
            rx,
        ))
        .unwrap_err();
    ensure!(e.to_string().contains("no safekeepers"), "{e}");
    Ok(())
}
