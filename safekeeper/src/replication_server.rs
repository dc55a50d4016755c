//! The Postgres replication protocol, served from a safekeeper's WAL: `pg_receivewal`, a
//! vanilla hot standby and the pageserver stream from here exactly as they would from Postgres.
//!
//! Only WAL up to the timeline's commit LSN is sent: what a majority holds, which no later
//! election can take back. Connections are physical replication connections
//! (`replication=true`) and name their timeline in the startup options:
//! `options='-c tenant_id=<hex> -c timeline_id=<hex>'`; when the safekeeper holds exactly one
//! timeline the options may be left out.
//!
//! Authentication: with auth on (`--auth-public-key`), the server asks for a cleartext
//! password (AuthenticationCleartextPassword: bind the listener to loopback, or put TLS in
//! front of it) and takes it as a token whose scope must allow `safekeeper` traffic of the
//! timeline's tenant, or be `admin`. A missing, forged or expired token is refused with
//! SQLSTATE 28P01, a token of another scope or tenant with 28000. With auth off every
//! connection is trusted.
//!
//! Every record is checked before it is sent; a bad one is never sent, ends the stream, and
//! when it came from the local disk has the timeline verified and, if the damage is
//! confirmed, quarantined and recovered from the peers ([`crate::quarantine`]). A quarantined
//! timeline is not served.
//!
//! Commands: `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`, `SHOW data_directory_mode`,
//! `TIMELINE_HISTORY`, `START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};
use walproto::pgwire::{self, BackendWriter, FrontendMessage, Startup};
use walproto::replication::{pg_now, ReplicationMessage};
use walproto::Lsn;

use strata_auth::{Claims, Scope};

use crate::ids::TenantTimeline;
use crate::remote_storage::RemoteStorage;
use crate::timeline::Timeline;
use crate::timelines::Timelines;
use crate::wal_storage::read_wal;

/// Largest XLogData message; Postgres's walsender uses 128 KiB too.
const MAX_SEND: usize = 128 * 1024;
/// WAL read (on the blocking pool) and checked at a time, then sent as several messages: one
/// hand-off to the pool per message was a quarter of the sender's CPU when a pageserver catches
/// up on a backlog.
const READ_BLOCK: usize = 8 * MAX_SEND;
/// How often to look for a new commit LSN when the client is caught up.
const POLL: Duration = Duration::from_millis(5);
/// Keepalive interval while idle.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// A reason to end a connection, sent to the client as an ErrorResponse when possible.
#[derive(Debug)]
struct ConnError {
    code: &'static str,
    message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> ConnError {
    ConnError {
        code,
        message: message.into(),
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        err("08006", format!("connection failure: {e}"))
    }
}

/// Accepts replication connections until the task is dropped.
pub async fn serve(listener: TcpListener, timelines: Arc<Timelines>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(%e, "accepting a replication connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let timelines = timelines.clone();
        tokio::spawn(
            async move {
                if let Err(e) = handle(stream, timelines).await {
                    info!(code = e.code, "replication connection ended: {}", e.message);
                }
            }
            .instrument(info_span!("replication", %peer)),
        );
    }
}

async fn handle(stream: TcpStream, timelines: Arc<Timelines>) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(8192);
    let params = loop {
        match read_startup(&mut rd, &mut rbuf).await? {
            Startup::SslRequest | Startup::GssEncRequest => {
                let mut w = BackendWriter::default();
                w.encryption_refused();
                wr.write_all(&w.take()).await?;
            }
            Startup::Cancel => return Ok(()),
            Startup::Start(params) => break params,
        }
    };
    let mut w = BackendWriter::default();
    let client = Client {
        consumer: params
            .iter()
            .any(|(k, v)| k == "application_name" && v.starts_with("pageserver")),
        remote: timelines.config().remote.clone(),
        timelines: timelines.clone(),
    };
    let opened = match authenticate(&timelines, &mut rd, &mut wr, &mut rbuf).await {
        Ok(claims) => {
            // Opening a timeline verifies it on disk: not on the async threads.
            let (set, p) = (timelines.clone(), params.clone());
            tokio::task::spawn_blocking(move || open_timeline(&set, &p, claims.as_ref()))
                .await
                .unwrap_or_else(|e| Err(err("58000", format!("opening the timeline failed: {e}"))))
        }
        Err(e) => Err(e),
    };
    match opened {
        Ok(tl) => {
            let result = session(&tl, &client, rd, &mut wr, rbuf).await;
            if let Err(e) = &result {
                w.error(e.code, &e.message);
                let _ = wr.write_all(&w.take()).await;
            }
            result
        }
        Err(e) => {
            w.error(e.code, &e.message);
            let _ = wr.write_all(&w.take()).await;
            Err(e)
        }
    }
}

async fn read_startup(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Startup, ConnError> {
    loop {
        if let Some(s) = pgwire::parse_startup(buf).map_err(|e| err("08P01", e.to_string()))? {
            return Ok(s);
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(err("08006", "client closed the connection during startup"));
        }
    }
}

/// How long a client may take to send its password.
const PASSWORD_TIMEOUT: Duration = Duration::from_secs(10);

/// With auth on, asks for the password and verifies it as a token: its claims (the scope is
/// checked once the timeline is known). Auth off: `None`.
async fn authenticate(
    timelines: &Timelines,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
) -> Result<Option<Claims>, ConnError> {
    let Some(verifier) = timelines.config().auth.verifier.clone() else {
        return Ok(None);
    };
    // AuthenticationCleartextPassword: 'R', length 8, code 3.
    let mut w = BackendWriter::default();
    w.buf.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
    wr.write_all(&w.take()).await?;
    let password = tokio::time::timeout(PASSWORD_TIMEOUT, read_password(rd, buf))
        .await
        .map_err(|_| {
            err(
                "28P01",
                format!("no password within {PASSWORD_TIMEOUT:?}: give a token as the password"),
            )
        })??;
    verifier
        .verify(&password)
        .map(Some)
        .map_err(|e| err("28P01", format!("password authentication failed: {e}")))
}

/// The PasswordMessage's text (without its terminating zero).
async fn read_password(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<String, ConnError> {
    loop {
        match pgwire::parse_frontend(buf).map_err(|e| err("08P01", e.to_string()))? {
            Some(FrontendMessage::Password(body)) => {
                let text = body.strip_suffix(&[0]).unwrap_or(&body);
                return String::from_utf8(text.to_vec())
                    .map_err(|_| err("28P01", "password authentication failed: not UTF-8"));
            }
            Some(FrontendMessage::Terminate) => {
                return Err(err(
                    "08006",
                    "client closed the connection before authenticating",
                ))
            }
            Some(_) => return Err(err("08P01", "expected a password message")),
            None => {}
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(err(
                "08006",
                "client closed the connection before authenticating",
            ));
        }
    }
}

/// Picks the timeline from the startup parameters; with auth on, `claims` must allow
/// `safekeeper` traffic of its tenant.
fn open_timeline(
    timelines: &Timelines,
    params: &[(String, String)],
    claims: Option<&Claims>,
) -> Result<Arc<Timeline>, ConnError> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if !matches!(param("replication"), Some("true" | "on" | "yes" | "1")) {
        return Err(err(
            "08P01",
            "a safekeeper serves only physical replication connections (replication=true)",
        ));
    }
    let options = param("options").unwrap_or("");
    // Accepts `-c name=value`, `-cname=value`, `--name=value` and `name=value`.
    let option = |name: &str| {
        options.split_whitespace().find_map(|t| {
            let t = t
                .strip_prefix("--")
                .or_else(|| t.strip_prefix("-c"))
                .unwrap_or(t);
            t.strip_prefix(name)?.strip_prefix('=')
        })
    };
    let id = match (option("tenant_id"), option("timeline_id")) {
        (Some(tenant), Some(timeline)) => {
            let tenant = tenant.parse().map_err(|e| err("28000", format!("{e}")))?;
            let timeline = timeline.parse().map_err(|e| err("28000", format!("{e}")))?;
            TenantTimeline { tenant, timeline }
        }
        (None, None) => match timelines.timelines_on_disk().as_slice() {
            [only] => *only,
            [] => return Err(err("3D000", "this safekeeper holds no timeline yet")),
            _ => {
                return Err(err(
                    "3D000",
                    "this safekeeper holds several timelines: name one with options='-c tenant_id=<hex> -c timeline_id=<hex>'",
                ))
            }
        },
        _ => {
            return Err(err(
                "28000",
                "give both tenant_id and timeline_id in the startup options",
            ))
        }
    };
    let tenant = id.tenant.to_string();
    if let Some(why) = claims.and_then(|c| c.refusal(&Scope::Safekeeper, Some(&tenant))) {
        return Err(err("28000", why));
    }
    timelines
        .existing_timeline(id)
        .map_err(|e| err("58000", e.to_string()))?
        .ok_or_else(|| match timelines.quarantine_reason(id) {
            Some(reason) => err(
                "XX001",
                format!("timeline {id} is quarantined on this safekeeper as damaged and not recovered yet: {reason}"),
            ),
            None => err(
                "3D000",
                format!("timeline {id} does not exist on this safekeeper"),
            ),
        })
}

/// Messages from the client, read by their own task so that streaming never waits on them.
async fn read_client(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    tx: mpsc::Sender<Result<FrontendMessage, ConnError>>,
) {
    loop {
        match pgwire::parse_frontend(&mut buf) {
            Ok(Some(msg)) => {
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Err(err("08P01", e.to_string()))).await;
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Ok(FrontendMessage::Terminate)).await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Who is connected and what serves WAL removed from the local disk.
struct Client {
    /// A pageserver (`application_name` starting with `pageserver`): the `applied` position of
    /// its status updates is the LSN it has made durable in the object store.
    consumer: bool,
    remote: Option<RemoteStorage>,
    /// Where damage a read meets is reported.
    timelines: Arc<Timelines>,
}

async fn session(
    tl: &Arc<Timeline>,
    client: &Client,
    rd: OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    rbuf: BytesMut,
) -> Result<(), ConnError> {
    let state = tl.state();
    let mut w = BackendWriter::default();
    w.authentication_ok();
    for (name, value) in [
        ("server_version", "15.0 (Strata safekeeper)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", ""),
    ] {
        w.parameter_status(name, value);
    }
    w.backend_key_data(std::process::id() as i32, 0);
    w.ready_for_query();
    wr.write_all(&w.take()).await?;
    info!(timeline = %state.id, "replication connection opened");

    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::spawn(read_client(rd, rbuf, tx));
    let _abort = AbortOnDrop(reader);
    loop {
        let Some(msg) = rx.recv().await else {
            return Ok(());
        };
        match msg? {
            FrontendMessage::Query(q) => {
                if let Some(start) = parse_start_replication(&q, state.pg_timeline)? {
                    stream_wal(tl, client, start, wr, &mut rx).await?;
                    let mut w = BackendWriter::default();
                    w.command_complete("START_STREAMING");
                    w.ready_for_query();
                    wr.write_all(&w.take()).await?;
                } else {
                    let mut w = BackendWriter::default();
                    answer_query(tl, &q, &mut w)?;
                    w.ready_for_query();
                    wr.write_all(&w.take()).await?;
                }
            }
            FrontendMessage::Terminate => return Ok(()),
            FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_) => {}
            FrontendMessage::Password(_) => {
                return Err(err("08P01", "unexpected password message"));
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

/// Decodes the WAL on its way out, so that a safekeeper whose disk damaged committed WAL
/// refuses to serve it rather than handing it on: every record must be whole, in sequence and
/// match its CRC.
///
/// A stream that starts at a page start (pg_receivewal, standbys) is checked from there. One
/// that starts inside a page (a pageserver resuming at its last record end) is first decoded
/// as a record boundary, so an XLOG_SWITCH right there is seen and the zeroed rest of its
/// segment is not mistaken for damage; if the first record does not decode, the start was
/// inside a record, and checking restarts at the next page boundary.
struct WalChecker {
    decoder: walproto::WalStreamDecoder,
    from: Lsn,
    /// Bytes fed since a mid-page start, kept until its first record decodes.
    probe: Option<Vec<u8>>,
}

/// A first record larger than this cannot be probed; checking starts at the next page.
const MAX_PROBE: usize = 32 << 20;

impl WalChecker {
    fn new(start: Lsn) -> WalChecker {
        WalChecker {
            decoder: walproto::WalStreamDecoder::new(start),
            from: start,
            probe: (!start.is_page_start()).then(Vec::new),
        }
    }

    /// Gives up the record-boundary guess: checking restarts at the next page boundary with
    /// the bytes fed so far.
    fn restart_at_next_page(&mut self) {
        let probed = self.probe.take().unwrap_or_default();
        let next_page = Lsn(self.from.page_start().0 + walproto::consts::WAL_PAGE_SIZE);
        let skip = (next_page.0 - self.from.0) as usize;
        self.decoder = walproto::WalStreamDecoder::new(next_page);
        self.from = next_page;
        if probed.len() > skip {
            self.decoder.feed(&probed[skip..]);
        }
    }

    /// Checks the WAL `data` at `pos` (contiguous with the previous call) before it is sent.
    fn check(&mut self, pos: Lsn, data: &[u8]) -> Result<(), ConnError> {
        let end = pos.0 + data.len() as u64;
        if end <= self.from.0 {
            return Ok(());
        }
        let skip = self.from.0.saturating_sub(pos.0) as usize;
        if let Some(p) = &mut self.probe {
            p.extend_from_slice(&data[skip..]);
        }
        self.decoder.feed(&data[skip..]);
        loop {
            let failure = match self.decoder.next() {
                Ok(walproto::Decoded::Record(_)) => {
                    self.probe = None;
                    continue;
                }
                Ok(walproto::Decoded::NeedMore) => {
                    if self.probe.as_ref().is_some_and(|p| p.len() > MAX_PROBE) {
                        self.restart_at_next_page();
                        continue;
                    }
                    return Ok(());
                }
                Ok(walproto::Decoded::EndOfWal { lsn, reason }) => format!(
                    "refusing to serve WAL: committed WAL at {lsn} is not valid on this safekeeper ({reason})"
                ),
                Err(e) => format!("refusing to serve WAL: {e} on this safekeeper"),
            };
            if self.probe.is_some() {
                self.restart_at_next_page();
                continue;
            }
            return Err(err("XX001", failure));
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn normalize(q: &str) -> String {
    q.trim().trim_end_matches(';').trim().to_string()
}

/// Answers the commands other than START_REPLICATION.
fn answer_query(tl: &Timeline, q: &str, w: &mut BackendWriter) -> Result<(), ConnError> {
    let q = normalize(q);
    let words: Vec<&str> = q.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|s| s.to_ascii_uppercase()).collect();
    let state = tl.state();
    match upper.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["IDENTIFY_SYSTEM"] => {
            w.row_description(&[("systemid", 25), ("timeline", 23), ("xlogpos", 25), ("dbname", 25)]);
            let sysid = state.system_id.to_string();
            let tli = state.pg_timeline.to_string();
            let pos = tl.commit_lsn().to_string();
            w.data_row(&[Some(sysid.as_bytes()), Some(tli.as_bytes()), Some(pos.as_bytes()), None]);
            w.command_complete("IDENTIFY_SYSTEM");
        }
        ["SHOW", name] => {
            let value = match name.to_ascii_lowercase().as_str() {
                "wal_segment_size" => format!("{}MB", state.wal_seg_size >> 20),
                "data_directory_mode" => "0700".to_string(),
                _ => return Err(err("42704", format!("unrecognized configuration parameter \"{}\"", words[1]))),
            };
            w.row_description(&[(words[1], 25)]);
            w.data_row(&[Some(value.as_bytes())]);
            w.command_complete("SHOW");
        }
        ["TIMELINE_HISTORY", n] => {
            return Err(err(
                "58P01",
                format!("could not find history of timeline {n}: this safekeeper stores timeline {} without a history file", state.pg_timeline),
            ));
        }
        [] => w.command_complete(""),
        _ => {
            return Err(err(
                "42601",
                format!("the safekeeper does not support {q:?} (it serves IDENTIFY_SYSTEM, SHOW, START_REPLICATION)"),
            ))
        }
    }
    Ok(())
}

/// `START_REPLICATION [SLOT name] [PHYSICAL] X/X [TIMELINE n]`: the start LSN, or `None` for
/// another command.
fn parse_start_replication(q: &str, our_tli: u32) -> Result<Option<Lsn>, ConnError> {
    let q = normalize(q);
    let mut words = q.split_whitespace().peekable();
    if !words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("START_REPLICATION"))
    {
        return Ok(None);
    }
    let syntax = || {
        err("42601", format!("syntax error in {q:?}: expected START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]"))
    };
    if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("SLOT")) {
        words.next();
        words.next().ok_or_else(syntax)?; // slots are not kept: the safekeeper keeps WAL itself
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("LOGICAL"))
    {
        return Err(err(
            "0A000",
            "a safekeeper serves physical replication only",
        ));
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("PHYSICAL"))
    {
        words.next();
    }
    let start: Lsn = words
        .next()
        .ok_or_else(syntax)?
        .parse()
        .map_err(|_| syntax())?;
    if let Some(w) = words.next() {
        if !w.eq_ignore_ascii_case("TIMELINE") {
            return Err(syntax());
        }
        let tli: u32 = words
            .next()
            .ok_or_else(syntax)?
            .parse()
            .map_err(|_| syntax())?;
        if tli != our_tli {
            return Err(err(
                "58P01",
                format!("requested timeline {tli} is not this safekeeper's timeline {our_tli}"),
            ));
        }
    }
    Ok(Some(start))
}

/// Streams WAL from `start` up to the commit LSN as it grows, until the client ends the copy.
async fn stream_wal(
    tl: &Arc<Timeline>,
    client: &Client,
    start: Lsn,
    wr: &mut OwnedWriteHalf,
    rx: &mut mpsc::Receiver<Result<FrontendMessage, ConnError>>,
) -> Result<(), ConnError> {
    let state = tl.state();
    let commit = tl.commit_lsn();
    if start < state.local_start_lsn && client.remote.is_none() {
        return Err(err(
            "58P01",
            format!(
                "requested WAL at {start} has been removed: this safekeeper's WAL starts at {}",
                state.local_start_lsn
            ),
        ));
    }
    if start > commit {
        return Err(err(
            "58P01",
            format!("requested starting point {start} is ahead of the WAL flush position of this server {commit}"),
        ));
    }
    let mut w = BackendWriter::default();
    w.copy_both_response();
    wr.write_all(&w.take()).await?;
    info!(%start, "streaming WAL");
    let dir = tl.wal_dir();
    let tli = state.pg_timeline;
    let mut pos = start;
    let mut buf = vec![0u8; READ_BLOCK];
    let mut last_send = Instant::now();
    let mut checker = WalChecker::new(start);
    let mut remote_segment: Option<(u64, bytes::Bytes)> = None;
    loop {
        // Client messages first: status updates are only informative, CopyDone ends the stream.
        while let Ok(msg) = rx.try_recv() {
            match msg? {
                FrontendMessage::CopyDone => {
                    let mut w = BackendWriter::default();
                    w.copy_done();
                    wr.write_all(&w.take()).await?;
                    return Ok(());
                }
                FrontendMessage::Terminate => return Err(err("08006", "client went away")),
                FrontendMessage::CopyFail(m) => {
                    return Err(err("57014", format!("client failed the copy: {m}")))
                }
                FrontendMessage::CopyData(payload) => on_status(tl, client, payload),
                _ => {}
            }
        }
        if tl.is_quarantined() {
            return Err(err(
                "XX001",
                format!(
                    "timeline {} was found damaged on this safekeeper and is quarantined",
                    tl.id
                ),
            ));
        }
        let commit = tl.commit_lsn();
        if pos < commit {
            let n = usize::try_from(commit.0 - pos.0)
                .unwrap_or(usize::MAX)
                .min(READ_BLOCK);
            let dir2 = dir.clone();
            let (read, buf2) = tokio::task::spawn_blocking(move || {
                let mut b = buf;
                let r = read_wal(&dir2, tli, pos, &mut b[..n]);
                (r, b)
            })
            .await
            .map_err(|e| err("58000", format!("reading WAL failed: {e}")))?;
            buf = buf2;
            let mut got = read.map_err(|e| err("58030", e.to_string()))?;
            let mut local = true;
            if got == 0 || pos < tl.state().local_start_lsn {
                // Removed locally (or never here): the object store has it, if anyone does.
                got = read_remote(tl, client, pos, &mut remote_segment, &mut buf[..n]).await?;
                local = false;
            }
            if let Err(e) = checker.check(pos, &buf[..got]) {
                if local {
                    client.timelines.report_bad_wal(tl, e.message.clone());
                }
                return Err(e);
            }
            // Messages of at most MAX_SEND bytes, written together.
            let mut w = BackendWriter::default();
            let send_time = pg_now();
            for piece in buf[..got].chunks(MAX_SEND) {
                let msg = ReplicationMessage::XLogData {
                    start: pos,
                    wal_end: commit,
                    send_time,
                    data: bytes::Bytes::copy_from_slice(piece),
                };
                w.copy_data(&msg.to_bytes());
                pos = Lsn(pos.0 + piece.len() as u64);
            }
            wr.write_all(&w.take()).await?;
            last_send = Instant::now();
            continue;
        }
        if last_send.elapsed() >= KEEPALIVE {
            let msg = ReplicationMessage::Keepalive {
                wal_end: commit,
                send_time: pg_now(),
                reply_requested: false,
            };
            let mut w = BackendWriter::default();
            w.copy_data(&msg.to_bytes());
            wr.write_all(&w.take()).await?;
            last_send = Instant::now();
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(FrontendMessage::CopyDone)) => {
                    let mut w = BackendWriter::default();
                    w.copy_done();
                    wr.write_all(&w.take()).await?;
                    return Ok(());
                }
                Some(Ok(FrontendMessage::Terminate)) | None => return Err(err("08006", "client went away")),
                Some(Ok(FrontendMessage::CopyData(payload))) => on_status(tl, client, payload),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// A standby status update: from a pageserver, `applied` is what it made durable remotely.
/// Anything else the client sends while streaming is informative only.
fn on_status(tl: &Timeline, client: &Client, payload: bytes::Bytes) {
    if !client.consumer {
        return;
    }
    if let Ok(ReplicationMessage::StandbyStatus { applied, .. }) =
        ReplicationMessage::parse(payload)
    {
        if applied != Lsn(0) {
            tl.report_consumer_durable(applied);
        }
    }
}

/// Reads WAL at `pos` that is no longer on the local disk from the object store's copy of
/// its segment (downloaded once, checked against its crc32c, kept while the stream is in it).
async fn read_remote(
    tl: &Timeline,
    client: &Client,
    pos: Lsn,
    cache: &mut Option<(u64, bytes::Bytes)>,
    out: &mut [u8],
) -> Result<usize, ConnError> {
    let segno = pos.segment_number();
    let name = walproto::lsn::segment_file_name(tl.state().pg_timeline, segno);
    let Some(remote) = &client.remote else {
        return Err(err(
            "58P01",
            format!("WAL at {pos} is not on this safekeeper (segment {name} is missing) and no object store is configured"),
        ));
    };
    if cache.as_ref().is_none_or(|(s, _)| *s != segno) {
        let data = remote.get_wal(&tl.id, &name).await.map_err(|e| {
            err(
                "58030",
                format!("reading WAL at {pos} from the object store: {e}"),
            )
        })?;
        let Some(data) = data else {
            return Err(err(
                "58P01",
                format!("requested WAL at {pos} has been removed from this safekeeper and segment {name} is not in the object store {}", remote.url()),
            ));
        };
        if data.len() as u64 != walproto::consts::WAL_SEGMENT_SIZE {
            return Err(err(
                "XX001",
                format!(
                    "segment {name} in the object store is {} bytes, not a whole segment",
                    data.len()
                ),
            ));
        }
        *cache = Some((segno, data));
    }
    let (_, data) = cache.as_ref().expect("just filled");
    let off = pos.segment_offset() as usize;
    let n = out.len().min(data.len() - off);
    out[..n].copy_from_slice(&data[off..off + n]);
    Ok(n)
}

#[cfg(test)]
mod checker_tests {
    use super::*;
    use walproto::consts::{WAL_PAGE_SIZE, WAL_SEGMENT_SIZE};
    use walproto::encoder::{build_record, WalWriter};

    const RM_XLOG: u8 = 0;
    const XLOG_NOOP: u8 = 0x20;
    const XLOG_SWITCH: u8 = 0x40;

    /// A segment: a few records from its start, an XLOG_SWITCH, then zeroes to its end (as
    /// Postgres leaves a switched segment); returns the bytes and the record boundaries.
    fn switched_segment() -> (Vec<u8>, Vec<Lsn>) {
        let start = Lsn(WAL_SEGMENT_SIZE);
        let mut w = WalWriter::new(7, 1, start, Lsn(0));
        let mut bounds = Vec::new();
        for i in 0..40u32 {
            let (_, end) = w.append(&build_record(
                RM_XLOG,
                XLOG_NOOP,
                0,
                Lsn(0),
                &[],
                &[i as u8; 300],
            ));
            bounds.push(end);
        }
        let (_, end) = w.append(&build_record(RM_XLOG, XLOG_SWITCH, 0, Lsn(0), &[], &[]));
        bounds.push(end);
        w.pad_to(Lsn(2 * WAL_SEGMENT_SIZE));
        (w.into_bytes(), bounds)
    }

    fn check_from(bytes: &[u8], seg_start: Lsn, from: Lsn) -> Result<(), String> {
        let mut c = WalChecker::new(from);
        let data = &bytes[(from.0 - seg_start.0) as usize..];
        for (i, chunk) in data.chunks(100_000).enumerate() {
            let pos = Lsn(from.0 + (i * 100_000) as u64);
            if let Err(e) = c.check(pos, chunk) {
                return Err(format!("{e:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn a_switch_just_before_a_mid_page_start_is_not_damage() {
        let (bytes, bounds) = switched_segment();
        let seg = Lsn(WAL_SEGMENT_SIZE);
        // Streams starting at record boundaries inside a page, just before the switch.
        let before_switch = bounds[bounds.len() - 2];
        assert!(!before_switch.is_page_start());
        check_from(&bytes, seg, before_switch).unwrap();
        // From the segment start, as pg_receivewal does.
        check_from(&bytes, seg, seg).unwrap();
        // From inside a record: the guess fails, checking restarts at the next page.
        let inside = Lsn(bounds[3].0 + 40);
        check_from(&bytes, seg, inside).unwrap();
    }

    #[test]
    fn damage_after_a_mid_page_start_is_still_refused() {
        let (mut bytes, bounds) = switched_segment();
        let seg = Lsn(WAL_SEGMENT_SIZE);
        // Damage a record on the page after the start's page.
        let victim = bounds
            .iter()
            .find(|b| b.0 > seg.0 + WAL_PAGE_SIZE + 64)
            .copied()
            .unwrap();
        bytes[(victim.0 - seg.0) as usize + 30] ^= 0xFF;
        let e = check_from(&bytes, seg, bounds[2]).unwrap_err();
        assert!(e.contains("refusing to serve WAL"), "{e}");
    }
}
