//! The WAL sample generator yields complete, readable segments of real pgbench WAL.

use std::process::Command;
use std::time::Duration;

use strata_tests::pg::pg_bin_dir;
use strata_tests::waldump::parse_dump;
use strata_tests::walgen::{generate_pgbench_sample, SampleOptions};

#[test]
fn walgen_produces_complete_segments() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let files = generate_pgbench_sample(
        out.path(),
        &SampleOptions {
            scale: 1,
            duration: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(
            f.metadata()?.len(),
            16 << 20,
            "{} is not a full segment",
            f.display()
        );
    }
    // pg_waldump reads from the first segment through the last without a gap, and the
    // last record is the WAL switch that completed the last segment.
    let name = |i: usize| files[i].file_name().unwrap().to_str().unwrap().to_string();
    let dump = Command::new(pg_bin_dir().join("pg_waldump"))
        .arg("-p")
        .arg(out.path())
        .arg(name(0))
        .arg(name(files.len() - 1))
        .output()?;
    assert!(
        dump.status.success(),
        "pg_waldump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let records = parse_dump(&String::from_utf8(dump.stdout)?)?;
    let last = records.last().expect("records");
    assert_eq!((last.rmgr.as_str(), last.record_type()), ("XLOG", "SWITCH"));
    assert!(
        records
            .iter()
            .any(|r| r.rmgr == "Heap2" && r.record_type().starts_with("MULTI_INSERT")),
        "pgbench -i loads with COPY"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.rmgr == "Heap" && r.record_type() == "HOT_UPDATE")
            .count()
            > 100,
        "the pgbench run updates rows"
    );
    Ok(())
}
