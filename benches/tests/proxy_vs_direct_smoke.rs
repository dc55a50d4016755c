//! Runs the `proxy_vs_direct` benchmark end to end at a tiny size (scale 1, one round of
//! each measurement, checked answers inside the tool) so that it cannot rot: the report must
//! carry a figure in every column. Timing is printed, never asserted. Needs the strata
//! binaries (`cargo build --bins`) and PostgreSQL 15.

mod support;

#[test]
fn the_report_has_every_measurement() {
    let stdout = support::run_bench(
        env!("CARGO_BIN_EXE_proxy_vs_direct"),
        &["--scales", "1", "--rounds", "1", "--select-secs", "1"],
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap_or_else(|| panic!("no row for scale 1:\n{stdout}"));
    // "" | scale | DB | direct TPS | proxy TPS | ratio | 2 latencies | 2 psql | new moment |
    // scaled to zero | restore | load | ""
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 15, "{row}");
    for (i, cell) in cells[2..14].iter().enumerate() {
        let first = cell.split_whitespace().next().unwrap_or_default();
        assert!(
            first.parse::<f64>().is_ok(),
            "column {} has no figure in {row:?}",
            i + 2
        );
    }
    assert!(
        stdout.contains("scale 1: met") || stdout.contains("scale 1: NOT met"),
        "no verdict:\n{stdout}"
    );
}
