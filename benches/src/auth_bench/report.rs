//! The printed report of `auth_metrics_cost`: one row per measurement with the median of the
//! rounds on each side, their ratio, each side's spread (lowest–highest round) and whether
//! the difference is within the rounds' own noise.

use std::fmt::Write as _;

use crate::lazy_bench::report::median;

/// A percentile of sorted values (nearest rank); NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One measurement: a value per round on each side.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub on: Vec<f64>,
    pub off: Vec<f64>,
}

/// A row's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub on: f64,
    pub off: f64,
    /// on / off.
    pub ratio: f64,
    /// Half the widest round-to-round range of either side, relative to its median: how far
    /// apart two rounds of the same setup land on this machine.
    pub noise: f64,
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

impl Row {
    /// None until both sides have a round.
    pub fn summary(&self) -> Option<Summary> {
        let (on, off) = (
            median(self.on.iter().copied())?,
            median(self.off.iter().copied())?,
        );
        let rel_half_range = |v: &[f64], m: f64| {
            let (lo, hi) = spread(v);
            (hi - lo) / 2.0 / m
        };
        Some(Summary {
            on,
            off,
            ratio: on / off,
            noise: rel_half_range(&self.on, on).max(rel_half_range(&self.off, off)),
        })
    }
}

/// How the run was made.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub date: String,
    pub command: String,
    pub machine: String,
    pub build: String,
    pub scale: u32,
    pub rounds: usize,
    pub reads: usize,
    pub pgbench_secs: u32,
    pub clients: u32,
    pub loads: Vec<f64>,
}

/// The whole report; `notes` are printed under the table.
pub fn render(info: &RunInfo, rows: &[Row], notes: &[String]) -> String {
    let mut s = String::new();
    let (load_lo, load_hi) = spread(&info.loads);
    let _ = writeln!(
        s,
        "auth_metrics_cost — {}; {}; 1-min load {load_lo:.1}–{load_hi:.1} during the run",
        info.date, info.machine
    );
    let _ = writeln!(s, "command: {}", info.command);
    let _ = writeln!(s, "build: {}", info.build);
    let _ = writeln!(
        s,
        "on = `strata init` (auth and metrics on, the default); off = `strata init --no-auth \
         --no-metrics`. pgbench scale {}, {} rounds alternating on, off; {} page reads per \
         round and row; pgbench runs of {} s with {} clients. Medians of the rounds; spread = \
         lowest–highest round; noise = half the wider side's spread relative to its median.",
        info.scale, info.rounds, info.reads, info.pgbench_secs, info.clients
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| measurement | on | off | on/off | on spread | off spread | noise ± | within noise |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(m) = row.summary() else {
            let _ = writeln!(s, "| {} | – | – | – | – | – | – | – |", row.name);
            continue;
        };
        let ((on_lo, on_hi), (off_lo, off_hi)) = (spread(&row.on), spread(&row.off));
        let within = (m.ratio - 1.0).abs() <= m.noise;
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.3} | {on_lo:.1}–{on_hi:.1} | {off_lo:.1}–{off_hi:.1} | \
             {:.1}% | {} |",
            row.name,
            m.on,
            m.off,
            m.ratio,
            m.noise * 100.0,
            if within { "yes" } else { "no" }
        );
    }
    for n in notes {
        let _ = writeln!(s, "\n{n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_medians_ratio_and_noise() {
        let row = Row {
            name: "x".into(),
            on: vec![110.0, 100.0, 120.0],
            off: vec![100.0, 90.0, 100.0],
        };
        let m = row.summary().unwrap();
        assert_eq!((m.on, m.off), (110.0, 100.0));
        assert!((m.ratio - 1.1).abs() < 1e-9);
        // on: (120 - 100) / 2 / 110 = 9.1 %; off: (100 - 90) / 2 / 100 = 5 %.
        assert!((m.noise - 20.0 / 2.0 / 110.0).abs() < 1e-9);
        assert!(Row {
            name: "empty".into(),
            on: vec![1.0],
            off: vec![],
        }
        .summary()
        .is_none());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
