//! Running a benchmark program of this crate the way a user does, with the strata binaries
//! of the same target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `exe args… --strata-bin <target>/strata`; fails the test (with both outputs) when it
/// fails; returns its stdout.
pub fn run_bench(exe: &str, args: &[&str]) -> String {
    let strata = Path::new(exe)
        .parent()
        .map(|d| d.join("strata"))
        .unwrap_or_else(|| PathBuf::from("strata"));
    assert!(
        strata.exists(),
        "{} is missing: build the binaries first (cargo build --bins)",
        strata.display()
    );
    let out = Command::new(exe)
        .args(args)
        .arg("--strata-bin")
        .arg(&strata)
        .output()
        .unwrap_or_else(|e| panic!("running {exe}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{exe} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    stdout
}
