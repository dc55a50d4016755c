//! The safekeeper's metrics (served by the binary's `--metrics-listen` endpoint).
//!
//! WAL writes and fsyncs are timed where they happen ([`crate::wal_storage`]): an atomic add
//! each. Per-timeline positions are read from the open timelines when scraped
//! ([`TimelineCollector`]), so the append path pays nothing for them.

use std::sync::{Arc, LazyLock};

use strata_metrics::prometheus::core::{Collector, Desc};
use strata_metrics::prometheus::proto::MetricFamily;
use strata_metrics::prometheus::{Histogram, IntCounter};
use strata_metrics::{add, counter, histogram, ScrapeGauges, Timer, LATENCY_BUCKETS};

use crate::timelines::Timelines;

struct Metrics {
    write_seconds: Histogram,
    fsync_seconds: Histogram,
    written_bytes: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    write_seconds: histogram(
        "strata_safekeeper_append_seconds",
        "Writing one append's WAL into the segment files (before the fsync)",
        &LATENCY_BUCKETS,
    ),
    fsync_seconds: histogram(
        "strata_safekeeper_fsync_seconds",
        "Making written WAL durable: fdatasync of the segments written (and of the directory)",
        &LATENCY_BUCKETS,
    ),
    written_bytes: counter(
        "strata_safekeeper_wal_written_bytes_total",
        "WAL bytes written into segment files",
    ),
});

/// Registers every event metric, so a scrape shows them (at 0) before the first append.
pub fn init() {
    LazyLock::force(&METRICS);
}

#[inline]
pub fn wal_written(timer: Timer, bytes: usize) {
    timer.observe(&METRICS.write_seconds);
    add(&METRICS.written_bytes, bytes as u64);
}

#[inline]
pub fn wal_synced(timer: Timer) {
    timer.observe(&METRICS.fsync_seconds);
}

const FLUSH: usize = 0;
const COMMIT: usize = 1;
const CONSUMER_DURABLE: usize = 2;
const CONSUMER_LAG: usize = 3;
const OFFLOADED: usize = 4;
const OFFLOAD_LAG: usize = 5;

const GAUGES: [(&str, &str); 6] = [
    (
        "strata_safekeeper_flush_lsn",
        "End of the WAL fsynced on this safekeeper",
    ),
    (
        "strata_safekeeper_commit_lsn",
        "The commit LSN: WAL known to be on a majority",
    ),
    (
        "strata_safekeeper_consumer_durable_lsn",
        "What the pageserver reported durable in the object store",
    ),
    (
        "strata_safekeeper_consumer_lag_bytes",
        "Commit LSN minus what the pageserver reported durable in the object store",
    ),
    (
        "strata_safekeeper_offloaded_lsn",
        "WAL in the object store (complete segments, or the last partial upload)",
    ),
    (
        "strata_safekeeper_offload_lag_bytes",
        "Flush LSN minus the WAL in the object store",
    ),
];

/// Reads the open timelines' positions when scraped.
pub struct TimelineCollector {
    timelines: Arc<Timelines>,
    gauges: ScrapeGauges,
}

impl TimelineCollector {
    /// Registers the collector of these timelines in the default registry.
    pub fn register(timelines: Arc<Timelines>) {
        let c = TimelineCollector {
            timelines,
            gauges: ScrapeGauges::new(&GAUGES, &["tenant_id", "timeline_id"]),
        };
        if let Err(e) = strata_metrics::prometheus::register(Box::new(c)) {
            tracing::warn!(error = %e, "timeline metrics not registered");
        }
    }

    fn fill(&self) {
        let g = &self.gauges;
        g.reset();
        let remote = self.timelines.config().remote.is_some();
        for tl in self.timelines.open_timelines() {
            if tl.is_quarantined() {
                continue;
            }
            let (flush, commit) = tl.lsns();
            let state = tl.state();
            let partial = tl.offload.lock().map_or(0, |o| o.partial_offloaded_lsn.0);
            let (tenant, timeline) = (tl.id.tenant.to_string(), tl.id.timeline.to_string());
            let labels = [tenant.as_str(), timeline.as_str()];
            g.set(FLUSH, &labels, flush.0);
            g.set(COMMIT, &labels, commit.0);
            let consumer = state.consumer_durable_lsn.0;
            g.set(CONSUMER_DURABLE, &labels, consumer);
            g.set(CONSUMER_LAG, &labels, commit.0.saturating_sub(consumer));
            if remote {
                let offloaded = state.offloaded_lsn.0.max(partial);
                g.set(OFFLOADED, &labels, offloaded);
                g.set(OFFLOAD_LAG, &labels, flush.0.saturating_sub(offloaded));
            }
        }
    }
}

impl Collector for TimelineCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.fill();
        self.gauges.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_metrics_have_their_documented_names() {
        init();
        wal_written(Timer::start(), 8192);
        wal_synced(Timer::start());
        // Other tests of this process write WAL too: at least ours is counted.
        for (series, least) in [
            ("strata_safekeeper_append_seconds_count", 1.0),
            ("strata_safekeeper_fsync_seconds_count", 1.0),
            ("strata_safekeeper_wal_written_bytes_total", 8192.0),
        ] {
            let v = strata_metrics::value(series);
            assert!(v >= Some(least), "{series}: {v:?}");
        }
    }
}
