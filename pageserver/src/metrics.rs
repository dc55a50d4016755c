//! The pageserver's metrics, all in one place (exposed by the binary's `--metrics-listen`
//! endpoint, see `strata_metrics`).
//!
//! Two kinds:
//! - **Events** (GetPage, ingest, compaction, GC, downloads) are counted where they happen,
//!   through the functions below: an atomic add each, nothing allocated or locked.
//! - **Positions** per timeline (LSNs and lags) are read from the timelines when scraped
//!   ([`TimelineCollector`]), so ingest pays nothing for them. Lags are measured against the
//!   newest WAL the pageserver knows exists: the safekeepers' commit LSN as the walreceiver
//!   last saw it, or what it received if more. A lag in seconds is the age of the oldest WAL
//!   beyond that position, from a history of when each newer position was first seen
//!   (sampled every second; WAL that existed before the pageserver started counts from its
//!   start). While ingest is stopped, the ingest lag is at least the time since the stop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_metrics::prometheus::core::{Collector, Desc};
use strata_metrics::prometheus::proto::MetricFamily;
use strata_metrics::prometheus::{Histogram, IntCounter};
use strata_metrics::{
    add, counter, histogram, histogram_vec, ScrapeGauges, Timer, COUNT_BUCKETS, LATENCY_BUCKETS,
    TASK_BUCKETS,
};
use walproto::ids::{TenantId, TimelineId};

use crate::tenant::TenantManager;

struct Metrics {
    getpage_redo: Histogram,
    getpage_no_redo: Histogram,
    getpage_errors: IntCounter,
    layers_visited: Histogram,
    ingest_records: IntCounter,
    ingest_errors: IntCounter,
    compactions: IntCounter,
    compaction_seconds: Histogram,
    gc_seconds: Histogram,
    downloads: IntCounter,
    download_bytes: IntCounter,
    download_seconds: Histogram,
    upload_bytes: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let getpage = histogram_vec(
        "strata_pageserver_getpage_seconds",
        "Page reads (GetPage, basebackup, ingest's own reads) by whether WAL redo was needed \
         (redo=\"needed\") or a stored or cached page was returned as is (redo=\"none\")",
        &["redo"],
        &LATENCY_BUCKETS,
    );
    Metrics {
        getpage_redo: getpage.with_label_values(&["needed"]),
        getpage_no_redo: getpage.with_label_values(&["none"]),
        getpage_errors: counter(
            "strata_pageserver_getpage_errors_total",
            "Page reads that failed",
        ),
        layers_visited: histogram(
            "strata_pageserver_getpage_layers_visited",
            "Layer files visited by one page read (read amplification)",
            &COUNT_BUCKETS,
        ),
        ingest_records: counter(
            "strata_pageserver_ingest_records_total",
            "WAL records ingested (rate() gives records per second)",
        ),
        ingest_errors: counter(
            "strata_pageserver_ingest_errors_total",
            "WAL chunks refused: undecodable WAL (retried) and records ingest refused (a stop)",
        ),
        compactions: counter(
            "strata_pageserver_compactions_total",
            "Compactions that merged layers or wrote images (foreground and background)",
        ),
        compaction_seconds: histogram(
            "strata_pageserver_compaction_seconds",
            "Duration of foreground compaction runs (manual and after a flush)",
            &TASK_BUCKETS,
        ),
        gc_seconds: histogram(
            "strata_pageserver_gc_seconds",
            "Duration of timeline GC runs (count: runs)",
            &TASK_BUCKETS,
        ),
        downloads: counter(
            "strata_pageserver_ondemand_downloads_total",
            "Layer files downloaded on demand from the object store",
        ),
        download_bytes: counter(
            "strata_pageserver_ondemand_download_bytes_total",
            "Bytes of layer files downloaded on demand",
        ),
        download_seconds: histogram(
            "strata_pageserver_ondemand_download_seconds",
            "Duration of on-demand layer downloads",
            &LATENCY_BUCKETS,
        ),
        upload_bytes: counter(
            "strata_pageserver_remote_upload_bytes_total",
            "Bytes of layer files uploaded to the object store",
        ),
    }
});

/// Registers every event metric, so a scrape shows them (at 0) before the first event.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// A page read ended: `redo` whether records were applied, `layers` files visited.
#[inline]
pub fn page_read(timer: Timer, redo: bool, layers: usize) {
    let m = &*METRICS;
    timer.observe(if redo {
        &m.getpage_redo
    } else {
        &m.getpage_no_redo
    });
    if strata_metrics::enabled() {
        m.layers_visited.observe(layers as f64);
    }
}

#[inline]
pub fn page_read_failed() {
    add(&METRICS.getpage_errors, 1);
}

#[inline]
pub fn records_ingested(n: usize) {
    add(&METRICS.ingest_records, n as u64);
}

pub fn ingest_error() {
    add(&METRICS.ingest_errors, 1);
}

pub fn compacted() {
    add(&METRICS.compactions, 1);
}

pub fn compaction_run(timer: Timer) {
    timer.observe(&METRICS.compaction_seconds);
}

pub fn gc_run(timer: Timer) {
    timer.observe(&METRICS.gc_seconds);
}

pub fn downloaded_on_demand(bytes: u64, timer: Timer) {
    add(&METRICS.downloads, 1);
    add(&METRICS.download_bytes, bytes);
    timer.observe(&METRICS.download_seconds);
}

pub fn uploaded(bytes: u64) {
    add(&METRICS.upload_bytes, bytes);
}

/// What other parts learn of a timeline that its handle does not keep.
#[derive(Debug, Default)]
pub struct TimelineFacts {
    /// The safekeepers' commit LSN, as the walreceiver last saw it.
    pub commit_lsn_seen: AtomicU64,
    /// Bytes of the layer files the last uploaded manifest lists.
    pub remote_layer_bytes: AtomicU64,
}

type TimelineKey = (TenantId, TimelineId);

static FACTS: LazyLock<Mutex<HashMap<TimelineKey, Arc<TimelineFacts>>>> =
    LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The facts of a timeline (created on first use; look it up once per stream or task, not
/// per event).
pub fn timeline_facts(tenant: TenantId, timeline: TimelineId) -> Arc<TimelineFacts> {
    lock(&FACTS).entry((tenant, timeline)).or_default().clone()
}

/// When each newer head position (the newest WAL known to exist) was first seen.
#[derive(Debug, Default)]
struct LagHistory {
    seen: VecDeque<(u64, Instant)>,
}

/// About an hour of once-a-second samples; older positions count from the oldest kept.
const MAX_HISTORY: usize = 4096;

impl LagHistory {
    fn note(&mut self, head: u64, now: Instant) {
        if self.seen.back().is_none_or(|(l, _)| head > *l) {
            if self.seen.len() >= MAX_HISTORY {
                self.seen.pop_front();
            }
            self.seen.push_back((head, now));
        }
    }

    /// Forgets positions every tracked position has reached.
    fn forget_up_to(&mut self, pos: u64) {
        while self.seen.front().is_some_and(|(l, _)| *l <= pos) {
            self.seen.pop_front();
        }
    }

    /// The age of the oldest WAL beyond `pos`.
    fn lag(&self, pos: u64, now: Instant) -> Duration {
        self.seen
            .iter()
            .find(|(l, _)| *l > pos)
            .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t))
    }
}

/// One timeline's positions at a scrape.
struct Positions {
    key: TimelineKey,
    received: u64,
    ingested: u64,
    durable: u64,
    remote: u64,
    commit_seen: u64,
    stopped_since_unix_ms: Option<u64>,
    local_bytes: u64,
    remote_bytes: u64,
}

impl Positions {
    fn head(&self) -> u64 {
        self.commit_seen.max(self.received).max(self.ingested)
    }
}

// Indexes into the scrape gauges.
const RECEIVED: usize = 0;
const INGESTED: usize = 1;
const DURABLE: usize = 2;
const COMMIT: usize = 3;
const INGEST_LAG: usize = 4;
const DURABLE_LAG: usize = 5;
const INGEST_LAG_S: usize = 6;
const DURABLE_LAG_S: usize = 7;
const STOPPED: usize = 8;
const LOCAL_BYTES: usize = 9;
const REMOTE: usize = 10;
const REMOTE_LAG: usize = 11;
const REMOTE_LAG_S: usize = 12;
const REMOTE_BYTES: usize = 13;

const GAUGES: [(&str, &str); 14] = [
    (
        "strata_pageserver_received_lsn",
        "End of the WAL received from the safekeepers",
    ),
    (
        "strata_pageserver_ingested_lsn",
        "End of the last WAL record ingested",
    ),
    (
        "strata_pageserver_durable_lsn",
        "Ingested and durable on local disk (disk consistent LSN)",
    ),
    (
        "strata_pageserver_commit_lsn",
        "The safekeepers' commit LSN as the walreceiver last saw it",
    ),
    (
        "strata_pageserver_ingest_lag_bytes",
        "Newest known WAL (commit or received) minus ingested",
    ),
    (
        "strata_pageserver_durable_lag_bytes",
        "Newest known WAL minus durable locally",
    ),
    (
        "strata_pageserver_ingest_lag_seconds",
        "Age of the oldest WAL not ingested",
    ),
    (
        "strata_pageserver_durable_lag_seconds",
        "Age of the oldest WAL not durable locally",
    ),
    (
        "strata_pageserver_ingest_stopped",
        "1 while ingest is stopped at a record it cannot ingest",
    ),
    (
        "strata_pageserver_layer_local_bytes",
        "Bytes of the layer files on local disk",
    ),
    (
        "strata_pageserver_remote_lsn",
        "Durable in the object store (remote consistent LSN)",
    ),
    (
        "strata_pageserver_remote_lag_bytes",
        "Newest known WAL minus durable in the object store",
    ),
    (
        "strata_pageserver_remote_lag_seconds",
        "Age of the oldest WAL not in the object store",
    ),
    (
        "strata_pageserver_layer_remote_bytes",
        "Bytes of the layer files the uploaded manifest lists",
    ),
];

/// Reads every timeline's positions when scraped (see the module doc).
pub struct TimelineCollector {
    manager: Arc<TenantManager>,
    /// Whether the pageserver uploads to an object store (else the remote gauges are left out).
    remote: bool,
    gauges: ScrapeGauges,
    history: Mutex<HashMap<TimelineKey, LagHistory>>,
}

impl TimelineCollector {
    /// Makes the collector and registers it in the default registry.
    pub fn register(manager: Arc<TenantManager>, remote: bool) -> Arc<TimelineCollector> {
        let c = Arc::new(TimelineCollector {
            manager,
            remote,
            gauges: ScrapeGauges::new(&GAUGES, &["tenant_id", "timeline_id"]),
            history: Mutex::new(HashMap::new()),
        });
        if let Err(e) = strata_metrics::prometheus::register(Box::new(Registered(c.clone()))) {
            tracing::warn!(error = %e, "timeline metrics not registered");
        }
        c
    }

    fn positions(&self) -> Vec<Positions> {
        let mut out = Vec::new();
        for tenant in self.manager.tenants() {
            for h in tenant.timelines() {
                let p = h.wal_progress();
                let (ingested, residence) = h.read(|t| (t.last_record_end(), t.residence()));
                let key = (h.tenant_id(), h.timeline_id());
                let facts = timeline_facts(key.0, key.1);
                out.push(Positions {
                    key,
                    received: p.received.0,
                    ingested: ingested.0,
                    durable: p.durable_local.0,
                    remote: p.durable_remote.0,
                    commit_seen: facts.commit_lsn_seen.load(Ordering::Relaxed),
                    stopped_since_unix_ms: h.ingest_stop().map(|s| s.since_unix_ms),
                    local_bytes: residence.resident_bytes,
                    remote_bytes: facts.remote_layer_bytes.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// Notes the head positions now (called every second, and by each scrape), so lags in
    /// seconds count from when WAL was first seen, not from the next scrape.
    pub fn sample(&self) {
        let now = Instant::now();
        let positions = self.positions();
        self.note(&positions, now);
    }

    fn note(&self, positions: &[Positions], now: Instant) {
        let mut history = lock(&self.history);
        history.retain(|k, _| positions.iter().any(|p| &p.key == k));
        for p in positions {
            let h = history.entry(p.key).or_default();
            h.note(p.head(), now);
            let lowest = if self.remote {
                p.remote.min(p.durable)
            } else {
                p.durable
            };
            h.forget_up_to(lowest.min(p.ingested));
        }
    }

    fn fill(&self) {
        let now = Instant::now();
        let positions = self.positions();
        self.note(&positions, now);
        let history = lock(&self.history);
        let g = &self.gauges;
        g.reset();
        let now_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for p in &positions {
            // Rendered once per timeline and scrape, for the labels.
            let (tenant, timeline) = (p.key.0.to_string(), p.key.1.to_string());
            let labels = [tenant.as_str(), timeline.as_str()];
            let lag = |pos: u64| {
                history
                    .get(&p.key)
                    .map_or(Duration::ZERO, |h| h.lag(pos, now))
            };
            let head = p.head();
            g.set(RECEIVED, &labels, p.received);
            g.set(INGESTED, &labels, p.ingested);
            g.set(DURABLE, &labels, p.durable);
            g.set(COMMIT, &labels, p.commit_seen);
            g.set(INGEST_LAG, &labels, head.saturating_sub(p.ingested));
            g.set(DURABLE_LAG, &labels, head.saturating_sub(p.durable));
            let stopped_for = p
                .stopped_since_unix_ms
                .map_or(0, |since| now_unix_ms.saturating_sub(since) / 1000);
            g.set(
                INGEST_LAG_S,
                &labels,
                lag(p.ingested).as_secs().max(stopped_for),
            );
            g.set(DURABLE_LAG_S, &labels, lag(p.durable).as_secs());
            g.set(
                STOPPED,
                &labels,
                u64::from(p.stopped_since_unix_ms.is_some()),
            );
            g.set(LOCAL_BYTES, &labels, p.local_bytes);
            if self.remote {
                g.set(REMOTE, &labels, p.remote);
                g.set(REMOTE_LAG, &labels, head.saturating_sub(p.remote));
                g.set(REMOTE_LAG_S, &labels, lag(p.remote).as_secs());
                g.set(REMOTE_BYTES, &labels, p.remote_bytes);
            }
        }
    }
}

/// The collector as the registry holds it.
struct Registered(Arc<TimelineCollector>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        self.0.gauges.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.fill();
        self.0.gauges.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_seconds_is_the_age_of_the_oldest_wal_beyond_a_position() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = LagHistory::default();
        h.note(100, t0);
        h.note(100, t0 + s(1)); // unchanged: keeps its first sighting
        h.note(200, t0 + s(2));
        h.note(150, t0 + s(3)); // never moves back
        let now = t0 + s(10);
        assert_eq!(h.lag(50, now), s(10));
        assert_eq!(h.lag(100, now), s(8));
        assert_eq!(h.lag(200, now), Duration::ZERO);
        h.forget_up_to(100);
        assert_eq!(h.seen.len(), 1);
        assert_eq!(h.lag(150, now), s(8));
        for i in 0..(MAX_HISTORY as u64 + 10) {
            h.note(300 + i, now);
        }
        assert_eq!(h.seen.len(), MAX_HISTORY);
    }

    #[test]
    fn event_metrics_have_their_documented_names() {
        init();
        page_read(Timer::start(), true, 3);
        page_read(Timer::start(), false, 0);
        records_ingested(5);
        // Other tests of this process read and ingest too: at least ours is counted.
        for (series, least) in [
            (
                "strata_pageserver_getpage_seconds_count{redo=\"needed\"}",
                1.0,
            ),
            (
                "strata_pageserver_getpage_seconds_count{redo=\"none\"}",
                1.0,
            ),
            (
                "strata_pageserver_getpage_layers_visited_bucket{le=\"3\"}",
                2.0,
            ),
            ("strata_pageserver_getpage_layers_visited_count", 2.0),
            ("strata_pageserver_ingest_records_total", 5.0),
            ("strata_pageserver_ondemand_downloads_total", 0.0),
            ("strata_pageserver_gc_seconds_count", 0.0),
        ] {
            let v = strata_metrics::value(series);
            assert!(v >= Some(least), "{series}: {v:?}");
        }
    }
}
