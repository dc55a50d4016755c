//! Runs the `auth_metrics_cost` benchmark end to end at a tiny size: both clusters (auth and
//! metrics on, and `--no-auth --no-metrics`), two rounds of each pgbench run and of each kind
//! of page read, with the token on one side and none on the other. Every row of the report
//! must have a figure on both sides; timing is printed, never asserted.
//! Needs the strata binaries (`cargo build --bins`) and PostgreSQL 15.

mod support;

const ROWS: [&str; 10] = [
    "pgbench -S TPS",
    "pgbench -N TPS",
    "GetPage hot p50 µs",
    "GetPage hot p99 µs",
    "GetPages stream hot p50 µs",
    "GetPages stream hot p99 µs",
    "GetPage redo p50 µs",
    "GetPage redo p99 µs",
    "GetPages stream redo p50 µs",
    "GetPages stream redo p99 µs",
];

#[test]
fn the_report_has_every_measurement_on_both_sides() {
    let stdout = support::run_bench(
        env!("CARGO_BIN_EXE_auth_metrics_cost"),
        &[
            "--scale",
            "1",
            "--rounds",
            "2",
            "--reads",
            "50",
            "--hot-blocks",
            "8",
            "--redo-blocks",
            "40",
            "--pgbench-secs",
            "1",
        ],
    );
    for name in ROWS {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name:?}:\n{stdout}"));
        // "" | name | on | off | on/off | on spread | off spread | noise | within | ""
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for (what, col) in [("on", 2), ("off", 3), ("on/off", 4)] {
            assert!(
                cells[col].parse::<f64>().is_ok_and(|v| v > 0.0),
                "{name}: no {what} figure in {row:?}"
            );
        }
    }
    // The redo rows read pages the pageserver rebuilt: its own metrics counted some.
    let redo = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pages needing redo: cluster on's pageserver counted "))
        .unwrap_or_else(|| panic!("no redo note:\n{stdout}"));
    let needed: u64 = redo
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("redo note: {redo}"));
    assert!(needed > 0, "no read of the redo rows needed redo: {redo}");
}
