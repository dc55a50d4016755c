//! Runs the `branch_vs_pitr` load tool end to end at a tiny size: a Strata cluster, pgbench,
//! a base backup, two points in time, and for each a Strata branch and a Postgres PITR whose
//! answers must equal main's (the tool exits non-zero otherwise). Timing is printed, never
//! asserted. Needs the strata binaries (`cargo build --bins`) and PostgreSQL 15.

mod support;

#[test]
fn branch_and_pitr_agree_at_two_points() {
    let stdout = support::run_bench(
        env!("CARGO_BIN_EXE_branch_vs_pitr"),
        &["--scale", "1", "--multiples", "1,3", "--chunk-secs", "2"],
    );
    // One table line per point in time, each with the answer both sides gave.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("× |") && l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "expected two result rows:\n{stdout}");
    for r in rows {
        // count(*) of pgbench_accounts at scale 1, then the sum of balances at T.
        assert!(r.contains("| 100000|"), "row {r:?}");
    }
}
