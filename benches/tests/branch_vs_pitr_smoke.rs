//! Runs the `branch_vs_pitr` load tool end to end at a tiny size: a Strata cluster, pgbench,
//! a base backup, two points in time, and for each a Strata branch and a Postgres PITR whose
//! answers must equal main's (the tool exits non-zero otherwise). Timing is printed, never
//! asserted. Needs the strata binaries (`cargo build --bins`) and PostgreSQL 15.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn branch_and_pitr_agree_at_two_points() {
    let target_dir = PathBuf::from(env!("CARGO_BIN_EXE_branch_vs_pitr"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let strata = target_dir.join("strata");
    assert!(
        strata.exists(),
        "{} is missing: build the binaries first (cargo build --bins)",
        strata.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_branch_vs_pitr"))
        .args(["--scale", "1", "--multiples", "1,3", "--chunk-secs", "2"])
        .arg("--strata-bin")
        .arg(&strata)
        .output()
        .expect("running branch_vs_pitr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "branch_vs_pitr failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
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
