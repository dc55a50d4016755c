//! A timeline this safekeeper does not have on disk but its peers do (its disk was lost or
//! replaced): rebuilt from the peers and the object store before the proposer may use it.
//!
//! On a proposer's greeting for a timeline absent from disk, with `--peers` configured:
//! - every peer is asked for its status. If none holds the timeline, it is new: it is created
//!   (term 0) only when a majority of the cluster (this node included) answered, so a node
//!   that cannot reach its peers does not mistake a lost timeline for a new one.
//! - If a peer holds it, **every** peer must answer (else the greeting fails with UNAVAILABLE
//!   and the proposer retries). The node adopts the highest term any peer holds and the term
//!   history of the most advanced peer (highest commit LSN) up to that peer's commit LSN,
//!   then fetches the WAL from the earliest point any peer still holds up to that commit LSN:
//!   complete offloaded segments from the object store (checked against their crc32c), the
//!   rest from that peer's replication server (whose records are checked as they are sent).
//!   Everything is written to `<timeline>.recovering/` and renamed into place with its control
//!   file last, so a crash mid-way leaves no half-recovered timeline.
//!
//! A timeline found damaged on disk is quarantined ([`crate::quarantine`]) and then is absent
//! like a lost one: it is recovered the same way, on the next greeting or at once in the
//! background ([`recover_in_background`]), the identity (system id, Postgres timeline) taken
//! from the peers that hold it. A quarantined timeline is never recreated empty by a greeting
//! (without `--peers`, or when no peer holds it): that could forget the term it promised; the
//! greeting fails with FAILED_PRECONDITION naming the quarantined copy.
//!
//! Paxos safety: a wiped acceptor forgot the highest term it promised. By adopting the highest
//! term of all its peers, it refuses every vote and election at or below any term a peer knows;
//! since every election needs a majority, any term that completed an election, and any term
//! voted for by a peer, is covered. What remains uncovered is a vote this node alone granted
//! for a term no peer has seen yet (an election in flight when the disk was lost). The
//! recovered node only ever holds committed WAL (up to a commit LSN), and an acceptor never
//! truncates below its commit LSN, so such a proposer cannot erase recovered commits on it.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tonic::Status;
use tracing::{error, info, warn};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::lsn::segment_file_name;
use walproto::pgclient::replication::WalStream;
use walproto::pgclient::{ConnConfig, PgConnection};
use walproto::proto::safekeeper as pb;
use walproto::replication::ReplicationMessage;
use walproto::Lsn;

use crate::acceptor::GreetingInfo;
use crate::control_file::{self, fsync_dir, ControlState, CONTROL_FILE_NAME};
use crate::ids::TenantTimeline;
use crate::peers::{self, PeerAnswer};
use crate::quarantine::Corruption;
use crate::term_history::TermHistory;
use crate::timeline::Timeline;
use crate::timelines::Timelines;
use crate::wal_storage::WalStorage;

/// WAL buffered in memory before it is written to the recovering segments.
const WRITE_BATCH: usize = 4 << 20;

/// Makes sure the greeted timeline may be created or opened (see the module docs).
pub(crate) async fn ensure_timeline(
    timelines: &Arc<Timelines>,
    id: TenantTimeline,
    info: &GreetingInfo,
) -> Result<(), Status> {
    let peers = &timelines.config().peers;
    if timelines.lock_map().contains_key(&id) {
        return Ok(());
    }
    let dir = timelines.timeline_dir(id);
    if dir.join(CONTROL_FILE_NAME).exists() {
        return Ok(());
    }
    if peers.is_empty() {
        return match crate::quarantine::quarantined_copies(&dir).last() {
            Some(q) => Err(Status::failed_precondition(format!(
                "timeline {id} was quarantined as damaged ({}) and this safekeeper has no \
                 --peers to recover it from; it is not recreated empty (that would forget its \
                 term): restore it by hand",
                q.display()
            ))),
            None => Ok(()),
        };
    }
    if !timelines.recovering().insert(id) {
        return Err(Status::unavailable(format!(
            "timeline {id} is being recovered from the peers; retry later"
        )));
    }
    struct Done<'a>(&'a Timelines, TenantTimeline);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.recovering().remove(&self.1);
        }
    }
    let _done = Done(timelines, id);

    let answers = peers::statuses(peers, id, &timelines.config().auth).await;
    let holders: Vec<&pb::TimelineStatusResponse> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            // Created by a greeting but never voted in and without WAL: as good as new.
            PeerAnswer::Status(s) if s.term > 0 || s.local_start_lsn != 0 => Some(s),
            _ => None,
        })
        .collect();
    let unreachable: Vec<String> = answers
        .iter()
        .filter_map(|(p, a)| match a {
            PeerAnswer::Unreachable(why) => Some(format!("{p}: {why}")),
            _ => None,
        })
        .collect();
    let cluster = peers.len() + 1;
    if holders.is_empty() {
        let answered = cluster - unreachable.len();
        if answered * 2 <= cluster {
            return Err(Status::unavailable(format!(
                "timeline {id} is not on this safekeeper and only {answered} of {cluster} \
                 safekeepers answered; it is created only when a majority confirms it is new \
                 (unreachable: {})",
                unreachable.join("; ")
            )));
        }
        if let Some(q) = crate::quarantine::quarantined_copies(&dir).last() {
            return Err(Status::failed_precondition(format!(
                "timeline {id} was quarantined here as damaged ({}) and no peer holds it to \
                 recover it from; it is not recreated empty (that could forget the term it \
                 promised): restore it by hand, or remove the quarantined copy to start afresh",
                q.display()
            )));
        }
        return Ok(());
    }
    if !unreachable.is_empty() {
        return Err(Status::unavailable(format!(
            "timeline {id} exists on the peers but not here: recovering it needs every peer's \
             term, and these did not answer: {}",
            unreachable.join("; ")
        )));
    }
    for s in &holders {
        if s.system_id != info.system_id || s.pg_timeline != info.pg_timeline {
            return Err(Status::invalid_argument(format!(
                "timeline {id} on safekeeper {} belongs to system id {} (Postgres timeline {}), \
                 but the proposer has system id {} (Postgres timeline {})",
                s.acceptor_id, s.system_id, s.pg_timeline, info.system_id, info.pg_timeline
            )));
        }
    }
    recover(timelines, id, info, &holders)
        .await
        .map_err(|e| Status::unavailable(format!("recovering timeline {id} from the peers: {e}")))
}

async fn recover(
    timelines: &Arc<Timelines>,
    id: TenantTimeline,
    info: &GreetingInfo,
    holders: &[&pb::TimelineStatusResponse],
) -> Result<(), String> {
    let term = holders.iter().map(|s| s.term).max().unwrap_or(0);
    let offloaded = holders.iter().map(|s| s.offloaded_lsn).max().unwrap_or(0);
    let consumer = holders
        .iter()
        .map(|s| s.consumer_durable_lsn)
        .max()
        .unwrap_or(0);
    let donor = holders
        .iter()
        .filter(|s| !s.replication_addr.is_empty() || s.commit_lsn == 0)
        .max_by_key(|s| (s.commit_lsn, s.flush_lsn))
        .ok_or("no peer serves the replication protocol (--listen-pg) to recover from")?;
    let commit = Lsn(donor.commit_lsn);
    let start = holders
        .iter()
        .map(|s| Lsn(s.local_start_lsn))
        .filter(|l| *l != Lsn(0))
        .min()
        .unwrap_or(Lsn(0));
    let history = TermHistory::from_pb(donor.term_history.as_ref());
    let mut state = ControlState::new(id, info.system_id, info.pg_timeline, info.wal_seg_size);
    state.term = term;
    state.offloaded_lsn = Lsn(offloaded);
    state.consumer_durable_lsn = Lsn(consumer).min(commit);
    let has_wal = start != Lsn(0) && commit > start;
    if has_wal {
        state.term_history = history.up_to(commit);
        state.local_start_lsn = start;
        state.flush_lsn = commit;
        state.commit_lsn = commit;
    }
    info!(%term, %start, %commit, donor = donor.acceptor_id, "recovering a timeline missing from disk");

    let dir = timelines.timeline_dir(id);
    let tenant_dir = dir.parent().ok_or("timeline directory has no parent")?;
    let tmp = tenant_dir.join(format!("{}.recovering", id.timeline));
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io("creating", &tmp, e))?;

    if has_wal {
        let mut fetch = Fetch::new(&tmp, info.pg_timeline, start)?;
        let remote = timelines.config().remote.clone();
        while fetch.pos < commit {
            let seg_start = fetch.pos.segment_start();
            let seg_end = Lsn(seg_start.0 + WAL_SEGMENT_SIZE);
            if let (Some(remote), true) = (&remote, seg_end.0 <= offloaded && seg_end <= commit) {
                let name = segment_file_name(info.pg_timeline, seg_start.segment_number());
                if let Some(data) = remote
                    .get_wal(&id, &name)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let off = fetch.pos.segment_offset() as usize;
                    fetch.push(&data[off..]).await?;
                    fetch.from_store += 1;
                    continue;
                }
            }
            let before = fetch.pos;
            let password = timelines.config().auth.peer_token.clone();
            stream_from_peer(
                &mut fetch,
                donor,
                id,
                info.pg_timeline,
                commit,
                offloaded,
                password,
            )
            .await?;
            fetch.from_peer += fetch.pos.0 - before.0;
        }
        info!(
            segments = fetch.from_store,
            "recovery: {} segments from the object store, {} bytes from safekeeper {}",
            fetch.from_store,
            fetch.from_peer,
            donor.acceptor_id
        );
        fetch.finish().await?;
    }
    control_file::store(&tmp, &state).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dir).map_err(|e| io("renaming into place", &tmp, e))?;
    fsync_dir(tenant_dir).map_err(|e| io("fsync", tenant_dir, e))?;
    if let Some(datadir) = tenant_dir.parent() {
        fsync_dir(datadir).map_err(|e| io("fsync", datadir, e))?;
    }
    if timelines.quarantined().remove(&id).is_some() {
        info!("the quarantined timeline is rebuilt from the peers");
    }
    info!(%term, %start, %commit, "timeline recovered from the peers and the object store");
    Ok(())
}

/// How often background recovery retries.
const RETRY: Duration = Duration::from_secs(2);

/// Recovers quarantined timeline `id` without waiting for a greeting. `pending`: the open
/// timeline found damaged and what is wrong; its directory is quarantined once every user
/// (proposer session, readers, offload task) has let go of it, so that its WAL writer thread
/// has stopped. Then retries every [`RETRY`] until the timeline is rebuilt and opened (or a
/// greeting did it first).
pub(crate) async fn recover_in_background(
    timelines: Arc<Timelines>,
    id: TenantTimeline,
    pending: Option<(Weak<Timeline>, Corruption)>,
) {
    let dir = timelines.timeline_dir(id);
    if let Some((weak, c)) = pending {
        let mut waited = 0u64;
        while weak.strong_count() > 0 {
            if waited.is_multiple_of(30) {
                warn!("waiting for the sessions of the damaged timeline to end before quarantining it");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            waited += 1;
        }
        let dir2 = dir.clone();
        match tokio::task::spawn_blocking(move || crate::quarantine::quarantine(&dir2, &c)).await {
            Ok(Ok(moved)) => {
                let reason = format!(
                    "{}; kept in {}",
                    timelines.quarantine_reason(id).unwrap_or_default(),
                    moved.display()
                );
                timelines.quarantined().insert(id, reason);
            }
            Ok(Err(e)) => return error!(%e, "could not quarantine the timeline"),
            Err(e) => return error!(%e, "quarantine task failed"),
        }
    }
    if timelines.config().peers.is_empty() {
        return error!("timeline is quarantined and no --peers are configured to recover it from");
    }
    let mut attempt = 0u64;
    loop {
        if timelines.lock_map().contains_key(&id) {
            return;
        }
        if dir.join(CONTROL_FILE_NAME).exists() && timelines.quarantine_reason(id).is_none() {
            let set = timelines.clone();
            match tokio::task::spawn_blocking(move || set.timeline(id, None)).await {
                Ok(Ok(Some(_))) => return info!("recovered timeline opened"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!(%e, "opening the recovered timeline"),
                Err(e) => warn!(%e, "opening the recovered timeline"),
            }
        } else {
            let answers =
                peers::statuses(&timelines.config().peers, id, &timelines.config().auth).await;
            let info = answers.iter().find_map(|(_, a)| match a {
                PeerAnswer::Status(s) if s.term > 0 || s.local_start_lsn != 0 => {
                    Some(GreetingInfo {
                        system_id: s.system_id,
                        pg_timeline: s.pg_timeline,
                        wal_seg_size: WAL_SEGMENT_SIZE as u32,
                    })
                }
                _ => None,
            });
            match info {
                Some(info) => match ensure_timeline(&timelines, id, &info).await {
                    Ok(()) if dir.join(CONTROL_FILE_NAME).exists() => continue,
                    Ok(()) => {}
                    Err(s) => {
                        if attempt.is_multiple_of(15) {
                            warn!("recovering the quarantined timeline: {}", s.message());
                        }
                    }
                },
                None => {
                    if attempt.is_multiple_of(15) {
                        warn!("no peer holds the quarantined timeline yet; retrying");
                    }
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(RETRY).await;
    }
}

/// Streams WAL from the donor's replication server from `fetch.pos` up to `commit`, or up to
/// the next offloaded segment boundary when the object store can take over.
async fn stream_from_peer(
    fetch: &mut Fetch,
    donor: &pb::TimelineStatusResponse,
    id: TenantTimeline,
    tli: u32,
    commit: Lsn,
    offloaded: u64,
    password: Option<String>,
) -> Result<(), String> {
    let addr = &donor.replication_addr;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("peer replication address {addr:?} is not host:port"))?;
    let cfg = ConnConfig {
        host: host.to_string(),
        port: port
            .parse()
            .map_err(|_| format!("peer replication address {addr:?} has no port"))?,
        application_name: Some("safekeeper-recovery".into()),
        password,
        options: Some(format!(
            "-c tenant_id={} -c timeline_id={}",
            id.tenant, id.timeline
        )),
        replication: true,
        ..ConnConfig::default()
    };
    let conn = PgConnection::connect(&cfg)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut stream = WalStream::start(conn, None, fetch.pos, tli)
        .await
        .map_err(|e| format!("streaming from {addr} at {}: {e}", fetch.pos))?;
    while fetch.pos < commit {
        let msg = stream
            .next(Duration::from_secs(10))
            .await
            .map_err(|e| format!("streaming from {addr}: {e}"))?;
        let Some(ReplicationMessage::XLogData { start, data, .. }) = msg else {
            if msg.is_none() {
                return Err(format!("{addr} sent nothing for 10 s at {}", fetch.pos));
            }
            continue;
        };
        if start != fetch.pos {
            return Err(format!(
                "{addr} sent WAL at {start}, expected {}",
                fetch.pos
            ));
        }
        let take = ((commit.0 - start.0) as usize).min(data.len());
        fetch.push(&data[..take]).await?;
        // Once a whole offloaded segment lies ahead, the object store is cheaper.
        if fetch.pos.is_segment_start() && fetch.pos.0 + WAL_SEGMENT_SIZE <= offloaded {
            break;
        }
    }
    Ok(())
}

/// The recovering timeline's WAL, written in batches off the async threads.
struct Fetch {
    storage: Option<WalStorage>,
    /// End of what was fetched (buffered or written).
    pos: Lsn,
    /// Where `buf` begins.
    buf_start: Lsn,
    buf: Vec<u8>,
    /// Segments taken from the object store, bytes streamed from the peer.
    from_store: u64,
    from_peer: u64,
}

impl Fetch {
    fn new(dir: &Path, tli: u32, start: Lsn) -> Result<Fetch, String> {
        let mut storage = WalStorage::open(dir, tli, Lsn(0), Lsn(0)).map_err(|e| e.to_string())?;
        storage.reset(start).map_err(|e| e.to_string())?;
        Ok(Fetch {
            storage: Some(storage),
            pos: start,
            buf_start: start,
            buf: Vec::with_capacity(WRITE_BATCH),
            from_store: 0,
            from_peer: 0,
        })
    }

    async fn push(&mut self, data: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        self.pos = Lsn(self.pos.0 + data.len() as u64);
        if self.buf.len() >= WRITE_BATCH {
            self.write().await?;
        }
        Ok(())
    }

    /// Writes and fsyncs what is buffered.
    async fn write(&mut self) -> Result<(), String> {
        let mut storage = self.storage.take().ok_or("WAL storage lost")?;
        let buf = std::mem::take(&mut self.buf);
        let at = self.buf_start;
        let (storage, r, mut buf) = tokio::task::spawn_blocking(move || {
            let r = storage
                .write(at, &buf)
                .and_then(|()| storage.flush().map(|_| ()));
            (storage, r, buf)
        })
        .await
        .map_err(|e| e.to_string())?;
        r.map_err(|e| e.to_string())?;
        self.storage = Some(storage);
        self.buf_start = self.pos;
        buf.clear();
        self.buf = buf;
        Ok(())
    }

    async fn finish(mut self) -> Result<(), String> {
        self.write().await
    }
}
