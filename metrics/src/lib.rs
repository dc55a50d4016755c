//! Metrics and health for every Strata service: one place for how metrics are made, named,
//! bucketed and exposed, so the pageserver, the safekeepers and the walproposer look alike to
//! an operator.
//!
//! - Metrics live in the process-wide default Prometheus registry (`prometheus::gather`).
//!   Each service declares its own in a `metrics` module with the constructors here, named
//!   `strata_<service>_<what>_<unit>`. Recording is an atomic add: nothing is allocated or
//!   locked per call.
//! - [`http`] serves `/metrics` (the Prometheus text format), `/health/live` and
//!   `/health/ready` (`/health` is ready) on a port of its own (`--metrics-listen`).
//! - `STRATA_METRICS=off` in the environment turns recording off ([`enabled`]), for measuring
//!   what the metrics cost on the hot paths; the endpoint still answers.

pub mod http;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

pub use prometheus;
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

/// Latency buckets in seconds: 1, 2.5, 5 per decade from 10 µs to 10 s (an fsync, a GetPage
/// with redo and a quorum round trip all land in the middle).
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for durations of background work (compaction, GC, uploads): 1 ms to 10 min.
pub const TASK_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Buckets for small counts (layer files visited by one read).
pub const COUNT_BUCKETS: [f64; 12] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0,
];

// 0: not read from the environment yet; 1: on; 2: off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether recording is on (`STRATA_METRICS=off` turns it off; read once).
#[inline]
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("STRATA_METRICS").map_or(true, |v| v != "off");
            set_enabled(on);
            on
        }
    }
}

/// Turns recording on or off (benchmarks compare both in one process).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// A start time, taken only while recording is on.
#[derive(Clone, Copy, Debug)]
pub struct Timer(Option<Instant>);

impl Timer {
    #[inline]
    pub fn start() -> Timer {
        Timer(enabled().then(Instant::now))
    }

    /// Records the time since the start in `h` (nothing when recording is off).
    #[inline]
    pub fn observe(self, h: &Histogram) {
        if let Some(t) = self.0 {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// Adds `n` to `c` while recording is on.
#[inline]
pub fn add(c: &IntCounter, n: u64) {
    if enabled() {
        c.inc_by(n);
    }
}

/// Registers `c` in the default registry. A second registration of the same name (a metric
/// made twice) keeps the first and is logged, not fatal: metrics never stop a service.
fn register<C: Collector + Clone + 'static>(c: C) -> C {
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "metric not registered");
    }
    c
}

// The names and help texts are constants of the services (checked by their unit tests),
// never input: a bad one is a programming error found by the first test that touches it.
const CONSTANT_NAME: &str = "metric names and labels are constants checked by unit tests";

pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect(CONSTANT_NAME))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect(CONSTANT_NAME))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect(CONSTANT_NAME))
}

pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(Histogram::with_opts(opts).expect(CONSTANT_NAME))
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(HistogramVec::new(opts, labels).expect(CONSTANT_NAME))
}

/// Everything registered, in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let families = prometheus::gather();
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

/// The lines of `expected` that [`render`] does not print (for tests of metric names).
pub fn missing(expected: &[&str]) -> Vec<String> {
    let text = render();
    expected
        .iter()
        .filter(|want| !text.lines().any(|l| l == **want))
        .map(|s| s.to_string())
        .collect()
}

/// The value of one series as [`render`] prints it (`name` or `name{labels}`), if present.
pub fn value(series: &str) -> Option<f64> {
    render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Per-timeline gauges computed when scraped (positions, lags), so the paths that move them
/// pay nothing: a collector refills `gauges` from the service's state on every scrape.
pub struct ScrapeGauges {
    gauges: Vec<prometheus::IntGaugeVec>,
    descs: Vec<prometheus::core::Desc>,
}

impl ScrapeGauges {
    /// One gauge per `(name, help)`, each labelled by `labels`.
    pub fn new(defs: &[(&str, &str)], labels: &[&str]) -> ScrapeGauges {
        let gauges: Vec<prometheus::IntGaugeVec> = defs
            .iter()
            .map(|(name, help)| {
                prometheus::IntGaugeVec::new(Opts::new(*name, *help), labels).expect(CONSTANT_NAME)
            })
            .collect();
        let descs = gauges
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        ScrapeGauges { gauges, descs }
    }

    pub fn descs(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    /// Clears every gauge (a scrape starts from nothing: removed timelines disappear).
    pub fn reset(&self) {
        self.gauges.iter().for_each(|g| g.reset());
    }

    /// Sets gauge `i` for the label values `labels` (values above i64::MAX are clamped).
    pub fn set(&self, i: usize, labels: &[&str], value: u64) {
        if let Some(g) = self.gauges.get(i) {
            if let Ok(m) = g.get_metric_with_label_values(labels) {
                m.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauges.iter().flat_map(|g| g.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_increase() {
        for b in [&LATENCY_BUCKETS[..], &TASK_BUCKETS[..], &COUNT_BUCKETS[..]] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }

    #[test]
    fn histogram_exposition_has_buckets_sum_and_count() {
        let h = histogram(
            "strata_test_latency_seconds",
            "a test histogram",
            &LATENCY_BUCKETS,
        );
        h.observe(0.000_3); // in (0.25 ms, 0.5 ms]
        h.observe(3.0); // in (2.5 s, 5 s]
        let missing = missing(&[
            "# TYPE strata_test_latency_seconds histogram",
            "strata_test_latency_seconds_bucket{le=\"0.00025\"} 0",
            "strata_test_latency_seconds_bucket{le=\"0.0005\"} 1",
            "strata_test_latency_seconds_bucket{le=\"2.5\"} 1",
            "strata_test_latency_seconds_bucket{le=\"5\"} 2",
            "strata_test_latency_seconds_bucket{le=\"+Inf\"} 2",
            "strata_test_latency_seconds_sum 3.0003",
            "strata_test_latency_seconds_count 2",
        ]);
        assert!(missing.is_empty(), "missing: {missing:?} in\n{}", render());
    }

    #[test]
    fn scrape_gauges_are_refilled_per_scrape() {
        let g = ScrapeGauges::new(
            &[
                ("strata_test_lsn", "an LSN"),
                ("strata_test_lag_bytes", "a lag"),
            ],
            &["tenant_id", "timeline_id"],
        );
        g.set(0, &["t", "a"], 100);
        g.set(1, &["t", "a"], u64::MAX);
        let names: Vec<String> = g.collect().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, ["strata_test_lsn", "strata_test_lag_bytes"]);
        let lag = &g.collect()[1];
        assert_eq!(lag.get_metric()[0].get_gauge().get_value(), i64::MAX as f64);
        g.reset();
        assert!(g.collect().iter().all(|f| f.get_metric().is_empty()));
    }
}
