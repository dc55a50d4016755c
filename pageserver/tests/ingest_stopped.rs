//! A record the pageserver cannot ingest stops the timeline visibly, and ingest resumes by
//! itself once the cause is gone.
//!
//! The `pageserver` binary streams from a small replication server in this test, which serves
//! WAL built with `walproto::encoder` after the imported initdb state: a few records, then a
//! record of custom resource manager 128 (an extension's) that touches a page without a page
//! image, then more records. Checked, in order:
//! - the timeline's status names the record, its LSN and the reason; the ingest position is
//!   the record's start;
//! - reads at or below that LSN work (GetPage, basebackup), a read beyond it fails at once
//!   with an error naming the stop;
//! - the walreceiver does not retry: no new stream for several seconds, the stop logged once;
//! - ResumeIngest retries the record once (which stops again: the cause is still there);
//! - after a restart of the pageserver with the cause gone (the server now serves WAL with an
//!   ordinary record in its place, standing for an upgraded pageserver that can ingest it),
//!   ingest resumes from the record and reaches the end of the WAL.

mod service_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use service_support::Pageserver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walproto::encoder::{build_record, WalWriter};
use walproto::pgwire::{parse_frontend, parse_startup, BackendWriter, FrontendMessage, Startup};
use walproto::proto::pageserver as pb;
use walproto::replication::{pg_now, ReplicationMessage};
use walproto::Lsn;

const TENANT: &str = "5b0bbed5b0bbed5b0bbed5b0bbed5b01";
const TIMELINE: &str = "5b0bbed5b0bbed5b0bbed5b0bbed5b02";
const SYSTEM_ID: u64 = 7_000_000_000_000_000_001;
const RM_LOGICALMSG_ID: u8 = 21;
const CUSTOM_RMGR: u8 = 128;
/// pg_class of template1 in a fresh initdb (a page that exists).
const REL: (u32, u32, u32) = (1663, 1, 1259);

// ---- the WAL ------------------------------------------------------------------------------

/// WAL from `start` (after the record at `prev`): three logical messages, then the custom
/// rmgr's record (`bad`) or one more message, then three more. Returns the bytes, the start
/// of the fourth record and the end of the WAL.
fn make_wal(start: Lsn, prev: Lsn, bad: bool) -> (Vec<u8>, Lsn, Lsn) {
    let mut w = WalWriter::new(SYSTEM_ID, 1, start, prev);
    let msg = |i: u32| {
        let data: Vec<u8> = format!("strata test message {i}").into_bytes();
        build_record(RM_LOGICALMSG_ID, 0x00, 0, Lsn(0), &[], &data)
    };
    for i in 0..3 {
        w.append(&msg(i));
    }
    let fourth = if bad {
        // One block reference without image or data: block 0 of REL, main fork.
        let mut body = vec![0u8, 0x00, 0, 0];
        for v in [REL.0, REL.1, REL.2, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        build_record(CUSTOM_RMGR, 0x00, 0, Lsn(0), &body, b"extension data")
    } else {
        msg(3)
    };
    let (at, _) = w.append(&fourth);
    for i in 4..7 {
        w.append(&msg(i));
    }
    let end = w.next_lsn();
    (w.into_bytes(), at, end)
}

// ---- a replication server serving that WAL --------------------------------------------------

#[derive(Default)]
struct Served {
    /// (start LSN, bytes): what the server has.
    wal: Mutex<Option<(Lsn, Vec<u8>)>>,
    /// START_REPLICATION commands received.
    streams: AtomicUsize,
}

impl Served {
    fn set(&self, start: Lsn, wal: Vec<u8>) {
        *self.wal.lock().unwrap() = Some((start, wal));
    }

    fn end(&self) -> Option<Lsn> {
        let g = self.wal.lock().unwrap();
        g.as_ref().map(|(s, w)| Lsn(s.0 + w.len() as u64))
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

async fn serve(listener: TcpListener, served: Arc<Served>) {
    while let Ok((sock, _)) = listener.accept().await {
        let served = served.clone();
        tokio::spawn(async move {
            let _ = connection(sock, &served).await;
        });
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<()> {
    if sock.read_buf(buf).await? == 0 {
        bail!("client went away");
    }
    Ok(())
}

async fn connection(mut sock: TcpStream, served: &Served) -> Result<()> {
    let mut buf = BytesMut::new();
    loop {
        match parse_startup(&mut buf)? {
            None => read_more(&mut sock, &mut buf).await?,
            Some(Startup::Start(_)) => break,
            Some(_) => sock.write_all(b"N").await?,
        }
    }
    let mut w = BackendWriter::default();
    w.authentication_ok();
    for (name, value) in [
        ("server_version", "15.0 (ingest_stopped test)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        w.parameter_status(name, value);
    }
    w.backend_key_data(1, 0);
    w.ready_for_query();
    sock.write_all(&w.take()).await?;
    loop {
        let msg = match parse_frontend(&mut buf)? {
            Some(m) => m,
            None => {
                read_more(&mut sock, &mut buf).await?;
                continue;
            }
        };
        let q = match msg {
            FrontendMessage::Query(q) => q,
            FrontendMessage::Terminate => return Ok(()),
            _ => continue,
        };
        let mut w = BackendWriter::default();
        let words: Vec<&str> = q.trim().trim_end_matches(';').split_whitespace().collect();
        match words.first().copied() {
            Some("IDENTIFY_SYSTEM") => {
                // No WAL yet: nothing to stream (commit LSN 0).
                let end = served.end().unwrap_or(Lsn(0)).to_string();
                let sysid = SYSTEM_ID.to_string();
                w.row_description(&[
                    ("systemid", 25),
                    ("timeline", 23),
                    ("xlogpos", 25),
                    ("dbname", 25),
                ]);
                w.data_row(&[
                    Some(sysid.as_bytes()),
                    Some(b"1"),
                    Some(end.as_bytes()),
                    None,
                ]);
                w.command_complete("IDENTIFY_SYSTEM");
                w.ready_for_query();
                sock.write_all(&w.take()).await?;
            }
            Some("START_REPLICATION") => {
                let at: Lsn = words
                    .iter()
                    .find(|x| x.contains('/'))
                    .context("no LSN")?
                    .parse()?;
                served.streams.fetch_add(1, Ordering::SeqCst);
                stream(&mut sock, &mut buf, served, at).await?;
                return Ok(());
            }
            _ => {
                w.error("0A000", &format!("not supported here: {q}"));
                w.ready_for_query();
                sock.write_all(&w.take()).await?;
            }
        }
    }
}

/// Sends the WAL from `at` in small pieces, then keepalives, until the client leaves.
async fn stream(sock: &mut TcpStream, buf: &mut BytesMut, served: &Served, at: Lsn) -> Result<()> {
    let (start, wal) = served.wal.lock().unwrap().clone().context("no WAL")?;
    let end = Lsn(start.0 + wal.len() as u64);
    ensure!(at >= start && at <= end, "START_REPLICATION at {at}");
    let mut w = BackendWriter::default();
    w.copy_both_response();
    sock.write_all(&w.take()).await?;
    let mut pos = at;
    while pos < end {
        let from = (pos.0 - start.0) as usize;
        let n = (wal.len() - from).min(100);
        let msg = ReplicationMessage::XLogData {
            start: pos,
            wal_end: end,
            send_time: pg_now(),
            data: bytes::Bytes::copy_from_slice(&wal[from..from + n]),
        };
        w.copy_data(&msg.to_bytes());
        pos = Lsn(pos.0 + n as u64);
    }
    sock.write_all(&w.take()).await?;
    loop {
        // Status updates are read and dropped; CopyDone or a closed socket ends the stream.
        let got = tokio::time::timeout(Duration::from_secs(1), sock.read_buf(buf)).await;
        match got {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {
                while let Some(m) = parse_frontend(buf)? {
                    if matches!(m, FrontendMessage::CopyDone | FrontendMessage::Terminate) {
                        return Ok(());
                    }
                }
            }
            Err(_) => {
                let msg = ReplicationMessage::Keepalive {
                    wal_end: end,
                    send_time: pg_now(),
                    reply_requested: false,
                };
                w.copy_data(&msg.to_bytes());
                sock.write_all(&w.take()).await?;
            }
        }
    }
}

// ---- the test -------------------------------------------------------------------------------

type Client = pb::pageserver_client::PageserverClient<tonic::transport::Channel>;

fn req() -> pb::TimelineRequest {
    pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
    }
}

async fn status(c: &mut Client) -> Result<pb::TimelineInfo> {
    Ok(c.timeline_status(req()).await?.into_inner())
}

/// Polls the status until `f` holds (30 s at most).
async fn wait_status(
    c: &mut Client,
    what: &str,
    f: impl Fn(&pb::TimelineInfo) -> bool,
) -> Result<pb::TimelineInfo> {
    let t0 = Instant::now();
    loop {
        let st = status(c).await?;
        if f(&st) {
            println!("{what}: after {:?}", t0.elapsed());
            return Ok(st);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("{what}: not after 30 s; status {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_page(c: &mut Client, lsn: Lsn) -> Result<pb::GetPageResponse, tonic::Status> {
    let r = pb::GetPageRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        lsn: lsn.0,
        target: Some(pb::get_page_request::Target::RelBlock(pb::RelBlock {
            spc: REL.0,
            db: REL.1,
            rel: REL.2,
            fork: 0,
            blkno: 0,
        })),
    };
    c.get_page(r).await.map(|r| r.into_inner())
}

async fn basebackup(c: &mut Client, lsn: Lsn) -> Result<usize> {
    let mut s = c
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            lsn: lsn.0,
            read_only: true,
            prev_lsn: 0,
            without_relation_files: false,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await? {
        n += chunk.data.len();
    }
    Ok(n)
}

fn count_in_log(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_rmgr_record_stops_ingest_visibly_and_a_restart_resumes() -> Result<()> {
    let t_start = Instant::now();
    let scratch = tempfile::tempdir()?;
    let pg = strata_tests::PgCluster::init(&strata_tests::InitOptions::default())?;
    let base = pg.copy_data_dir("base")?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let sk_addr = listener.local_addr()?.to_string();
    let served = Arc::new(Served::default());
    tokio::spawn(serve(listener, served.clone()));

    let data = scratch.path().join("ps");
    let log = data.with_extension("log");
    let ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;
    c.create_tenant(pb::CreateTenantRequest {
        tenant_id: TENANT.into(),
        config_toml: String::new(),
    })
    .await?;
    let st = c
        .import_timeline(pb::ImportTimelineRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
            datadir: base.display().to_string(),
            lsn: 0,
            safekeepers: vec![],
        })
        .await?
        .into_inner();
    let (start, prev) = (Lsn(st.last_record_end), Lsn(st.last_record_lsn));
    let (bad_wal, bad_at, bad_end) = make_wal(start, prev, true);
    let (good_wal, good_at, good_end) = make_wal(start, prev, false);
    assert_eq!(bad_at, good_at);
    println!(
        "imported at {start}; the custom rmgr's record is at {bad_at}, the WAL ends at {bad_end}"
    );
    c.set_safekeepers(pb::SetSafekeepersRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        safekeepers: vec![sk_addr.clone()],
    })
    .await?;

    // No WAL on the server yet (a branch without a compute): the status says why nothing
    // streams, and the retries warn once, not at every attempt.
    let st = wait_status(&mut c, "not streaming", |s| {
        !s.walreceiver_problem.is_empty()
    })
    .await?;
    assert!(
        st.walreceiver_problem
            .contains("no safekeeper to stream from")
            && st.walreceiver_problem.contains("behind the start"),
        "{st:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count_in_log(&log, "no safekeeper to stream from"), 1);
    served.set(start, bad_wal);

    // The stop, in the status: the record, its LSN, the reason.
    let st = wait_status(&mut c, "ingest stopped", |s| s.ingest_stop.is_some()).await?;
    let stop = st.ingest_stop.clone().unwrap();
    println!("status: {st:?}");
    assert_eq!(Lsn(stop.record_lsn), bad_at);
    assert_eq!(
        Lsn(st.last_record_end),
        bad_at,
        "everything before the record is ingested"
    );
    assert!(
        stop.record.contains("custom resource manager 128"),
        "{stop:?}"
    );
    assert!(
        stop.reason.contains("custom resource manager 128")
            && stop.reason.contains("cannot be ingested"),
        "{stop:?}"
    );
    assert!(!stop.needs_restart, "{stop:?}");
    assert!(st.walreceiver_problem.is_empty(), "{st:?}");
    assert!(stop.since_unix_ms > 0);
    // Listed too (what `strata status` shows).
    let listed = c
        .list_timelines(pb::ListTimelinesRequest {
            tenant_id: TENANT.into(),
        })
        .await?
        .into_inner()
        .timelines;
    assert_eq!(listed[0].ingest_stop.as_ref(), Some(&stop));

    // Reads at and below the stop work.
    let page = get_page(&mut c, Lsn(0)).await?;
    assert!(page.exists && page.page.len() == 8192);
    assert_eq!(Lsn(page.lsn), bad_at);
    assert_eq!(get_page(&mut c, start).await?.page, page.page);
    assert!(basebackup(&mut c, Lsn(0)).await? > 0);
    // A read beyond it fails at once, naming the stop.
    let t0 = Instant::now();
    let e = get_page(&mut c, bad_end).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("takes no WAL") && e.message().contains(&bad_at.to_string()),
        "{e:?}"
    );
    let e = basebackup(&mut c, bad_end).await.unwrap_err();
    assert!(e.to_string().contains("takes no WAL"), "{e:#}");

    // No retry loop: no new stream, the stop logged once.
    let streams = served.streams();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(served.streams(), streams, "the walreceiver streamed again");
    let st = status(&mut c).await?;
    assert_eq!(Lsn(st.last_record_end), bad_at);
    assert_eq!(st.ingest_stop.as_ref(), Some(&stop));
    assert_eq!(
        count_in_log(&log, "ingest stopped at"),
        1,
        "see {}",
        log.display()
    );
    assert_eq!(count_in_log(&log, "walreceiver stopped"), 0);

    // An explicit resume tries the record once more, and stops again at it.
    let resumed = c.resume_ingest(req()).await?.into_inner();
    println!("resumed: {resumed:?}");
    let st = wait_status(&mut c, "stopped again after ResumeIngest", |s| {
        s.ingest_stop
            .as_ref()
            .is_some_and(|x| x.since_unix_ms > stop.since_unix_ms)
    })
    .await?;
    assert_eq!(st.ingest_stop.as_ref().unwrap().record_lsn, stop.record_lsn);
    assert_eq!(served.streams(), streams + 1);
    assert_eq!(count_in_log(&log, "ingest stopped at"), 2);

    // The cause goes away, the pageserver restarts: ingest resumes from the record.
    let mut ps = ps;
    drop(c);
    ensure!(
        ps.terminate()?.success(),
        "the pageserver did not stop cleanly"
    );
    served.set(start, good_wal);
    let ps = Pageserver::start(&data)?;
    let mut c = ps.client().await?;
    let st = wait_status(&mut c, "resumed after a restart", |s| {
        Lsn(s.last_record_end) == good_end
    })
    .await?;
    assert!(st.ingest_stop.is_none(), "{st:?}");
    assert_eq!(get_page(&mut c, Lsn(0)).await?.page, page.page);
    assert!(basebackup(&mut c, good_end).await? > 0);
    println!("test took {:?}", t_start.elapsed());
    Ok(())
}
