//! The walproposer: a physical replication client of an unmodified Postgres 15 and a Paxos
//! proposer to N safekeepers.
//!
//! 1. [`checks`]: Postgres must name us in `synchronous_standby_names`, run with
//!    `synchronous_commit` on (or `remote_write`) and `wal_level` replica/logical; the physical
//!    slot is created if missing.
//! 2. [`election`]: greet every safekeeper, pick a term above any seen, win a majority of votes,
//!    take the most advanced log (highest last log term, then flush LSN) as the donor, and send
//!    each voter `Elected` with the point where its log agrees with the new history.
//! 3. [`proposer`]: stream from Postgres (starting at the lowest of those points; Postgres is
//!    the source of the WAL bytes), buffer, fan out to one [`acceptor`] task per safekeeper,
//!    compute the commit LSN (the highest LSN fsynced by a majority in this term) and report
//!    it to Postgres as `flushed` (never more), so a synchronous commit returns only once a
//!    majority holds it.

pub mod acceptor;
pub mod buffer;
pub mod checks;
pub mod election;
pub mod fence;
pub mod history;
pub mod metrics;
pub mod proposer;
pub mod session;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use walproto::proto::safekeeper as pb;
use walproto::Lsn;

use crate::pg::ConnConfig;
use buffer::WalBuffer;
use history::TermHistory;

pub use proposer::run;

/// Everything the walproposer needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// How to reach Postgres (`replication` and `application_name` are set by the proposer).
    pub pg: ConnConfig,
    /// `host:port` of each safekeeper's gRPC endpoint.
    pub safekeepers: Vec<String>,
    /// 32 lowercase hex characters.
    pub tenant_id: String,
    pub timeline_id: String,
    /// The physical replication slot (created if missing).
    pub slot: String,
    /// The application name Postgres's `synchronous_standby_names` must list.
    pub application_name: String,
    /// Free-form id for the safekeepers' logs.
    pub proposer_id: String,
    /// Where the WAL on the safekeepers begins when none of them has any (default: the start
    /// of Postgres's current WAL segment).
    pub start_lsn: Option<Lsn>,
    /// Stop reading from Postgres while a majority is this many bytes behind.
    pub max_lag: u64,
    /// Bytes in flight (sent, not yet fsynced) per safekeeper.
    pub max_inflight: u64,
    /// Appends in flight (sent, not yet answered) per safekeeper; WAL arriving meanwhile
    /// is coalesced into the next append.
    pub max_appends_in_flight: usize,
    /// Most WAL kept in memory for safekeepers that lag or reconnect.
    pub max_buffer: u64,
    /// Timeout for connecting and for each election step.
    pub timeout: Duration,
    /// Sent on every Propose call when the safekeepers check tokens.
    pub safekeeper_token: Option<SafekeeperToken>,
    /// The CA the safekeepers' certificates are checked against: they are called over TLS
    /// with it, in clear without it.
    pub safekeeper_tls: Option<strata_auth::ClientTls>,
}

/// A token (scope `safekeeper`) for the safekeepers; never printed.
#[derive(Clone)]
pub struct SafekeeperToken(pub String);

impl std::fmt::Debug for SafekeeperToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SafekeeperToken(..)")
    }
}

impl Config {
    /// Defaults for everything but the connection, safekeepers and ids.
    pub fn new(
        pg: ConnConfig,
        safekeepers: Vec<String>,
        tenant_id: &str,
        timeline_id: &str,
    ) -> Config {
        Config {
            pg,
            safekeepers,
            tenant_id: tenant_id.to_string(),
            timeline_id: timeline_id.to_string(),
            slot: "strata".into(),
            application_name: "strata".into(),
            proposer_id: format!("walproposer-{}", std::process::id()),
            start_lsn: None,
            max_lag: 16 << 20,
            max_inflight: 16 << 20,
            max_appends_in_flight: 1,
            max_buffer: 512 << 20,
            timeout: Duration::from_secs(5),
            safekeeper_token: None,
            safekeeper_tls: None,
        }
    }
}

/// Positions the main loop publishes to the acceptor tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// End of the WAL received from Postgres (and buffered).
    pub end: Lsn,
    /// The proposer's commit LSN.
    pub commit: Lsn,
    /// Every safekeeper holds WAL up to here (0 until all have reported).
    pub truncate: Lsn,
}

/// State shared by the main loop and the acceptor tasks after the election.
pub struct Shared {
    pub term: u64,
    pub history: TermHistory,
    pub greeting: pb::Greeting,
    pub buffer: Mutex<WalBuffer>,
    pub progress: watch::Sender<Progress>,
    pub max_inflight: u64,
    pub max_appends_in_flight: usize,
    pub timeout: Duration,
    pub safekeeper_token: Option<SafekeeperToken>,
    pub safekeeper_tls: Option<strata_auth::ClientTls>,
    /// A replication connection's settings for catching up an acceptor from Postgres
    /// (application name `<app>_catchup`, never a synchronous standby).
    pub catchup_pg: ConnConfig,
    pub pg_timeline: u32,
    /// Per acceptor: it has sent everything received and has room for another append. The
    /// main loop reads from Postgres only while one of them does (see [`Shared::any_hungry`]).
    pub hungry: Vec<AtomicBool>,
    /// Woken when an acceptor becomes hungry.
    pub hungry_notify: Notify,
    /// Per acceptor: the highest commit LSN it has acknowledged (each append answer carries
    /// it). After Postgres ends the stream, the walproposer waits for these to reach the final
    /// commit before it goes (see `drain_after_stream_end`).
    pub acked_commit: Vec<AtomicU64>,
}

impl Shared {
    /// Records whether acceptor `idx` waits for new WAL; wakes the main loop when it starts to.
    pub fn set_hungry(&self, idx: usize, hungry: bool) {
        if let Some(h) = self.hungry.get(idx) {
            if !h.swap(hungry, Ordering::Relaxed) && hungry {
                self.hungry_notify.notify_one();
            }
        }
    }

    /// Some acceptor waits for new WAL. While none does (each has an append in flight), WAL
    /// that Postgres sends is left in the socket: it is read, several messages at once, when
    /// an answer frees an acceptor, which saves the proposer a wake-up per message under load
    /// and costs no latency (nobody could have sent it earlier).
    pub fn any_hungry(&self) -> bool {
        self.hungry.iter().any(|h| h.load(Ordering::Relaxed))
    }

    /// Records a commit LSN acceptor `idx` acknowledged.
    pub fn set_acked_commit(&self, idx: usize, commit: Lsn) {
        if let Some(a) = self.acked_commit.get(idx) {
            a.fetch_max(commit.0, Ordering::Relaxed);
        }
    }

    /// The highest commit LSN acceptor `idx` acknowledged.
    pub fn acked_commit(&self, idx: usize) -> Lsn {
        Lsn(self
            .acked_commit
            .get(idx)
            .map_or(0, |a| a.load(Ordering::Relaxed)))
    }
}
