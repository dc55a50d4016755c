//! Runs the `lazy_compute` benchmark end to end at a tiny size: a Strata cluster, pgbench, a
//! base backup, T, one round of each kind's start at T (every first answer must equal main's
//! at T, or the tool exits non-zero) and one round of the query-speed runs (the scan's answer
//! and the read-write branch's history are checked). Timing is printed, never asserted.
//! Needs the strata binaries (`cargo build --bins`) and PostgreSQL 15.

mod support;

const KINDS: &str = "full,pitr";

#[test]
fn every_kind_starts_at_t_and_answers_like_main() {
    let stdout = support::run_bench(
        env!("CARGO_BIN_EXE_lazy_compute"),
        &[
            "--scales",
            "1",
            "--kinds",
            KINDS,
            "--rounds",
            "1",
            "--query-rounds",
            "1",
            "--select-secs",
            "1",
            "--rw-secs",
            "1",
            "--workload-secs",
            "1",
            "--no-drop-caches",
        ],
    );
    // The start table has the scale's row with a time for every kind asked for.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap_or_else(|| panic!("no start row for scale 1:\n{stdout}"));
    // The text before the row's first `|` is cell 0:
    // "" | scale | DB | lazy start | lazy q | full start | full q | PITR start | PITR q | totals |
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    for (kind, col) in [("full", 5), ("pitr", 7)] {
        assert!(
            cells[col].parse::<f64>().is_ok_and(|s| s > 0.0),
            "{kind}'s start time in {row:?}"
        );
    }
    assert!(
        stdout.contains("| 1 | full copy |"),
        "no query-speed row:\n{stdout}"
    );
}
