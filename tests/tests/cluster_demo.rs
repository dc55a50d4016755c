//! `strata demo` end to end, with the real binaries: three safekeepers, a pageserver, computes
//! started from basebackups, pgbench through the walproposer, a dropped table found again by
//! time and by restore point, and a branch that shows it back. The demo checks the table's
//! rows and checksum itself and exits non-zero otherwise; this test also checks what it printed.

use std::process::Command;

use strata_tests::cluster::scratch_dir;
use strata_tests::waldump::strata_bin;

#[test]
fn strata_demo_brings_the_dropped_table_back() -> anyhow::Result<()> {
    let dir = scratch_dir("strata-demo-test-")?;
    let cluster = dir.path().join("cluster");
    let out = Command::new(strata_bin()?)
        .arg("--dir")
        .arg(&cluster)
        .args(["demo", "--scale", "1", "--seconds", "2"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "strata demo failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        logs(&cluster)
    );
    assert!(
        stdout.contains("the dropped table came back intact"),
        "{stdout}"
    );
    let before = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("orders: "))
        .expect("the demo prints the table's fingerprint");
    assert!(before.starts_with("10000 rows, md5 "), "{before}");
    let on_branch = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("orders on before-drop: "))
        .expect("the demo prints the branch's fingerprint");
    assert_eq!(before, on_branch);
    // Everything was stopped: no pid files (or supervision specs) left; the supervisor's
    // restart records (`*.state`) stay for `strata status`.
    let left: Vec<String> = std::fs::read_dir(cluster.join("run"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let running: Vec<&String> = left
        .iter()
        .filter(|n| n.ends_with(".pid") || n.ends_with(".spec"))
        .collect();
    assert!(running.is_empty(), "services left running: {running:?}");
    Ok(())
}

fn logs(cluster: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(entries) = std::fs::read_dir(cluster.join("logs")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {} ---\n", e.path().display()));
            s.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
            s.push('\n');
        }
    }
    s
}
