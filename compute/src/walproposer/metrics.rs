//! The walproposer's metrics (served by `compute walproposer --metrics-listen`): one
//! walproposer per process, so none is labelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use strata_metrics::prometheus::{Histogram, IntCounter, IntGauge};
use strata_metrics::{add, counter, gauge, histogram, LATENCY_BUCKETS};
use walproto::Lsn;

struct Metrics {
    quorum_seconds: Histogram,
    append_seconds: Histogram,
    appends_in_flight: IntGauge,
    elections: IntCounter,
    term: IntGauge,
    received_lsn: IntGauge,
    flush_lsn: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    quorum_seconds: histogram(
        "strata_walproposer_quorum_seconds",
        "From a WAL chunk's arrival from Postgres to a majority of safekeepers having fsynced it",
        &LATENCY_BUCKETS,
    ),
    append_seconds: histogram(
        "strata_walproposer_append_seconds",
        "Append round trips to one safekeeper: sent to reported fsynced",
        &LATENCY_BUCKETS,
    ),
    appends_in_flight: gauge(
        "strata_walproposer_appends_in_flight",
        "Appends sent to the safekeepers and not yet reported fsynced (all safekeepers)",
    ),
    elections: counter(
        "strata_walproposer_elections_total",
        "Elections this walproposer won",
    ),
    term: gauge(
        "strata_walproposer_term",
        "The term this walproposer was elected in",
    ),
    received_lsn: gauge(
        "strata_walproposer_received_lsn",
        "End of the WAL received from Postgres",
    ),
    flush_lsn: gauge(
        "strata_walproposer_flush_lsn",
        "The flush LSN reported to Postgres: committed on a majority of safekeepers",
    ),
});

/// Elected and streaming from Postgres: what `/health/ready` answers.
static STREAMING: AtomicBool = AtomicBool::new(false);

/// Registers every metric, so a scrape shows them before the first event.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// `/health/ready`: elected and streaming.
pub fn ready() -> Result<(), String> {
    match STREAMING.load(Ordering::Relaxed) {
        true => Ok(()),
        false => Err("not elected and streaming from Postgres".into()),
    }
}

/// Set once streaming from Postgres after winning an election; cleared when that ends.
pub fn set_streaming(on: bool) {
    STREAMING.store(on, Ordering::Relaxed);
}

pub fn elected(term: u64) {
    add(&METRICS.elections, 1);
    METRICS.term.set(i64::try_from(term).unwrap_or(i64::MAX));
}

fn set_lsn(g: &IntGauge, lsn: Lsn) {
    if strata_metrics::enabled() {
        g.set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
    }
}

#[inline]
pub fn received(lsn: Lsn) {
    set_lsn(&METRICS.received_lsn, lsn);
}

#[inline]
pub fn reported_flush(lsn: Lsn) {
    set_lsn(&METRICS.flush_lsn, lsn);
}

/// A chunk that arrived `d` ago is committed.
#[inline]
pub fn quorum_reached(d: Duration) {
    if strata_metrics::enabled() {
        METRICS.quorum_seconds.observe(d.as_secs_f64());
    }
}

/// An append sent `d` ago is reported fsynced.
#[inline]
pub fn append_acked(d: Duration) {
    if strata_metrics::enabled() {
        METRICS.append_seconds.observe(d.as_secs_f64());
    }
}

/// `n` appends sent (positive) or answered or abandoned (negative).
#[inline]
pub fn appends_in_flight(n: i64) {
    if strata_metrics::enabled() {
        METRICS.appends_in_flight.add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_readiness() {
        init();
        assert!(ready().is_err());
        set_streaming(true);
        assert!(ready().is_ok());
        set_streaming(false);
        elected(7);
        reported_flush(Lsn(0x1234));
        appends_in_flight(2);
        appends_in_flight(-1);
        let missing = strata_metrics::missing(&[
            "strata_walproposer_elections_total 1",
            "strata_walproposer_term 7",
            "strata_walproposer_flush_lsn 4660",
            "strata_walproposer_appends_in_flight 1",
            "strata_walproposer_quorum_seconds_count 0",
        ]);
        assert!(
            missing.is_empty(),
            "missing: {missing:?} in\n{}",
            strata_metrics::render()
        );
    }
}
