//! The printed report of `lazy_compute`: the run's conditions, the start table, the query
//! speed table (medians over rounds, every round's figure listed too) and the goals.

use std::fmt::Write as _;

use super::kind::Kind;
use super::query_speed::SpeedSample;
use super::start_time::StartSample;
use crate::branch_bench::report::mib;

/// Everything measured at one scale.
#[derive(Clone, Debug)]
pub struct ScaleResult {
    pub scale: u32,
    pub db_bytes: u64,
    pub accounts_bytes: u64,
    pub starts: Vec<StartSample>,
    pub speeds: Vec<SpeedSample>,
}

/// How the run was made.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub date: String,
    pub command: String,
    pub machine: String,
    pub build: String,
    pub drop_caches: bool,
    pub rounds: usize,
    pub query_rounds: usize,
    pub select_secs: u32,
    pub rw_secs: u32,
    pub clients: u32,
}

/// The median (mean of the middle two for an even count); None for no values.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl ScaleResult {
    fn start_median(&self, kind: Kind, f: impl Fn(&StartSample) -> f64) -> Option<f64> {
        median(self.starts.iter().filter(|s| s.kind == kind).map(f))
    }

    fn speed_median(&self, kind: Kind, f: impl Fn(&SpeedSample) -> f64) -> Option<f64> {
        median(self.speeds.iter().filter(|s| s.kind == kind).map(f))
    }

    fn loads(&self) -> Vec<f64> {
        let starts = self.starts.iter().map(|s| s.load);
        let speeds = self.speeds.iter().flat_map(|s| s.loads.iter().copied());
        starts.chain(speeds).collect()
    }
}

/// The whole report.
pub fn render(info: &RunInfo, scales: &[ScaleResult]) -> String {
    let mut s = String::new();
    conditions(&mut s, info, scales);
    start_table(&mut s, info, scales);
    speed_table(&mut s, info, scales);
    goals(&mut s, scales);
    s
}

fn conditions(s: &mut String, info: &RunInfo, scales: &[ScaleResult]) {
    let loads: Vec<f64> = scales.iter().flat_map(ScaleResult::loads).collect();
    let lo = loads.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = loads.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(s, "date: {}", info.date);
    let _ = writeln!(s, "command: {}", info.command);
    let _ = writeln!(s, "machine: {}; {}", info.machine, info.build);
    let _ = writeln!(
        s,
        "load average (1 min) before each measured start: median {}, min {}, max {}",
        cell(median(loads.iter().copied()), 1),
        cell(lo.is_finite().then_some(lo), 1),
        cell(hi.is_finite().then_some(hi), 1),
    );
    let _ = writeln!(
        s,
        "OS page cache: {} before every measured start",
        if info.drop_caches {
            "synced and dropped"
        } else {
            "NOT dropped (no permission or --no-drop-caches)"
        }
    );
    let _ = writeln!(s);
}

fn start_table(s: &mut String, info: &RunInfo, scales: &[ScaleResult]) {
    let _ = writeln!(
        s,
        "Start at a past LSN → first answer (a point select on pgbench_accounts), median of \
         {} rounds; first query = a new psql: connection and query (the query alone by \
         \\timing):",
        info.rounds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scale | DB MiB at T | lazy start s | lazy first query ms | full copy start s | full copy first query ms | PITR start s | PITR first query ms | start + answer s: lazy / full copy / PITR |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in scales {
        let mut row = format!("| {} | {:.0} |", r.scale, mib(r.db_bytes));
        let mut totals = Vec::new();
        for kind in [Kind::Lazy, Kind::FullCopy, Kind::Pitr] {
            let start = r.start_median(kind, |x| x.start_secs);
            let wall = r.start_median(kind, |x| x.first_query_wall_ms);
            let query = r.start_median(kind, |x| x.first_query_ms);
            let q = match (wall, query) {
                (Some(w), Some(q)) => format!("{w:.0} ({q:.1})"),
                _ => "–".into(),
            };
            let _ = write!(row, " {} | {q} |", cell(start, 2));
            totals.push(cell(r.start_median(kind, StartSample::total_secs), 2));
        }
        let _ = writeln!(s, "{row} {} |", totals.join(" / "));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Every round (start s, first query ms):");
    for r in scales {
        for kind in [Kind::Lazy, Kind::FullCopy, Kind::Pitr] {
            let rounds: Vec<String> = r
                .starts
                .iter()
                .filter(|x| x.kind == kind)
                .map(|x| format!("{:.2} s {:.0} ms", x.start_secs, x.first_query_wall_ms))
                .collect();
            if !rounds.is_empty() {
                let _ = writeln!(s, "  scale {} {kind}: {}", r.scale, rounds.join("; "));
            }
        }
        // The breakdown of the median lazy (or else full-copy) start.
        for kind in [Kind::Lazy, Kind::FullCopy, Kind::Pitr] {
            if let Some(x) = median_sample(&r.starts, kind) {
                if !x.detail.is_empty() {
                    let _ = writeln!(s, "  scale {} {kind}, median round: {}", r.scale, x.detail);
                }
            }
        }
    }
    let _ = writeln!(s);
}

/// The sample of `kind` whose start time is the median one (the lower middle for an even
/// count).
fn median_sample(samples: &[StartSample], kind: Kind) -> Option<&StartSample> {
    let mut v: Vec<&StartSample> = samples.iter().filter(|x| x.kind == kind).collect();
    v.sort_by(|a, b| a.start_secs.total_cmp(&b.start_secs));
    let n = v.len();
    (n > 0).then(|| v[(n - 1) / 2])
}

type SpeedColumn = (&'static str, fn(&SpeedSample) -> f64);

const SPEED_COLUMNS: [SpeedColumn; 6] = [
    ("-S cold tps", |x| x.select_cold_tps),
    ("-S warm tps", |x| x.select_warm_tps),
    ("prewarm read MB/s", |x| x.prewarm_mb_s),
    ("scan cold MB/s", |x| x.scan_cold_mb_s),
    ("scan warm MB/s", |x| x.scan_warm_mb_s),
    ("read-write tps", |x| x.rw_tps),
];

fn speed_table(s: &mut String, info: &RunInfo, scales: &[ScaleResult]) {
    if scales.iter().all(|r| r.speeds.is_empty()) {
        return;
    }
    let _ = writeln!(
        s,
        "Query speed, median of {} round(s), {} clients: `pgbench -S` for the first {} s after \
         the start (cold) and after pg_prewarm read pgbench_accounts and its key (warm); \
         `SELECT count(*), sum(abalance) FROM pgbench_accounts` right after a start (cold) \
         and again (warm), MB/s of the table; TPC-B-like pgbench {} s on a read-write compute \
         of a new branch at T:",
        info.query_rounds, info.clients, info.select_secs, info.rw_secs
    );
    let _ = writeln!(s);
    let header: Vec<&str> = SPEED_COLUMNS.iter().map(|(h, _)| *h).collect();
    let _ = writeln!(s, "| scale | compute | {} |", header.join(" | "));
    let _ = writeln!(s, "|---:|---|{}", "---:|".repeat(SPEED_COLUMNS.len()));
    for r in scales.iter().filter(|r| !r.speeds.is_empty()) {
        for kind in [Kind::Lazy, Kind::FullCopy] {
            if r.speeds.iter().any(|x| x.kind == kind) {
                let cells: Vec<String> = SPEED_COLUMNS
                    .iter()
                    .map(|(_, f)| cell(r.speed_median(kind, f), 0))
                    .collect();
                let _ = writeln!(s, "| {} | {kind} | {} |", r.scale, cells.join(" | "));
            }
        }
        let both = [Kind::Lazy, Kind::FullCopy]
            .iter()
            .all(|k| r.speeds.iter().any(|x| x.kind == *k));
        if !both {
            continue;
        }
        let ratios: Vec<String> = SPEED_COLUMNS
            .iter()
            .map(|(_, f)| {
                let v = ratio(
                    r.speed_median(Kind::Lazy, f),
                    r.speed_median(Kind::FullCopy, f),
                );
                v.map_or_else(|| "–".into(), |x| format!("{x:.2}×"))
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | lazy / full copy | {} |",
            r.scale,
            ratios.join(" | ")
        );
    }
    let _ = writeln!(s);
}

fn goals(s: &mut String, scales: &[ScaleResult]) {
    let lazy_start = per_scale(scales, |r| r.start_median(Kind::Lazy, |x| x.start_secs));
    if lazy_start.is_empty() {
        let _ = writeln!(s, "Goals: no lazy compute was measured.");
        return;
    }
    let _ = writeln!(s, "Goals (issue 18):");
    goal(
        s,
        "lazy start < 1 s at every size",
        &lazy_start,
        |v| v < 1.0,
        |v| format!("{v:.2} s"),
    );
    if let (Some(first), Some(last)) = (lazy_start.first(), lazy_start.last()) {
        if lazy_start.len() > 1 {
            let _ = writeln!(
                s,
                "- flat in size: scale {} / scale {} = {:.2}×",
                last.0,
                first.0,
                last.1 / first.1
            );
        }
    }
    goal(
        s,
        "point query on a cold lazy compute < 50 ms (the query alone)",
        &per_scale(scales, |r| r.start_median(Kind::Lazy, |x| x.first_query_ms)),
        |v| v < 50.0,
        |v| format!("{v:.1} ms"),
    );
    let _ = writeln!(
        s,
        "  with psql's start and the new connection: {}",
        per_scale(scales, |r| r
            .start_median(Kind::Lazy, |x| x.first_query_wall_ms))
        .iter()
        .map(|(sc, v)| format!("{v:.0} ms at scale {sc}"))
        .collect::<Vec<_>>()
        .join(", ")
    );
    let warm = per_scale(scales, |r| {
        ratio(
            r.speed_median(Kind::Lazy, |x| x.select_warm_tps),
            r.speed_median(Kind::FullCopy, |x| x.select_warm_tps),
        )
    });
    goal(
        s,
        "warm `pgbench -S` lazy ≥ 0.9× full copy",
        &warm,
        |v| v >= 0.9,
        |v| format!("{v:.2}×"),
    );
    goal(
        s,
        "cold sequential scan on a lazy compute ≥ 200 MB/s",
        &per_scale(scales, |r| r.speed_median(Kind::Lazy, |x| x.scan_cold_mb_s)),
        |v| v >= 200.0,
        |v| format!("{v:.0} MB/s"),
    );
}

/// `(scale, value)` for the scales that have the value.
fn per_scale(scales: &[ScaleResult], f: impl Fn(&ScaleResult) -> Option<f64>) -> Vec<(u32, f64)> {
    scales
        .iter()
        .filter_map(|r| Some((r.scale, f(r)?)))
        .collect()
}

/// One goal's line: met when every scale's value passes (nothing when none was measured).
fn goal(
    s: &mut String,
    title: &str,
    values: &[(u32, f64)],
    passes: impl Fn(f64) -> bool,
    show: impl Fn(f64) -> String,
) {
    if values.is_empty() {
        return;
    }
    let verdict = if values.iter().all(|(_, v)| passes(*v)) {
        "met"
    } else {
        "NOT met"
    };
    let list: Vec<String> = values
        .iter()
        .map(|(sc, v)| format!("{} at scale {sc}", show(*v)))
        .collect();
    let _ = writeln!(s, "- {title}: {verdict} ({})", list.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(kind: Kind, round: usize, secs: f64) -> StartSample {
        StartSample {
            kind,
            round,
            start_secs: secs,
            first_query_wall_ms: 20.0,
            first_query_ms: 4.0,
            detail: format!("{kind} round {round}"),
            load: 2.0 + round as f64,
        }
    }

    fn speed(kind: Kind, tps: f64) -> SpeedSample {
        SpeedSample {
            kind,
            round: 0,
            select_cold_tps: tps / 2.0,
            select_warm_tps: tps,
            prewarm_mb_s: 300.0,
            scan_cold_mb_s: 250.0,
            scan_warm_mb_s: 900.0,
            rw_tps: 400.0,
            loads: vec![1.0],
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            date: "2026-12-07 07:00 UTC".into(),
            command: "lazy_compute --scales 10,100".into(),
            machine: "2 cores".into(),
            build: "release".into(),
            drop_caches: true,
            rounds: 3,
            query_rounds: 1,
            select_secs: 10,
            rw_secs: 10,
            clients: 2,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }

    #[test]
    fn report_has_the_tables_and_the_goals() {
        let scales = [10u32, 100].map(|scale| ScaleResult {
            scale,
            db_bytes: u64::from(scale) * (15 << 20),
            accounts_bytes: u64::from(scale) * (13 << 20),
            starts: (0..3)
                .flat_map(|r| {
                    [
                        start(Kind::Lazy, r, 0.5 + r as f64 / 10.0),
                        start(Kind::FullCopy, r, f64::from(scale) / 10.0),
                        start(Kind::Pitr, r, f64::from(scale) / 5.0),
                    ]
                })
                .collect(),
            speeds: vec![speed(Kind::Lazy, 900.0), speed(Kind::FullCopy, 1000.0)],
        });
        let t = render(&info(), &scales);
        for want in [
            "command: lazy_compute --scales 10,100\n",
            "median 3.0, min 1.0, max 4.0",
            // Scale 10: lazy median 0.6 s, full copy 1 s, PITR 2 s; first query 20 ms (4.0).
            "| 10 | 150 | 0.60 | 20 (4.0) | 1.00 | 20 (4.0) | 2.00 | 20 (4.0) | 0.62 / 1.02 / 2.02 |",
            "| 100 | 1500 | 0.60 |",
            "scale 10 lazy, median round: lazy round 1",
            "| 10 | lazy | 450 | 900 | 300 | 250 | 900 | 400 |",
            "| 10 | lazy / full copy | 0.90× | 0.90× | 1.00× |",
            "- lazy start < 1 s at every size: met",
            "- flat in size: scale 100 / scale 10 = 1.00×",
            "< 50 ms (the query alone): met (4.0 ms at scale 10",
            "≥ 0.9× full copy: met (0.90× at scale 10",
            "≥ 200 MB/s: met (250 MB/s at scale 10",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        // Every table row has as many cells as its header.
        for table in t.split("\n\n").filter(|b| b.starts_with('|')) {
            let cols: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(cols.iter().all(|c| *c == cols[0]), "{table}");
        }
    }

    #[test]
    fn missing_kinds_and_failed_goals_are_said() {
        let scales = [ScaleResult {
            scale: 10,
            db_bytes: 150 << 20,
            accounts_bytes: 130 << 20,
            starts: vec![start(Kind::FullCopy, 0, 3.0), start(Kind::Pitr, 0, 5.0)],
            speeds: vec![],
        }];
        let t = render(&info(), &scales);
        assert!(t.contains("| 10 | 150 | – | – | 3.00 |"), "{t}");
        assert!(t.contains("Goals: no lazy compute was measured."), "{t}");
        assert!(!t.contains("Query speed"), "{t}");
        let slow = [ScaleResult {
            starts: vec![start(Kind::Lazy, 0, 1.5)],
            ..scales[0].clone()
        }];
        let t = render(&info(), &slow);
        assert!(
            t.contains("< 1 s at every size: NOT met (1.50 s at scale 10)"),
            "{t}"
        );
    }
}
